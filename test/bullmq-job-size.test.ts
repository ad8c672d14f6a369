// What a web process on BullMQ writes per task is what it pays for (serialized, sent, indexed): a job carries
// the options its add overrode, not every resolved option (the worker resolves the rest from its own
// registration). Found by the bullmq part of the benchmark: ~350 bytes of job.data per task against raw
// BullMQ's 7, a large share of the web process's CPU per request.
import { Queue } from 'bullmq';
import { bullmqEngine } from 'koa-taskflow/bullmq';
import { describe, expect, it } from 'vitest';
import { startRedisServer } from './helpers/redis.js';
import { onCleanup, startApp } from './helpers/server.js';

describe('a BullMQ job carries what its add overrode', () => {
  it("a task added with its registration's options: job.data is its id, args and creation time (tags and priority kept for the admin); with() options travel; pending jobs list by tag", async () => {
    const redis = await startRedisServer();
    const connection = { host: '127.0.0.1', port: redis.port };
    const { manager, url } = await startApp(
      (app, m) => {
        const plain = m.task(function plain(n: number) {
          return n;
        });
        const billing = m.task(
          function billing(n: number) {
            return n;
          },
          { tags: { team: 'billing' }, priority: 7, retries: 2 },
        );
        app.use((ctx) => {
          ctx.body = {
            ids: [
              ctx.tasks.addTask(plain, 1),
              ctx.tasks.addTask(billing, 2),
              ctx.tasks.with({ timeout: 5_000, tags: { tenant: 'acme' } }).addTask(plain, 3),
            ],
          };
        });
      },
      { engine: bullmqEngine({ connection, queue: 'sizes' }) },
    );
    const { ids } = (await (await fetch(url)).json()) as { ids: string[] };
    await manager.drain();
    const queue = new Queue('sizes', { connection });
    onCleanup(() => queue.close());
    const [plain, billing, overridden] = await Promise.all(ids.map((id) => queue.getJob(id)));

    expect(Object.keys(plain!.data as object).sort()).toEqual(['args', 'createdAt', 'id']);
    expect(JSON.stringify(plain!.data).length).toBeLessThan(100);
    expect(plain!.opts).toMatchObject({ attempts: 1, jobId: ids[0] });

    expect((billing!.data as { options: unknown }).options).toEqual({ tags: { team: 'billing' }, priority: 7 });
    expect(billing!.opts).toMatchObject({ attempts: 3, priority: 4, backoff: { type: 'koa-taskflow' } });

    expect((overridden!.data as { options: unknown }).options).toMatchObject({
      timeout: 5_000,
      tags: { tenant: 'acme' },
    });

    // The admin's reads need no registration: tags and priority come back from the job.
    expect(await manager.get(ids[1])).toMatchObject({ tags: { team: 'billing' }, priority: 7, maxAttempts: 3 });
    expect((await manager.list({ tags: { team: 'billing' } })).map((r) => r.id)).toEqual([ids[1]]);
    expect((await manager.list({ tags: { tenant: 'acme' } })).map((r) => r.id)).toEqual([ids[2]]);
    expect((await manager.list({ name: 'plain' })).map((r) => r.id).sort()).toEqual([ids[0], ids[2]].sort());
  });
});
