// manager.repeat: one ordinary run per tick, once per tick across instances sharing a durable store.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Cron } from 'croner';
import { BasicTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { getTaskContext, taskLog, TaskManager, TaskManagerClosedError, type TaskStore } from 'koa-taskflow';
import { RedisStore } from 'koa-taskflow/redis';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { runShownExample, startNode } from './helpers/child.js';
import { durableFiles } from './helpers/durable-app.js';
import { untilReal } from './helpers/fake-clock.js';
import { tempDir } from './helpers/files.js';
import { inMemorySpans } from './helpers/otel.js';
import { startRedisServer } from './helpers/redis.js';
import { createManager, waitFor } from './helpers/server.js';

const iso = (time: number | Date) => new Date(time).toISOString();

describe('manager.repeat (fake clock)', () => {
  const exporter = inMemorySpans();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('every: one ordinary run per epoch-aligned tick (record, tags, retries, span, logs), getTaskContext().tickAt is the tick', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'], now: Date.parse('2026-01-01T00:00:00.250Z') });
    const manager = createManager({ tracerProvider: provider });
    const runs: { tickAt: string; attempt: number; at: string }[] = [];
    const report = manager.task(
      function report() {
        const { tickAt, attempt } = getTaskContext()!;
        runs.push({ tickAt: iso(tickAt!), attempt, at: iso(Date.now()) });
        taskLog('reported');
        if (attempt === 1 && runs.length === 1) throw new Error('first attempt of the first tick fails');
      },
      { retries: 1, delay: 100 },
    );
    manager.repeat(report, { every: 1_000 }, { tags: { team: 'ops' } });

    await vi.advanceTimersByTimeAsync(749);
    expect(runs).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    await untilReal(() => runs.length === 1, 'the first tick');
    await vi.advanceTimersByTimeAsync(100);
    await untilReal(() => runs.length === 2, 'the retry');
    await vi.advanceTimersByTimeAsync(1_900);
    await untilReal(() => runs.length === 4, 'two more ticks');
    expect(runs).toEqual([
      { tickAt: '2026-01-01T00:00:01.000Z', attempt: 1, at: '2026-01-01T00:00:01.000Z' },
      { tickAt: '2026-01-01T00:00:01.000Z', attempt: 2, at: '2026-01-01T00:00:01.100Z' },
      { tickAt: '2026-01-01T00:00:02.000Z', attempt: 1, at: '2026-01-01T00:00:02.000Z' },
      { tickAt: '2026-01-01T00:00:03.000Z', attempt: 1, at: '2026-01-01T00:00:03.000Z' },
    ]);
    await manager.drain();
    const records = await manager.list({ name: 'report' });
    expect(records).toHaveLength(3);
    for (const record of records) {
      expect(record).toMatchObject({ status: 'success', tags: { team: 'ops', repeat: 'every 1000ms' } });
      expect(record.idempotencyKey).toMatch(/^repeat:report:2026-01-01T00:00:0[123]\.000Z$/);
      expect(record.logs.map((l) => l.message)).toContain('reported');
    }
    const spans = exporter.getFinishedSpans().filter((s) => s.attributes['task.name'] === 'report');
    expect(spans).toHaveLength(4);
    expect(spans[0].attributes['task.idempotency_key']).toBe('repeat:report:2026-01-01T00:00:01.000Z');
    expect(spans[0].attributes['task.tag.repeat']).toBe('every 1000ms');
  });

  it('cron with tz: ticks are what croner computes, across a daylight-saving gap; outside a repeat tickAt is undefined', async () => {
    const start = Date.parse('2026-03-27T12:00:00Z');
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'], now: start });
    const manager = createManager();
    const ticks: string[] = [];
    let plain: unknown = 'not run';
    const nightly = manager.task(function nightly() {
      ticks.push(iso(getTaskContext()!.tickAt!));
    });
    manager.repeat(nightly, { cron: '30 2 * * *', tz: 'Europe/Paris' });
    manager.add(() => (plain = getTaskContext()!.tickAt));

    await vi.advanceTimersByTimeAsync(3 * 24 * 60 * 60 * 1_000);
    await untilReal(() => ticks.length === 3, 'three nightly ticks');
    const croner = new Cron('30 2 * * *', { timezone: 'Europe/Paris', paused: true });
    expect(ticks).toEqual(croner.nextRuns(3, new Date(start)).map(iso));
    // croner's choice for 02:30 on the night Paris skips from 02:00 to 03:00: 03:00 CEST (01:00Z).
    expect(ticks).toEqual(['2026-03-28T01:30:00.000Z', '2026-03-29T01:00:00.000Z', '2026-03-30T00:30:00.000Z']);
    expect(plain).toBeUndefined();
  });

  it('a tick comes once however long the wait: a yearly cron waits in steps no longer than a Node timer keeps', async () => {
    const start = Date.parse('2026-01-02T00:00:00Z');
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'], now: start });
    const manager = createManager();
    const ticks: string[] = [];
    manager.repeat(
      manager.task(function yearly() {
        ticks.push(iso(getTaskContext()!.tickAt!));
      }),
      { cron: '0 0 1 1 *', tz: 'UTC' },
    );
    // Node turns a wait above 2^31 - 1 ms (24.8 days) into 1 ms: without the steps this would run at once.
    await vi.advanceTimersByTimeAsync(300 * 24 * 60 * 60 * 1_000);
    await new Promise((resolve) => setImmediate(resolve));
    expect(ticks).toEqual([]);
    await vi.advanceTimersByTimeAsync(65 * 24 * 60 * 60 * 1_000);
    await untilReal(() => ticks.length === 1, 'the new year');
    expect(ticks).toEqual(['2027-01-01T00:00:00.000Z']);
  });

  it('stop() ends future ticks and not the running one; a blocked loop runs the latest missed tick once; shutdown stops every repeat', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'], now: Date.parse('2026-01-01T00:00:00Z') });
    const manager = new TaskManager();
    const started: string[] = [];
    const ended: string[] = [];
    let release: () => void = () => {};
    const slow = manager.task(async function slow() {
      started.push(iso(getTaskContext()!.tickAt!));
      await new Promise<void>((resolve) => (release = resolve));
      ended.push(iso(getTaskContext()!.tickAt!));
    });
    const often: string[] = [];
    manager.repeat(
      manager.task(function fast() {
        often.push(iso(getTaskContext()!.tickAt!));
      }),
      { every: 100 },
    );
    const repeat = manager.repeat(slow, { every: 1_000 });

    await vi.advanceTimersByTimeAsync(1_000);
    await untilReal(() => started.length === 1, 'the first slow tick');
    repeat.stop();
    repeat.stop();
    release();
    await untilReal(() => ended.length === 1, 'the running tick to end');
    await vi.advanceTimersByTimeAsync(3_000);
    expect(started).toEqual(['2026-01-01T00:00:01.000Z']);

    // The clock moves 1.05 s past the due tick before its timer fires (a blocked event loop): one run, for
    // the latest tick, not one per missed tick.
    often.length = 0;
    vi.setSystemTime(Date.now() + 1_050);
    await vi.advanceTimersByTimeAsync(100);
    await untilReal(() => often.length === 1, 'the late tick');
    expect(often).toEqual(['2026-01-01T00:00:05.100Z']);

    await manager.shutdown({ timeoutMs: 100 });
    await vi.advanceTimersByTimeAsync(1_000);
    expect(often).toEqual(['2026-01-01T00:00:05.100Z']);
    expect(() => manager.repeat(slow, { every: 1_000 })).toThrow(TaskManagerClosedError);
  });
});

