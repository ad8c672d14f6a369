// A delayed first attempt: the `startAfter` (ms) and `runAt` (Date or epoch ms) task options.
import { SpanKind } from '@opentelemetry/api';
import { BasicTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { TaskQueueFullError, type TaskOptions } from 'koa-taskflow';
import { inMemorySpans } from './helpers/otel.js';
import { countBy, durableFiles, openSqliteStore, readTaskLog, startDurableApp } from './helpers/durable-app.js';
import { getJson, untilReal } from './helpers/fake-clock.js';
import { createManager, startApp, waitFor } from './helpers/server.js';

const DAY = 24 * 60 * 60 * 1_000;

describe('startAfter and runAt (fake clock)', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("ctx.tasks.with({ startAfter }).addTask runs once the delay has passed, not before, and does not hold the request's next after-response task", async () => {
    const started: Record<string, number> = {};
    let responseClosed = false;
    const { url, manager } = await startApp((app, manager) => {
      const report = manager.task(async function report(kind: string) {
        started[kind] = Date.now();
      });
      app.use(async (ctx, next) => {
        // Registered before the task's sequence listens: once this has run, the delayed task was handed to the runner.
        ctx.res.once('close', () => (responseClosed = true));
        await next();
      });
      app.use(async (ctx) => {
        const id = ctx.tasks.with({ startAfter: 60_000 }).addTask(report, 'delayed');
        ctx.tasks.addTask(report, 'next');
        ctx.body = { id };
      });
    });
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    const { id } = await getJson<{ id: string }>(url);
    await untilReal(() => responseClosed && started.next !== undefined, 'the response sent and the next task run');
    const pending = await manager.get(id);
    expect(pending).toMatchObject({ status: 'pending', attempts: 0, runAt: pending!.createdAt + 60_000 });
    expect(manager.queued).toBe(1);

    await vi.advanceTimersByTimeAsync(59_999);
    expect(started.delayed).toBeUndefined();
    await vi.advanceTimersByTimeAsync(1);
    expect(started.delayed).toBe(pending!.runAt);
    const done = await manager.get(id);
    expect(done).toMatchObject({ status: 'success', attempts: 1, startedAt: pending!.runAt, runAt: undefined });
  });

  it('runAt as a Date or epoch ms, from any phase and outside a request; one beyond the 24.8-day timer limit waits its whole time', async () => {
    const started = new Map<string, number>();
    let handleDone: Promise<unknown> | undefined;
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    const t0 = Date.now();
    const { url, manager } = await startApp((app, manager) => {
      const job = manager.task(async function job(label: string) {
        started.set(label, Date.now());
      });
      app.use(async (ctx) => {
        ctx.tasks.with({ runAt: new Date(t0 + 5_000) }).afterRoute.schedule(job, 'afterRoute');
        const handle = ctx.tasks.with({ runAt: t0 + 7_000 }).schedule(job, 'schedule');
        handleDone = handle.done;
        ctx.body = { id: handle.id };
      });
      manager.with({ runAt: t0 + 40 * DAY }).add(job, 'far');
      manager.with({ startAfter: 3_000 }).add(job, 'add');
      // A time already past runs at once.
      manager.with({ runAt: t0 - 1_000 }).add(job, 'past');
    });
    await getJson(url);
    await untilReal(() => started.has('past'), 'the past-due task');
    expect([...started.keys()]).toEqual(['past']);
    await vi.advanceTimersByTimeAsync(7_000);
    await handleDone;
    expect(Object.fromEntries([...started].map(([label, at]) => [label, at - t0]))).toEqual({
      past: 0,
      add: 3_000,
      afterRoute: 5_000,
      schedule: 7_000,
    });
    // 40 days: past 2^31 − 1 ms a Node timer fires after 1 ms; the wait is re-armed in steps instead.
    await vi.advanceTimersByTimeAsync(40 * DAY - 7_001);
    expect(started.has('far')).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(started.get('far')! - t0).toBe(40 * DAY);
    await manager.drain();
  });
});

