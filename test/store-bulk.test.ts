// Large writes: a bulk save or a burst of tasks is written in bounded batches (one SQLite transaction, one
// Lua call each), every caller's promise settles, and a batch whose write throws rejects all of its callers
// with the store's typed error. The conformance suite (koa-taskflow/testing, "large saves") checks the
// promise every store makes; this file checks how the built-in stores keep it.
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { getTaskContext, MemoryStore, TaskStoreUnavailableError, type TaskRecord, type TaskStore } from 'koa-taskflow';
import { RedisStore } from 'koa-taskflow/redis';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { MapStore } from './fixtures/map-store.js';
import { taskRecord } from './helpers/durable-app.js';
import { tempDir } from './helpers/files.js';
import { recountMetrics } from './helpers/recount.js';
import { startRedisServer } from './helpers/redis.js';
import { createManager, onCleanup } from './helpers/server.js';

const STORES: [string, () => Promise<TaskStore>][] = [
  ['MemoryStore', () => Promise.resolve(new MemoryStore({ maxRecords: 100_000 }))],
  ['SqliteStore', () => Promise.resolve(new SqliteStore({ path: join(tempDir(), 'tasks.db') }))],
  ['RedisStore', async () => new RedisStore({ url: (await startRedisServer()).url }, { prefix: 'bulk' })],
];

async function open(create: () => Promise<TaskStore>): Promise<TaskStore> {
  const store = await create();
  onCleanup(() => store.close());
  return store;
}

/** `count` finished records of task `name` (successes of 0–699 ms, one in ten failed), created a ms apart. */
function finished(count: number, name: string): TaskRecord[] {
  const since = Date.now() - 3_600_000;
  return Array.from({ length: count }, (_, i) =>
    taskRecord(randomUUID(), {
      name,
      status: i % 10 === 0 ? 'failed' : 'success',
      attempts: 1,
      createdAt: since + i,
      endedAt: since + i + 1,
      durationMs: i % 700,
      tags: { import: name },
    }),
  );
}

/** Event-loop turns (check phases) until `promise` settles. */
async function turnsDuring<T>(promise: Promise<T>): Promise<{ value: T; turns: number }> {
  let turns = 0;
  let counting = true;
  const tick = () => {
    turns++;
    if (counting) setImmediate(tick);
  };
  setImmediate(tick);
  try {
    return { value: await promise, turns };
  } finally {
    counting = false;
  }
}

describe.each(STORES)('%s: large writes', (_name, create) => {
  it('one save() of 50 000 records resolves, in batches the event loop runs between; every record is listed and metrics match a recount', async () => {
    const store = await open(create);
    const records = finished(50_000, 'import');
    const { turns } = await turnsDuring(store.save(records));
    const listed = await store.list();
    expect(listed.length).toBe(records.length);
    expect(new Set(listed.map((r) => r.id))).toEqual(new Set(records.map((r) => r.id)));
    if (store.durable) {
      // One transaction (or Lua call) of 50 000 records held the app's thread (or Redis) for seconds, with
      // no turn of the event loop in between: now a batch is at most a few hundred records.
      expect(turns).toBeGreaterThan(50_000 / 500);
      expect(await store.metrics!()).toEqual(recountMetrics(listed));
    }
  }, 120_000);

  it('a manager adding 15 000 tasks outside requests in one go: each is stored, runs once and ends; metrics() counts them all', async () => {
    const store = await open(create);
    const manager = createManager({ store, maxQueued: 20_000 });
    const ran = new Set<number>();
    const work = manager.task(function bulkWork(n: number) {
      ran.add(n);
    });
    await manager.start();
    const ids = Array.from({ length: 15_000 }, (_, n) => manager.add(work, n));
    await manager.drain();
    expect(ran.size).toBe(15_000);
    const metrics = await manager.metrics();
    expect(metrics.total).toBe(15_000);
    expect(metrics.byStatus.success).toBe(15_000);
    for (const id of [ids[0], ids[7_500], ids[14_999]])
      expect(await manager.get(id)).toMatchObject({ status: 'success', name: 'bulkWork' });
    if (store.durable) expect(await store.metrics!()).toEqual(recountMetrics(await store.list()));
  }, 120_000);
});

/** MAX_ORPHANS_PER_CLAIM (src/stores/durable-store.ts): orphans one claimOrphans() call takes at most. */
const ORPHAN_CLAIM_CAP = 1_000;