describe('manager.repeat validation', () => {
  const manager = new TaskManager();
  const job = manager.task(function job() {});

  it.each([
    [{}, TypeError, /exactly one of options "every" \(ms\) and "cron"/],
    [{ every: 1_000, cron: '* * * * *' }, TypeError, /exactly one of options "every" \(ms\) and "cron"/],
    [{ every: 0 }, RangeError, /option "every" must be an integer from 1 to 2147483647/],
    [{ every: 1.5 }, RangeError, /option "every" must be an integer/],
    [{ every: 2 ** 31 }, RangeError, /option "every" .*for longer periods use "cron"/],
    [{ every: '1000' }, TypeError, /option "every" must be an integer/],
    [{ every: Infinity }, RangeError, /option "every"/],
    [{ every: 1_000, tz: 'UTC' }, TypeError, /option "tz" applies to "cron" only/],
    [{ cron: '' }, TypeError, /option "cron" must be a cron pattern string/],
    [{ cron: 5 }, TypeError, /option "cron" must be a cron pattern string/],
    [{ cron: 'every minute' }, RangeError, /option "cron" must be a cron pattern croner accepts/],
    [{ cron: '61 * * * *' }, RangeError, /option "cron" must be a cron pattern croner accepts.*minute/],
    [{ cron: '0 0 31 2 *' }, RangeError, /option "cron" must be a cron pattern that matches a time to come/],
    [{ cron: '* * * * *', tz: 'Mars/Olympus_Mons' }, RangeError, /option "tz" must be an IANA time zone name/],
    [{ cron: '* * * * *', tz: 3 }, TypeError, /option "tz" must be an IANA time zone name/],
    [{ every: 1_000, at: 'noon' }, TypeError, /unknown option "at"; known options are every, cron, tz/],
  ])('schedule %j is refused at the call', (schedule, Kind, message) => {
    const call = () => manager.repeat(job, schedule as never);
    expect(call).toThrow(Kind);
    expect(call).toThrow(message);
  });

  it.each([
    [{ idempotencyKey: 'mine' }, /option "idempotencyKey" cannot be passed/],
    [{ startAfter: 10 }, /option "startAfter" cannot be passed/],
    [{ runAt: Date.now() }, /option "runAt" cannot be passed/],
    [{ eager: true }, /option "eager" cannot be passed/],
    [{ tags: { repeat: 'x' } }, /option "tags.repeat" is set by the repeat/],
    [{ retries: -1 }, /options: option "retries" must be an integer >= 0/],
    [{ colour: 'red' }, /unknown option "colour"/],
  ])('task options %j are refused at the call', (options, message) => {
    expect(() => manager.repeat(job, { every: 1_000 }, options as never)).toThrow(message);
  });

  it('the task must be a function; with a durable store, a registered one (ticks are persisted)', () => {
    expect(() => manager.repeat('job' as never, { every: 1_000 })).toThrow(/argument "task" must be a function/);
    const durable = createManager({ store: new SqliteStore({ path: ':memory:' }) });
    expect(() => durable.repeat(function loose() {}, { every: 1_000 })).toThrow(
      /manager\.repeat: option "persist" .* "loose" is not registered/,
    );
    expect(() => durable.repeat(() => {}, { every: 1_000 }, { persist: false })).not.toThrow();
  });
});

