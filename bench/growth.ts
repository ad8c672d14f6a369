// The growth benchmark (issue 16): what a week of history costs. For SqliteStore and RedisStore (a
// redis-server started here), at each history size: the store is filled with finished records through its
// public save(), then measured:
//   - CPU per durable task (a TaskManager on that store adds and finishes tasks in process);
//   - latency of the admin reads: list({ limit: 50 }), list by one tag, the dead letters (failed), metrics();
//   - the event loop's largest delay while those reads run (monitorEventLoopDelay, 1 ms resolution): on
//     SQLite a read done on the app's thread would stall every request of the app.
// Part of `npm run bench`; alone: `npm run bench:growth` (`node --expose-gc bench/run.ts --only growth --quick`:
// 0 and 2 000 records).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { TaskManager, type TaskRecord, type TaskStore } from 'koa-taskflow';
import { RedisStore } from 'koa-taskflow/redis';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { fmt, median, startRedis } from './lib.ts';
import { GROWTH_READS, type GrowthResults, type GrowthRow, type ReadTiming } from './results.ts';

export interface GrowthOptions {
  /** History sizes, in finished records. */
  sizes: number[];
  stores: ('sqlite' | 'redis')[];
  /** Tasks added and finished per round (CPU_ROUNDS rounds) to measure CPU per task. */
  tasks: number;
  /** How many times each read runs (the median is kept). */
  readRepeats: number;
  log?: (line: string) => void;
}

export const GROWTH_DEFAULT: GrowthOptions = {
  sizes: [0, 100_000],
  stores: ['sqlite', 'redis'],
  tasks: 2_000,
  readRepeats: 5,
};
export const GROWTH_FULL: GrowthOptions = {
  sizes: [0, 200_000, 1_000_000],
  stores: ['sqlite', 'redis'],
  tasks: 2_000,
  readRepeats: 5,
};
export const GROWTH_QUICK: GrowthOptions = {
  sizes: [0, 2_000],
  stores: ['sqlite', 'redis'],
  tasks: 200,
  readRepeats: 3,
};

const NAMES = ['sendWelcome', 'chargeCard', 'syncInvoices', 'resizeImage', 'nightlyReport'];
const DAY = 86_400_000;
/** Records per save() call (one transaction on SQLite, one Lua script call on Redis). */
const FILL_BATCH = 1_000;
const CPU_ROUNDS = 5;

/** `count` finished records spread over the last 6 days: 90 % success, 8 % failed, 2 % cancelled; 50 tenants. */
function* history(count: number): Generator<TaskRecord> {
  const now = Date.now();
  for (let i = 0; i < count; i++) {
    const createdAt = now - 6 * DAY + Math.floor((i / Math.max(count, 1)) * 6 * DAY);
    const roll = i % 50;
    const status = roll < 45 ? 'success' : roll < 49 ? 'failed' : 'cancelled';
    const durationMs = 5 + ((i * 7919) % 500);
    yield {
      id: `0000${i.toString(16).padStart(8, '0')}-0000-4000-8000-000000000000`.slice(-36),
      name: NAMES[i % NAMES.length],
      status,
      args: [i],
      tags: { tenant: `t${i % 50}` },
      attempts: status === 'failed' ? 2 : 1,
      maxAttempts: 2,
      createdAt,
      startedAt: createdAt + 1,
      endedAt: createdAt + 1 + durationMs,
      durationMs,
      error: status === 'failed' ? { type: 'Error', message: 'billing API answered 503' } : undefined,
      reason: status === 'cancelled' ? 'request_failed' : undefined,
      logs: [],
    };
  }
}

function* batches(records: Iterable<TaskRecord>, size: number): Generator<TaskRecord[]> {
  let batch: TaskRecord[] = [];
  for (const record of records) {
    batch.push(record);
    if (batch.length === size) {
      yield batch;
      batch = [];
    }
  }
  if (batch.length > 0) yield batch;
}

/**
 * Fill a store with `count` finished records; the time it took (ms). The store is started by a manager first,
 * as an app's would have been before its history grew (a RedisStore never started would count its whole history
 * again at the next start). One writer: concurrent save() calls on one store are merged into one batch by its
 * group commit, and a second store writing at once gained nothing here.
 */
async function fill(store: TaskStore, count: number): Promise<number> {
  const manager = new TaskManager({ store });
  await manager.start();
  const started = performance.now();
  for (const batch of batches(history(count), FILL_BATCH)) await store.save(batch);
  const ms = performance.now() - started;
  await manager.shutdown();
  // The filler's garbage is not the app's: collect it before the reads (when run with --expose-gc).
  globalThis.gc?.();
  return ms;
}