describe('the request link of a delayed task', () => {
  const exporter = inMemorySpans();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });

  afterEach(() => {
    vi.useRealTimers();
  });

  it('a task delayed by an hour (fake clock) still leads back to the request that added it: on its record and its span', async () => {
    const HOUR = 60 * 60_000;
    const tracer = provider.getTracer('test-http-server');
    const { url, manager } = await startApp(
      (app, manager) => {
        const followUp = manager.task(async function followUp() {});
        // The request span as HTTP instrumentation makes it.
        app.use((ctx, next) =>
          tracer.startActiveSpan('GET /signup', { kind: SpanKind.SERVER }, async (span) => {
            ctx.res.once('finish', () => span.end());
            await next();
          }),
        );
        app.use(async (ctx) => {
          ctx.body = { id: ctx.tasks.with({ startAfter: HOUR }).schedule(followUp).id };
        });
      },
      { tracerProvider: provider },
    );
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    const { id } = await getJson<{ id: string }>(url);
    await vi.advanceTimersByTimeAsync(HOUR);
    await manager.drain();
    const request = exporter.getFinishedSpans().find((span) => span.name === 'GET /signup')!;
    const attempt = exporter.getFinishedSpans().find((span) => span.name === 'task followUp')!;
    expect(attempt.links.map((link) => link.context.spanId)).toEqual([request.spanContext().spanId]);
    const record = (await manager.get(id))!;
    expect(record).toMatchObject({
      status: 'success',
      requestTraceId: request.spanContext().traceId,
      requestSpanId: request.spanContext().spanId,
    });
    expect(record.startedAt! - record.createdAt).toBe(HOUR);
  });
});

describe('delayed tasks in the runner', () => {
  it('count against maxQueued while they wait', () => {
    const manager = createManager({ maxQueued: 2 });
    const later = manager.with({ startAfter: 60_000 });
    later.add(function one() {});
    later.add(function two() {});
    expect(manager.queued).toBe(2);
    expect(() => later.add(function three() {})).toThrow(TaskQueueFullError);
  });

  it('shutdown cancels a delayed in-memory task not due before its timeout at once, instead of waiting the timeout out', async () => {
    const manager = createManager();
    let ran = false;
    const id = manager.with({ startAfter: 10 * 60_000 }).add(function later() {
      ran = true;
    });
    // Without it, shutdown would wait the whole minute (past the test's own timeout).
    await manager.shutdown({ timeoutMs: 60_000 });
    expect(ran).toBe(false);
    expect(await manager.get(id)).toMatchObject({ status: 'cancelled', reason: 'shutdown', attempts: 0 });
  });

  it('manager.retry(id) of a failed delayed task runs at once, whatever delay the task is registered with', async () => {
    const manager = createManager();
    let calls = 0;
    const flaky = manager.task(
      async function flaky() {
        if (++calls === 1) throw new Error('first call fails');
      },
      { startAfter: 10 * 60_000 },
    );
    const failed = manager.with({ startAfter: 20 }).add(flaky);
    await waitFor(async () => (await manager.get(failed))?.status === 'failed', 5_000, 'the delayed task to fail');
    const retried = await manager.retry(failed);
    await manager.drain();
    const record = await manager.get(retried);
    expect(record).toMatchObject({ status: 'success', retryOf: failed });
    // A record gets runAt only when it has one.
    expect(record?.runAt).toBeUndefined();
  });
});

