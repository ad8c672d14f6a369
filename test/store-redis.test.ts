import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { TaskflowError, type TaskRecord } from 'koa-taskflow';
import { RedisStore } from 'koa-taskflow/redis';
import {
  countBy,
  expectOneExecutionAcrossInstances,
  readTaskLog,
  startDurableApp,
  taskRecord as record,
} from './helpers/durable-app.js';
import { tempDir } from './helpers/files.js';
import { startRedisServer, type RedisServer } from './helpers/redis.js';
import { createManager, deferred, listen, mountApp, onCleanup, startApp, waitFor } from './helpers/server.js';

function openStore(redis: RedisServer, prefix = 'test'): RedisStore {
  const store = new RedisStore({ url: redis.url }, { prefix });
  onCleanup(() => store.close());
  return store;
}

const quietLogger = () => {
  const noop = () => {};
  return { trace: noop, debug: noop, info: noop, warn: noop, error: noop, fatal: noop };
};

describe('RedisStore', () => {
  it('persists a request’s task before the response, runs it, and serves list() filters from its indexes', async () => {
    const redis = await startRedisServer();
    const ran: string[] = [];
    const { url, manager } = await startApp(
      (app, m) => {
        const sendWelcome = m.task(async function sendWelcome(email: string) {
          ran.push(email);
        });
        app.use(async (ctx) => {
          ctx.body = {
            id: ctx.tasks
              .with({ tags: { tenant: String(ctx.query.tenant) } })
              .addTask(sendWelcome, `${String(ctx.query.tenant)}@b.c`),
          };
        });
      },
      { store: openStore(redis) },
    );
    const { id } = (await (await fetch(`${url}/?tenant=acme`)).json()) as { id: string };
    await manager.drain();
    expect(ran).toEqual(['acme@b.c']);
    const other = openStore(redis);
    expect(await other.get(id)).toMatchObject({
      id,
      name: 'sendWelcome',
      args: ['acme@b.c'],
      tags: { tenant: 'acme' },
      status: 'success',
      attempts: 1,
    });

    const t0 = Date.now() + 10;
    await other.save([
      record('a', {
        name: 'mail',
        tags: { tenant: 'a', plan: 'pro' },
        createdAt: t0 + 1,
        status: 'success',
        endedAt: t0 + 1,
      }),
      record('b', { name: 'mail', tags: { tenant: 'a' }, createdAt: t0 + 2, status: 'failed', endedAt: t0 + 2 }),
      record('c', { name: 'sms', tags: { tenant: 'b', plan: 'pro' }, createdAt: t0 + 3 }),
    ]);
    const ids = (records: TaskRecord[]) => records.map((r) => r.id);
    expect(ids(await other.list({ since: t0 }))).toEqual(['c', 'b', 'a']);
    expect(ids(await other.list({ status: 'failed' }))).toEqual(['b']);
    expect(ids(await other.list({ status: ['failed', 'success'], name: 'mail' }))).toEqual(['b', 'a']);
    expect(ids(await other.list({ tags: { plan: 'pro' } }))).toEqual(['c', 'a']);
    expect(ids(await other.list({ tags: { plan: 'pro', tenant: 'a' } }))).toEqual(['a']);
    expect(ids(await other.list({ limit: 1 }))).toEqual(['c']);
    expect(await other.list({ status: 'running' })).toEqual([]);
    expect(ids(await manager.list({ name: 'sendWelcome' }))).toEqual([id]);
  });

  it('deletes finished records older than retentionDays with their index entries and idempotency keys', async () => {
    const redis = await startRedisServer();
    const store = new RedisStore({ url: redis.url }, { prefix: 'ret', retentionDays: 1 });
    onCleanup(() => store.close());
    const old = Date.now() - 2 * 86_400_000;
    await store.save([
      record('old', { status: 'success', createdAt: old, endedAt: old, idempotencyKey: 'k', tags: { t: '1' } }),
      record('old-pending', { createdAt: old }),
    ]);
    expect(await store.claimKey('k', 'other')).toBe('old');
    await store.claimOrphans('cleaner', 1_000);
    expect(await store.get('old')).toBeUndefined();
    expect(await store.list({ tags: { t: '1' } })).toEqual([]);
    expect((await store.list()).map((r) => r.id)).toEqual(['old-pending']);
    expect(await store.claimKey('k', 'other')).toBeUndefined();
    expect(await store.client.keys('ret:*t:old')).toEqual([]);
  });

  it('validates its options', () => {
    expect(() => new RedisStore({ url: '' })).toThrow(/option "url" must be a redis:\/\/ URL/);
    expect(() => new RedisStore({ client: {} as never })).toThrow(/option "client" must be an ioredis client/);
    expect(() => new RedisStore({ url: 'redis://127.0.0.1:1' }, { prefix: '' })).toThrow(/option "prefix"/);
  });
});

