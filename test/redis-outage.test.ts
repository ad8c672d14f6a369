import type { IncomingMessage, ServerResponse } from 'node:http';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { TaskRecord } from 'koa-taskflow';
import { RedisStore } from 'koa-taskflow/redis';
import { TOKEN } from './helpers/admin.js';
import { startRedisServer } from './helpers/redis.js';
import { createManager, onCleanup, startApp, waitFor } from './helpers/server.js';

const quietLogger = () => {
  const noop = () => {};
  return { trace: noop, debug: noop, info: noop, warn: noop, error: noop, fatal: noop };
};

/** One request, timed from the moment it is sent to the end of its body. */
async function timed(
  url: string,
  init?: RequestInit,
): Promise<{ status: number; ms: number; body: string; path: string }> {
  const start = performance.now();
  const response = await fetch(url, init);
  const body = await response.text();
  const { pathname, search } = new URL(url);
  return { status: response.status, ms: performance.now() - start, body, path: pathname + search };
}

describe('Redis down: fast failure and recovery', () => {
  it('with the default client options, requests that persist a task get their 503 within 100 ms each while Redis is down; after it restarts requests succeed, their tasks run and nothing acknowledged is lost', async () => {
    const redis = await startRedisServer();
    const ran = new Set<number>();
    const store = new RedisStore({ url: redis.url });
    // Server side: from the request's arrival (before the manager's middleware) to its response written.
    const served = new Map<string, number>();
    const { url, manager, server } = await startApp(
      (app, m) => {
        app.use(m.admin({ auth: { token: TOKEN } }));
        const work = m.task(async function work(n: number) {
          ran.add(n);
        });
        app.use(async (ctx) => {
          ctx.body = { id: ctx.tasks.addTask(work, Number(ctx.query.n)) };
        });
      },
      { store, logger: quietLogger() },
    );
    server.prependListener('request', (req: IncomingMessage, res: ServerResponse) => {
      const start = performance.now();
      res.once('finish', () => served.set(req.url!, performance.now() - start));
    });
    const acknowledged = new Map<number, string>();
    const refused = new Set<number>();
    let n = 0;
    const request = async () => {
      const mine = ++n;
      const answer = await timed(`${url}/?n=${mine}`);
      if (answer.status === 200) acknowledged.set(mine, (JSON.parse(answer.body) as { id: string }).id);
      else refused.add(mine);
      return answer;
    };
    for (let i = 0; i < 20; i++) expect((await request()).status).toBe(200);

    await redis.stop();
    // Straight after the stop (the client may not have seen the connection drop yet) and later on. On a
    // loaded machine the process itself may not get to run for tens of ms: the event loop's delay during
    // each request is measured and not counted against it.
    const lag = monitorEventLoopDelay({ resolution: 1 });
    lag.enable();
    onCleanup(() => void lag.disable());
    const during: (Awaited<ReturnType<typeof timed>> & { stalledMs: number })[] = [];
    for (let i = 0; i < 30; i++) {
      lag.reset();
      const answer = await request();
      await new Promise((resolve) => setTimeout(resolve, 2));
      during.push({ ...answer, stalledMs: lag.max / 1e6 });
    }
    const admin = await timed(`${url}/tasks`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(during.map((r) => r.status)).toEqual(during.map(() => 503));
    // The bound, per request, as the server answered it: from its arrival to its 503 written
    // (measured here: 0.4–28 ms, the first after the stop the slowest, that time the loop's own delay;
    // through fetch 1–45 ms).
    const slow = during
      .map((r) => ({ ms: served.get(r.path)!, stalledMs: r.stalledMs }))
      .filter((r) => !(r.ms < 100 + r.stalledMs));
    expect(slow).toEqual([]);
    expect(admin.status).toBe(503);
    expect(JSON.parse(admin.body)).toEqual({ error: expect.stringMatching(/Redis is unreachable/) });

    await redis.start();
    // The store reconnects by itself: no start(), no new client.
    await waitFor(async () => (await request()).status === 200, 10_000, 'a request to succeed after the restart');
    for (let i = 0; i < 20; i++) expect((await request()).status).toBe(200);
    await manager.drain();
    await waitFor(() => [...acknowledged.keys()].every((k) => ran.has(k)), 5_000, 'every acknowledged task to run');
    // Nothing acknowledged lost, nothing refused run.
    expect([...refused].filter((k) => ran.has(k))).toEqual([]);
    expect(refused.size).toBeGreaterThanOrEqual(30);
    const reader = new RedisStore({ url: redis.url });
    onCleanup(() => reader.close());
    await waitFor(
      async () =>
        (await Promise.all([...acknowledged.values()].map((id) => reader.get(id)))).every(
          (r) => r?.status === 'success',
        ),
      10_000,
      'every acknowledged task recorded as a success',
    );
  });
});

describe('Redis stalls past the client socketTimeout: writes that got no answer', () => {
  /** An app adding `charge(order)` per request (`?order=`, with `?key=` as its idempotency key); its runs in `ran`. */
  async function chargeApp(url: string, prefix: string, ran: string[], socketTimeout = 300) {
    // A short socketTimeout (default 3 s) keeps the test fast: a stall past it is what the test is about.
    const store = new RedisStore({ url, socketTimeout }, { prefix });
    const harness = await startApp(
      (app, m) => {
        const charge = m.task(async function charge(order: string) {
          ran.push(order);
        });
        app.use(async (ctx) => {
          const { order, key } = ctx.query as { order: string; key?: string };
          const tasks = key === undefined ? ctx.tasks : ctx.tasks.with({ idempotencyKey: key });
          ctx.body = { id: tasks.addTask(charge, order) };
        });
      },
      { store, logger: quietLogger(), orphanCheckMs: 100 },
    );
    const add = async (query: string) => {
      const response = await fetch(`${harness.url}/?${query}`);
      const body = await response.text();
      return { status: response.status, id: response.ok ? (JSON.parse(body) as { id: string }).id : undefined };
    };
    return { ...harness, store, add };
  }

  it.each([
    ['Redis runs it when it goes on: a stalled server', 'stalled'],
    ['a copy of it reaches Redis after the process heard from Redis again: held on the way', 'held'],
  ])(
    'a request answered 503 because its write got no answer leaves no task (%s): the refused tasks (keyed or not) never run, also after a restart, and a retry with the same idempotency key gets a task that runs',
    async (_, how) => {
      const redis = await startRedisServer();
      const proxy = await redisProxy(redis.port);
      const ran: string[] = [];
      const first = await chargeApp(how === 'held' ? proxy.url : redis.url, how, ran);
      // The save script is cached by Redis: the late EVALSHA runs (a NOSCRIPT would write nothing).
      expect((await first.add('order=warm-up')).status).toBe(200);
      await waitFor(() => ran.includes('warm-up'), 5_000, 'the warm-up task to run');
      await first.store.save([]); // its end written

      if (how === 'held') proxy.hold();
      else redis.pause();
      let refused: { status: number }[];
      try {
        // In flight together when the client gives up: one batch, one keyed task and one without a key.
        refused = await Promise.all([first.add('order=order-42&key=order-42'), first.add('order=loose')]);
      } finally {
        if (how === 'stalled') redis.resume();
      }
      expect(refused.map((r) => r.status)).toEqual([503, 503]);

      // The client retries with the same key once the app answers again: it gets a task of its own, which runs.
      let retry = { status: 0, id: undefined as string | undefined };
      await waitFor(
        async () => (retry = await first.add('order=order-42&key=order-42')).status === 200,
        10_000,
        'a retry to be acknowledged',
      );
      await waitFor(
        async () => (await first.manager.get(retry.id!))?.status === 'success',
        5_000,
        'the retry to run to its end',
      );
      // The refused batch reaches Redis only now.
      if (how === 'held') await proxy.release();
      const records = await first.manager.list({});
      expect(records.map((r) => [r.args[0], r.status]).sort()).toEqual([
        ['order-42', 'success'],
        ['warm-up', 'success'],
      ]);
      expect((await first.manager.get(retry.id!))?.id).toBe(retry.id);

      // A restart claims what the first process left: nothing of the refused requests is there to run.
      await first.manager.shutdown();
      const second = await chargeApp(redis.url, how, ran);
      await second.manager.drain();
      expect((await second.add('order=after-restart')).status).toBe(200);
      await waitFor(() => ran.includes('after-restart'), 5_000, 'a task after the restart to run');
      expect(ran.sort()).toEqual(['after-restart', 'order-42', 'warm-up']);
    },
  );

  it('a retry acknowledged by another instance with the task a late batch created (same idempotency key) runs to its end: the task is handed back rather than deleted, and runs once', async () => {
    const redis = await startRedisServer();
    const ran: string[] = [];
    const first = await chargeApp(redis.url, 'both', ran);
    // The other instance gives up only after 3 s: its write waits out the stall. Through a proxy that tells
    // when its write has reached Redis.
    const proxy = await redisProxy(redis.port);
    const other = await chargeApp(proxy.url, 'both', ran, 3_000);
    expect((await first.add('order=warm-up')).status).toBe(200);
    await waitFor(() => ran.includes('warm-up'), 5_000, 'the warm-up task to run');
    await first.store.save([]);

    redis.pause();
    let retry: Promise<{ status: number; id?: string }>;
    try {
      expect((await first.add('order=order-9&key=order-9')).status).toBe(503);
      // The client retries on the other instance while Redis still stalls: Redis runs it right after the
      // refused batch, and answers it with the task that batch created.
      retry = other.add('order=order-9&key=order-9');
      await waitFor(() => proxy.seen('order-9'), 5_000, 'the retry write to be sent');
    } finally {
      redis.resume();
    }
    const acknowledged = await retry;
    expect(acknowledged.status).toBe(200);
    await waitFor(
      async () => (await other.manager.get(acknowledged.id!))?.status === 'success',
      10_000,
      'the acknowledged retry to run to its end',
    );
    await first.manager.drain();
    await other.manager.drain();
    expect(ran.filter((order) => order === 'order-9')).toEqual(['order-9']);
  });

  it.each(['the late claim runs before the process hears from Redis again', 'it runs after'])(
    'an orphan claim that got no answer takes nothing from under the live process that made it (%s): the tasks left behind run',
    async (order) => {
      const redis = await startRedisServer();
      const proxy = await redisProxy(redis.port);
      // Work a process left behind: pending records whose owner is gone (its lease given up at close).
      const gone = new RedisStore({ url: redis.url }, { prefix: 'claims' });
      gone.attach({ ownerId: 'gone', leaseMs: 60_000 });
      await gone.claimOrphans('gone', 60_000); // the claim script cached: a late EVALSHA runs (not NOSCRIPT)
      const left = ['left-1', 'left-2'].map((arg): TaskRecord => ({
        ...{ id: randomUUID(), name: 'charge', status: 'pending', args: [arg], tags: {} },
        ...{ attempts: 0, maxAttempts: 1, createdAt: Date.now(), logs: [] },
      }));
      await gone.save(left);
      await gone.close();

      // Reconnecting a second after the claim is given up: the held claim reaches Redis first, or (released
      // only once the client has settled) after.
      const retryStrategy = () => 1_000;
      const store = new RedisStore({ url: proxy.url, socketTimeout: 300, retryStrategy }, { prefix: 'claims' });
      const manager = createManager({ store, logger: quietLogger(), orphanCheckMs: 100 });
      const ran: string[] = [];
      manager.task(async function charge(arg: string) {
        ran.push(arg);
      });
      await waitFor(() => store.client.status === 'ready', 5_000, 'the client to connect');
      proxy.hold();
      await expect(manager.start()).rejects.toThrow(/unreachable/);
      if (order === 'it runs after') {
        await waitFor(() => store.client.status === 'ready', 5_000, 'the client to reconnect');
        await store.list({ limit: 1 }); // settled first
      }
      await proxy.release();
      await waitFor(() => store.client.status === 'ready', 5_000, 'the client to reconnect');
      await manager.start();
      await waitFor(() => ran.length === 2, 5_000, 'the tasks left behind to run');
      expect(ran.sort()).toEqual(['left-1', 'left-2']);
    },
  );
});

/**
 * A TCP proxy to a local Redis; `seen(text)` tells whether `text` was sent through it. `hold()` keeps what the connections open now send from reaching Redis (later
 * connections go through); `release()` sends it (even for a connection its client has closed since) and
 * resolves once Redis has answered it.
 */
async function redisProxy(
  port: number,
): Promise<{ url: string; hold(): void; release(): Promise<void>; seen(text: string): boolean }> {
  let sent = '';
  const links: { client: Socket; upstream: Socket; held: Buffer[] | undefined }[] = [];
  const server = createServer((client) => {
    const upstream = connect(port, '127.0.0.1');
    const link = { client, upstream, held: undefined as Buffer[] | undefined };
    links.push(link);
    client.on('data', (chunk: Buffer) => {
      if (link.held !== undefined) return link.held.push(chunk);
      sent = (sent + chunk.toString()).slice(-100_000);
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => client.destroyed || client.write(chunk));
    client.on('close', () => link.held === undefined && upstream.end());
    upstream.on('close', () => client.destroy());
    client.on('error', () => {});
    upstream.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onCleanup(async () => {
    for (const { client, upstream } of links) {
      client.destroy();
      upstream.destroy();
    }
    await new Promise((resolve) => server.close(resolve));
  });
  return {
    url: `redis://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen: (text) => sent.includes(text),
    hold() {
      for (const link of links) if (!link.client.destroyed) link.held = [];
    },
    async release() {
      const answered: Promise<unknown>[] = [];
      for (const link of links) {
        const chunks = link.held ?? [];
        link.held = undefined;
        if (chunks.length === 0) continue;
        answered.push(new Promise((resolve) => link.upstream.once('data', resolve)));
        for (const chunk of chunks) link.upstream.write(chunk);
      }
      await Promise.all(answered);
      for (const link of links) if (link.client.destroyed) link.upstream.end();
    },
  };
}
