// A web process on BullMQ writes the adds of one event-loop turn to Redis together: a loaded server handles
// many requests a turn, and each add written on its own cost a syscall and its loopback delivery in the web
// process (found by the bullmq part of the benchmark: with 10 connections, 10 adds a turn, each written alone,
// were most of what the web process paid over raw BullMQ's `queue.add`). Each task is still its own job.
import net from 'node:net';
import { Queue } from 'bullmq';
import { bullmqEngine } from 'koa-taskflow/bullmq';
import { describe, expect, it, vi } from 'vitest';
import { getJson } from './helpers/fake-clock.js';
import { startRedisServer } from './helpers/redis.js';
import { onCleanup, startApp } from './helpers/server.js';

/** Counts the writes this process makes to sockets connected to `port` (a corked socket's flush is one). */
function countWritesTo(port: number): { readonly count: number } {
  const proto = net.Socket.prototype as unknown as Record<'_write' | '_writev', (...args: unknown[]) => unknown>;
  const counter = { count: 0 };
  for (const method of ['_write', '_writev'] as const) {
    const original = proto[method];
    proto[method] = function (this: net.Socket, ...args: unknown[]) {
      if (this.remotePort === port) counter.count++;
      return original.apply(this, args);
    };
    onCleanup(() => {
      proto[method] = original;
    });
  }
  return counter;
}

/**
 * A web app on BullMQ whose request `/?n=<n>` adds n tasks at once (`schedule`), after one first request has
 * connected it; `queue` reads the jobs back.
 */
async function startWeb(name: string) {
  const redis = await startRedisServer();
  const connection = { host: '127.0.0.1', port: redis.port };
  const { manager, url } = await startApp(
    (app, m) => {
      const work = m.task(function work(n: number) {
        return n;
      });
      app.use((ctx) => {
        const n = Number(ctx.query.n);
        ctx.body = { ids: Array.from({ length: n }, (_, i) => ctx.tasks.schedule(work, i).id) };
      });
    },
    { engine: bullmqEngine({ connection, queue: name }) },
  );
  // The first add connects; the connection is then ready for the turns measured.
  await getJson(`${url}/?n=1`);
  await manager.drain();
  const queue = new Queue(name, { connection });
  onCleanup(() => queue.close());
  await queue.waitUntilReady();
  const add = async (n: number) => (await getJson<{ ids: string[] }>(`${url}/?n=${n}`)).ids;
  return { redis, manager, queue, add };
}

describe('a web process on BullMQ writes the adds of one turn together', () => {
  it('20 tasks added in one turn reach Redis in one write, each as its own job', async () => {
    const { redis, manager, queue, add } = await startWeb('writes');
    const writes = countWritesTo(redis.port);
    const ids = await add(20);
    await manager.drain();
    const index = 1; // the index of the 20 (written 20 ms later, in one command)
    expect(writes.count).toBeLessThanOrEqual(1 + index);

    expect((await Promise.all(ids.map((id) => queue.getJob(id)))).map((job) => job?.id)).toEqual(ids);
    expect(await queue.getWaitingCount()).toBe(21);
  });

  it("an app's tests that fake the global setImmediate do not hold the adds back", async () => {
    const { queue, add } = await startWeb('faked');
    vi.useFakeTimers({ toFake: ['setImmediate'] });
    onCleanup(() => void vi.useRealTimers());
    const ids = await add(2);
    // Never advanced: the adds reach Redis all the same.
    for (let tries = 0; (await queue.getWaitingCount()) < 3 && tries < 100; tries++)
      await new Promise((resolve) => setTimeout(resolve, 10));
    expect((await Promise.all(ids.map((id) => queue.getJob(id)))).map((job) => job?.id)).toEqual(ids);
  });
});
