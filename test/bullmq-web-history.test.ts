// A web process on BullMQ only enqueues: the manager's reads answer from BullMQ, so its own store has nothing
// to keep for a task it handed over. It used to keep every one (found by the bullmq part of the benchmark: a
// web process grew with every request it ever served, and trimming the history on each add, finding nothing it
// could drop, cost most of a request's overhead), then the last `maxRecords`, each record kept past two
// scavenges for nothing. Now it keeps only keyed tasks, bounded by `maxRecords`: a later add of the key in
// this process answers the holder's id.
import { Queue } from 'bullmq';
import { MemoryStore } from 'koa-taskflow';
import { bullmqEngine } from 'koa-taskflow/bullmq';
import { describe, expect, it } from 'vitest';
import { startRedisServer } from './helpers/redis.js';
import { onCleanup, startApp } from './helpers/server.js';

describe('a web process on BullMQ keeps no history of what it handed over', () => {
  it('its MemoryStore holds none of the tasks it handed to BullMQ, the last maxRecords keyed ones; the manager reads them all from BullMQ', async () => {
    const redis = await startRedisServer();
    const connection = { host: '127.0.0.1', port: redis.port };
    const store = new MemoryStore({ maxRecords: 5 });
    const { manager, url } = await startApp(
      (app, m) => {
        const work = m.task(function work(n: number) {
          return n;
        });
        app.use((ctx) => {
          const key = ctx.query.key;
          const tasks = typeof key === 'string' ? ctx.tasks.with({ idempotencyKey: key }) : ctx.tasks;
          ctx.body = { id: tasks.addTask(work, Number(ctx.query.n)) };
        });
      },
      { store, engine: bullmqEngine({ connection, queue: 'history' }) },
    );
    const add = async (query: string) => ((await (await fetch(`${url}/?${query}`)).json()) as { id: string }).id;
    const ids: string[] = [];
    for (let n = 0; n < 12; n++) ids.push(await add(`n=${n}`));
    await manager.drain();
    expect(await store.list({ limit: 100 })).toEqual([]);
    // The manager's reads answer from BullMQ: every task is still there.
    expect(await manager.get(ids[0])).toMatchObject({ id: ids[0], status: 'pending' });
    const queue = new Queue('history', { connection });
    onCleanup(() => queue.close());
    expect(await queue.getWaitingCount()).toBe(12);

    const keyed: string[] = [];
    for (let n = 0; n < 7; n++) keyed.push(await add(`n=${n}&key=order-${n}`));
    await manager.drain();
    const held = await store.list({ limit: 100 });
    expect(held.map((r) => r.id)).toEqual(keyed.slice(-5).reverse());
    expect(held.every((r) => r.status === 'pending')).toBe(true);
    // The holder of a key still held answers a second add of it in this process.
    expect(await add('n=0&key=order-6')).toBe(keyed[6]);
    await manager.drain();
    expect(await queue.getWaitingCount()).toBe(19);
  });
});
