import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { describe, expect, it } from 'vitest';
import { getTaskContext, TaskflowError, type TaskRecord, type TaskStore } from 'koa-taskflow';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { expectOneExecutionAcrossInstances, openSqliteStore, taskRecord } from './helpers/durable-app.js';
import { tempDir } from './helpers/files.js';
import { createManager, deferred, onCleanup, startApp, waitFor } from './helpers/server.js';

const openStore = openSqliteStore;
const record = taskRecord;

describe('SqliteStore', () => {
  it('persists a request’s task before the response and runs it; another store on the file sees the same record', async () => {
    const path = join(tempDir(), 'tasks.db');
    const ran: string[] = [];
    const store = openStore(path);
    const { url, manager } = await startApp(
      (app, m) => {
        const sendWelcome = m.task(async function sendWelcome(email: string) {
          ran.push(email);
        });
        app.use(async (ctx) => {
          ctx.body = { id: ctx.tasks.with({ tags: { tenant: 'acme' } }).addTask(sendWelcome, 'a@b.c') };
        });
      },
      { store },
    );
    const { id } = (await (await fetch(url)).json()) as { id: string };
    await manager.drain();
    expect(ran).toEqual(['a@b.c']);
    const other = openStore(path);
    await waitFor(async () => (await other.get(id))?.status === 'success', 5_000, 'the success to be committed');
    expect(await other.get(id)).toMatchObject({
      id,
      name: 'sendWelcome',
      args: ['a@b.c'],
      tags: { tenant: 'acme' },
      attempts: 1,
      status: 'success',
    });
  });

  it('computes metrics() from counts and duration histograms it keeps: counts by status and name, success rate, mean, p95 estimated in its bucket', async () => {
    const store = openStore(join(tempDir(), 'tasks.db'));
    const ended = (id: string, name: string, status: TaskRecord['status'], durationMs?: number) =>
      record(id, { name, status, durationMs, attempts: status === 'cancelled' ? 0 : 1, endedAt: Date.now() });
    // 20 successful mails taking 1..20 ms: mean 10.5; the p95 (rank 19) is the 9th of the 10 in the bucket
    // (10, 25] ms of task.duration, estimated linearly in it: 10 + 15 × 9/10.
    const mails = Array.from({ length: 20 }, (_, i) => ended(`m${i}`, 'mail', 'success', i + 1));
    await store.save([
      ...mails,
      ended('f1', 'mail', 'failed', 3),
      ended('s1', 'sms', 'success', 100),
      ended('s2', 'sms', 'interrupted'),
      ended('s3', 'sms', 'cancelled'),
    ]);
    await store.save([record('p1', { name: 'sms' })]);
    const manager = createManager({ store });
    const metrics = await manager.metrics();
    // The store counts the records; the manager adds the observer chain's drops.
    const { observers, ...counted } = metrics;
    expect(observers).toEqual({ dropped: 0, byObserver: {} });
    expect(await store.metrics()).toEqual(counted);
    expect(metrics).toMatchObject({
      total: 25,
      byStatus: { success: 21, failed: 1, interrupted: 1, cancelled: 1, pending: 1, running: 0 },
      successRate: 21 / 23,
    });
    expect(metrics.byName.mail).toEqual({
      total: 21,
      byStatus: { pending: 0, running: 0, success: 20, failed: 1, interrupted: 0, cancelled: 0 },
      successRate: 20 / 21,
      avgDurationMs: 10.5,
      p95DurationMs: 23.5,
    });
    expect(metrics.byName.sms).toMatchObject({ total: 4, successRate: 0.5, avgDurationMs: 100, p95DurationMs: 100 });
    // The whole set's durations: 1..20 and 100, so the p95 (rank 20 of 21) is the last of (10, 25] ms.
    expect(metrics.p95DurationMs).toBe(25);
    // The same numbers as the manager computes from the records themselves, but the p95, which it takes exactly.
    const listOnly: TaskStore = {
      save: async () => undefined,
      get: (id) => store.get(id),
      list: (filter) => store.list(filter),
      claimKey: async () => undefined,
      claimOrphans: async () => [],
      close: async () => {},
    };
    const viaList = await createManager({ store: listOnly }).metrics();
    const withoutP95 = ({ p95DurationMs, byName, ...rest }: typeof metrics) => ({
      ...rest,
      byName: Object.fromEntries(Object.entries(byName).map(([name, { p95DurationMs: _, ...named }]) => [name, named])),
    });
    expect(withoutP95(viaList)).toEqual(withoutP95(metrics));
    expect(viaList.p95DurationMs).toBe(20);
  });

  it('serves list() filters from SQL with indexes: status, name, tags, since, limit, newest first', async () => {
    const path = join(tempDir(), 'tasks.db');
    const store = openStore(path);
    const t0 = Date.now();
    await store.save([
      record('a', { name: 'mail', tags: { tenant: 'a', plan: 'pro' }, createdAt: t0 - 3, status: 'success' }),
      record('b', { name: 'mail', tags: { tenant: 'a' }, createdAt: t0 - 2, status: 'failed' }),
      record('c', { name: 'sms', tags: { tenant: 'b', plan: 'pro' }, createdAt: t0 - 1 }),
    ]);
    const ids = (records: TaskRecord[]) => records.map((r) => r.id);
    expect(ids(await store.list())).toEqual(['c', 'b', 'a']);
    expect(ids(await store.list({ status: 'failed' }))).toEqual(['b']);
    expect(ids(await store.list({ status: ['failed', 'success'], name: 'mail' }))).toEqual(['b', 'a']);
    expect(ids(await store.list({ tags: { plan: 'pro' } }))).toEqual(['c', 'a']);
    expect(ids(await store.list({ tags: { plan: 'pro', tenant: 'a' } }))).toEqual(['a']);
    expect(ids(await store.list({ limit: 1 }))).toEqual(['c']);
    expect(ids(await store.list({ since: t0 - 2 }))).toEqual(['c', 'b']);

    const db = new DatabaseSync(path, { readOnly: true });
    onCleanup(() => db.close());
    const plan = (sql: string) =>
      (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all() as { detail: string }[]).map((r) => r.detail).join(' | ');
    expect(
      plan(
        "SELECT record FROM taskflow_tasks WHERE status IN ('failed') ORDER BY created_at DESC, rowid DESC LIMIT 10",
      ),
    ).toMatch(/USING INDEX taskflow_tasks_status/);
    expect(plan("SELECT record FROM taskflow_tasks WHERE name = 'mail' ORDER BY created_at DESC, rowid DESC")).toMatch(
      /USING INDEX taskflow_tasks_name/,
    );
    expect(
      plan(
        "SELECT record FROM taskflow_tasks WHERE id IN (SELECT task_id FROM taskflow_tags WHERE key = 'plan' AND value = 'pro')",
      ),
    ).toMatch(/taskflow_tags_value/);
    expect(
      plan(
        "UPDATE taskflow_tasks SET owner = 'x' WHERE status IN ('pending', 'running') AND (owner IS NULL OR owner NOT IN (SELECT id FROM taskflow_owners))",
      ),
    ).toMatch(/^SEARCH taskflow_tasks USING INDEX taskflow_tasks_status/);
  });

  it('opens in WAL mode with synchronous NORMAL by default, FULL on request, and a versioned schema', async () => {
    const dir = tempDir();
    const pragmas = (path: string) => {
      const db = new DatabaseSync(path);
      try {
        return {
          mode: (db.prepare('PRAGMA journal_mode').get() as { journal_mode: string }).journal_mode,
          version: (db.prepare('PRAGMA user_version').get() as { user_version: number }).user_version,
        };
      } finally {
        db.close();
      }
    };
    const normal = openStore(join(dir, 'normal.db'));
    const full = openStore(join(dir, 'full.db'), { synchronous: 'FULL' });
    expect([normal.synchronous, full.synchronous]).toEqual(['NORMAL', 'FULL']);
    await Promise.all([normal.close(), full.close()]);
    expect(pragmas(join(dir, 'normal.db'))).toEqual({ mode: 'wal', version: 4 });
    expect(() => new SqliteStore({ path: join(dir, 'x.db'), synchronous: 'OFF' as 'FULL' })).toThrow(
      /option "synchronous" must be "NORMAL" or "FULL"/,
    );
    expect(() => new SqliteStore({ path: join(dir, 'x.db'), retentionDays: 0 })).toThrow(RangeError);
  });

  it('refuses a corrupt file and a newer schema with a clear error, leaving the file untouched', () => {
    const dir = tempDir();
    const corrupt = join(dir, 'corrupt.db');
    const garbage = 'this is not a database\n'.repeat(500);
    writeFileSync(corrupt, garbage);
    expect(() => new SqliteStore({ path: corrupt })).toThrow(TaskflowError);
    expect(() => new SqliteStore({ path: corrupt })).toThrow(
      /cannot open ".*corrupt\.db" as a task database: file is not a database\. .*move it away/,
    );
    expect(readFileSync(corrupt, 'utf8')).toBe(garbage);

    const newer = join(dir, 'newer.db');
    const db = new DatabaseSync(newer);
    db.exec('PRAGMA user_version = 99');
    db.close();
    expect(() => new SqliteStore({ path: newer })).toThrow(
      /schema version 99 is newer than this koa-taskflow's \(4\); upgrade koa-taskflow/,
    );

    const foreign = join(dir, 'foreign.db');
    const other = new DatabaseSync(foreign);
    other.exec('CREATE TABLE taskflow_tasks (x)');
    other.close();
    expect(() => new SqliteStore({ path: foreign })).toThrow(
      /has a table "taskflow_tasks" but no koa-taskflow schema version/,
    );
  });

  it('deletes finished records older than retentionDays at open (their idempotency keys with them), never unfinished ones', async () => {
    const path = join(tempDir(), 'tasks.db');
    const old = Date.now() - 3 * 86_400_000;
    const store = openStore(path);
    await store.save([
      record('old-done', { status: 'success', createdAt: old, endedAt: old, idempotencyKey: 'k', tags: { t: '1' } }),
      record('old-pending', { createdAt: old }),
      record('recent-done', { status: 'success', endedAt: Date.now() - 60_000 }),
    ]);
    expect(await store.claimKey('k', 'someone-else')).toBe('old-done');
    await store.close();
    const reopened = openStore(path, { retentionDays: 2 });
    expect((await reopened.list()).map((r) => r.id).sort()).toEqual(['old-pending', 'recent-done']);
    expect(await reopened.list({ tags: { t: '1' } })).toEqual([]);
    expect(await reopened.claimKey('k', 'someone-else')).toBeUndefined();
  });

  it('acceptances go to an append-only log that readers, claims and other processes fold into the indexed table', async () => {
    const path = join(tempDir(), 'tasks.db');
    const a = openStore(path);
    const b = openStore(path);
    a.attach({ ownerId: 'owner-a', leaseMs: 60_000 });
    b.attach({ ownerId: 'owner-b', leaseMs: 60_000 });
    const x = record('x', { tags: { tenant: 'acme' } });
    await a.save([x]);
    const db = new DatabaseSync(path, { readOnly: true });
    onCleanup(() => db.close());
    const count = (table: string) => (db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;
    expect([count('taskflow_log'), count('taskflow_tasks')]).toEqual([1, 0]);
    // Another process reads: the log is folded (with tags), then a fresh log reuses sequence numbers.
    expect((await b.list({ tags: { tenant: 'acme' } })).map((r) => r.id)).toEqual(['x']);
    await b.save([record('y')]);
    expect(count('taskflow_log')).toBe(1);
    // a's later write of x must not take y's log row for its own old one.
    x.status = 'success';
    x.attempts = 1;
    x.endedAt = Date.now();
    await a.save([x]);
    await a.save([]);
    expect(await a.get('x')).toMatchObject({ status: 'success' });
    expect(await a.get('y')).toMatchObject({ status: 'pending' });
    expect(count('taskflow_log')).toBe(0);
  });

  it('answers 503 and runs nothing when the batch write fails', async () => {
    const path = join(tempDir(), 'tasks.db');
    const store = openStore(path);
    let runs = 0;
    const { url, manager } = await startApp(
      (app, m) => {
        const job = m.task(function job() {
          runs++;
        });
        app.use(async (ctx) => {
          ctx.body = { id: ctx.tasks.addTask(job) };
        });
      },
      { store, logger: quietLogger() },
    );
    await store.close();
    const response = await fetch(url);
    expect(response.status).toBe(503);
    await manager.drain();
    expect(runs).toBe(0);
  });
});

describe('persist checks at enqueue', () => {
  it('needs a registered task and JSON-serialisable args; persist:false lifts both', async () => {
    const manager = createManager({ store: openStore(join(tempDir(), 'tasks.db')) });
    const job = manager.task(function job(_value: unknown) {});
    expect(() => manager.add(function adHoc() {})).toThrow(
      /option "persist" .* "adHoc" is not registered: register it with manager.task\(fn\)/,
    );
    expect(() => manager.add(job, new Date())).toThrow(TypeError);
    expect(() => manager.add(job, new Date())).toThrow(
      /argument 1 of task "job" is not JSON-serialisable \(a Date; pass date.toISOString\(\)/,
    );
    expect(() => manager.add(job, { amount: 10n })).toThrow(/argument 1 .*\(\.amount: a bigint/);
    expect(() => manager.add(job, () => 1)).toThrow(/\(a function\)/);
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(() => manager.add(job, cyclic)).toThrow(/circular reference/);
    expect(() => manager.add(job, new Map())).toThrow(/an instance of Map/);
    expect(() => manager.add(job, [1, Number.NaN])).toThrow(/\[1\]: NaN becomes null/);
    expect(() => manager.with({ name: 'renamed' }).add(job, 1)).toThrow(
      /option "name" cannot rename persisted task "job"/,
    );
    // Plain data is fine; so is anything with persist: false.
    manager.add(job, { id: 1, items: [{ sku: 'a', qty: 2 }], note: null, optional: undefined });
    manager.with({ persist: false }).add(job, new Date());
    manager.with({ persist: false }).add(function adHoc() {});
    await manager.drain();
  });
});

describe('idempotency keys in a SQLite file', () => {
  it('one task for 30 concurrent requests with one key, across two managers on the same file', async () => {
    const path = join(tempDir(), 'tasks.db');
    await expectOneExecutionAcrossInstances([openStore(path), openStore(path)], 30);
  });

  it('a handle taken for a duplicate follows the task that holds the key', async () => {
    const path = join(tempDir(), 'tasks.db');
    const gate = deferred();
    const setup = (app: import('koa'), m: import('koa-taskflow').TaskManager) => {
      const report = m.task(async function report() {
        await gate.promise;
      });
      app.use(async (ctx) => {
        const handle = ctx.tasks.with({ idempotencyKey: 'monthly' }).schedule(report);
        ctx.body = {
          id: handle.id,
          status: ctx.query.wait ? (await handle.done).status : undefined,
          doneId: ctx.query.wait ? (await handle.done).id : undefined,
        };
      });
    };
    const one = await startApp(setup, { store: openStore(path) });
    const two = await startApp(setup, { store: openStore(path) });
    const first = (await (await fetch(one.url)).json()) as { id: string };
    const waiting = fetch(`${two.url}/?wait=1`).then(
      (r) => r.json() as Promise<{ id: string; status: string; doneId: string }>,
    );
    await waitFor(() => one.manager.running === 1, 5_000, 'the holder running');
    gate.resolve();
    const second = await waiting;
    expect(second.id).not.toBe(first.id);
    expect(second).toMatchObject({ status: 'success', doneId: first.id });
  });
});

describe('retries and restarts', () => {
  it('a retry waiting at shutdown keeps its attempt count and next run time; the next start runs it', async () => {
    const path = join(tempDir(), 'tasks.db');
    const attempts: number[] = [];
    const register = (m: import('koa-taskflow').TaskManager) =>
      m.task(
        function flaky() {
          attempts.push(getTaskContext()!.attempt);
          if (getTaskContext()!.attempt === 1) throw new Error('first attempt fails');
        },
        { retries: 2, delay: 300 },
      );
    const first = createManager({ store: openStore(path), logger: quietLogger() });
    const flaky = register(first);
    await first.start();
    const id = first.add(flaky);
    await waitFor(() => attempts.length === 1, 5_000, 'the first attempt');
    await waitFor(async () => (await first.get(id))?.runAt !== undefined, 5_000, 'the retry to be scheduled');
    await first.shutdown({ timeoutMs: 50 });
    const stored = await openStore(path).get(id);
    expect(stored).toMatchObject({ status: 'pending', attempts: 1, error: { message: 'first attempt fails' } });
    expect(stored!.runAt).toBeGreaterThan(stored!.createdAt);

    const second = createManager({ store: openStore(path) });
    register(second);
    await second.start();
    await waitFor(async () => (await second.get(id))?.status === 'success', 5_000, 'the resumed retry');
    expect(attempts).toEqual([1, 2]);
    expect(await second.get(id)).toMatchObject({ attempts: 2, maxAttempts: 3 });
  });

  it('at shutdown a running task is handed back and run again by the next start as its next attempt (requeueOnInterrupt, the default), or ends interrupted with requeueOnInterrupt: false', async () => {
    const path = join(tempDir(), 'tasks.db');
    const started: string[] = [];
    const register = (m: import('koa-taskflow').TaskManager, hang: boolean) => {
      const body = async (label: string) => {
        started.push(`${label}:${getTaskContext()!.attempt}`);
        if (hang) await new Promise(() => {});
      };
      return {
        keep: m.task(async function keep(label: string) {
          await body(label);
        }),
        drop: m.task(
          async function drop(label: string) {
            await body(label);
          },
          { requeueOnInterrupt: false },
        ),
      };
    };
    const first = createManager({ store: openStore(path) });
    const a = register(first, true);
    await first.start();
    const keepId = first.add(a.keep, 'keep');
    const dropId = first.add(a.drop, 'drop');
    await waitFor(() => started.length === 2, 5_000, 'both running');
    await first.shutdown({ timeoutMs: 20 });
    const second = createManager({ store: openStore(path) });
    register(second, false);
    await second.start();
    await second.drain();
    // The cut-short attempt keeps its number and uses up no retry; a hand-back is not a stall.
    expect(started.sort()).toEqual(['drop:1', 'keep:1', 'keep:2']);
    expect(await second.get(keepId)).toMatchObject({ status: 'success', attempts: 2, maxAttempts: 2 });
    expect((await second.get(keepId))!.stalls).toBeUndefined();
    expect(await second.get(dropId)).toMatchObject({ status: 'interrupted', reason: 'shutdown' });
  });
});

function quietLogger() {
  const noop = () => {};
  return { trace: noop, debug: noop, info: noop, warn: noop, error: noop, fatal: noop };
}

describe('group commit', () => {
  it('writes everything asked for in one event-loop turn in one call, each record once, as it is by then', async () => {
    const { GroupCommit } = await import('../src/stores/group-commit.js');
    const batches: string[][] = [];
    const commit = new GroupCommit(({ records }) => {
      batches.push(records.map((r) => `${r.id}:${r.status}`));
    });
    const a = record('a');
    const first = commit.add([a]);
    const second = commit.add([record('b')]);
    a.status = 'running';
    const third = commit.add([a]);
    expect(second).toBe(first);
    expect(third).toBe(first);
    await first;
    await commit.add([record('c')]);
    expect(batches).toEqual([['a:running', 'b:pending'], ['c:pending']]);
  });

  it('holds lazy writes (status changes) for one larger batch; add([]) writes everything queued at once', async () => {
    const { GroupCommit } = await import('../src/stores/group-commit.js');
    const batches: string[][] = [];
    const commit = new GroupCommit(({ records }) => {
      batches.push(records.map((r) => r.id));
    });
    const lazyWritten = commit.add([record('started')], { lazy: true });
    await commit.add([record('accepted')]);
    expect(batches).toEqual([['accepted']]);
    const endedWritten = commit.add([record('ended')], { lazy: true });
    await commit.add([]);
    await Promise.all([lazyWritten, endedWritten]);
    expect(batches).toEqual([['accepted'], ['started', 'ended']]);
  });

  it('cuts batches at maxRecords: a save that fits is never split, a larger one is written in full batches, in order', async () => {
    const { GroupCommit } = await import('../src/stores/group-commit.js');
    const batches: string[][] = [];
    const commit = new GroupCommit(
      ({ records }) => {
        batches.push(records.map((r) => r.id));
      },
      { maxRecords: 3 },
    );
    const first = commit.add(['a', 'b'].map((id) => record(id)));
    const second = commit.add(['c', 'd'].map((id) => record(id)));
    const large = commit.add(['e', 'f', 'g', 'h', 'i', 'j', 'k'].map((id) => record(id)));
    expect(second).not.toBe(first);
    await Promise.all([first, second, large]);
    expect(batches).toEqual([['a', 'b'], ['c', 'd'], ['e', 'f', 'g'], ['h', 'i', 'j'], ['k']]);
  });

  it('rejects every caller of a failed write, and later turns write again', async () => {
    const { GroupCommit } = await import('../src/stores/group-commit.js');
    let fail = true;
    const commit = new GroupCommit(async () => {
      if (fail) throw new Error('disk full');
    });
    const calls = [commit.add([record('a')]), commit.add([record('b')])];
    for (const call of calls) await expect(call).rejects.toThrow('disk full');
    fail = false;
    await expect(commit.add([record('c')])).resolves.toBeUndefined();
  });
});
