import { describe, expect, it } from 'vitest';
import { filterObserver, taskLog, TaskManager, type TaskObserver } from 'koa-taskflow';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { tempDir } from './helpers/files.js';
import { capturePino } from './helpers/pino.js';
import { createManager, deferred, waitFor } from './helpers/server.js';

/** Counts what it is handed, synchronously. */
function countingObserver(): TaskObserver & { logs: number; lifecycle: number } {
  return {
    name: 'counting',
    logs: 0,
    lifecycle: 0,
    onLog() {
      this.logs++;
    },
    onLifecycle() {
      this.lifecycle++;
    },
  };
}

describe('bounded observers', () => {
  it('validates observerTimeoutMs and observerMaxInFlight, the error naming the option', () => {
    for (const bad of [0, -5, 1.5, 2 ** 31, Infinity])
      expect(() => new TaskManager({ observerTimeoutMs: bad })).toThrow(/"observerTimeoutMs"/);
    for (const bad of [0, -1, 2.5, Number.NaN])
      expect(() => new TaskManager({ observerMaxInFlight: bad })).toThrow(/"observerMaxInFlight"/);
    expect(() => new TaskManager({ observerMaxInFlight: 'x' as unknown as number })).toThrow(TypeError);
    expect(() => new TaskManager({ observerMaxInFlight: Infinity, observerTimeoutMs: 2 ** 31 - 1 })).not.toThrow();
  });

  it('a hanging observer holds at most observerMaxInFlight events: the rest are dropped and counted, reported once, drain() resolves, a good observer gets every event', async () => {
    const TASKS = 10_000;
    const { logger, lines } = capturePino('warn');
    // Like a stuck exporter: every call's promise is kept by something outside (its socket) and never settles.
    const held: (() => void)[] = [];
    const stuck: TaskObserver = {
      name: 'stuck',
      onLog: () => new Promise<void>((resolve) => void held.push(resolve)),
      onLifecycle: () => new Promise<void>((resolve) => void held.push(resolve)),
    };
    const good = countingObserver();
    const manager = createManager({
      logger,
      observers: [stuck, good],
      maxQueued: Infinity,
      observerTimeoutMs: 600_000,
    });
    const work = manager.task(function work(n: number) {
      taskLog('working', { n });
    });
    for (let i = 0; i < TASKS; i++) manager.add(work, i);
    await manager.drain();

    // Each task: one log event and three lifecycle events (pending, running, success).
    const events = TASKS * 4;
    expect(good).toMatchObject({ logs: TASKS, lifecycle: TASKS * 3 });
    // What the hanging observer can keep is bounded by the in-flight limit, not by the number of tasks.
    expect(held).toHaveLength(1_000);
    const { observers } = await manager.metrics();
    expect(observers).toEqual({ dropped: events - 1_000, byObserver: { stuck: events - 1_000 } });
    const reports = lines.filter((l) => String(l.msg).includes('dropping events'));
    expect(reports).toHaveLength(1);
    expect(reports[0]).toMatchObject({
      level: 40,
      observer: 'stuck',
      msg: expect.stringMatching(/observerMaxInFlight/),
    });

    // Once its calls settle, it gets events again.
    for (const resolve of held.splice(0)) resolve();
    await new Promise((r) => setImmediate(r));
    manager.add(work, -1);
    await manager.drain();
    expect(held).toHaveLength(4);
    expect((await manager.metrics()).observers.dropped).toBe(events - 1_000);
  });

  it('a call that does not settle within observerTimeoutMs counts as dropped and is reported once; the task is unaffected', async () => {
    const { logger, lines } = capturePino('warn');
    const slowCall = deferred();
    let calls = 0;
    const slow: TaskObserver = {
      name: 'slow',
      onLifecycle: (event) => {
        calls++;
        if (event.status === 'running') return slowCall.promise;
      },
    };
    // Wrapped: a filter is named after (and limited like) the observer it passes events to.
    const manager = createManager({ logger, observers: [filterObserver({}, slow)], observerTimeoutMs: 20 });
    const id = manager.add(() => 'done');
    await manager.drain();
    expect(await manager.get(id)).toMatchObject({ status: 'success' });
    await waitFor(async () => (await manager.metrics()).observers.dropped === 1, 5_000, 'the slow call to time out');
    expect((await manager.metrics()).observers.byObserver).toEqual({ slow: 1 });
    expect(lines.filter((l) => l.observer === 'slow')).toEqual([
      expect.objectContaining({ msg: expect.stringMatching(/did not settle within 20 ms.*observerTimeoutMs/) }),
    ]);
    slowCall.resolve();
    // A timed-out call is counted once; later events are delivered as before.
    manager.add(() => {});
    await manager.drain();
    expect(calls).toBe(6);
    expect((await manager.metrics()).observers.dropped).toBe(1);
  });

  it('synchronous observers are never limited (observerMaxInFlight: 1)', async () => {
    const good = countingObserver();
    const manager = createManager({ observers: [good], observerMaxInFlight: 1 });
    for (let i = 0; i < 50; i++) manager.add(() => taskLog('x'));
    await manager.drain();
    expect(good).toMatchObject({ logs: 50, lifecycle: 150 });
    expect((await manager.metrics()).observers).toEqual({ dropped: 0, byObserver: {} });
  });

  it("shutdown() is bounded by observerTimeoutMs when an observer's close() never settles", async () => {
    const manager = new TaskManager({
      observers: [{ close: () => new Promise<void>(() => {}) }],
      observerTimeoutMs: 50,
      shutdownTimeoutMs: 600_000,
    });
    manager.add(() => {});
    await manager.drain();
    await manager.shutdown();
  });

  it('metrics() carries the observer drops with a store that counts on its own (SQLite)', async () => {
    const held: (() => void)[] = [];
    const manager = createManager({
      store: new SqliteStore({ path: `${tempDir()}/tasks.db` }),
      observers: [{ name: 'stuck', onLifecycle: () => new Promise<void>((resolve) => void held.push(resolve)) }],
      observerMaxInFlight: 2,
      observerTimeoutMs: 600_000,
    });
    manager.with({ persist: false }).add(() => {});
    await manager.drain();
    const metrics = await manager.metrics();
    expect(metrics.byStatus.success).toBe(1);
    expect(metrics.observers).toEqual({ dropped: 1, byObserver: { stuck: 1 } });
    for (const resolve of held) resolve();
  });
});