/**
 * `count` managers on stores from `open`, each repeating `job` every `every` ms (from `begin()`, at once unless
 * `later`); each run notes its tick.
 */
function instances(count: number, open: () => TaskStore, every: number, later = false) {
  const runs: string[] = [];
  const managers = Array.from({ length: count }, () => {
    const manager = createManager({ store: open() });
    const job = manager.task(function job() {
      runs.push(iso(getTaskContext()!.tickAt!));
    });
    return { manager, job };
  });
  const begin = () => {
    for (const { manager, job } of managers) manager.repeat(job, { every });
  };
  if (!later) begin();
  return { runs, begin, managers: managers.map((m) => m.manager) };
}

/** Every tick from the first to the last seen ran exactly once (no tick twice, none skipped). */
function expectOncePerTick(runs: string[], every: number, atLeast: number): void {
  const times = runs.map((t) => Date.parse(t)).sort((a, b) => a - b);
  expect(times.length).toBeGreaterThanOrEqual(atLeast);
  const expected = Array.from({ length: (times.at(-1)! - times[0]) / every + 1 }, (_, i) => iso(times[0] + i * every));
  expect(times.map(iso)).toEqual(expected);
}

describe('manager.repeat across instances sharing a durable store', () => {
  const every = 250;

  it.each([2, 3])('%i instances on one SQLite file: exactly one run per tick', async (count) => {
    const { db } = durableFiles('taskflow-repeat-');
    const { runs, managers } = instances(count, () => new SqliteStore({ path: db }), every);
    await Promise.all(managers.map((m) => m.start()));
    await waitFor(() => runs.length >= 6, 10_000, 'six ticks');
    for (const manager of managers) await manager.shutdown({ timeoutMs: 1_000 });
    expectOncePerTick(runs, every, 6);
  });

  it.each([2, 3])('%i instances on one Redis: exactly one run per tick', async (count) => {
    const redis = await startRedisServer();
    const { runs, managers } = instances(count, () => new RedisStore({ url: redis.url }, { prefix: 'rep' }), every);
    await Promise.all(managers.map((m) => m.start()));
    await waitFor(() => runs.length >= 6, 10_000, 'six ticks');
    for (const manager of managers) await manager.shutdown({ timeoutMs: 1_000 });
    expectOncePerTick(runs, every, 6);
  });

  it('a tick handed back at shutdown runs on the instance that takes it over, still knowing its tick', async () => {
    const { db } = durableFiles('taskflow-repeat-');
    const seen: { tickAt: string; attempt: number }[] = [];
    const first = createManager({ store: new SqliteStore({ path: db }) });
    const job = first.task(async function job() {
      const { tickAt, attempt, signal } = getTaskContext()!;
      seen.push({ tickAt: iso(tickAt!), attempt });
      if (attempt === 1) await new Promise((resolve) => signal.addEventListener('abort', resolve));
    });
    first.repeat(job, { every: 300 });
    await waitFor(() => seen.length === 1, 5_000, 'the first tick');
    await first.shutdown({ timeoutMs: 0 });

    const second = createManager({ store: new SqliteStore({ path: db }), requeuePending: true });
    second.task(job);
    await second.start();
    await waitFor(() => seen.length === 2, 5_000, 'the handed-back tick');
    expect(seen[1]).toEqual({ tickAt: seen[0].tickAt, attempt: 2 });
  });

  it('ticks missed while every instance was down run once at start, from one of the instances starting; a first start catches up nothing', async () => {
    const { db } = durableFiles('taskflow-repeat-');
    const period = 400;
    const first = instances(1, () => new SqliteStore({ path: db }), period);
    const firstStart = Date.now();
    await waitFor(() => first.runs.length === 1, 5_000, 'the first tick');
    await first.managers[0].shutdown();
    // A first start has no earlier tick to catch up: its first run is a tick after it started.
    expect(Date.parse(first.runs[0])).toBeGreaterThan(firstStart);

    // Down for at least three ticks; the repeats start early in a period, so that no tick passes meanwhile.
    const later = instances(3, () => new SqliteStore({ path: db }), period, true);
    const downUntil = Date.parse(first.runs[0]) + 3 * period + 1;
    await waitFor(
      () => Date.now() > downUntil && Date.now() % period > 20 && Date.now() % period < 200,
      5_000,
      'three missed ticks',
    );
    const restart = Date.now();
    later.begin();
    const missed = iso(Math.floor(restart / period) * period);
    // A busy machine may take seconds to start a SQLite reader thread for the first list().
    await waitFor(() => later.runs.includes(missed), 15_000, 'the catch-up run');
    // Past the next tick: from then on a catch-up has nothing left to do.
    await waitFor(() => later.runs.some((t) => Date.parse(t) > restart), 15_000, 'the next tick');
    for (const manager of later.managers) await manager.shutdown({ timeoutMs: 1_000 });
    expect(later.runs.filter((t) => Date.parse(t) <= restart)).toEqual([missed]);
    expectOncePerTick(later.runs, period, 2);
  });
});

