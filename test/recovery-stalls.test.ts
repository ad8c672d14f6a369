// At-least-once after a crash, with real processes: a task whose process died while it ran is run again by
// the next process (or another instance) as its next attempt, linked to the attempt that died, and
// `maxStalls` ends a task that keeps taking its process down.
import { describe, expect, it } from 'vitest';
import { getTaskContext, InMemoryObserver, type TaskRecord, type TaskStore } from 'koa-taskflow';
import { RedisStore } from 'koa-taskflow/redis';
import { SqliteStore } from 'koa-taskflow/sqlite';
import {
  countBy,
  durableFiles,
  openSqliteStore as openSqlite,
  readTaskLog,
  startDurableApp,
  type TaskLogEntry,
} from './helpers/durable-app.js';
import { startRedisServer } from './helpers/redis.js';
import { createManager, onCleanup, waitFor } from './helpers/server.js';

const setup = () => durableFiles('taskflow-stalls-');

const FINAL = new Set(['success', 'failed', 'interrupted', 'cancelled']);

function starts(log: string, id: string): TaskLogEntry[] {
  return readTaskLog(log).filter((e) => e.id === id && e.event === 'start');
}

/** What the store held as `running` once the process was dead: the attempts that died with it. */
async function runningIn(store: TaskStore): Promise<Map<string, TaskRecord>> {
  return new Map((await store.list({ status: 'running' })).map((r) => [r.id, r]));
}

/**
 * After a crash: every acknowledged task ended `success`; those the store held `running` when their process
 * died ran again as attempt 2 (one stall, no retry used), linked to the span of the attempt that died; the
 * others ran as attempt 1. None ran more than twice.
 */
async function expectRecovered(
  store: TaskStore,
  log: string,
  acknowledged: string[],
  died: Map<string, TaskRecord>,
): Promise<void> {
  const records = new Map<string, TaskRecord>();
  await waitFor(
    async () => {
      for (const id of acknowledged) {
        const record = await store.get(id);
        if (record?.status === 'success') records.set(id, record);
      }
      return records.size === acknowledged.length;
    },
    15_000,
    'every acknowledged task to succeed',
  );
  for (const id of acknowledged) {
    const record = records.get(id)!;
    const attempts = starts(log, id);
    expect(attempts.length, `starts of ${id}`).toBeLessThanOrEqual(2);
    expect(countBy(log, 'done').get(id), `completions of ${id}`).toBeGreaterThanOrEqual(1);
    const dead = died.get(id);
    if (dead === undefined) {
      expect(record, `task ${id}`).toMatchObject({ attempts: 1, maxAttempts: 1 });
      expect(record.stalls).toBeUndefined();
      continue;
    }
    expect(record, `task ${id}`).toMatchObject({ attempts: 2, maxAttempts: 2, stalls: 1 });
    // The dead attempt's span, as its own process logged it and as its record kept it.
    expect(attempts[0]).toMatchObject({ attempt: 1, span: dead.spanId });
    expect(attempts[1].attempt).toBe(2);
    expect(attempts[1].pid).not.toBe(attempts[0].pid);
    expect(attempts[1].links).toEqual([dead.spanId]);
  }
}

