import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MemoryStore, type TaskFilter, type TaskRecord, type TaskStatus, type TaskStore } from 'koa-taskflow';
import { RedisStore } from 'koa-taskflow/redis';
import { openSqliteStore, taskRecord } from './helpers/durable-app.js';
import { tempDir } from './helpers/files.js';
import { startRedisServer } from './helpers/redis.js';
import { onCleanup } from './helpers/server.js';

const STATUSES: TaskStatus[] = ['success', 'failed', 'success', 'interrupted', 'cancelled', 'success', 'pending'];
const NAMES = ['mail', 'sms', 'push', 'mail', 'report'];

/** `count` records, three created in each millisecond (ties), with every name, status and tag mixed. */
function history(count: number, t0: number): TaskRecord[] {
  return Array.from({ length: count }, (_, i) =>
    taskRecord(randomUUID(), {
      name: NAMES[i % NAMES.length],
      status: STATUSES[i % STATUSES.length],
      tags: { tenant: ['a', 'b', 'c'][i % 3], plan: i % 4 === 0 ? 'pro' : 'free' },
      createdAt: t0 + Math.floor(i / 3),
    }),
  );
}

const SHAPES = (t0: number): TaskFilter[] => [
  {},
  { status: 'failed' },
  { status: ['failed', 'interrupted'] },
  { name: 'mail' },
  { name: 'mail', status: ['failed', 'interrupted'] },
  { tags: { tenant: 'a' } },
  { tags: { tenant: 'a', plan: 'pro' } },
  { tags: { tenant: 'b' }, status: 'failed', name: 'mail' },
  { tags: { plan: 'pro' }, status: ['success', 'cancelled'] },
  { status: 'success', since: t0 + 600 },
];

function matches(r: TaskRecord, f: TaskFilter): boolean {
  const statuses = f.status === undefined ? undefined : [f.status].flat();
  return (
    (statuses === undefined || statuses.includes(r.status)) &&
    (f.name === undefined || r.name === f.name) &&
    (f.since === undefined || r.createdAt >= Number(f.since)) &&
    Object.entries(f.tags ?? {}).every(([key, value]) => r.tags[key] === value)
  );
}

const stores: [string, () => TaskStore | Promise<TaskStore>][] = [
  ['MemoryStore', () => new MemoryStore({ maxRecords: 100_000 })],
  ['SqliteStore', () => openSqliteStore(join(tempDir(), 'tasks.db'))],
  [
    'RedisStore',
    async () => {
      const store = new RedisStore({ url: (await startRedisServer()).url }, { prefix: 'pages' });
      onCleanup(() => store.close());
      return store;
    },
  ],
];

describe.each(stores)('%s: list() pages with before', (_, open) => {
  it('pages through every filter shape with no duplicate and no gap while records are added between pages', async () => {
    const store = await open();
    const t0 = Date.now() - 3_600_000;
    const records = history(3_000, t0);
    for (let i = 0; i < records.length; i += 500) await store.save(records.slice(i, i + 500));
    let freshAt = Date.now();
    for (const filter of SHAPES(t0)) {
      const label = JSON.stringify(filter);
      const all = await store.list(filter);
      // Served from the indexes, the whole list is what the filter selects, newest first.
      expect(all.map((r) => r.id).sort(), label).toEqual(
        records
          .filter((r) => matches(r, filter))
          .map((r) => r.id)
          .sort(),
      );
      expect(
        all.every((r, i) => i === 0 || all[i - 1].createdAt >= r.createdAt),
        label,
      ).toBe(true);
      const paged: string[] = [];
      let before: TaskRecord | undefined;
      for (;;) {
        const page = await store.list({ ...filter, limit: 97, before });
        paged.push(...page.map((r) => r.id));
        if (page.length < 97) break;
        before = page[page.length - 1];
        // Newer records, some matching every filter: they sort before the cursor and never shift a page.
        const fresh = history(7, (freshAt += 3));
        await store.save(fresh);
        records.push(...fresh);
      }
      expect(paged, label).toEqual(all.map((r) => r.id));
    }
  });

  it('a page after a record no longer held continues with those created before it', async () => {
    const store = await open();
    const t0 = Date.now() - 3_600_000;
    const records = history(30, t0);
    await store.save(records);
    // An id below every other: on Redis, where ties sort by id, none of its millisecond comes after it either.
    const gone = { createdAt: t0 + 5, id: '00000000-0000-4000-8000-000000000000' };
    const page = await store.list({ before: gone });
    expect(page.map((r) => r.id).sort()).toEqual(
      records
        .filter((r) => r.createdAt < gone.createdAt)
        .map((r) => r.id)
        .sort(),
    );
    expect(page.every((r, i) => i === 0 || page[i - 1].createdAt >= r.createdAt)).toBe(true);
    expect(page).toHaveLength(15);
  });

  it('refuses a before that is not a record, naming the option', async () => {
    const store = await open();
    for (const before of [null, 'cursor', { createdAt: 'x', id: 'a' }, { createdAt: 1 }])
      await expect(store.list({ before } as unknown as TaskFilter)).rejects.toThrow(/"before" must be a record/);
  });
});

/** How many times Redis ran each command so far (INFO commandstats). */
async function commandCalls(store: RedisStore): Promise<Record<string, number>> {
  const calls: Record<string, number> = {};
  for (const [, command, count] of (await store.client.info('commandstats')).matchAll(/cmdstat_(\w+):calls=(\d+)/g))
    calls[command] = Number(count);
  return calls;
}

async function readsOf(
  store: RedisStore,
  filter: TaskFilter,
): Promise<{ records: TaskRecord[]; hget: number; zscore: number }> {
  const before = await commandCalls(store);
  const records = await store.list(filter);
  const after = await commandCalls(store);
  const delta = (command: string) => (after[command] ?? 0) - (before[command] ?? 0);
  return { records, hget: delta('hget'), zscore: delta('zscore') };
}

describe('RedisStore: what a list() reads', () => {
  it('a page deep in the history and a combined filter read only the records they return, never the history', async () => {
    const store = new RedisStore({ url: (await startRedisServer()).url }, { prefix: 'reads' });
    onCleanup(() => store.close());
    const t0 = Date.now() - 3_600_000;
    const records = history(10_000, t0);
    for (let i = 0; i < records.length; i += 1_000) await store.save(records.slice(i, i + 1_000));
    // The 50 records after the 9 000th newest: 50 record reads, as for the first page.
    const deep = records[1_000];
    const page = await readsOf(store, { limit: 50, before: deep });
    // Redis's order: newest first, ties by id, the greater first.
    const newestFirst = (a: TaskRecord, b: TaskRecord) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : -1);
    expect(page.records.map((r) => r.id)).toEqual(
      records
        .filter((r) => r.createdAt < deep.createdAt || (r.createdAt === deep.createdAt && r.id < deep.id))
        .sort(newestFirst)
        .slice(0, 50)
        .map((r) => r.id),
    );
    expect(page.hget).toBe(50);
    // Tag, status and name: the smallest set (failed, a seventh of the history) is walked and checked
    // against the two others; only the matches are read.
    const filter: TaskFilter = { tags: { tenant: 'b' }, status: 'failed', name: 'mail' };
    const combined = await readsOf(store, filter);
    const expected = records.filter((r) => matches(r, filter));
    expect(combined.records.map((r) => r.id).sort()).toEqual(expected.map((r) => r.id).sort());
    expect(combined.hget).toBe(expected.length);
    expect(combined.zscore).toBeLessThanOrEqual(2 * records.filter((r) => r.status === 'failed').length);
  });
});
