import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MemoryStore, type TaskRecord, type TaskStatus, type TaskStore } from 'koa-taskflow';
import { RedisStore } from 'koa-taskflow/redis';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { expectJson, startAdmin } from './helpers/admin.js';
import { taskRecord as record } from './helpers/durable-app.js';
import { tempDir } from './helpers/files.js';
import { startRedisServer } from './helpers/redis.js';
import { createManager, onCleanup } from './helpers/server.js';

const DAY = 86_400_000;

function ended(id: string, status: TaskStatus, daysAgo: number): TaskRecord {
  const at = Date.now() - daysAgo * DAY;
  return record(id, {
    status,
    attempts: 1,
    createdAt: at - 1_000,
    startedAt: at - 1_000,
    endedAt: at,
    error: status === 'failed' ? { type: 'Error', message: 'down' } : undefined,
  });
}

const ids = (records: TaskRecord[]) => records.map((r) => r.id).sort();

/** What every durable store keeps of the same history, with retentionDays 2 (failures: 4 by default). */
const HISTORY = [
  ended('success-3d', 'success', 3),
  ended('cancelled-3d', 'cancelled', 3),
  ended('failed-3d', 'failed', 3),
  ended('interrupted-3d', 'interrupted', 3),
  ended('failed-5d', 'failed', 5),
  ended('success-1d', 'success', 1),
  record('pending-5d', { createdAt: Date.now() - 5 * DAY }),
];
const KEPT = ['failed-3d', 'interrupted-3d', 'pending-5d', 'success-1d'];

describe('dead letters: MemoryStore', () => {
  it('maxRecords 10, 5 failures then 100 successes: all 5 failures are still listed, the newest successes fill the rest', async () => {
    const manager = createManager({ store: new MemoryStore({ maxRecords: 10 }) });
    const charge = manager.task(async function charge(n: number) {
      if (n < 5) throw new Error(`card ${n} declined`);
    });
    const failures = Array.from({ length: 5 }, (_, n) => manager.add(charge, n));
    await manager.drain();
    const successes: string[] = [];
    for (let n = 5; n < 105; n++) {
      successes.push(manager.add(charge, n));
      // One at a time, so each success ends (and is evicted) after the failures ended.
      await manager.drain();
    }
    const failed = await manager.list({ status: 'failed' });
    expect(failed.map((r) => r.id)).toEqual([...failures].reverse());
    expect(failed.map((r) => r.error?.message)).toEqual([
      'card 4 declined',
      'card 3 declined',
      'card 2 declined',
      'card 1 declined',
      'card 0 declined',
    ]);
    expect((await manager.list()).map((r) => r.id)).toEqual([...failures, ...successes.slice(-5)].reverse());
    expect((await manager.metrics()).byStatus).toMatchObject({ failed: 5, success: 5 });
  });

  it('evicts successes and cancellations before failed and interrupted records; unfinished tasks never push those out; past maxRecords of them alone, the oldest goes', async () => {
    const store = new MemoryStore({ maxRecords: 3 });
    await store.save([
      ended('failed-a', 'failed', 0),
      ended('interrupted-b', 'interrupted', 0),
      ended('cancelled-c', 'cancelled', 0),
    ]);
    await store.save([ended('success-d', 'success', 0), ended('success-e', 'success', 0)]);
    expect(ids(await store.list())).toEqual(['failed-a', 'interrupted-b', 'success-e']);
    await store.save([ended('failed-f', 'failed', 0)]);
    expect(ids(await store.list())).toEqual(['failed-a', 'failed-f', 'interrupted-b']);
    // A burst of queued tasks: the dead letters stay; once the tasks succeed, the successes go first.
    const burst = ['g', 'h', 'i'].map((id) => record(`pending-${id}`));
    await store.save(burst);
    expect(ids(await store.list())).toEqual([
      'failed-a',
      'failed-f',
      'interrupted-b',
      'pending-g',
      'pending-h',
      'pending-i',
    ]);
    await store.save(burst.map((r) => ({ ...r, status: 'success' as const, endedAt: Date.now() })));
    expect(ids(await store.list())).toEqual(['failed-a', 'failed-f', 'interrupted-b']);
    // A fourth dead letter: the oldest goes.
    await store.save([ended('failed-j', 'failed', 0), ended('failed-j', 'failed', 0)]);
    expect(ids(await store.list())).toEqual(['failed-f', 'failed-j', 'interrupted-b']);
  });
});