describe('SQLite: a task whose process died runs again (at-least-once)', () => {
  it('40 acknowledged 0.8 s tasks, SIGKILL right after the responses: a restart runs all 40 to success, the running ones as attempt 2 linked to the attempt that died', async () => {
    const { db, log } = setup();
    const env = { DB: db, TASK_LOG: log, CONCURRENCY: '16', LEASE_MS: '600', ORPHAN_MS: '100', TRACING: '1' };
    const first = await startDurableApp({ ...env, MODE: 'slow', SLOW_MS: '800' });
    const acknowledged = await Promise.all(Array.from({ length: 40 }, (_, n) => first.add(n)));
    // `running` is a lazy write (within 50 ms): a task killed before it is committed runs again as if it had not started.
    const reader = openSqlite(db);
    await waitFor(
      async () => (await reader.list({ status: 'running' })).length > 0,
      5_000,
      'running tasks to be committed',
    );
    first.child.process.kill('SIGKILL');
    await first.child.exited;
    const died = await runningIn(reader);
    expect(died.size).toBeGreaterThan(0);
    expect(died.size).toBeLessThanOrEqual(16);

    const second = await startDurableApp({ ...env, MODE: 'fast' });
    await expectRecovered(reader, log, acknowledged, died);
    second.child.process.kill('SIGTERM');
    await second.child.exited;
  });

  it('a task that kills its own process ends failed with TaskStalledError after maxStalls + 1 deaths; onError is called once, and it never runs again', async () => {
    const { db, log } = setup();
    // Dies 150 ms into each attempt: after its `running` was committed (within 50 ms).
    const { id, deaths, record, survivor } = await dieUntilEnded({ DB: db, TASK_LOG: log, DIE_AFTER_MS: '150' });
    expect(deaths).toBe(2);
    expect(record).toMatchObject({ status: 'failed', attempts: 2, stalls: 2, error: { type: 'TaskStalledError' } });
    expect(record.error!.message).toMatch(/died 2 time\(s\), more than its "maxStalls" \(1\)/);
    expect(starts(log, id).map((e) => e.attempt)).toEqual([1, 2]);
    await waitFor(() => countBy(log, 'onError').size === 1, 5_000, 'onError');
    expect(readTaskLog(log).filter((e) => e.event === 'onError')).toEqual([
      expect.objectContaining({ id, error: 'TaskStalledError', pid: String(survivor.child.process.pid) }),
    ]);
    // The process that ended it lives on: nothing ran it again.
    expect(survivor.child.process.exitCode).toBeNull();
    expect(starts(log, id)).toHaveLength(2);
  });

  it('a task that kills its process the instant it starts is capped too: its first start may go unrecorded, so at most maxStalls + 2 deaths', async () => {
    const { db, log } = setup();
    const { id, deaths, record } = await dieUntilEnded({ DB: db, TASK_LOG: log, DIE_AFTER_MS: '0', MAX_STALLS: '2' });
    expect(deaths).toBeLessThanOrEqual(4);
    expect(record).toMatchObject({ status: 'failed', stalls: 3, error: { type: 'TaskStalledError' } });
    expect(starts(log, id)).toHaveLength(deaths);
    expect(countBy(log, 'onError').get(id)).toBe(1);
  });

  it('a graceful shutdown hands its running task back: the next start runs it as its next attempt, and that is no stall (maxStalls: 0 still succeeds)', async () => {
    const { db, log } = setup();
    // A long lease: the next start takes the task at once only because the shutdown handed it back.
    const env = {
      DB: db,
      TASK_LOG: log,
      CONCURRENCY: '1',
      LEASE_MS: '60000',
      ORPHAN_MS: '60000',
      TRACING: '1',
      MAX_STALLS: '0',
    };
    const first = await startDurableApp({ ...env, MODE: 'slow', SLOW_MS: '60000', SHUTDOWN_MS: '50' });
    const [running, waiting] = [await first.add(1), await first.add(2)];
    await waitFor(() => starts(log, running).length === 1, 5_000, 'the first task to run');
    first.child.process.kill('SIGTERM');
    expect(await first.child.exited).toBe(0);
    const reader = openSqlite(db);
    expect(await reader.get(running)).toMatchObject({
      status: 'pending',
      attempts: 1,
      maxAttempts: 2,
      error: { type: 'TaskInterruptedError' },
    });

    const second = await startDurableApp({ ...env, MODE: 'fast' });
    await waitFor(
      async () =>
        (await reader.get(waiting))?.status === 'success' && (await reader.get(running))?.status === 'success',
      5_000,
      'both tasks to succeed',
    );
    const record = (await reader.get(running))!;
    expect(record).toMatchObject({ attempts: 2, maxAttempts: 2 });
    expect(record.stalls).toBeUndefined();
    const [cut, rerun] = starts(log, running);
    expect(rerun).toMatchObject({ attempt: 2, links: [cut.span] });
    expect(await reader.get(waiting)).toMatchObject({ attempts: 1 });
    expect(countBy(log, 'onError').size).toBe(0);
    second.child.process.kill('SIGTERM');
    await second.child.exited;
  });
});

/**
 * Adds one task (MODE=die: it SIGKILLs its own process), then restarts the app each time the task takes it
 * down, until the task has ended. Answers how many processes it killed, its final record, and the process
 * that ended it (still running).
 */
