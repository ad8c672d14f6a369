// Crash recovery with a real process: a Koa server on a SQLite file is killed after acknowledging tasks,
// and a new process on the same file runs every one of them.
import { describe, expect, it } from 'vitest';
import { getTaskContext, type TaskRecord } from 'koa-taskflow';
import { SqliteStore } from 'koa-taskflow/sqlite';
import {
  countBy,
  durableFiles as setup,
  openSqliteStore as openStore,
  readTaskLog,
  startDurableApp,
} from './helpers/durable-app.js';
import { createManager, waitFor } from './helpers/server.js';

const N = 12;
const CONCURRENCY = 3;

async function statuses(db: string, ids: string[]): Promise<string[]> {
  const store = openStore(db);
  return Promise.all(ids.map(async (id) => (await store.get(id))?.status ?? 'missing'));
}

describe('SQLite crash recovery', () => {
  it('SIGKILL after acknowledging tasks (some running, some pending): a new process runs every acknowledged task', async () => {
    const { db, log } = setup();
    const first = await startDurableApp({
      DB: db,
      TASK_LOG: log,
      MODE: 'hold',
      CONCURRENCY: String(CONCURRENCY),
      LEASE_MS: '600',
      ORPHAN_MS: '100',
    });
    const acknowledged = await Promise.all(Array.from({ length: N }, (_, n) => first.add(n)));
    await waitFor(() => readTaskLog(log).length === CONCURRENCY, 5_000, 'the first tasks to be running');
    first.child.process.kill('SIGKILL');
    await first.child.exited;
    const runningAtKill = readTaskLog(log).map((e) => e.id);
    expect(runningAtKill).toHaveLength(CONCURRENCY);

    const second = await startDurableApp({
      DB: db,
      TASK_LOG: log,
      MODE: 'fast',
      CONCURRENCY: '16',
      LEASE_MS: '600',
      ORPHAN_MS: '100',
    });
    await waitFor(() => countBy(log, 'done').size === N, 10_000, 'every acknowledged task to be done');
    const done = countBy(log, 'done');
    for (const id of acknowledged) expect(done.get(id), `task ${id}`).toBe(1);
    // The ones cut short by the kill ran again: at-least-once.
    for (const id of runningAtKill) expect(countBy(log, 'start').get(id)).toBe(2);
    second.child.process.kill('SIGTERM');
    await second.child.exited;
    expect(await statuses(db, acknowledged)).toEqual(acknowledged.map(() => 'success'));
  });

  it('SIGTERM: running tasks finish, pending ones are handed back and resumed at once by the next process, none twice', async () => {
    const { db, log } = setup();
    // A long lease: the next process can only be quick if the shutdown handed the work back.
    const lease = { LEASE_MS: '60000', ORPHAN_MS: '60000' };
    const first = await startDurableApp({
      DB: db,
      TASK_LOG: log,
      MODE: 'slow',
      SLOW_MS: '150',
      CONCURRENCY: '2',
      ...lease,
    });
    const acknowledged = await Promise.all(Array.from({ length: N }, (_, n) => first.add(n)));
    await waitFor(() => readTaskLog(log).some((e) => e.event === 'start'), 5_000, 'tasks to be running');
    first.child.process.kill('SIGTERM');
    await first.child.waitForLine(/"stopped"/);
    expect(await first.child.exited).toBe(0);
    const doneByFirst = countBy(log, 'done').size;
    expect(doneByFirst).toBeGreaterThan(0);
    expect(doneByFirst).toBeLessThan(N);

    const second = await startDurableApp({ DB: db, TASK_LOG: log, MODE: 'fast', CONCURRENCY: '16', ...lease });
    await waitFor(() => countBy(log, 'done').size === N, 10_000, 'every acknowledged task to be done');
    second.child.process.kill('SIGTERM');
    await second.child.exited;
    const starts = countBy(log, 'start');
    const done = countBy(log, 'done');
    for (const id of acknowledged) {
      expect(starts.get(id), `starts of ${id}`).toBe(1);
      expect(done.get(id), `completions of ${id}`).toBe(1);
    }
    expect(await statuses(db, acknowledged)).toEqual(acknowledged.map(() => 'success'));
  });

  it('SIGKILL without requeueOnInterrupt: the next process ends the tasks that had started interrupted (reason crash) and runs the others', async () => {
    const { db, log } = setup();
    const env = { DB: db, TASK_LOG: log, REQUEUE_ON_INTERRUPT: '0', LEASE_MS: '600', ORPHAN_MS: '100' };
    const first = await startDurableApp({ ...env, MODE: 'hold', CONCURRENCY: String(CONCURRENCY) });
    const acknowledged = await Promise.all(Array.from({ length: N }, (_, n) => first.add(n)));
    // `running` is a lazy write: until it is committed, a kill leaves the task pending (and it simply runs again).
    const reader = openStore(db);
    await waitFor(
      async () => (await reader.list({ status: 'running' })).length === CONCURRENCY,
      5_000,
      'the running tasks to be committed as running',
    );
    first.child.process.kill('SIGKILL');
    await first.child.exited;
    const startedAtKill = readTaskLog(log).map((e) => e.id);
    expect(startedAtKill.sort()).toEqual((await reader.list({ status: 'running' })).map((r) => r.id).sort());

    const second = await startDurableApp({ ...env, MODE: 'fast', CONCURRENCY: '16' });
    const ended = new Map<string, TaskRecord>();
    await waitFor(
      async () => {
        for (const id of acknowledged) {
          const record = await second.record(id);
          if ('status' in record && record.status !== 'pending' && record.status !== 'running') ended.set(id, record);
        }
        return ended.size === N;
      },
      10_000,
      'every acknowledged task to end',
    );
    for (const id of acknowledged) {
      const expected = startedAtKill.includes(id)
        ? { status: 'interrupted', reason: 'crash', attempts: 1, error: { type: 'TaskInterruptedError' } }
        : { status: 'success', attempts: 1 };
      expect(ended.get(id), `task ${id}`).toMatchObject(expected);
    }
    // The interrupted ones were not started again; every other one ran once, in the second process.
    const starts = countBy(log, 'start');
    for (const id of acknowledged) expect(starts.get(id), `starts of ${id}`).toBe(1);
    expect([...countBy(log, 'done').keys()].sort()).toEqual(
      acknowledged.filter((id) => !startedAtKill.includes(id)).sort(),
    );
    second.child.process.kill('SIGTERM');
    await second.child.exited;
    expect(await statuses(db, acknowledged)).toEqual(
      acknowledged.map((id) => (startedAtKill.includes(id) ? 'interrupted' : 'success')),
    );
  });
});