describe('dead letters: durable stores keep failures at least as long as successes', () => {
  it('SqliteStore: retention removes old successes and cancellations before failed and interrupted records (failedRetentionDays, default twice retentionDays)', async () => {
    const dir = tempDir();
    const path = join(dir, 'tasks.db');
    const writer = new SqliteStore({ path });
    await writer.save(HISTORY);
    await writer.close();
    // Retention runs at open.
    const store = new SqliteStore({ path, retentionDays: 2 });
    onCleanup(() => store.close());
    expect([store.retentionDays, store.failedRetentionDays]).toEqual([2, 4]);
    expect(ids(await store.list())).toEqual(KEPT);
    expect(ids(await store.list({ status: ['failed', 'interrupted'] }))).toEqual(['failed-3d', 'interrupted-3d']);

    const longer = join(dir, 'longer.db');
    const again = new SqliteStore({ path: longer });
    await again.save(HISTORY);
    await again.close();
    const keeping = new SqliteStore({ path: longer, retentionDays: 2, failedRetentionDays: 10 });
    onCleanup(() => keeping.close());
    expect(ids(await keeping.list())).toEqual(['failed-5d', ...KEPT].sort());

    expect(() => new SqliteStore({ path: join(dir, 'x.db'), retentionDays: 2, failedRetentionDays: 1 })).toThrow(
      /option "failedRetentionDays" must be a number >= "retentionDays" \(2\)/,
    );
    expect(() => new SqliteStore({ path: join(dir, 'x.db'), failedRetentionDays: Infinity })).toThrow(RangeError);
  });

  it('RedisStore: retention removes old successes and cancellations before failed and interrupted records, with their index entries', async () => {
    const redis = await startRedisServer();
    const open = (prefix: string, options: { failedRetentionDays?: number } = {}): RedisStore => {
      const store = new RedisStore({ url: redis.url }, { prefix, retentionDays: 2, ...options });
      onCleanup(() => store.close());
      return store;
    };
    const store = open('dl');
    expect([store.retentionDays, store.failedRetentionDays]).toEqual([2, 4]);
    await store.save(HISTORY.map((r) => ({ ...r, tags: { t: r.id } })));
    // The retention sweep runs with the (at most once a minute) orphan check.
    await store.claimOrphans('cleaner', 1_000);
    expect(ids(await store.list())).toEqual(KEPT);
    expect(ids(await store.list({ status: 'failed' }))).toEqual(['failed-3d']);
    expect(await store.list({ tags: { t: 'success-3d' } })).toEqual([]);
    expect(await store.list({ tags: { t: 'failed-5d' } })).toEqual([]);
    expect(await store.client.keys('dl:t:*5d')).toEqual(['dl:t:pending-5d']);

    const keeping = open('dl-long', { failedRetentionDays: 10 });
    await keeping.save(HISTORY);
    await keeping.claimOrphans('cleaner', 1_000);
    expect(ids(await keeping.list())).toEqual(['failed-5d', ...KEPT].sort());

    expect(() => new RedisStore({ url: redis.url }, { retentionDays: 2, failedRetentionDays: 1 })).toThrow(
      /option "failedRetentionDays" must be a number >= "retentionDays" \(2\)/,
    );
  });
});

describe('dead letters: the admin API', () => {
  it('lists failed and interrupted tasks past many successes, retries one (it stays as it was, its retry names it), then the rest', async () => {
    const store: TaskStore = new MemoryStore({ maxRecords: 10 });
    const manager = createManager({ store });
    let down = true;
    const syncCrm = manager.task(async function syncCrm(account: string) {
      if (down) throw new Error(`CRM unavailable for ${account}`);
    });
    const { api } = await startAdmin({}, manager);
    const failures = ['acct-1', 'acct-2', 'acct-3'].map((account) => manager.add(syncCrm, account));
    await manager.drain();
    down = false;
    for (let n = 0; n < 50; n++) {
      manager.add(syncCrm, `ok-${n}`);
      await manager.drain();
    }
    const page = await expectJson<{ tasks: TaskRecord[] }>(await api('?status=failed,interrupted'), 200);
    expect(page.tasks.map((t) => t.id)).toEqual([...failures].reverse());
    expect(page.tasks[0].error).toMatchObject({ type: 'Error', message: 'CRM unavailable for acct-3' });

    const retried = await expectJson<{ id: string; retryOf: string }>(
      await api(`/${failures[0]}/retry`, { method: 'POST' }),
      202,
    );
    await manager.drain();
    expect(await expectJson<TaskRecord>(await api(`/${retried.id}`), 200)).toMatchObject({
      status: 'success',
      retryOf: failures[0],
    });
    // The dead letter stays as it was; a second retry names the first.
    expect(await expectJson<TaskRecord>(await api(`/${failures[0]}`), 200)).toMatchObject({
      status: 'failed',
      error: { message: 'CRM unavailable for acct-1' },
    });
    expect(await expectJson(await api(`/${failures[0]}/retry`, { method: 'POST' }), 409)).toMatchObject({
      retriedAs: retried.id,
    });

    const rest = await expectJson<{ retried: { id: string; newId: string }[] }>(
      await api('/retry-failed', { method: 'POST' }),
      200,
    );
    expect(rest.retried.map((r) => r.id)).toEqual(failures.slice(1));
    await manager.drain();
    for (const { newId } of rest.retried) expect((await manager.get(newId))?.status).toBe('success');
    expect(
      (await expectJson<{ tasks: TaskRecord[] }>(await api('?status=failed'), 200)).tasks.map((t) => t.id),
    ).toEqual([...failures].reverse());
  });
});