describe('many instances on one Redis', () => {
  it('100 concurrent adds with one idempotency key across two TaskManagers: exactly one execution', async () => {
    const redis = await startRedisServer();
    await expectOneExecutionAcrossInstances([openStore(redis), openStore(redis)], 100);
  });

  it('when an instance is killed, the survivor claims its tasks once the lease expires and runs them', async () => {
    const redis = await startRedisServer();
    const log = join(tempDir(), 'tasks.log');
    const doomed = await startDurableApp({
      STORE: 'redis',
      REDIS_URL: redis.url,
      TASK_LOG: log,
      MODE: 'hold',
      CONCURRENCY: '2',
      LEASE_MS: '500',
      ORPHAN_MS: '100',
    });
    const acknowledged = await Promise.all(Array.from({ length: 6 }, (_, n) => doomed.add(n)));
    await waitFor(() => readTaskLog(log).length === 2, 5_000, 'two tasks running in the doomed instance');
    const ranHere: string[] = [];
    const survivor = createManager({ store: new RedisStore({ url: redis.url }), leaseMs: 500, orphanCheckMs: 100 });
    survivor.task(
      async function work(n: number) {
        ranHere.push(String(n));
      },
      { requeueOnInterrupt: true },
    );
    await survivor.start();
    // Alive and renewing its lease: nothing is taken from it.
    expect(ranHere).toEqual([]);
    doomed.child.process.kill('SIGKILL');
    await doomed.child.exited;
    await waitFor(() => ranHere.length === 6, 10_000, 'the survivor to run the orphans');
    expect(ranHere.sort()).toEqual(['0', '1', '2', '3', '4', '5']);
    await survivor.drain();
    for (const id of acknowledged) expect((await survivor.get(id))?.status).toBe('success');
    expect(countBy(log, 'done').size).toBe(0);
  });
});

describe('Redis unavailable', () => {
  it('down at start: start() rejects with a clear error, requests get 503, and start() again resumes left-behind work', async () => {
    const redis = await startRedisServer();
    // An earlier process handed a task back at shutdown.
    const earlier = createManager({ store: new RedisStore({ url: redis.url }) });
    const hold = deferred();
    const earlierWork = earlier.task(
      async function work(_n: number) {
        await hold.promise;
      },
      { requeueOnInterrupt: true },
    );
    const leftBehind = earlier.add(earlierWork, 1);
    await waitFor(() => earlier.running === 1, 5_000, 'the earlier task running');
    await earlier.shutdown({ timeoutMs: 0 });
    await redis.stop();

    const ran: number[] = [];
    // Reconnect every 50 ms (instead of backing off to 2 s) so the test notices Redis coming back quickly.
    const manager = createManager({
      store: new RedisStore({ url: redis.url, retryStrategy: () => 50 }),
      logger: quietLogger(),
    });
    const work = manager.task(
      async function work(n: number) {
        ran.push(n);
      },
      { requeueOnInterrupt: true },
    );
    await expect(manager.start()).rejects.toThrow(TaskflowError);
    await expect(manager.start()).rejects.toThrow(/start: the task store is unreachable \(.+\); nothing was resumed/);
    const { url } = await listen(
      mountApp(manager, (app) =>
        app.use((ctx) => {
          ctx.body = { id: ctx.tasks.addTask(work, Number(ctx.query.n)) };
        }),
      ),
    );
    expect((await fetch(`${url}/?n=2`)).status).toBe(503);

    await redis.start();
    // Until the client has reconnected, start() fails fast like every other use of the store.
    await waitFor(
      () =>
        manager.start().then(
          () => true,
          () => false,
        ),
      5_000,
      'start() to succeed once Redis is back',
    );
    expect((await fetch(`${url}/?n=3`)).status).toBe(200);
    await waitFor(() => ran.length === 2, 5_000, 'the left-behind task and the new one');
    expect(ran.sort()).toEqual([1, 3]);
    await manager.drain();
    expect((await manager.get(leftBehind))?.status).toBe('success');
  });

  it('down mid-run: running tasks finish, new requests get 503, and the status writes land once Redis is back', async () => {
    const redis = await startRedisServer();
    const gate = deferred();
    const ran: number[] = [];
    const { url, manager } = await startApp(
      (app, m) => {
        const work = m.task(async function work(n: number) {
          await gate.promise;
          ran.push(n);
        });
        app.use(async (ctx) => {
          ctx.body = { id: ctx.tasks.schedule(work, Number(ctx.query.n)).id };
        });
      },
      { store: new RedisStore({ url: redis.url, retryStrategy: () => 50 }), logger: quietLogger() },
    );
    const acknowledged = await Promise.all(
      [1, 2, 3].map(async (n) => ((await (await fetch(`${url}/?n=${n}`)).json()) as { id: string }).id),
    );
    await waitFor(() => manager.running === 3, 5_000, 'the tasks running');
    await redis.stop();
    expect((await fetch(`${url}/?n=4`)).status).toBe(503);
    gate.resolve();
    await waitFor(() => ran.length === 3, 5_000, 'the running tasks to finish during the outage');

    await redis.start();
    const reader = openStore(redis, 'taskflow');
    await waitFor(
      async () => (await Promise.all(acknowledged.map((id) => reader.get(id)))).every((r) => r?.status === 'success'),
      10_000,
      'the retried status writes',
    );
    expect(ran.sort()).toEqual([1, 2, 3]);
  });
});