describe('manager.repeat timers', () => {
  it('do not keep the process alive', async () => {
    const dir = tempDir('taskflow-repeat-');
    const script = join(dir, 'repeat-exit.mjs');
    const dist = pathToFileURL(join(process.cwd(), 'dist/index.js')).href;
    writeFileSync(
      script,
      `import { TaskManager } from ${JSON.stringify(dist)};
const manager = new TaskManager();
manager.repeat(manager.task(function hourly() {}), { every: 3_600_000 });
manager.repeat(manager.task(function daily() {}), { cron: '0 3 * * *', tz: 'Europe/Paris' });
console.log('armed');
`,
    );
    const child = startNode(script);
    await child.waitForLine(/^armed$/);
    expect(await child.exited).toBe(0);
  });
});

describe('examples/repeat.js', () => {
  it("is exactly the snippet of docs/api.md's Repeating tasks, and its two instances run each tick once", async () => {
    const lines = await runShownExample('docs/api.md', 'examples/repeat.js', {
      TASKS_DB: join(tempDir('taskflow-repeat-'), 'tasks.db'),
    });
    const ticks = lines.map((line) => /^tick (\S+) ran on [ab]$/.exec(line)?.[1]);
    expect(ticks).not.toContain(undefined);
    expectOncePerTick(ticks as string[], 200, 3);
  });
});
