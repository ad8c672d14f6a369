// isolate: 'thread': a registered task runs in a pool of worker threads (piscina) and behaves there as on the
// main thread: context, logs, progress, spans, abort, timeout, retries; a thread that dies fails one attempt.
import { fileURLToPath } from 'node:url';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { threadId } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { BasicTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { TaskTimeoutError, type TaskManagerOptions, type TaskOptions, type TaskRecord } from 'koa-taskflow';
import * as tasks from './fixtures/isolate-tasks.js';
import { startNode } from './helpers/child.js';
import { inMemorySpans } from './helpers/otel.js';
import { capturePino } from './helpers/pino.js';
import { createManager, startApp, waitFor, type Harness } from './helpers/server.js';

const MODULE = new URL('./fixtures/isolate-tasks.js', import.meta.url);
const exporter = inMemorySpans();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });

type TaskName = keyof typeof tasks;

/**
 * A real Koa app: `POST /run/<task>?args=<json>` adds that fixture task (registered `isolate: 'thread'` with
 * `options[task]`) after the response and answers its id; `&inline=1` adds it with `isolate: 'none'`.
 */
async function isolatedApp(
  options: TaskManagerOptions = {},
  taskOptions: Partial<Record<TaskName, TaskOptions>> = {},
): Promise<Harness> {
  const manager = createManager({ tracerProvider: provider, threads: { maxThreads: 1 }, ...options });
  const registered = new Map<string, (...args: unknown[]) => unknown>();
  for (const [name, fn] of Object.entries(tasks))
    registered.set(
      name,
      manager.task(fn as (...args: unknown[]) => unknown, {
        isolate: 'thread',
        module: MODULE,
        ...taskOptions[name as TaskName],
      }),
    );
  return startApp((app) => {
    app.use(async (ctx, next) => {
      const [, route, name] = ctx.path.split('/');
      if (route !== 'run') {
        await next();
        return;
      }
      const args = (ctx.query.args === undefined ? [] : JSON.parse(String(ctx.query.args))) as unknown[];
      const fn = registered.get(name);
      if (fn === undefined) {
        await next();
        return;
      }
      const scheduler = ctx.query.inline === '1' ? ctx.tasks.with({ isolate: 'none' }) : ctx.tasks;
      try {
        ctx.body = { id: scheduler.addTask(fn, ...args) };
      } catch (error) {
        ctx.status = 400;
        ctx.body = { error: (error as Error).message, type: (error as Error).name };
      }
    });
  }, manager);
}

async function post(harness: Harness, name: string, args: unknown[] = [], query = ''): Promise<string> {
  const response = await fetch(`${harness.url}/run/${name}?args=${encodeURIComponent(JSON.stringify(args))}${query}`, {
    method: 'POST',
  });
  expect(response.status).toBe(200);
  return ((await response.json()) as { id: string }).id;
}

async function finished(harness: Harness, id: string): Promise<TaskRecord> {
  let record: TaskRecord | undefined;
  await waitFor(
    async () => ['success', 'failed'].includes((record = await harness.manager.get(id))?.status ?? ''),
    15_000,
    `task ${id} to end`,
  );
  return record!;
}

