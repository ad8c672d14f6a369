// A web process on BullMQ only enqueues: every task it hands over stays `pending` in its own store (the
// manager's reads answer from BullMQ, the store still holds the live records). Its MemoryStore must keep a
// bounded history (`maxRecords`), as with tasks run in process, or a web process grows with every request it
// ever served (found by the bullmq part of the benchmark: the store kept them all,
// and trimming the history on each add, finding nothing it could drop, cost most of a request's overhead).
import { Queue } from 'bullmq';
import { MemoryStore } from 'koa-taskflow';
import { bullmqEngine } from 'koa-taskflow/bullmq';
import { describe, expect, it } from 'vitest';
import { startRedisServer } from './helpers/redis.js';
import { onCleanup, startApp } from './helpers/server.js';

describe('a web process on BullMQ keeps a bounded history', () => {
  it('its MemoryStore holds the last maxRecords tasks it handed over, newest first; BullMQ has them all', async () => {
    const redis = await startRedisServer();
    const connection = { host: '127.0.0.1', port: redis.port };
    const store = new MemoryStore({ maxRecords: 5 });
    const { manager, url } = await startApp(
      (app, m) => {
        const work = m.task(function work(n: number) {
          return n;
        });
        app.use((ctx) => {
          ctx.body = { id: ctx.tasks.addTask(work, Number(ctx.query.n)) };
        });
      },
      { store, engine: bullmqEngine({ connection, queue: 'history' }) },
    );
    const ids: string[] = [];
    for (let n = 0; n < 12; n++) ids.push(((await (await fetch(`${url}/?n=${n}`)).json()) as { id: string }).id);
    await manager.drain();
    const held = await store.list({ limit: 100 });
    expect(held.map((r) => r.id)).toEqual(ids.slice(-5).reverse());
    expect(held.every((r) => r.status === 'pending')).toBe(true);
    expect(await store.get(ids[0])).toBeUndefined();
    // The manager's reads answer from BullMQ: every task is still there.
    expect(await manager.get(ids[0])).toMatchObject({ id: ids[0], status: 'pending' });
    const queue = new Queue('history', { connection });
    onCleanup(() => queue.close());
    expect(await queue.getWaitingCount()).toBe(12);
  });
});
