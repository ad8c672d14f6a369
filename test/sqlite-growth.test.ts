import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { DatabaseSync } from 'node:sqlite';
import { describe, expect, it } from 'vitest';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { compileFilter } from '../src/stores/filter.js';
import { listQuery } from '../src/stores/sqlite-list.js';
import { MIGRATIONS } from '../src/stores/sqlite-schema.js';
import { startNode } from './helpers/child.js';
import { openSqliteStore, taskRecord } from './helpers/durable-app.js';
import { tempDir } from './helpers/files.js';
import { oldRecords, recountMetrics, runMixedOutcomes } from './helpers/recount.js';
import { createManager, onCleanup, waitFor } from './helpers/server.js';

const DAY = 86_400_000;

const openStore = openSqliteStore;
const record = taskRecord;

/** metrics() as it must be: recounted from every record the store lists. */
async function recount(store: SqliteStore) {
  return recountMetrics(await store.list());
}

async function expectCountsMatchRecords(store: SqliteStore): Promise<number> {
  const expected = await recount(store);
  expect(await store.metrics()).toEqual(expected);
  return expected.total;
}

describe('SqliteStore as the history grows', () => {
  it('keeps counts and duration histograms that match a recount of the records: mixed outcomes, retries, rewrites, retention deletes', async () => {
    const path = join(tempDir(), 'tasks.db');
    // A year's retention until the old records below are to go.
    const store = openStore(path, { retentionDays: 365 });
    const manager = createManager({ store });
    await runMixedOutcomes(manager, 0, 120);
    // Records written straight through save(): rewritten with other statuses and durations, and old ones.
    const old = Date.now() - 30 * DAY;
    await store.save(oldRecords(old));
    await store.save([record('r', { name: 'rewritten', status: 'success', durationMs: 3, endedAt: Date.now() })]);
    await store.save([record('r', { name: 'rewritten', status: 'success', durationMs: 7_000, endedAt: Date.now() })]);
    await store.save([record('q', { name: 'rewritten', status: 'running' })]);
    await store.save([record('q', { name: 'rewritten', status: 'failed', endedAt: Date.now() })]);
    expect(await expectCountsMatchRecords(store)).toBe(120 + 30 + 2);
    await manager.shutdown();

    // Retention deletes the old records (and their tags) a batch at a time; the counts follow them.
    const reopened = openStore(path, { retentionDays: 7 });
    await waitFor(async () => (await reopened.list({ name: 'old' })).length === 0, 5_000, 'the old records to expire');
    expect(await reopened.list({ tags: { t: 'x' } })).toEqual([]);
    expect((await reopened.metrics()).byName.old).toBeUndefined();
    expect(await expectCountsMatchRecords(reopened)).toBe(122);
  });

  it('keeps them consistent with the records through a SIGKILL in the middle of writes', async () => {
    const path = join(tempDir(), 'tasks.db');
    const child = startNode(fileURLToPath(new URL('./fixtures/growth-writer.js', import.meta.url)), [], { DB: path });
    await child.waitForLine(/"writing"/, 15_000);
    await new Promise((resolve) => setTimeout(resolve, 300));
    child.process.kill('SIGKILL');
    await child.exited;
    const store = openStore(path);
    const total = await expectCountsMatchRecords(store);
    expect(total).toBeGreaterThan(20);
    const metrics = await store.metrics();
    expect(metrics.byStatus.success).toBeGreaterThan(0);
    expect(metrics.p95DurationMs).not.toBeNull();
  });

  it('upgrades a database of schema version 1 in place: its history counted, its tags indexed by time', async () => {
    const path = join(tempDir(), 'tasks.db');
    const db = new DatabaseSync(path);
    db.exec(MIGRATIONS[0]);
    db.exec('PRAGMA user_version = 1');
    const t0 = Date.now() - 1_000;
    const insert = db.prepare(
      'INSERT INTO taskflow_tasks (id, name, status, created_at, ended_at, record) VALUES (?, ?, ?, ?, ?, ?)',
    );
    const tag = db.prepare('INSERT INTO taskflow_tags (task_id, key, value) VALUES (?, ?, ?)');
    for (let i = 0; i < 40; i++) {
      const r = record(`v1-${i}`, {
        name: i % 2 ? 'mail' : 'sms',
        status: i % 4 === 0 ? 'failed' : 'success',
        createdAt: t0 + i,
        endedAt: t0 + i,
        durationMs: i * 3,
        tags: { tenant: `t${i % 3}` },
      });
      insert.run(r.id, r.name, r.status, r.createdAt, r.endedAt!, JSON.stringify(r));
      tag.run(r.id, 'tenant', r.tags.tenant);
    }
    db.exec(
      `INSERT INTO taskflow_log (id, name, status, created_at, record) VALUES ('v1-log', 'mail', 'pending', ${t0 + 100}, '${JSON.stringify(record('v1-log', { name: 'mail', createdAt: t0 + 100, tags: { tenant: 't0' } }))}')`,
    );
    db.close();

    const store = openStore(path);
    expect(await expectCountsMatchRecords(store)).toBe(41);
    expect(await store.metrics()).toMatchObject({
      byStatus: { success: 30, failed: 10, pending: 1 },
      avgDurationMs: expect.any(Number),
    });
    const tagged = (await store.list({ tags: { tenant: 't0' }, limit: 3 })).map((r) => r.id);
    expect(tagged).toEqual(['v1-log', 'v1-39', 'v1-36']);
    await store.save([
      record('new', { name: 'mail', status: 'success', durationMs: 1, tags: { tenant: 't0' }, endedAt: Date.now() }),
    ]);
    expect((await store.list({ tags: { tenant: 't0' }, limit: 1 }))[0].id).toBe('new');
    expect(await expectCountsMatchRecords(store)).toBe(42);
  });

  it('upgrades a database of schema version 3, whose triggers kept the counts: they carry on through rewrites, folds and a second store on the file', async () => {
    const path = join(tempDir(), 'tasks.db');
    const db = new DatabaseSync(path);
    for (const migration of MIGRATIONS.slice(0, 3)) db.exec(migration);
    db.exec('PRAGMA user_version = 3');
    const t0 = Date.now() - 1_000;
    const insert = db.prepare(
      'INSERT INTO taskflow_tasks (id, name, status, created_at, ended_at, record, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?)',
    );
    const v3 = (i: number) =>
      record(`v3-${i}`, {
        name: i % 2 ? 'mail' : 'sms',
        status: i % 5 === 0 ? 'pending' : i % 4 === 0 ? 'failed' : 'success',
        createdAt: t0 + i,
        endedAt: i % 5 === 0 ? undefined : t0 + i,
        durationMs: i % 5 === 0 ? undefined : i * 7,
      });
    for (let i = 0; i < 30; i++) {
      const r = v3(i);
      insert.run(r.id, r.name, r.status, r.createdAt, r.endedAt ?? null, JSON.stringify(r), r.durationMs ?? null);
    }
    // An acceptance the version-3 process logged and never folded.
    const logged = record('v3-log', { name: 'mail', createdAt: t0 + 100 });
    db.prepare('INSERT INTO taskflow_log (id, name, status, created_at, record) VALUES (?, ?, ?, ?, ?)').run(
      logged.id,
      logged.name,
      logged.status,
      logged.createdAt,
      JSON.stringify(logged),
    );
    db.close();

    const store = openStore(path);
    const other = openStore(path);
    expect(await expectCountsMatchRecords(store)).toBe(31);
    // The pending ones end (rewritten: counted out of pending, into their outcome and duration bucket), one of
    // them twice with another duration; some from the other store; new ones are logged, then folded by a read.
    const ended = (i: number, durationMs: number) =>
      record(`v3-${i}`, { ...v3(i), status: 'success', endedAt: Date.now(), durationMs });
    await store.save([ended(0, 3), ended(5, 40), record('v3-log', { ...logged, status: 'failed', endedAt: t0 + 200 })]);
    await other.save([ended(10, 700), ended(15, 2)]);
    await store.save([ended(0, 9_000)]);
    await other.save([record('fresh', { name: 'sms', createdAt: Date.now() })]);
    expect(await expectCountsMatchRecords(other)).toBe(32);
    expect(await store.metrics()).toMatchObject({ byStatus: { pending: 3, failed: 7 } });
    await other.close();
  });

  it('serves every filter shape from an index, newest first, never scanning the tasks table', async () => {
    const path = join(tempDir(), 'tasks.db');
    const store = openStore(path);
    const t0 = Date.now();
    await store.save([
      record('a', { name: 'mail', tags: { tenant: 'a', plan: 'pro' }, createdAt: t0 - 4, status: 'success' }),
      record('b', { name: 'mail', tags: { tenant: 'a' }, createdAt: t0 - 3, status: 'failed' }),
      record('c', { name: 'sms', tags: { tenant: 'b', plan: 'pro' }, createdAt: t0 - 2, status: 'interrupted' }),
      record('d', { name: 'mail', tags: { tenant: 'a' }, createdAt: t0 - 1, status: 'interrupted' }),
    ]);
    const db = new DatabaseSync(path, { readOnly: true });
    onCleanup(() => db.close());
    const ids = async (filter: Parameters<SqliteStore['list']>[0]) => (await store.list(filter)).map((r) => r.id);
    const shapes: [Parameters<SqliteStore['list']>[0], string[], RegExp][] = [
      [{}, ['d', 'c', 'b', 'a'], /taskflow_tasks_created/],
      [{ status: 'failed' }, ['b'], /taskflow_tasks_status/],
      // The dead letters: two statuses, each its own range of the status index.
      [{ status: ['failed', 'interrupted'] }, ['d', 'c', 'b'], /taskflow_tasks_status/],
      [{ name: 'mail' }, ['d', 'b', 'a'], /taskflow_tasks_name/],
      [{ name: 'mail', status: ['failed', 'interrupted'] }, ['d', 'b'], /taskflow_tasks_name/],
      [{ tags: { plan: 'pro' } }, ['c', 'a'], /taskflow_tags_value/],
      [{ tags: { tenant: 'a', plan: 'pro' } }, ['a'], /taskflow_tags_value/],
      [{ tags: { tenant: 'a' }, status: 'interrupted', name: 'mail', since: t0 - 2 }, ['d'], /taskflow_tags_value/],
      [{ status: 'failed', since: t0 - 3, limit: 1 }, ['b'], /taskflow_tasks_status/],
    ];
    for (const [filter, expected, index] of shapes) {
      expect(await ids(filter), JSON.stringify(filter)).toEqual(expected);
      // A page after a record (before) reads the same index from where that record sorts, not past an
      // offset: a range on (created_at, rowid). An offset is only used to read past a damaged record.
      const pages: [ReturnType<typeof compileFilter>, number][] = [
        [compileFilter(filter), 0],
        [compileFilter(filter), 100],
        [compileFilter({ ...filter, before: { createdAt: t0 - 2, id: 'c' } }), 0],
      ];
      for (const [f, offset] of pages) {
        const { sql, params } = listQuery(f, f.limit === Infinity ? -1 : f.limit, offset);
        const plan = (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...params) as { detail: string }[]).map(
          (r) => r.detail,
        );
        expect(plan.join(' | '), JSON.stringify(filter)).toMatch(index);
        if (f.before !== undefined && f.tags.length === 0)
          expect(plan.join(' | '), JSON.stringify(filter)).toMatch(/created_at<\?/);
        // "SCAN taskflow_tasks" (without an index) would read the whole history.
        expect(
          plan.filter((d) => /^SCAN (taskflow_tasks|t)\b(?! USING)/.test(d)),
          JSON.stringify(filter),
        ).toEqual([]);
        expect(
          plan.filter((d) => /^SCAN (taskflow_tags|g)\b(?! USING)/.test(d)),
          JSON.stringify(filter),
        ).toEqual([]);
      }
    }
    expect(await ids({ name: 'mail', limit: 2 })).toEqual(['d', 'b']);
    expect(await ids({ name: 'mail', before: { createdAt: t0 - 1, id: 'd' } })).toEqual(['b', 'a']);
    expect(await ids({ status: ['failed', 'interrupted'], limit: 1, before: { createdAt: t0 - 2, id: 'c' } })).toEqual([
      'b',
    ]);
    expect(await ids({ tags: { tenant: 'a' }, before: { createdAt: t0 - 3, id: 'b' } })).toEqual(['a']);
  });

  it('deletes expired records in batches that keep up with a steady load: the records held stay bounded', async () => {
    const path = join(tempDir(), 'tasks.db');
    // Records are kept one second: a pass runs every half second.
    const store = openStore(path, { retentionDays: 1_000 / DAY });
    const db = new DatabaseSync(path, { readOnly: true });
    onCleanup(() => db.close());
    const held = () => (db.prepare('SELECT count(*) AS n FROM taskflow_tasks').get() as { n: number }).n;
    // Steady writes for 4 s: 40 records per commit, a commit every 10 ms or as fast as the machine goes.
    const writes: { at: number; written: number }[] = [];
    let written = 0;
    let worst = 0;
    const started = Date.now();
    const until = started + 4_000;
    while (Date.now() < until) {
      const now = Date.now();
      await store.save(
        Array.from({ length: 40 }, (_, i) =>
          record(`s-${written + i}`, {
            status: 'success',
            createdAt: now,
            endedAt: now,
            durationMs: 1,
            tags: { n: String(i) },
          }),
        ),
      );
      written += 40;
      writes.push({ at: now, written });
      // Held: at most what was written in the last second, plus one interval, plus room for a slow machine.
      const since = writes.find((w) => w.at >= now - 2_500) ?? writes[0];
      worst = Math.max(worst, held() - (written - since.written + 40));
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(worst).toBeLessThanOrEqual(0);
    // Everything written in the first second (at least 3 s old by now) has gone, however fast the machine wrote.
    const firstSecond = [...writes].reverse().find((w) => w.at < started + 1_000)!.written;
    expect(firstSecond).toBeGreaterThan(0);
    expect(held()).toBeLessThanOrEqual(written - firstSecond);
    await store.close();
    await expectCountsMatchRecords(openStore(path));
  });

  it('never stalls the event loop over 20 ms during admin reads, metrics refreshes and retention passes of a large history', async () => {
    const path = join(tempDir(), 'tasks.db');
    const COUNT = 60_000;
    // Filled by another process, through save(): this one starts measuring without its garbage to collect.
    const filler = startNode(fileURLToPath(new URL('./fixtures/growth-fill.js', import.meta.url)), [], {
      DB: path,
      COUNT: String(COUNT),
    });
    await filler.waitForLine(/"filled"/, 90_000);
    let store = openStore(path);
    const manager = createManager({ store });
    // The largest delay of the event loop while `work` runs. Other processes on a loaded machine delay it
    // too, at random: a stall of ours happens every time, so the least of five windows is kept.
    const delay = monitorEventLoopDelay({ resolution: 1 });
    const stall = async (
      work: () => Promise<unknown>,
      before?: () => void,
      after?: () => Promise<void>,
    ): Promise<number> => {
      const maxima: number[] = [];
      for (let i = 0; i < 5; i++) {
        before?.();
        delay.reset();
        delay.enable();
        await work();
        delay.disable();
        maxima.push(delay.max / 1e6);
        await after?.();
      }
      return Math.min(...maxima);
    };
    const reads: Record<string, () => Promise<unknown>> = {
      list: () => manager.list({ limit: 50 }),
      byTag: () => manager.list({ tags: { tenant: 't7' }, limit: 50 }),
      deadLetters: () => manager.list({ status: ['failed', 'interrupted'], limit: 50 }),
      byNameAndStatus: () => manager.list({ name: 'name3', status: 'success', limit: 200 }),
      deepPage: () => manager.list({ tags: { tenant: 't7' }, limit: 1_000 }),
      metrics: () => manager.metrics(),
      // Every record of a status: read and parsed a slice per event-loop turn.
      allFailed: () => manager.list({ status: 'failed' }),
    };
    const delays: Record<string, number> = {};
    for (const [name, read] of Object.entries(reads)) delays[name] = await stall(read);
    expect((await manager.metrics()).total).toBe(COUNT);
    expect(await manager.list({ status: 'failed' })).toHaveLength(0.08 * COUNT);
    // Five retention passes (each starts as the store opens), each expiring a thirtieth of the history.
    await store.close();
    let days = 6;
    delays.retention = await stall(
      () =>
        waitFor(
          async () => (await store.metrics()).byStatus.success <= (0.9 * COUNT * days) / 6 + 20,
          60_000,
          `the retention pass to ${days} days`,
        ),
      () => (store = openStore(path, { retentionDays: (days -= 0.2) })),
      () => store.close(),
    );
    console.log(`event loop's largest delay (ms, least of 5) over ${COUNT} records:`, delays);
    for (const [name, ms] of Object.entries(delays)) expect(ms, name).toBeLessThanOrEqual(20);
    await expectCountsMatchRecords(openStore(path));
  }, 180_000);
});