/** Makers of stores that share one database (a SQLite file, a Redis), as instances of one app do. */
const SHARED: [string, () => Promise<() => TaskStore>][] = [
  [
    'SqliteStore',
    () => {
      const path = join(tempDir(), 'tasks.db');
      return Promise.resolve(() => new SqliteStore({ path }));
    },
  ],
  [
    'RedisStore',
    async () => {
      const { url } = await startRedisServer();
      return () => new RedisStore({ url }, { prefix: 'orphans' });
    },
  ],
];

/** A store of `create` attached as the instance `ownerId` (closed after the test). */
function attached(create: () => TaskStore, ownerId: string, leaseMs: number): TaskStore {
  const store = create();
  onCleanup(() => store.close());
  store.attach!({ ownerId, leaseMs });
  return store;
}

/** `count` unfinished tasks (pending and running) saved by `dead`, once its lease ran out: orphans. */
async function leftBehind(dead: TaskStore, count: number, name = 'job'): Promise<TaskRecord[]> {
  const orphans = Array.from({ length: count }, (_, i) =>
    taskRecord(randomUUID(), i % 2 === 0 ? { name } : { name, status: 'running', attempts: 1, startedAt: Date.now() }),
  );
  await dead.save(orphans);
  await new Promise((resolve) => setTimeout(resolve, 300));
  return orphans;
}

describe.each(SHARED)('%s: a crash that left many tasks', (_name, shared) => {
  it('5 000 orphans of a dead owner are claimed once each by two concurrent claimers, no call taking more than the cap', async () => {
    const create = await shared();
    const orphans = await leftBehind(attached(create, 'dead', 100), 5_000);
    const claimers = ['b', 'c'].map((ownerId) => ({ ownerId, store: attached(create, ownerId, 60_000) }));
    const calls: number[] = [];
    const claimed: string[] = [];
    // Each claims until a call comes back short (as the recovery does): nothing was left at that moment.
    await Promise.all(
      claimers.map(async ({ ownerId, store }) => {
        for (;;) {
          const records = await store.claimOrphans(ownerId, 60_000);
          calls.push(records.length);
          for (const record of records) claimed.push(record.id);
          if (records.length < ORPHAN_CLAIM_CAP) return;
        }
      }),
    );
    expect(Math.max(...calls)).toBeLessThanOrEqual(ORPHAN_CLAIM_CAP);
    expect(claimed.length).toBe(orphans.length);
    expect(new Set(claimed)).toEqual(new Set(orphans.map((r) => r.id)));
    expect(await claimers[0].store.claimOrphans('b', 60_000)).toEqual([]);
  }, 60_000);

  it('a manager starting after the crash claims all 1 500 orphans at start(), not 1 000 per orphan check', async () => {
    const create = await shared();
    await leftBehind(attached(create, 'dead', 100), 1_500, 'resumed');
    const store = create();
    const manager = createManager({ store, maxQueued: 5_000 });
    manager.task(function resumed() {});
    await manager.start();
    const other = attached(create, 'other', 60_000);
    // Nothing is left to another instance: the manager took every orphan before start() resolved.
    expect(await other.claimOrphans('other', 60_000)).toEqual([]);
  }, 60_000);

  it("resumed tasks confirm their start in a write at the end of the turn, not the next lazy batch's timer: 60 orphans run through 4 slots with setTimeout stopped", async () => {
    const create = await shared();
    const orphans = await leftBehind(attached(create, 'dead', 100), 60, 'resumed');
    const store = create();
    const manager = createManager({ store, concurrency: 4 });
    const ran = new Set<string>();
    manager.task(async function resumed() {
      ran.add(getTaskContext()!.id);
      await new Promise((resolve) => setImmediate(resolve));
    });
    await manager.start();
    // Each resumed task waits for its `running` to be committed before it runs (a crash then counts a stall).
    // Those writes used to wait for the lazy batch's 50 ms timer: 4 slots, 15 rounds of it. With timers
    // stopped, the tasks still all run, each round's writes going out at the end of its turn.
    vi.useFakeTimers({ toFake: ['setTimeout', 'setInterval'] });
    try {
      // Stopped timers never fire: waiting longer only makes a failure slower (the bound is not the test).
      const giveUpAt = performance.now() + 15_000;
      while (ran.size < orphans.length && performance.now() < giveUpAt)
        await new Promise((resolve) => setImmediate(resolve));
    } finally {
      vi.useRealTimers();
    }
    expect(ran.size).toBe(orphans.length);
  }, 30_000);
});