describe('startAfter / runAt validation', () => {
  const bad: [string, TaskOptions, RegExp, typeof TypeError | typeof RangeError][] = [
    [
      'negative startAfter',
      { startAfter: -1 },
      /option "startAfter" must be a number from 0 to 2147483647, got -1/,
      RangeError,
    ],
    [
      'startAfter past the timer limit',
      { startAfter: 2 ** 31 },
      /"startAfter" must be a number from 0 to 2147483647/,
      RangeError,
    ],
    ['infinite startAfter', { startAfter: Infinity }, /"startAfter"/, RangeError],
    ['NaN startAfter', { startAfter: NaN }, /"startAfter" must be a number from 0 to 2147483647, got NaN/, RangeError],
    [
      'string startAfter',
      { startAfter: '1000' as unknown as number },
      /"startAfter" must be a number, got "1000"/,
      TypeError,
    ],
    [
      'invalid Date runAt',
      { runAt: new Date('not a date') },
      /option "runAt" must be a valid Date or finite epoch milliseconds/,
      RangeError,
    ],
    ['infinite runAt', { runAt: Infinity }, /"runAt" must be a valid Date/, RangeError],
    ['NaN runAt', { runAt: NaN }, /"runAt"/, RangeError],
    [
      'string runAt',
      { runAt: '2030-01-01' as unknown as number },
      /option "runAt" must be a Date or epoch milliseconds, got "2030-01-01"/,
      TypeError,
    ],
    [
      'both at once',
      { startAfter: 1_000, runAt: Date.now() + 1_000 },
      /"startAfter" and "runAt" cannot be combined/,
      TypeError,
    ],
    [
      'eager with startAfter',
      { eager: true, startAfter: 1_000 },
      /"eager" and "startAfter" cannot be combined/,
      TypeError,
    ],
    ['eager with runAt', { eager: true, runAt: Date.now() }, /"eager" and "runAt" cannot be combined/, TypeError],
  ];

  it.each(bad)(
    '%s is refused at the call, naming the option (with, task, defaults)',
    (_label, options, message, Kind) => {
      const manager = createManager();
      expect(() => manager.with(options)).toThrow(Kind);
      expect(() => manager.with(options)).toThrow(message);
      expect(() => manager.task(function registered() {}, options)).toThrow(message);
      expect(() => createManager({ defaults: options })).toThrow(message);
    },
  );

  it('a level that sets one of them replaces the other from a lower level; eager on another level is refused when the task is added', async () => {
    const manager = createManager();
    const job = manager.task(function job() {}, { startAfter: 60_000 });
    const id = manager.with({ runAt: 0 }).add(job);
    await manager.drain();
    expect(await manager.get(id)).toMatchObject({ status: 'success' });
    expect(() => manager.with({ eager: true }).add(job)).toThrow(/"eager" and "startAfter" cannot be combined/);
  });

  it('through ctx.tasks.with() the error reaches the request (500), and nothing is added', async () => {
    const errors: unknown[] = [];
    const { url, manager } = await startApp((app) => {
      app.on('error', (error) => errors.push(error));
      app.use(async (ctx) => {
        ctx.body = { id: ctx.tasks.with({ startAfter: -5 }).addTask(function never() {}) };
      });
    });
    expect((await fetch(url)).status).toBe(500);
    expect(String(errors[0])).toMatch(
      /ctx\.tasks\.with: option "startAfter" must be a number from 0 to 2147483647, got -5/,
    );
    expect(await manager.list()).toEqual([]);
  });
});

describe('a delayed task on SQLite across a restart', () => {
  it('SIGKILL while it waits: the next process runs it once, on time (never before its runAt)', async () => {
    const { db, log } = durableFiles('taskflow-delayed-');
    const env = { DB: db, TASK_LOG: log, MODE: 'fast', LEASE_MS: '600', ORPHAN_MS: '100', START_AFTER_MS: '2500' };
    const first = await startDurableApp(env);
    const ids = await Promise.all([0, 1, 2].map((n) => first.add(n)));
    first.child.process.kill('SIGKILL');
    await first.child.exited;
    const reader = openSqliteStore(db);
    const stored = await Promise.all(ids.map((id) => reader.get(id)));
    for (const record of stored)
      expect(record).toMatchObject({ status: 'pending', attempts: 0, runAt: record!.createdAt + 2_500 });
    expect(readTaskLog(log)).toEqual([]);

    const second = await startDurableApp(env);
    await waitFor(() => countBy(log, 'done').size === ids.length, 15_000, 'every delayed task to be done');
    second.child.process.kill('SIGTERM');
    await second.child.exited;
    const starts = readTaskLog(log).filter((entry) => entry.event === 'start');
    expect(starts.map((entry) => entry.id).sort()).toEqual([...ids].sort());
    for (const [i, id] of ids.entries()) {
      const start = starts.find((entry) => entry.id === id)!;
      expect(start.pid).toBe(String(second.child.process.pid));
      expect(start.at).toBeGreaterThanOrEqual(stored[i]!.runAt!);
    }
    expect((await Promise.all(ids.map((id) => reader.get(id)))).map((r) => r?.status)).toEqual([
      'success',
      'success',
      'success',
    ]);
  });
});
