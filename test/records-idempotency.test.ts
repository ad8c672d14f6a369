import { randomUUID } from 'node:crypto';
import type Koa from 'koa';
import { describe, expect, it } from 'vitest';
import {
  MemoryStore,
  TaskCancelledError,
  TaskflowError,
  TaskNotFoundError,
  getTaskContext,
  REDACTED,
  type TaskRecord,
} from 'koa-taskflow';
import { TaskCancelledError as InternalCancelledError } from '../src/errors.js';
import { followingHandle } from '../src/handles.js';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { createManager, deferred, startApp, waitFor } from './helpers/server.js';

describe('idempotency keys', () => {
  it('return the existing id and do not enqueue while the first task has not failed', async () => {
    let runs = 0;
    const { url, manager } = await startApp((app) => {
      app.use(async (ctx) => {
        ctx.body = {
          id: ctx.tasks.with({ idempotencyKey: `invoice:${String(ctx.query.order)}` }).addTask(() => void runs++),
        };
      });
    });
    const ids = await Promise.all(
      Array.from({ length: 5 }, async () => ((await (await fetch(`${url}/?order=7`)).json()) as { id: string }).id),
    );
    const other = ((await (await fetch(`${url}/?order=8`)).json()) as { id: string }).id;
    await manager.drain();
    expect(new Set(ids).size).toBe(1);
    expect(other).not.toBe(ids[0]);
    expect(runs).toBe(2);
    // Finished successfully: still deduplicated.
    const again = ((await (await fetch(`${url}/?order=7`)).json()) as { id: string }).id;
    expect(again).toBe(ids[0]);
    await manager.drain();
    expect(runs).toBe(2);
    expect(await manager.get(ids[0])).toMatchObject({ idempotencyKey: 'invoice:7', status: 'success' });
  });

  it('allow a new task once the holder has failed', async () => {
    const manager = createManager();
    let attempt = 0;
    const flaky = () => {
      if (++attempt === 1) throw new Error('first fails');
    };
    const first = manager.with({ idempotencyKey: 'k' }).add(flaky);
    await manager.drain();
    const second = manager.with({ idempotencyKey: 'k' }).add(flaky);
    await manager.drain();
    expect(second).not.toBe(first);
    expect((await manager.get(second))!.status).toBe('success');
  });

  it('a duplicate schedule() gets a handle that follows the original task', async () => {
    const manager = createManager();
    const gate = deferred();
    const { url } = await startApp((app) => {
      app.use(async (ctx) => {
        const handle = ctx.tasks.with({ idempotencyKey: 'once' }).schedule(() => gate.promise);
        ctx.body = { id: handle.id };
        if (ctx.query.wait) ctx.body = { id: handle.id, status: (await handle.done).status };
      });
    }, manager);
    const first = (await (await fetch(url)).json()) as { id: string };
    const waiting = fetch(`${url}/?wait=1`).then((r) => r.json() as Promise<{ id: string; status: string }>);
    await waitFor(() => manager.running === 1, 5_000, 'the original task running');
    gate.resolve();
    expect(await waiting).toEqual({ id: first.id, status: 'success' });
  });
});

