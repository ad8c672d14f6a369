// A store written to the TaskStore interface of API.md alone: save() answers nothing, and idempotency
// across instances rests on its atomic claimKey.
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import type { TaskFilter, TaskRecord, TaskStore } from 'koa-taskflow';
import { expectOneExecutionAcrossInstances } from './helpers/durable-app.js';
import { createManager, deferred, startApp, waitFor } from './helpers/server.js';

/** What every instance's store shares: records as JSON by id, idempotency keys to the id holding them. */
interface Backing {
  records: Map<string, string>;
  keys: Map<string, string>;
}

const newBacking = (): Backing => ({ records: new Map(), keys: new Map() });

/** A round trip to the shared backing: instances interleave between their calls. */
const roundTrip = () => new Promise((resolve) => setTimeout(resolve, 1));

class SharedMapStore implements TaskStore {
  readonly durable = true;
  constructor(private readonly backing: Backing) {}

  async save(records: TaskRecord[]): Promise<void> {
    await roundTrip();
    for (const record of records) this.backing.records.set(record.id, JSON.stringify(record));
  }

  async get(id: string): Promise<TaskRecord | undefined> {
    await roundTrip();
    return this.#read(id);
  }

  /** Newest first; only the `status` filter (enough for what these tests ask). */
  async list(filter: TaskFilter = {}): Promise<TaskRecord[]> {
    await roundTrip();
    const statuses = filter.status === undefined ? undefined : [filter.status].flat();
    const records = [...this.backing.records.keys()].map((id) => this.#read(id)!).reverse();
    return records.filter((r) => statuses === undefined || statuses.includes(r.status));
  }

  async claimKey(key: string, id: string): Promise<string | undefined> {
    await roundTrip();
    // Atomic: nothing awaits between the look-up and the claim.
    const holder = this.backing.keys.get(key);
    if (holder !== undefined && holder !== id && this.#read(holder)?.status !== 'failed') return holder;
    this.backing.keys.set(key, id);
    return undefined;
  }

  async claimOrphans(): Promise<TaskRecord[]> {
    // No leases in this store: nothing is ever taken over (recovery is not what these tests are about).
    return [];
  }

  async close(): Promise<void> {}

  #read(id: string): TaskRecord | undefined {
    const json = this.backing.records.get(id);
    return json === undefined ? undefined : (JSON.parse(json) as TaskRecord);
  }
}

describe('a custom durable store whose save() answers nothing', () => {
  it('30 concurrent requests with one idempotency key across two TaskManagers: exactly one execution', async () => {
    const backing = newBacking();
    await expectOneExecutionAcrossInstances([new SharedMapStore(backing), new SharedMapStore(backing)], 30, {
      aliases: false,
    });
    // The losers are kept finished, never pending: nothing is left for a restarted process to run again.
    const stored = [...backing.records.values()].map((json) => JSON.parse(json) as TaskRecord);
    expect(stored.filter((r) => r.status === 'success')).toHaveLength(1);
    expect(stored.length).toBeGreaterThan(1);
    for (const record of stored)
      if (record.status !== 'success') expect(record).toMatchObject({ status: 'cancelled', reason: 'duplicate' });
  });

  it('manager.add with one key on two instances at once (outside a request): one execution, the other ends a cancelled duplicate', async () => {
    const backing = newBacking();
    const gate = deferred();
    let runs = 0;
    const instances = await Promise.all(
      [0, 1].map(async () => {
        const manager = createManager({ store: new SharedMapStore(backing) });
        const charge = manager.task(async function charge(_order: number) {
          runs++;
          await gate.promise;
        });
        await manager.start();
        return { manager, id: manager.with({ idempotencyKey: 'order-7' }).add(charge, 7) };
      }),
    );
    await waitFor(() => runs > 0, 5_000, 'the task to start');
    gate.resolve();
    await Promise.all(instances.map(({ manager }) => manager.drain()));
    expect(runs).toBe(1);
    const records = await Promise.all(instances.map(({ manager, id }) => manager.get(id)));
    const winner = records.find((r) => r?.status === 'success')!;
    expect(records.find((r) => r !== winner)).toMatchObject({
      status: 'cancelled',
      reason: 'duplicate',
      error: { message: expect.stringContaining(winner.id) },
    });
  });

  it('a key claim that fails fails the request: 503, the task never runs, and its stored record ends cancelled', async () => {
    const backing = newBacking();
    const store = new SharedMapStore(backing);
    store.claimKey = () => Promise.reject(new Error('the key store is down'));
    let runs = 0;
    const { url, manager } = await startApp(
      (app, m) => {
        const charge = m.task(async function charge(_order: number) {
          runs++;
        });
        app.use((ctx) => {
          ctx.body = { id: ctx.tasks.with({ idempotencyKey: 'order-9' }).addTask(charge, 9) };
        });
      },
      { store, logger: pino({ level: 'silent' }) },
    );
    expect((await fetch(url)).status).toBe(503);
    await manager.drain();
    const stored = () => [...backing.records.values()].map((json) => JSON.parse(json) as TaskRecord);
    await waitFor(() => stored()[0]?.status === 'cancelled', 5_000, 'the record to be stored cancelled');
    expect(stored()).toMatchObject([{ status: 'cancelled', reason: 'store_unavailable' }]);
    expect(runs).toBe(0);
  });
});

describe('store capabilities', () => {
  it('capabilities.claimsKeysOnSave: the manager asks claimKey() only of a store that does not claim keys in save()', async () => {
    for (const declares of [false, true]) {
      const store = new SharedMapStore(newBacking());
      let claims = 0;
      const claim = store.claimKey.bind(store);
      store.claimKey = (key, id) => {
        claims++;
        return claim(key, id);
      };
      if (declares) Object.assign(store, { capabilities: { claimsKeysOnSave: true } });
      const manager = createManager({ store });
      let runs = 0;
      const job = manager.task(function keyed() {
        runs++;
      });
      manager.with({ idempotencyKey: 'once' }).add(job);
      await manager.drain();
      expect({ declares, claims, runs }).toEqual({ declares, claims: declares ? 0 : 1, runs: 1 });
    }
  });
});
