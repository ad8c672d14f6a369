// `npm run bench:growth`: what a week of history costs. For SqliteStore and RedisStore (a local redis-server),
// at each history size: the store is filled with finished records (through its public save()), then measured:
//   - CPU per durable task (a TaskManager on that store adds and finishes tasks in process);
//   - latency of the admin reads: list({ limit: 50 }), list by one tag, the dead letters (failed), metrics();
//   - the event loop's maximum delay while those reads run (monitorEventLoopDelay, 1 ms resolution): on
//     SQLite the reads are synchronous, so a slow read stalls every request of the app.
// SIZES=0,200000,1000000 (default 0,200000; --full adds 1000000) · STORES=sqlite,redis · TASKS=2000
// Results: bench/growth-results.json and bench/growth-results.md. Loopback only; bounded by the sizes.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { TaskManager } from 'koa-taskflow';
import { RedisStore } from 'koa-taskflow/redis';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { fmt, median, startRedis } from './lib.js';

const here = (file) => new URL(file, import.meta.url).pathname;
const full = process.argv.includes('--full');
const SIZES = (process.env.SIZES ?? (full ? '0,200000,1000000' : '0,200000')).split(',').map(Number);
const STORES = (process.env.STORES ?? 'sqlite,redis').split(',');
const TASKS = Number(process.env.TASKS ?? 2000);
const NAMES = ['sendWelcome', 'chargeCard', 'syncInvoices', 'resizeImage', 'nightlyReport'];
const DAY = 86_400_000;

/** `count` finished records spread over the last 6 days: 90 % success, 8 % failed, 2 % cancelled; 50 tenants. */
function* history(count) {
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

async function fill(store, count) {
  const started = performance.now();
  let batch = [];
  for (const record of history(count)) {
    batch.push(record);
    if (batch.length === 5_000) {
      await store.save(batch);
      batch = [];
    }
  }
  if (batch.length > 0) await store.save(batch);
  return performance.now() - started;
}

/** CPU µs per durable task: TASKS tasks added and finished by a manager on the store (after a warm-up). */
async function cpuPerTask(makeStore) {
  const store = makeStore();
  const manager = new TaskManager({ store, concurrency: 16 });
  const noop = manager.task(async function growthBenchTask(n) {
    return n;
  });
  await manager.start();
  for (let i = 0; i < 200; i++) manager.add(noop, i);
  await manager.drain();
  // process.cpuUsage() counts every thread: a store's own (SqliteStore's worker) starts before the count.
  await manager.metrics();
  const before = process.cpuUsage();
  for (let i = 0; i < TASKS; i++) manager.add(noop, i);
  await manager.drain();
  const used = process.cpuUsage(before);
  await manager.shutdown();
  return (used.user + used.system) / TASKS;
}

/** Median latency (ms) of `read` over 5 runs, and the event loop's largest delay (ms) while they ran. */
async function timeRead(read) {
  const delay = monitorEventLoopDelay({ resolution: 1 });
  delay.enable();
  const times = [];
  for (let i = 0; i < 5; i++) {
    const started = performance.now();
    await read();
    times.push(performance.now() - started);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  delay.disable();
  return { ms: median(times), maxLoopDelayMs: delay.max / 1e6 };
}

async function measure(storeName, size, makeStore) {
  const store = makeStore();
  const fillMs = await fill(store, size);
  // Read as the admin API and the dashboard read: through the manager.
  const manager = new TaskManager({ store });
  const reads = {
    list: await timeRead(() => manager.list({ limit: 50 })),
    listByTag: await timeRead(() => manager.list({ tags: { tenant: 't7' }, limit: 50 })),
    deadLetters: await timeRead(() => manager.list({ status: 'failed', limit: 50 })),
    metrics: await timeRead(() => manager.metrics()),
  };
  await manager.shutdown();
  const cpuUs = await cpuPerTask(makeStore);
  const row = { store: storeName, size, fillMs, cpuPerTaskUs: cpuUs, reads };
  console.log(
    `${storeName} ${size}: fill ${fmt(fillMs / 1000)} s, ${fmt(cpuUs)} µs CPU/task; ` +
      Object.entries(reads)
        .map(([k, v]) => `${k} ${fmt(v.ms)} ms (loop ${fmt(v.maxLoopDelayMs)} ms)`)
        .join(', '),
  );
  return row;
}

const rows = [];
const redis = STORES.includes('redis') ? await startRedis() : undefined;
if (STORES.includes('redis') && !redis) console.log('redis-server not found: the Redis rows are skipped');
try {
  for (const size of SIZES) {
    if (STORES.includes('sqlite')) {
      const dir = mkdtempSync(join(tmpdir(), 'bench-growth-'));
      try {
        rows.push(await measure('sqlite', size, () => new SqliteStore({ path: join(dir, 'tasks.db') })));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
    if (redis) {
      const prefix = `growth${size}`;
      rows.push(
        await measure('redis', size, () => new RedisStore({ url: `redis://127.0.0.1:${redis.port}` }, { prefix })),
      );
    }
  }
} finally {
  await redis?.stop();
}

const empty = new Map(rows.filter((r) => r.size === 0).map((r) => [r.store, r.cpuPerTaskUs]));
const targets = '≤ 20 ms reads and loop delay, CPU/task ≤ 1.2 × the empty store (issue 16, at 1 000 000 records)';
const cell = (read) => `${fmt(read.ms)} (${fmt(read.maxLoopDelayMs)})`;
const md = [
  '# History growth (npm run bench:growth)',
  '',
  `Node ${process.version}, ${new Date().toISOString()}. Each read: median of 5 ms, and in brackets the event loop's largest delay during them (ms). Targets: ${targets}.`,
  '',
  '| store | records | fill s | µs CPU/task | ÷ empty | list 50 | list by tag | dead letters | metrics() |',
  '|---|---|---|---|---|---|---|---|---|',
  ...rows.map(
    (r) =>
      `| ${r.store} | ${r.size.toLocaleString('en')} | ${fmt(r.fillMs / 1000)} | ${fmt(r.cpuPerTaskUs)} | ${fmt(r.cpuPerTaskUs / empty.get(r.store), 2)} | ${cell(r.reads.list)} | ${cell(r.reads.listByTag)} | ${cell(r.reads.deadLetters)} | ${cell(r.reads.metrics)} |`,
  ),
  '',
].join('\n');
writeFileSync(here('./growth-results.json'), `${JSON.stringify({ nodeVersion: process.version, rows }, null, 1)}\n`);
writeFileSync(here('./growth-results.md'), md);
console.log(md);