/** A record whose args cannot be read: serialising it throws `thrown` inside the batch's write. */
function poisoned(thrown: () => unknown): TaskRecord {
  const record = taskRecord(randomUUID(), { name: 'poisoned' });
  Object.defineProperty(record, 'args', { enumerable: true, get: () => thrown() as never });
  return record;
}

/**
 * A store of your own that wraps a built-in one and hands it a record that cannot be serialised among the
 * records of one call: the built-in store's batch (which also holds the other callers' records) throws.
 */
class PoisoningStore implements TaskStore {
  readonly durable = true;
  constructor(
    readonly inner: TaskStore,
    readonly thrown: () => unknown,
  ) {}
  save(records: TaskRecord[]) {
    return this.inner.save([...records, poisoned(this.thrown)]);
  }
  get(id: string) {
    return this.inner.get(id);
  }
  list() {
    return this.inner.list();
  }
  claimKey(key: string, id: string) {
    return this.inner.claimKey(key, id);
  }
  claimOrphans(ownerId: string, leaseMs: number) {
    return this.inner.claimOrphans(ownerId, leaseMs);
  }
  close() {
    return this.inner.close();
  }
}

const THROWN: [string, () => unknown][] = [
  ['an Error', () => new Error('cannot read args')],
  ['a string', () => 'cannot read args'],
  ['undefined', () => undefined],
  [
    'an object whose toString throws',
    () => ({
      toString: () => {
        throw new Error('nope');
      },
    }),
  ],
];

describe.each(STORES.filter(([name]) => name !== 'MemoryStore'))('%s: a batch whose write throws', (_name, create) => {
  it.each(THROWN)(
    'rejects every caller of that batch with a TaskStoreUnavailableError (thrown: %s), and the next batch is written',
    async (_what, thrown) => {
      const inner = await open(create);
      const store = new PoisoningStore(inner, () => {
        throw thrown();
      });
      // Three callers in one event-loop turn share one batch: two with good records, one through the wrapper.
      const good = [taskRecord(randomUUID()), taskRecord(randomUUID())];
      const outcomes = await Promise.allSettled([
        inner.save([good[0]]),
        store.save([taskRecord(randomUUID())]),
        inner.save([good[1]]),
      ]);
      for (const outcome of outcomes) {
        expect(outcome.status).toBe('rejected');
        const reason = (outcome as PromiseRejectedResult).reason as unknown;
        expect(reason).toBeInstanceOf(TaskStoreUnavailableError);
        expect(reason).toMatchObject({ code: 'ERR_STORE_UNAVAILABLE' });
      }
      // Nothing of the failed batch was written; the store is not wedged.
      expect(await inner.list()).toEqual([]);
      await inner.save(good);
      expect((await inner.list()).map((r) => r.id).sort()).toEqual(good.map((r) => r.id).sort());
    },
  );
});

/** A store of your own that claims keys through claimKey() alone, counting the calls in flight at once. */
class CountingClaims extends MapStore {
  inFlight = 0;
  mostInFlight = 0;
  override async claimKey(key: string, id: string): Promise<string | undefined> {
    this.mostInFlight = Math.max(this.mostInFlight, ++this.inFlight);
    try {
      return await super.claimKey(key, id);
    } finally {
      this.inFlight--;
    }
  }
}

describe('a store that claims keys through claimKey()', () => {
  it('a bulk add of 2 000 keyed tasks claims their keys 100 at a time, each task once, the duplicates not run', async () => {
    const store = new CountingClaims();
    const manager = createManager({ store });
    const ran: number[] = [];
    const work = manager.task(function keyedWork(n: number) {
      ran.push(n);
    });
    await manager.start();
    for (let n = 0; n < 2_000; n++) manager.with({ idempotencyKey: `bulk-${n}` }).add(work, n);
    // The same keys again once the first ones are stored: each answers the task holding it.
    await manager.drain();
    for (let n = 0; n < 2_000; n += 500) manager.with({ idempotencyKey: `bulk-${n}` }).add(work, n);
    await manager.drain();
    expect(ran.length).toBe(2_000);
    expect(store.mostInFlight).toBeGreaterThan(1);
    expect(store.mostInFlight).toBeLessThanOrEqual(100);
  }, 60_000);
});