describe('a handle for a key whose holder is not live in this process', () => {
  /** GET / schedules a task under key "k" and answers with what its handle reports once the holder is done. */
  function reportHandle(app: Koa, onHandle = () => {}): void {
    app.use(async (ctx) => {
      if (ctx.path === '/fail') {
        ctx.tasks.with({ idempotencyKey: 'k' }).addTask(function invoice() {});
        throw new Error('the route failed');
      }
      const handle = ctx.tasks.with({ idempotencyKey: 'k' }).schedule(function duplicate() {});
      onHandle();
      const started = await handle.started.then(
        () => 'started',
        (error: unknown) => (error instanceof TaskCancelledError ? 'TaskCancelledError' : String(error)),
      );
      const record = await handle.done;
      ctx.body = {
        id: handle.id,
        name: handle.name,
        tags: handle.options.tags,
        started,
        status: record.status,
        recordName: record.name,
      };
    });
  }

  it("ended here: name, options and final record are the holder's", async () => {
    const { url, manager } = await startApp((app) => reportHandle(app));
    const holder = manager.with({ idempotencyKey: 'k', tags: { team: 'billing' } }).add(function invoice() {});
    await manager.drain();
    expect(await (await fetch(url)).json()).toEqual({
      id: holder,
      name: 'invoice',
      tags: { team: 'billing' },
      started: 'started',
      status: 'success',
      recordName: 'invoice',
    });
  });

  it('never started (its request failed): started rejects with TaskCancelledError, done is its cancelled record', async () => {
    const { url } = await startApp((app) => reportHandle(app));
    expect((await fetch(`${url}/fail`)).status).toBe(500);
    expect(await (await fetch(url)).json()).toMatchObject({
      name: 'invoice',
      started: 'TaskCancelledError',
      status: 'cancelled',
      recordName: 'invoice',
    });
  });

  it('running in another manager sharing the store: done follows it until it is final', async () => {
    const store = new MemoryStore();
    const elsewhere = createManager({ store });
    const gate = deferred();
    const holder = elsewhere.with({ idempotencyKey: 'k' }).add(function invoice() {
      return gate.promise;
    });
    await waitFor(() => elsewhere.running === 1, 5_000, 'the holder running in the other manager');
    let handed = false;
    const { url } = await startApp((app) => reportHandle(app, () => (handed = true)), { store });
    const answer = fetch(url).then((r) => r.json());
    await waitFor(() => handed, 5_000, 'the duplicate handle');
    gate.resolve();
    expect(await answer).toEqual({
      id: holder,
      name: 'invoice',
      tags: {},
      started: 'started',
      status: 'success',
      recordName: 'invoice',
    });
  });

  it('whose record is gone: done still resolves with a final record, never undefined', async () => {
    // Only a race with another process reaches this (the holder ended and its record went between the key
    // check and the read), so the handle is made directly, over a store that has no record of the holder.
    const id = randomUUID();
    const nothing = () => Promise.resolve(undefined);
    const handle = followingHandle(
      {
        runner: { live: () => undefined, snapshot: (record: TaskRecord) => record } as never,
        store: { get: nothing } as never,
        get: nothing,
        closing: false,
      },
      id,
      [],
    );
    await expect(handle.started).rejects.toBeInstanceOf(InternalCancelledError);
    expect(await handle.done).toMatchObject({ id, status: 'cancelled', reason: 'duplicate', attempts: 0 });
  });
});

