import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import type { TaskRecord } from 'koa-taskflow';
import { RedisStore } from 'koa-taskflow/redis';
import { computeMetrics } from '../src/metrics.js';
import { taskRecord as record } from './helpers/durable-app.js';
import { oldRecords, recountMetrics, runMixedOutcomes } from './helpers/recount.js';
import { startRedisServer, type RedisServer } from './helpers/redis.js';
import { createManager, onCleanup } from './helpers/server.js';

const DAY = 86_400_000;

function openStore(redis: RedisServer, options: ConstructorParameters<typeof RedisStore>[1] = {}): RedisStore {
  const store = new RedisStore({ url: redis.url }, { prefix: 'growth', ...options });
  onCleanup(() => store.close());
  return store;
}

function client(redis: RedisServer): Redis {
  const c = new Redis(redis.url);
  onCleanup(async () => {
    await c.quit();
  });
  return c;
}

/** metrics() as it must be: recounted from every record the store lists. */
async function recount(store: RedisStore) {
  return recountMetrics(await store.list());
}

/** Averages summed in a different order differ in their last bits. */
function rounded<T>(value: T): T {
  return JSON.parse(
    JSON.stringify(value, (_key, v: unknown) => (typeof v === 'number' ? Number(v.toPrecision(12)) : v)),
  ) as T;
}

async function expectCountsMatchRecords(store: RedisStore): Promise<number> {
  const expected = await recount(store);
  const metrics = await store.metrics();
  expect(rounded(metrics)).toEqual(rounded(expected));
  // The same as computed from the records themselves, but for the p95, estimated within its bucket.
  const strip = (m: typeof metrics) => ({
    ...m,
    p95DurationMs: null,
    byName: Object.fromEntries(Object.entries(m.byName).map(([n, v]) => [n, { ...v, p95DurationMs: null }])),
  });
  expect(rounded(strip(metrics))).toEqual(rounded(strip(computeMetrics(await store.list()))));
  return expected.total;
}

describe('RedisStore as the history grows', () => {
  it('keeps counts and duration histograms that match a recount of the records: two instances, retries, cancellations, rewrites, retention deletes', async () => {
    const redis = await startRedisServer();
    const stores = [openStore(redis, { retentionDays: 365 }), openStore(redis, { retentionDays: 365 })];
    const managers = stores.map((store) => createManager({ store }));
    // Two instances write to the same hashes at once.
    await Promise.all(managers.map((manager, i) => runMixedOutcomes(manager, i * 60, i * 60 + 60)));
    const [store] = stores;
    // Records written straight through save(): rewritten with other statuses and durations, cancelled, and old ones.
    const old = Date.now() - 30 * DAY;
    await store.save(oldRecords(old));
    await store.save([record('r', { name: 'rewritten', status: 'success', durationMs: 3, endedAt: Date.now() })]);
    await stores[1].save([
      record('r', { name: 'rewritten', status: 'success', durationMs: 7_000, endedAt: Date.now() }),
    ]);
    await store.save([record('q', { name: 'rewritten', status: 'running' })]);
    await stores[1].save([record('q', { name: 'rewritten', status: 'failed', endedAt: Date.now() })]);
    await store.save([record('c', { name: 'rewritten', status: 'cancelled', endedAt: Date.now() })]);
    const metrics = await store.metrics();
    expect(metrics.byStatus.failed).toBeGreaterThan(30);
    expect(metrics.byStatus.cancelled).toBe(1);
    expect(await expectCountsMatchRecords(store)).toBe(120 + 30 + 3);
    await Promise.all(managers.map((manager) => manager.shutdown()));

    // Retention deletes the old records; the counts follow them.
    const later = openStore(redis, { retentionDays: 7 });
    const manager = createManager({ store: later });
    await manager.start();
    expect(await later.list({ name: 'old' })).toEqual([]);
    expect((await later.metrics()).byName.old).toBeUndefined();
    expect(await expectCountsMatchRecords(later)).toBe(123);
  });

  it('counts once, in chunks, a history written before counts were kept, and keeps counting it as it changes', async () => {
    const redis = await startRedisServer();
    const store = openStore(redis);
    const now = Date.now();
    const statuses = ['success', 'failed', 'cancelled', 'interrupted', 'running'] as const;
    const records: TaskRecord[] = Array.from({ length: 1_300 }, (_, i) => {
      const status = statuses[i % statuses.length];
      return record(`h-${i}`, {
        name: `job-${i % 4}`,
        status,
        createdAt: now - i,
        endedAt: status === 'running' ? undefined : now,
        durationMs: status === 'success' ? (i % 40) * 37.5 : undefined,
      });
    });
    await store.save(records);
    await store.close();
    // As an older version left it: no counts, no record marked counted.
    const raw = client(redis);
    await raw.del('growth:counts', 'growth:counts:v');
    const pipeline = raw.pipeline();
    for (const r of records) pipeline.hdel(`growth:t:${r.id}`, 'c');
    await pipeline.exec();

    const upgraded = openStore(redis);
    // Another instance changes old records while they are being counted: each is counted once.
    const writer = openStore(redis);
    const writes = (async () => {
      for (let k = 1; k <= 20; k++) await writer.save([{ ...records[4 + 5 * k], status: 'failed', endedAt: now }]);
    })();
    const [counted] = await Promise.all([upgraded.metrics(), writes]);
    expect(counted.total).toBe(1_300);
    expect(await raw.get('growth:counts:v')).toBe('1');
    expect(await expectCountsMatchRecords(upgraded)).toBe(1_300);
    // An old record that changes moves its count; a second store finds the counts done and does not count again.
    await upgraded.save([{ ...records[4], status: 'success', endedAt: now, durationMs: 12 }]);
    const second = openStore(redis);
    expect((await second.metrics()).byStatus).toMatchObject({ success: 261, running: 239, failed: 280 });
    expect(await expectCountsMatchRecords(second)).toBe(1_300);
  });

  it('a history this version wrote from the first record is never walked: the first metrics() reads the counts', async () => {
    const redis = await startRedisServer();
    const store = openStore(redis);
    const now = Date.now();
    const records = Array.from({ length: 3_000 }, (_, i) =>
      record(`r${i}`, { name: `n${i % 3}`, status: 'success', createdAt: now - i, endedAt: now, durationMs: i % 40 }),
    );
    for (let i = 0; i < records.length; i += 1_000) await store.save(records.slice(i, i + 1_000));
    const zscans = async () =>
      Number(/cmdstat_zscan:calls=(\d+)/.exec(await store.client.info('commandstats'))?.[1] ?? 0);
    const before = await zscans();
    expect(await store.metrics()).toEqual(recountMetrics(records));
    expect(await zscans()).toBe(before);
  });
});