describe('SQLite leases', () => {
  it('a live owner renewing its lease keeps its long task from another instance on the file, which takes it once the owner is killed', async () => {
    const { db, log } = setup();
    // Renewed every leaseMs / 3: the owner would have to stall for two thirds of a lease to lose it. Long
    // enough that a loaded CI machine does not, short enough to watch several leases go by.
    const leaseMs = 450;
    const owner = await startDurableApp({
      DB: db,
      TASK_LOG: log,
      MODE: 'hold',
      CONCURRENCY: '1',
      LEASE_MS: String(leaseMs),
      ORPHAN_MS: '50',
    });
    const id = await owner.add(7);
    await waitFor(() => readTaskLog(log).length === 1, 5_000, 'the task to be running in the owner');

    const store = new SqliteStore({ path: db });
    let orphanChecks = 0;
    const claimOrphans = store.claimOrphans.bind(store);
    store.claimOrphans = (ownerId, ms) => {
      orphanChecks++;
      return claimOrphans(ownerId, ms);
    };
    const ranHere: string[] = [];
    const other = createManager({ store, leaseMs, orphanCheckMs: 50 });
    other.task(
      async function work(_n: number) {
        ranHere.push(getTaskContext()!.id);
      },
      { requeueOnInterrupt: true },
    );
    await other.start();
    const since = Date.now();
    // Without renewals the task would be taken after one lease; the other instance looks for orphans every
    // 50 ms through five of them.
    await waitFor(
      () => orphanChecks >= 12 && Date.now() - since >= 5 * leaseMs,
      10_000,
      'five leases of orphan checks',
    );
    expect(ranHere).toEqual([]);
    expect(countBy(log, 'start').get(id)).toBe(1);

    owner.child.process.kill('SIGKILL');
    await owner.child.exited;
    await waitFor(() => ranHere.length === 1, 5_000, 'the other instance to take the task over');
    expect(ranHere).toEqual([id]);
    await other.drain();
    expect((await other.get(id))?.status).toBe('success');
    // Run once by the owner while it lived, once by the other instance after it died.
    expect(countBy(log, 'start').get(id)).toBe(1);
  });
});