describe('records', () => {
  it('task ids are distinct version 4 UUIDs, past the 256 ids one batch of random bytes makes', async () => {
    const manager = createManager();
    const ids = Array.from({ length: 1_000 }, () => manager.add(function tick() {}));
    await manager.drain();
    expect(new Set(ids).size).toBe(1_000);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    // Both halves of each byte vary: no digit position is stuck at one value across the ids.
    for (let position = 0; position < 36; position++) {
      if ([8, 13, 14, 18, 23].includes(position)) continue;
      expect(new Set(ids.map((id) => id[position])).size).toBeGreaterThan(3);
    }
    expect((await manager.get(ids[999]))?.status).toBe('success');
  });

  it('list() filters by status, name, tags (all must match), since and limit, newest first', async () => {
    const manager = createManager();
    const t0 = Date.now();
    manager.with({ tags: { tenant: 'a', plan: 'pro' } }).add(function mail() {});
    manager.with({ tags: { tenant: 'a' } }).add(function mail() {
      throw new Error('x');
    });
    manager.with({ tags: { tenant: 'b', plan: 'pro' } }).add(function sms() {});
    await manager.drain();
    const names = (records: { name: string; tags: Record<string, string> }[]) =>
      records.map((r) => `${r.name}/${r.tags.tenant}`);
    expect(names(await manager.list())).toEqual(['sms/b', 'mail/a', 'mail/a']);
    expect(names(await manager.list({ status: 'failed' }))).toEqual(['mail/a']);
    expect(names(await manager.list({ status: ['failed', 'success'], name: 'mail' }))).toHaveLength(2);
    expect(names(await manager.list({ tags: { plan: 'pro' } }))).toEqual(['sms/b', 'mail/a']);
    expect(names(await manager.list({ tags: { plan: 'pro', tenant: 'a' } }))).toEqual(['mail/a']);
    expect(await manager.list({ limit: 1 })).toHaveLength(1);
    expect(await manager.list({ since: new Date(t0 + 60_000) })).toEqual([]);
    expect(await manager.list({ since: t0 })).toHaveLength(3);
  });

  it('get() returns a copy: changing it does not change the stored record; unknown ids are undefined', async () => {
    const manager = createManager();
    const id = manager.add(function job(_n: number) {}, 1);
    await manager.drain();
    const copy = (await manager.get(id))!;
    copy.status = 'failed';
    copy.args.push('extra');
    expect(await manager.get(id)).toMatchObject({ status: 'success', args: [1] });
    expect(await manager.get('no-such-id')).toBeUndefined();
  });

  it('served records mask secret-looking keys and configured paths in args and log fields', async () => {
    const manager = createManager({ redact: ['card.number'] });
    const id = manager.add(
      function charge(payload: { user: string; password: string; card: { number: string; brand: string } }) {
        void payload;
        getTaskContext();
      },
      { user: 'ann', password: 'hunter2', card: { number: '4242424242424242', brand: 'visa' } },
    );
    await manager.drain();
    const record = (await manager.get(id))!;
    expect(record.args).toEqual([{ user: 'ann', password: REDACTED, card: { number: REDACTED, brand: 'visa' } }]);
    expect(JSON.stringify(await manager.list())).not.toContain('hunter2');
  });

  it('metrics() counts by status and name with success rate, mean and p95 duration', async () => {
    const manager = createManager();
    for (let i = 0; i < 3; i++) manager.add(function ok() {});
    manager.add(function bad() {
      throw new Error('x');
    });
    await manager.drain();
    const metrics = await manager.metrics();
    expect(metrics.total).toBe(4);
    expect(metrics.byStatus).toMatchObject({ success: 3, failed: 1, pending: 0 });
    expect(metrics.successRate).toBe(0.75);
    expect(metrics.byName.ok).toMatchObject({ total: 3, successRate: 1 });
    expect(metrics.byName.bad).toMatchObject({ total: 1, successRate: 0, avgDurationMs: null, p95DurationMs: null });
    expect(metrics.avgDurationMs).toBeGreaterThanOrEqual(0);
    expect(metrics.p95DurationMs).toBeGreaterThanOrEqual(0);
  });

  it.each([
    ['MemoryStore', () => undefined],
    ['SqliteStore', () => new SqliteStore({ path: ':memory:' })],
  ])('metrics() counts a task named like an Object.prototype key under its name (%s)', async (_, store) => {
    const manager = createManager({ store: store() });
    const names = ['__proto__', 'constructor', 'toString'];
    for (const name of names) manager.add(manager.task(async () => {}, { name }));
    await manager.drain();
    const { byName } = await manager.metrics();
    expect(Object.keys(byName).sort()).toEqual(names.sort());
    for (const name of names) expect(Object.getOwnPropertyDescriptor(byName, name)?.value).toMatchObject({ total: 1 });
    expect(Object.getPrototypeOf(byName)).toBe(Object.prototype);
  });
});