async function dieUntilEnded(env: Record<string, string>) {
  const base = { ...env, MODE: 'die', LEASE_MS: '300', ORPHAN_MS: '50' };
  const reader = openSqlite(env.DB);
  const first = await startDurableApp(base);
  const id = await first.add(1);
  await first.child.exited;
  let deaths = 1;
  for (;;) {
    expect(deaths, 'deaths before the task ended').toBeLessThanOrEqual(5);
    const app = await startDurableApp(base);
    const exited = () => app.child.process.exitCode !== null || app.child.process.signalCode !== null;
    let ended: TaskRecord | undefined;
    await waitFor(
      async () => {
        const record = await reader.get(id);
        if (record !== undefined && FINAL.has(record.status)) ended = record;
        return ended !== undefined || exited();
      },
      15_000,
      'the task to end or take its process down',
    );
    if (ended !== undefined) return { id, deaths, record: ended, survivor: app };
    await app.child.exited;
    deaths++;
  }
}

describe('Redis: another instance takes over', () => {
  it('the second of two instances runs the first one’s tasks after it is SIGKILLed: all succeed, the running ones as attempt 2 linked to the attempt that died', async () => {
    const redis = await startRedisServer();
    const { log } = setup();
    const env = {
      STORE: 'redis',
      REDIS_URL: redis.url,
      TASK_LOG: log,
      CONCURRENCY: '4',
      LEASE_MS: '600',
      ORPHAN_MS: '100',
      TRACING: '1',
    };
    const [doomed, survivor] = await Promise.all([
      startDurableApp({ ...env, MODE: 'hold' }),
      startDurableApp({ ...env, MODE: 'fast' }),
    ]);
    const acknowledged = await Promise.all(Array.from({ length: 10 }, (_, n) => doomed.add(n)));
    const reader = new RedisStore({ url: redis.url });
    onCleanup(() => reader.close());
    await waitFor(
      async () => (await reader.list({ status: 'running' })).length === 4,
      5_000,
      'four tasks committed as running in the doomed instance',
    );
    doomed.child.process.kill('SIGKILL');
    await doomed.child.exited;
    const died = await runningIn(reader);
    expect(died.size).toBe(4);

    await expectRecovered(reader, log, acknowledged, died);
    const survivorPid = String(survivor.child.process.pid);
    expect(
      readTaskLog(log)
        .filter((e) => e.event === 'done')
        .every((e) => e.pid === survivorPid),
    ).toBe(true);
    survivor.child.process.kill('SIGTERM');
    await survivor.child.exited;
  });
});

describe('recovering a stalled record', () => {
  it('counts the stall on the record and says why; the maxStalls stored with the task (with()) wins over the registration', async () => {
    const { db } = setup();
    // What a process killed in attempt 1 leaves: records `running` under an owner whose lease is gone.
    const dead = new SqliteStore({ path: db });
    dead.attach({ ownerId: 'dead-process', leaseMs: 60_000 });
    const running = (id: string, options?: TaskRecord['options']): TaskRecord => ({
      id,
      name: 'work',
      status: 'running',
      args: [id],
      tags: {},
      attempts: 1,
      maxAttempts: 1,
      createdAt: Date.now(),
      startedAt: Date.now(),
      logs: [],
      options,
    });
    await dead.save([running('again'), running('capped', { maxStalls: 0 })]);
    await dead.close();

    const observer = new InMemoryObserver();
    const ran: string[] = [];
    const onError: [string, unknown][] = [];
    const manager = createManager({ store: openSqlite(db), observers: [observer] });
    manager.task(
      async function work(id: string) {
        const { attempt, maxAttempts } = getTaskContext()!;
        ran.push(`${id}:${attempt}/${maxAttempts}`);
      },
      { onError: (error, record) => void onError.push([record.id, error]) },
    );
    await manager.start();
    await manager.drain();

    expect(ran).toEqual(['again:2/2']);
    expect(await manager.get('again')).toMatchObject({ status: 'success', attempts: 2, maxAttempts: 2, stalls: 1 });
    expect(observer.forTask('again').find((e) => e.type === 'lifecycle' && e.status === 'pending')).toMatchObject({
      error: {
        type: 'TaskStalledError',
        message: expect.stringMatching(/running attempt 1 died; the task runs again \(stall 1 of the 1/),
      },
    });
    expect(await manager.get('capped')).toMatchObject({
      status: 'failed',
      attempts: 1,
      stalls: 1,
      error: { type: 'TaskStalledError' },
    });
    expect(onError).toEqual([
      [
        'capped',
        expect.objectContaining({ name: 'TaskStalledError', code: 'ERR_TASK_STALLED', stalls: 1, maxStalls: 0 }),
      ],
    ]);
  });
});