/**
 * CPU µs per durable task: a manager on the store adds and finishes `tasks` tasks, CPU_ROUNDS times after a
 * warm-up round; the median round. (One short round read anywhere from 35 to 75 µs on a busy machine.)
 */
async function cpuPerTask(store: TaskStore, tasks: number): Promise<number> {
  const manager = new TaskManager({ store, concurrency: 16 });
  const noop = manager.task(function growthBenchTask(n: number) {
    return Promise.resolve(n);
  });
  await manager.start();
  // process.cpuUsage() counts every thread: a store's own (SqliteStore's worker) starts before the count.
  await manager.metrics();
  const rounds: number[] = [];
  for (let round = 0; round <= CPU_ROUNDS; round++) {
    const before = process.cpuUsage();
    for (let i = 0; i < tasks; i++) manager.add(noop, i);
    await manager.drain();
    const used = process.cpuUsage(before);
    if (round > 0) rounds.push((used.user + used.system) / tasks);
  }
  await manager.shutdown();
  return median(rounds);
}

/** Median latency (ms) of `read` over `repeats` runs, and the event loop's largest delay (ms) while they ran. */
async function timeRead(read: () => Promise<unknown>, repeats: number): Promise<ReadTiming> {
  const delay = monitorEventLoopDelay({ resolution: 1 });
  delay.enable();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const started = performance.now();
    await read();
    times.push(performance.now() - started);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  delay.disable();
  return { ms: median(times), maxLoopDelayMs: delay.max / 1e6 };
}

async function measure(
  storeName: string,
  size: number,
  makeStore: () => TaskStore,
  options: GrowthOptions,
): Promise<GrowthRow> {
  const fillMs = await fill(makeStore(), size);
  // Read as the admin API and the dashboard read: through the manager.
  const manager = new TaskManager({ store: makeStore() });
  await manager.start();
  const reads = {
    list: () => manager.list({ limit: 50 }),
    listByTag: () => manager.list({ tags: { tenant: 't7' }, limit: 50 }),
    deadLetters: () => manager.list({ status: 'failed', limit: 50 }),
    metrics: () => manager.metrics(),
  };
  const timings = {} as GrowthRow['reads'];
  // One read of each first, untimed: the first one after start() pays for compiling and for the store's
  // worker thread starting; a dashboard left open reads a warm store.
  for (const read of GROWTH_READS) await reads[read]();
  for (const read of GROWTH_READS) timings[read] = await timeRead(reads[read], options.readRepeats);
  // The same pattern with no read: what the machine alone does to the event loop meanwhile (a calibration).
  const idle = await timeRead(() => Promise.resolve(), options.readRepeats);
  await manager.shutdown();
  const cpuPerTaskUs = await cpuPerTask(makeStore(), options.tasks);
  options.log?.(
    `${storeName} ${size}: fill ${fmt(fillMs / 1000)} s, ${fmt(cpuPerTaskUs)} µs CPU/task; ` +
      GROWTH_READS.map((k) => `${k} ${fmt(timings[k].ms)} ms (loop ${fmt(timings[k].maxLoopDelayMs)} ms)`).join(', ') +
      `; no read (loop ${fmt(idle.maxLoopDelayMs)} ms)`,
  );
  return { store: storeName, size, fillMs, cpuPerTaskUs, reads: timings, idleLoopDelayMs: idle.maxLoopDelayMs };
}

/** Every store at every size, each in a fresh database (a fresh redis-server for Redis). */
export async function runGrowthBench(
  options: GrowthOptions,
): Promise<Omit<GrowthResults, 'started' | 'nodeVersion' | 'machine' | 'load'>> {
  const rows: GrowthRow[] = [];
  for (const size of options.sizes) {
    if (options.stores.includes('sqlite')) {
      const dir = mkdtempSync(join(tmpdir(), 'bench-growth-'));
      try {
        rows.push(await measure('sqlite', size, () => new SqliteStore({ path: join(dir, 'tasks.db') }), options));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
    if (options.stores.includes('redis')) {
      const redis = await startRedis();
      if (!redis) {
        options.log?.('redis-server not found: the Redis rows are skipped');
        continue;
      }
      try {
        rows.push(await measure('redis', size, () => new RedisStore({ url: redis.url }), options));
      } finally {
        await redis.stop();
      }
    }
  }
  return { config: { tasks: options.tasks, readRepeats: options.readRepeats }, rows };
}