describe('retry(id)', () => {
  it('re-enqueues a failed registered task with its args and tags as a new task', async () => {
    const manager = createManager();
    let fail = true;
    const seen: number[] = [];
    const job = manager.task(function job(n: number) {
      seen.push(n);
      if (fail) throw new Error('down');
    });
    const first = manager.with({ tags: { tenant: 'acme' } }).add(job, 42);
    await manager.drain();
    fail = false;
    const second = await manager.retry(first);
    await manager.drain();
    expect(second).not.toBe(first);
    expect(seen).toEqual([42, 42]);
    expect(await manager.get(second)).toMatchObject({
      status: 'success',
      args: [42],
      tags: { tenant: 'acme' },
      retryOf: first,
    });
    expect((await manager.get(first))!.status).toBe('failed');
  });

  it('refuses unknown ids, unfinished or successful tasks, and unregistered functions', async () => {
    const manager = createManager();
    await expect(manager.retry('nope')).rejects.toBeInstanceOf(TaskNotFoundError);
    const ok = manager.task(function fine() {});
    const done = manager.add(ok);
    const anonymousFailure = manager.add(() => {
      throw new Error('x');
    });
    await manager.drain();
    await expect(manager.retry(done)).rejects.toThrow(/is success; only failed or interrupted/);
    await expect(manager.retry(anonymousFailure)).rejects.toThrow(TaskflowError);
    await expect(manager.retry(anonymousFailure)).rejects.toThrow(/no task is registered/);
  });
});

describe('MemoryStore', () => {
  it('stays within maxRecords by dropping the oldest finished records, never unfinished ones', async () => {
    const store = new MemoryStore({ maxRecords: 10 });
    const manager = createManager({ store, concurrency: 1 });
    const gate = deferred();
    const blocker = manager.add(() => gate.promise);
    const queued = Array.from({ length: 3 }, () => manager.add(() => {}));
    await waitFor(() => manager.running === 1, 5_000, 'blocker running');
    // Nothing has finished yet: all 4 unfinished records are kept.
    gate.resolve();
    await manager.drain();
    const finished = Array.from({ length: 20 }, () => manager.add(() => {}));
    await manager.drain();
    const kept = await manager.list();
    expect(kept.length).toBeLessThanOrEqual(10);
    expect(kept.map((r) => r.id)).toContain(finished[finished.length - 1]);
    expect(await manager.get(blocker)).toBeUndefined();
    expect(queued).toHaveLength(3);
  });

  it('serves a finished record as it ended: the same fields, in the same order, whatever its outcome', async () => {
    const ended = new Map<string, TaskRecord>();
    const { url, manager } = await startApp((app, manager) => {
      const ok = manager.task(function ok() {});
      const flaky = manager.task(
        function flaky(n: number) {
          if (n === 1) throw new Error('always');
        },
        { retries: 1, delay: 0 },
      );
      app.use((ctx) => {
        const handles = [
          ctx.tasks.afterResponse.schedule(ok),
          ctx.tasks.with({ priority: 3, tags: { tenant: 'acme' } }).afterResponse.schedule(ok),
          ctx.tasks.afterResponse.schedule(flaky, 1),
        ];
        for (const handle of handles) void handle.done.then((record) => ended.set(handle.id, record));
        ctx.body = handles.map((h) => h.id);
      });
    });
    const ids = (await (await fetch(`${url}/`)).json()) as string[];
    await manager.drain();
    await waitFor(() => ended.size === ids.length, 5_000, 'every done');
    expect(ids.map((id) => ended.get(id)!.status)).toEqual(['success', 'success', 'failed']);
    for (const id of ids) {
      const served = await manager.get(id);
      expect(Object.keys(served!)).toEqual(Object.keys(ended.get(id)!));
      expect(JSON.stringify(served)).toBe(JSON.stringify(ended.get(id)));
    }
  });

  it('never drops an unfinished record even past the bound', async () => {
    const store = new MemoryStore({ maxRecords: 5 });
    const manager = createManager({ store, concurrency: 1 });
    const gate = deferred();
    const ids = Array.from({ length: 8 }, () => manager.add(() => gate.promise));
    expect((await manager.list()).length).toBe(8);
    gate.resolve();
    await manager.drain();
    expect(ids).toHaveLength(8);
  });
});
