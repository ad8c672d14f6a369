// One bad record affects only itself: a stored record that is not a task record (not JSON, a wrong shape,
// another id, a Redis key of another type) is skipped by recovery, list(), metrics() and the admin API,
// reported once by id through the logger, and everything else carries on.
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { type TaskRecord, type TaskStore } from 'koa-taskflow';
import { RedisStore } from 'koa-taskflow/redis';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { expectJson, startAdmin } from './helpers/admin.js';
import { countBy, readTaskLog, startDurableApp } from './helpers/durable-app.js';
import { recordingLogger } from './helpers/logger.js';
import { tempDir } from './helpers/files.js';
import { startRedisServer } from './helpers/redis.js';
import { createManager, onCleanup, waitFor } from './helpers/server.js';

const PENDING = 200;
// The damaged JSON holds what looks like a secret: it must not reach a log line or a response.
const NOT_JSON = '{"name":"job","args":["password=hunter2"],';

// Recent: finished records past retention would be deleted at open.
const BASE = Date.now() - 60_000;

function record(n: number, fields: Partial<TaskRecord> = {}): TaskRecord {
  return {
    id: randomUUID(),
    name: 'job',
    status: 'pending',
    args: [n],
    tags: { n: String(n) },
    attempts: 0,
    maxAttempts: 1,
    createdAt: BASE + n,
    logs: [],
    ...fields,
  };
}

interface Damage {
  /** A fresh store on the same data. */
  open(): TaskStore;
  /** Replace the stored record of `id` with `text`. */
  setRecord(id: string, text: string): Promise<void>;
  /** The third kind of damage: another id in the record (SQLite) or a key of another type (Redis). */
  breakThird(id: string, other: TaskRecord): Promise<void>;
}

/**
 * 200 pending tasks and 3 finished ones are stored; 3 pending and 1 finished are damaged. A new manager's
 * start() resolves and runs the 197 others; list(), metrics() and the admin API answer with the readable
 * records; get(id) of a damaged one rejects naming it; each damaged id is logged once, however often it is met.
 */
async function expectDamageIsolated(damage: Damage): Promise<void> {
  const pending = Array.from({ length: PENDING }, (_, n) => record(n));
  const finished = Array.from({ length: 3 }, (_, n) =>
    record(-1 - n, { status: 'success', attempts: 1, endedAt: BASE, durationMs: 10 }),
  );
  const seed = damage.open();
  await seed.save([...pending, ...finished]);
  // The newest (the first a list() with a limit meets), one in the middle, one near the start, and a finished one.
  const bad = [pending[199], pending[150], pending[3], finished[0]];
  await damage.setRecord(bad[0].id, NOT_JSON);
  await damage.setRecord(bad[1].id, JSON.stringify({ id: bad[1].id, name: 'job', createdAt: 5 }));
  await damage.breakThird(bad[2].id, pending[2]);
  await damage.setRecord(bad[3].id, NOT_JSON);
  await seed.close();
  const badIds = new Set(bad.map((r) => r.id));

  const { errors, logger } = recordingLogger();
  const ran: number[] = [];
  const manager = createManager({ store: damage.open(), logger, leaseMs: 60, orphanCheckMs: 20 });
  manager.task(function job(n: number) {
    ran.push(n);
  });
  await manager.start();
  await waitFor(() => ran.length === PENDING - 3, 10_000, 'the readable pending tasks to run');
  await manager.drain();
  expect(ran.sort((a, b) => a - b)).toEqual(pending.filter((r) => !badIds.has(r.id)).map((r) => r.args[0]));

  const readable = PENDING + 3 - bad.length;
  const listed = await manager.list();
  expect(listed).toHaveLength(readable);
  expect(listed.filter((r) => badIds.has(r.id))).toEqual([]);
  // A skipped record leaves no hole in a page: the next one takes its place.
  expect((await manager.list({ limit: 5 })).map((r) => r.id)).toEqual(listed.slice(0, 5).map((r) => r.id));
  expect((await manager.list({ status: 'success' })).length).toBe(readable);
  const metrics = await manager.metrics();
  expect(metrics.byStatus.success).toBeGreaterThanOrEqual(readable);
  expect(metrics.avgDurationMs).not.toBeNull();
  for (const r of bad) {
    await expect(manager.get(r.id)).rejects.toMatchObject({
      name: 'TaskStoreError',
      code: 'ERR_STORE_UNREADABLE',
      message: expect.stringContaining(`task "${r.id}" cannot be read`),
    });
  }

  const { api } = await startAdmin({}, manager);
  const page = await expectJson<{ tasks: TaskRecord[] }>(await api('?limit=500'), 200);
  expect(page.tasks).toHaveLength(readable);
  await expectJson(await api('/metrics'), 200);
  const one = await expectJson<{ error: string; code: string }>(await api(`/${bad[0].id}`), 500);
  expect(one).toEqual({
    code: 'ERR_STORE_UNREADABLE',
    error: expect.stringMatching(new RegExp(`task "${bad[0].id}" cannot be read \\(not valid JSON\\)`)),
  });
  expect(JSON.stringify(one)).not.toContain('hunter2');

  // Several more orphan checks (every 20 ms): the damaged records stay skipped and are not reported again.
  await new Promise((resolve) => setTimeout(resolve, 200));
  await manager.list();
  const skipped = errors.filter((line) => line.includes('skipped task'));
  for (const id of badIds)
    expect(
      skipped.filter((line) => line.includes(id)),
      `reports of ${id}`,
    ).toHaveLength(1);
  expect(skipped).toHaveLength(bad.length);
  expect(errors.join('\n')).not.toContain('hunter2');
}