describe("isolate: 'thread'", () => {
  it('runs the task off the main thread with its context; taskLog is a span event and a pino line with trace ids; progress arrives', async () => {
    const { logger, lines } = capturePino('info');
    const harness = await isolatedApp({ logger }, { whereAmI: { tags: { tenant: 'acme' }, retries: 2 } });
    const id = await post(harness, 'whereAmI', ['first']);
    const record = await finished(harness, id);
    expect(record.status).toBe('success');
    expect(record.progress).toBe(0.5);
    const [log] = record.logs;
    expect(log).toMatchObject({ level: 'warn', message: 'hello from a thread', attempt: 1 });
    expect(log.fields!.threadId).not.toBe(threadId);
    expect(log.fields!.seen).toEqual({
      id,
      name: 'whereAmI',
      attempt: 1,
      maxAttempts: 3,
      tags: { tenant: 'acme' },
      aborted: false,
      tickAt: null,
    });
    const [span] = exporter.getFinishedSpans().filter((s) => s.name === 'task whereAmI');
    const { traceId, spanId } = span.spanContext();
    // The thread's span is the attempt's (same ids), its events written on the real one by the main thread.
    expect(log.fields!.traceId).toBe(traceId);
    // (task.progress is throttled: it leaves when its window closes or the attempt ends, as on the main thread.)
    expect(span.events.map((e) => e.name)).toEqual(['task.log', 'thread.event', 'task.progress']);
    expect(span.events[0].attributes).toMatchObject({
      'log.message': 'hello from a thread',
      'log.level': 'warn',
      label: 'first',
    });
    expect(span.events[2].attributes).toMatchObject({ 'task.progress': 0.5, step: 'half' });
    expect(lines.find((l) => l.msg === 'hello from a thread')).toMatchObject({
      level: 40,
      label: 'first',
      trace_id: traceId,
      span_id: spanId,
      task: { id, name: 'whereAmI', attempt: 1 },
      tags: { tenant: 'acme' },
    });
  });

  it('spans the task makes in the thread (with an SDK registered there) are children of its attempt span', async () => {
    const harness = await isolatedApp();
    // The main thread's function only names the export: the body that runs is the thread's import of the module.
    const traced = harness.manager.task(async function tracedChild() {}, {
      isolate: 'thread',
      module: new URL('./fixtures/isolate-traced.js', import.meta.url),
    });
    const id = harness.manager.add(traced);
    const record = await finished(harness, id);
    expect(record.status).toBe('success');
    const attempt = exporter.getFinishedSpans().find((s) => s.name === 'task tracedChild')!;
    expect(record.logs[0].fields).toEqual({
      spanName: 'resize in thread',
      traceId: attempt.spanContext().traceId,
      parentSpanId: attempt.spanContext().spanId,
    });
  });

  it("a timeout aborts the thread's signal with a TaskTimeoutError, and the attempt fails with it", async () => {
    const harness = await isolatedApp({}, { waitForAbort: { timeout: 300 } });
    // A warm pool: the timeout is the task's, not the first thread's start.
    await finished(harness, await post(harness, 'spin', [1]));
    const id = await post(harness, 'waitForAbort');
    const record = await finished(harness, id);
    expect(record.error).toMatchObject({ type: 'TaskTimeoutError' });
    await waitFor(async () => (await harness.manager.get(id))!.logs.length > 1, 5_000, 'the log of the abort');
    expect((await harness.manager.get(id))!.logs[1]).toMatchObject({
      message: 'aborted in the thread',
      fields: { reason: 'TaskTimeoutError', code: new TaskTimeoutError(1).code },
    });
  });

  it("manager.cancel() of a running isolated task aborts the thread's signal with a TaskCancelledError", async () => {
    const harness = await isolatedApp();
    await finished(harness, await post(harness, 'spin', [1]));
    const id = await post(harness, 'waitForAbort');
    await waitFor(async () => (await harness.manager.get(id))!.logs.length > 0, 10_000, 'the task to run');
    expect(await harness.manager.cancel(id)).toBe(true);
    await waitFor(async () => (await harness.manager.get(id))!.logs.length > 1, 10_000, 'the log of the abort');
    const record = (await harness.manager.get(id))!;
    expect(record.status).toBe('cancelled');
    expect(record.logs[1]).toMatchObject({
      message: 'aborted in the thread',
      fields: { reason: 'TaskCancelledError' },
    });
  });

  it.each([
    { ended: 'timed out', task: 'spin' as const, args: [60_000] },
    { ended: 'cancelled', task: 'hang' as const, args: [] },
  ])(
    'a task that ignores its signal once $ended has its thread stopped a second later: the tasks behind it run',
    async ({ ended, task, args }) => {
      const harness = await isolatedApp({}, { [task]: ended === 'timed out' ? { timeout: 300 } : {} });
      await finished(harness, await post(harness, 'spin', [1]));
      const stuck = await post(harness, task, args);
      if (ended === 'cancelled') {
        await waitFor(async () => (await harness.manager.get(stuck))?.status === 'running', 10_000, 'it to run');
        expect(await harness.manager.cancel(stuck)).toBe(true);
      }
      // One thread: the next task gets it only once the stuck one's thread is stopped and replaced.
      const next = await finished(harness, await post(harness, 'whereAmI', ['behind']));
      expect(next.status).toBe('success');
      expect((await harness.manager.get(stuck))!.status).toBe(ended === 'timed out' ? 'failed' : 'cancelled');
    },
  );

  it('a throw in the thread fails the attempt (its error type kept) and the main thread retries it', async () => {
    const harness = await isolatedApp({}, { flaky: { retries: 1 } });
    const id = await post(harness, 'flaky');
    const record = await finished(harness, id);
    expect(record).toMatchObject({ status: 'success', attempts: 2 });
    expect(record.logs.map((l) => l.fields!.attempt)).toEqual([1, 2]);
    const spans = exporter.getFinishedSpans().filter((s) => s.name === 'task flaky');
    expect(spans.map((s) => s.attributes['error.type'])).toEqual(['RangeError', undefined]);
  });

  it('whatever the task throws reads in a thread as in process: record, span, pino line; onError gets a copy', async () => {
    const kinds = [
      'string',
      'number',
      'bigint',
      'null',
      'undefined',
      'object',
      'null-prototype object',
      'object with its own toString',
      'object whose toString throws',
      'function',
      'symbol',
      'Proxy whose traps throw',
      'Error with extra fields',
      'Error subclass',
      'Error whose message getter throws',
    ];
    const { logger, lines } = capturePino('info');
    const handed = new Map<string, unknown>();
    const onError = (error: unknown, record: TaskRecord): void => void handed.set(record.id, error);
    const harness = await isolatedApp({ logger }, { throwValue: { onError } });
    const ids = await Promise.all(
      kinds.map(async (kind) => ({
        kind,
        inProcess: await post(harness, 'throwValue', [kind], '&inline=1'),
        inThread: await post(harness, 'throwValue', [kind]),
      })),
    );
    /** What users see of a failed task: its record's error, its span's, its pino line's. */
    const seen = async (id: string) => {
      const record = await finished(harness, id);
      const { type, message, stack } = record.error!;
      const span = exporter.getFinishedSpans().find((s) => s.attributes['task.id'] === id)!;
      const exception = span.events.find((e) => e.name === 'exception')!.attributes!;
      const line = lines.find((l) => (l.task as { id?: string } | undefined)?.id === id && l.status === 'failed')!;
      return {
        status: record.status,
        error: { type, message, hasStack: stack !== undefined },
        span: {
          'error.type': span.attributes['error.type'],
          status: span.status.message,
          exception: [exception['exception.type'], exception['exception.message']],
        },
        pino: { type: (line.error as { type: string }).type, message: (line.error as { message: string }).message },
      };
    };
    for (const { kind, inProcess, inThread } of ids) {
      await finished(harness, inThread);
      const expected = await seen(inProcess);
      expect(expected.status, kind).toBe('failed');
      expect(await seen(inThread), kind).toEqual(expected);
    }
    // What can be copied reaches onError as itself (a primitive) or as its copy (a plain object).
    for (const { kind, inProcess, inThread } of ids.filter((k) =>
      ['string', 'number', 'bigint', 'object'].includes(k.kind),
    ))
      expect(handed.get(inThread), kind).toEqual(handed.get(inProcess));
  });

  it('an argument that cannot be cloned is refused at the addTask call, naming it; a result that cannot be is a failed attempt', async () => {
    const harness = await isolatedApp();
    const manager = harness.manager;
    const registered = manager.task(tasks.whereAmI, { isolate: 'thread', module: MODULE });
    const uncloneable = (() => 'label') as unknown as string;
    expect(() => manager.add(registered, uncloneable)).toThrow(
      /argument 1 of task "whereAmI" cannot be sent to a thread .*structured clone/,
    );
    // In process the same argument is fine: only isolated tasks are checked.
    expect(() => manager.with({ isolate: 'none' }).add(registered, uncloneable)).not.toThrow();
    const id = await post(harness, 'uncloneableResult');
    expect((await finished(harness, id)).error?.message).toMatch(/cannot be sent back from its thread/);
  });

  it('a thread that exits, runs out of memory or whose module throws at load fails only that attempt; the app goes on', async () => {
    const harness = await isolatedApp({ threads: { maxThreads: 1, resourceLimits: { maxOldGenerationSizeMb: 32 } } });
    const exited = await finished(harness, await post(harness, 'crash', ['exit']));
    expect(exited.error?.type).toBe('TaskflowError');
    expect(exited.error?.message).toMatch(/died .*exited with code: 3/);
    const oom = await finished(harness, await post(harness, 'crash', ['oom']));
    expect(oom.error?.message).toMatch(/died .*memory/i);
    const broken = harness.manager.task(function broken() {}, {
      isolate: 'thread',
      module: new URL('./fixtures/isolate-broken.js', import.meta.url),
    });
    const brokenId = harness.manager.add(broken);
    await harness.manager.drain();
    expect((await harness.manager.get(brokenId))?.error?.message).toBe('this module is broken at load');
    // The pool replaced the dead threads: the next task runs.
    expect((await finished(harness, await post(harness, 'flaky'))).attempts).toBe(1);
  });

  it('a thread that dies with attempts of two threads in flight fails only its own; the others get their own logs', async () => {
    const harness = await isolatedApp({ threads: { maxThreads: 2, minThreads: 2 } });
    // Five attempts share the pool's channels at once, their messages told apart by attempt alone.
    const ids = await Promise.all([
      post(harness, 'whereAmI', ['a']),
      post(harness, 'crash', ['exit']),
      post(harness, 'whereAmI', ['b']),
      post(harness, 'whereAmI', ['c']),
      post(harness, 'whereAmI', ['d']),
    ]);
    const records = await Promise.all(ids.map((id) => finished(harness, id)));
    expect(records[1].error?.message).toMatch(/died .*exited with code: 3/);
    for (const [i, label] of [
      [0, 'a'],
      [2, 'b'],
      [3, 'c'],
      [4, 'd'],
    ] as const) {
      expect(records[i].status).toBe('success');
      expect(records[i].logs).toHaveLength(1);
      expect(records[i].logs[0].fields).toMatchObject({ label, seen: { id: ids[i] } });
      expect(records[i].progress).toBe(0.5);
    }
  });

  it("every message an attempt sent reaches its record before its outcome, when two threads' answers cross", async () => {
    const harness = await isolatedApp({ threads: { maxThreads: 2, minThreads: 2 } });
    // Each logs and returns at once: one thread's answer is often read while the other's log is still on its way.
    const ids = await Promise.all(Array.from({ length: 40 }, () => post(harness, 'countRuns')));
    for (const id of ids) {
      const record = await finished(harness, id);
      expect(record.status).toBe('success');
      expect(record.logs.map((l) => l.message)).toEqual(['counted']);
    }
  });

  it('an attempt cancelled while it waits for a thread fails at once and never runs there; the thread goes on', async () => {
    const harness = await isolatedApp();
    await finished(harness, await post(harness, 'spin', [1]));
    const running = await post(harness, 'waitForAbort');
    await waitFor(async () => (await harness.manager.get(running))!.logs.length > 0, 10_000, 'the task to run');
    // maxThreads 1: this one is started by the manager and waits in the pool's queue.
    const queued = await post(harness, 'countRuns');
    await waitFor(async () => (await harness.manager.get(queued))?.status === 'running', 10_000, 'the second start');
    expect(await harness.manager.cancel(queued)).toBe(true);
    expect((await harness.manager.get(queued))!.status).toBe('cancelled');
    expect(await harness.manager.cancel(running)).toBe(true);
    const next = await finished(harness, await post(harness, 'countRuns'));
    expect(next.status).toBe('success');
    // The same thread ran the next one, and counts it as its first run of countRuns.
    expect(next.logs[0].fields).toMatchObject({ runs: 1 });
    expect((await harness.manager.get(queued))!.logs).toEqual([]);
  });

  it("two managers' pools in one process: an abort reaches only its own pool's attempt", async () => {
    const [a, b] = await Promise.all([isolatedApp(), isolatedApp({}, { waitForAbort: { timeout: 2_000 } })]);
    // The same steps in each pool: their attempts carry the same numbers there.
    for (const harness of [a, b]) await finished(harness, await post(harness, 'spin', [1]));
    const [inA, inB] = await Promise.all([post(a, 'waitForAbort'), post(b, 'waitForAbort')]);
    for (const [harness, id] of [
      [a, inA],
      [b, inB],
    ] as const)
      await waitFor(async () => (await harness.manager.get(id))!.logs.length > 0, 10_000, 'the task to run');
    expect(await a.manager.cancel(inA)).toBe(true);
    for (const [harness, id] of [
      [a, inA],
      [b, inB],
    ] as const)
      await waitFor(async () => (await harness.manager.get(id))!.logs.length > 1, 10_000, 'the log of the abort');
    expect((await a.manager.get(inA))!.logs[1].fields).toMatchObject({ reason: 'TaskCancelledError' });
    // b's attempt ran on until its own timeout.
    const inBRecord = (await b.manager.get(inB))!;
    expect(inBRecord.logs[1].fields).toMatchObject({ reason: 'TaskTimeoutError' });
    expect(inBRecord.error).toMatchObject({ type: 'TaskTimeoutError' });
  });

  it('a request is not delayed by a 50 ms CPU task in a thread; the same task in process blocks the event loop for 50 ms', async () => {
    const harness = await isolatedApp();
    // A first run starts the thread and loads the module: what is measured is a warm pool, as in an app.
    await finished(harness, await post(harness, 'spin', [1]));
    /** The event loop's longest delay (ms) while one task runs and 5 requests are served. */
    const maxDelayMs = async (query: string): Promise<number> => {
      const histogram = monitorEventLoopDelay({ resolution: 1 });
      histogram.enable();
      // The histogram's first tick only sets its baseline: a block before it would go unseen.
      await new Promise((resolve) => setTimeout(resolve, 20));
      const id = await post(harness, 'spin', [50], query);
      for (let i = 0; i < 5; i++) await fetch(`${harness.url}/`);
      await finished(harness, id);
      histogram.disable();
      return histogram.max / 1e6;
    };
    // Every in-process run blocks the loop for the task's 50 ms. Other load on the machine (2 shared cores) can
    // stall the loop for tens of ms in any run
    // too, so thread mode is measured until one run is clear of it (at most 8 runs).
    const inProcess: number[] = [];
    for (let run = 0; run < 3; run++) inProcess.push(await maxDelayMs('&inline=1'));
    for (const delay of inProcess) expect(delay).toBeGreaterThanOrEqual(50);
    const inThread: number[] = [];
    while (inThread.length < 8 && !inThread.some((delay) => delay < 45)) inThread.push(await maxDelayMs(''));
    expect(Math.min(...inThread)).toBeLessThan(45);
  });

  it("shutdown() stops the pool's threads: a process whose isolated task never ends exits after it", async () => {
    const child = startNode(fileURLToPath(new URL('./fixtures/isolate-shutdown.js', import.meta.url)));
    await child.waitForLine(/^running$/, 15_000);
    await child.waitForLine(/^shut down: interrupted$/, 15_000);
    await expect(child.exited).resolves.toBe(0);
  });

  it('bad use is a clear error at the call: no module, a relative module path, module per add, an unknown mode, piscina missing', async () => {
    const manager = createManager();
    expect(() => manager.task(function resize() {}, { isolate: 'thread' })).toThrow(
      /option "isolate: 'thread'" needs the module of task "resize"/,
    );
    const inline = manager.task(function resize() {});
    expect(() => manager.with({ isolate: 'thread' }).add(inline)).toThrow(/needs the module of task "resize"/);
    expect(() => manager.task(function resize2() {}, { module: './resize.js' })).toThrow(
      /option "module" must be a file URL or an absolute path/,
    );
    expect(() => manager.with({ module: MODULE })).toThrow(/option "module" is given to manager.task\(\) only/);
    expect(() => manager.task(function resize3() {}, { isolate: 'process' as 'thread' })).toThrow(
      /option "isolate" must be "none" or "thread", got "process"/,
    );
    expect(() => createManager({ threads: { nice: 20 } })).toThrow(
      /option "threads.nice" must be an integer from 0 to 19/,
    );
    expect(() => createManager({ threads: { maxThreads: 0 } })).toThrow(
      /option "threads.maxThreads" must be an integer >= 1/,
    );
    const child = startNode(fileURLToPath(new URL('./fixtures/isolate-no-piscina.js', import.meta.url)));
    const refused = JSON.parse(await child.waitForLine(/^\{/)) as { name: string; code: string; message: string };
    expect(refused).toMatchObject({ name: 'TaskflowError', code: 'ERR_PISCINA_NOT_INSTALLED' });
    expect(refused.message).toMatch(/the package "piscina" is not installed: npm install piscina/);
  });
});