describe('a damaged record in SQLite', () => {
  it('is skipped by recovery, list(), metrics() and the admin API and reported once; the 197 other pending tasks run', async () => {
    const path = join(tempDir(), 'tasks.db');
    const raw = () => {
      const db = new DatabaseSync(path);
      onCleanup(() => db.close());
      return db;
    };
    // Wherever the record is: the acceptance log or the indexed table.
    const write = (id: string, text: string) => {
      const db = raw();
      for (const table of ['taskflow_log', 'taskflow_tasks'])
        db.prepare(`UPDATE ${table} SET record = ? WHERE id = ?`).run(text, id);
    };
    await expectDamageIsolated({
      open: () => {
        const store = new SqliteStore({ path });
        onCleanup(() => store.close());
        return store;
      },
      setRecord: async (id, text) => write(id, text),
      breakThird: async (id, other) => write(id, JSON.stringify(other)),
    });
  });

  it('after a SIGKILL, a restarted process starts, runs the 199 intact acknowledged tasks and reports the damaged one once', async () => {
    const dir = tempDir('taskflow-damaged-');
    const env = { DB: join(dir, 'tasks.db'), TASK_LOG: join(dir, 'tasks.log'), LEASE_MS: '600', ORPHAN_MS: '100' };
    const first = await startDurableApp({ ...env, MODE: 'hold', CONCURRENCY: '1' });
    const acknowledged = await Promise.all(Array.from({ length: PENDING }, (_, n) => first.add(n)));
    await waitFor(() => readTaskLog(env.TASK_LOG).length === 1, 5_000, 'the first task to be running');
    first.child.process.kill('SIGKILL');
    await first.child.exited;
    const running = readTaskLog(env.TASK_LOG)[0].id;
    const damaged = acknowledged.find((id) => id !== running)!;
    const db = new DatabaseSync(env.DB);
    for (const table of ['taskflow_log', 'taskflow_tasks'])
      db.prepare(`UPDATE ${table} SET record = ? WHERE id = ?`).run(NOT_JSON, damaged);
    db.close();

    const second = await startDurableApp({ ...env, MODE: 'fast', CONCURRENCY: '16' });
    await waitFor(() => countBy(env.TASK_LOG, 'done').size === PENDING - 1, 15_000, 'the intact tasks to be done');
    const done = countBy(env.TASK_LOG, 'done');
    for (const id of acknowledged) expect(done.get(id), `task ${id}`).toBe(id === damaged ? undefined : 1);
    // Orphan checks every 100 ms meanwhile: reported once, at start.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const reports = second.child.lines.filter((line) => line.includes(damaged));
    expect(reports).toEqual([expect.stringMatching(/skipped task .* cannot be read \(not valid JSON\)/)]);
    expect(second.child.lines.join('\n')).not.toContain('hunter2');
    second.child.process.kill('SIGTERM');
    await second.child.exited;
  });
});

describe('a damaged record in Redis', () => {
  it('is skipped by recovery, list(), metrics() and the admin API and reported once; the 197 other pending tasks run', async () => {
    const redis = await startRedisServer();
    const client = new Redis(redis.url);
    onCleanup(() => void client.disconnect());
    await expectDamageIsolated({
      open: () => {
        const store = new RedisStore({ url: redis.url }, { prefix: 'dmg' });
        onCleanup(() => store.close());
        return store;
      },
      setRecord: async (id, text) => void (await client.hset(`dmg:t:${id}`, 'record', text)),
      breakThird: async (id) => {
        await client.del(`dmg:t:${id}`);
        await client.set(`dmg:t:${id}`, 'not a hash');
      },
    });
  });
});

describe('the Redis retention sweep', () => {
  it('passes over a damaged finished record (left as it is) and sweeps the others; start() resolves and the pending task runs', async () => {
    const redis = await startRedisServer();
    const client = new Redis(redis.url);
    onCleanup(() => void client.disconnect());
    const open = () => {
      const store = new RedisStore({ url: redis.url }, { prefix: 'sweep' });
      onCleanup(() => store.close());
      return store;
    };
    const old = Date.now() - 30 * 86_400_000;
    const [expired, damaged] = [0, 1].map((n) =>
      record(n, { status: 'success', attempts: 1, createdAt: old, endedAt: old }),
    );
    const pending = record(2);
    const seed = open();
    await seed.save([expired, damaged, pending]);
    await seed.close();
    await client.hset(`sweep:t:${damaged.id}`, 'record', NOT_JSON);

    const { errors, logger } = recordingLogger();
    const ran: number[] = [];
    const manager = createManager({ store: open(), logger });
    manager.task(function job(n: number) {
      ran.push(n);
    });
    await manager.start();
    await manager.drain();
    expect(ran).toEqual([2]);
    expect(await manager.get(expired.id)).toBeUndefined();
    await expect(manager.get(damaged.id)).rejects.toMatchObject({ code: 'ERR_STORE_UNREADABLE' });
    expect(await client.hget(`sweep:t:${damaged.id}`, 'record')).toBe(NOT_JSON);
    expect(errors.filter((line) => line.includes('skipped task'))).toHaveLength(1);
  });
});
