import Koa from 'koa';
import { describe, expect, it } from 'vitest';
import { TaskManager, TaskQueueFullError } from 'koa-taskflow';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { tempDir } from './helpers/files.js';
import { createManager, deferred, listen, startApp } from './helpers/server.js';

/** A manager whose one slot is held by a task until `release()`: everything added after it waits. */
function blockedManager(maxQueued: number) {
  const manager = createManager({ concurrency: 1, maxQueued });
  const gate = deferred();
  manager.add(async function blocker() {
    await gate.promise;
  });
  return { manager, release: gate.resolve };
}

describe('maxQueued', () => {
  it('validates the option: a positive integer or Infinity, the error naming it', () => {
    for (const bad of [0, -1, 1.5, Number.NaN, -Infinity]) {
      expect(() => new TaskManager({ maxQueued: bad })).toThrow(RangeError);
      expect(() => new TaskManager({ maxQueued: bad })).toThrow(/"maxQueued"/);
    }
    expect(() => new TaskManager({ maxQueued: '10' as unknown as number })).toThrow(TypeError);
    expect(() => new TaskManager({ maxQueued: Infinity })).not.toThrow();
    expect(() => new TaskManager({ maxQueued: 1 })).not.toThrow();
  });

  it('manager.add past the limit throws TaskQueueFullError and records nothing; a running task does not count', async () => {
    const { manager, release } = blockedManager(3);
    const ran: number[] = [];
    for (let i = 0; i < 3; i++) manager.add((n: number) => void ran.push(n), i);
    expect(manager.running).toBe(1);
    expect(manager.queued).toBe(3);

    const refused = (() => {
      try {
        manager.with({ tags: { extra: 'yes' } }).add(() => void ran.push(99));
      } catch (error) {
        return error;
      }
    })();
    expect(refused).toBeInstanceOf(TaskQueueFullError);
    expect(refused).toMatchObject({ code: 'ERR_QUEUE_FULL', status: 503, expose: true, maxQueued: 3 });
    expect(() => manager.add(() => void ran.push(100))).toThrow(TaskQueueFullError);
    // Nothing of the refused tasks: only the blocker and the three accepted.
    expect(await manager.list()).toHaveLength(4);
    expect(await manager.list({ tags: { extra: 'yes' } })).toEqual([]);

    release();
    await manager.drain();
    expect(ran).toEqual([0, 1, 2]);
    expect(manager.queued).toBe(0);
    // Room again once the queue has drained.
    manager.add(() => void ran.push(3));
    await manager.drain();
    expect(ran).toEqual([0, 1, 2, 3]);
  });

  it('counts after-response tasks waiting for their response and tasks waiting for a retry', async () => {
    const gate = deferred();
    const { url, manager } = await startApp(
      (app) => {
        app.use(async (ctx) => {
          ctx.tasks.addTask(() => {});
          await gate.promise;
          ctx.body = 'ok';
        });
      },
      { maxQueued: 2 },
    );
    let failures = 0;
    const retrying = manager.with({ retries: 1, delay: 60_000 }).add(() => {
      failures++;
      throw new Error('retry me later');
    });
    await expect.poll(() => failures).toBe(1);
    // The failed task waits for its retry: one queued; a request holding its after-response task: two.
    expect(manager.queued).toBe(1);
    const first = fetch(url);
    await expect.poll(() => manager.queued).toBe(2);
    const second = await fetch(url);
    expect(second.status).toBe(503);
    gate.resolve();
    expect((await first).status).toBe(200);
    // Not waiting a minute for the retry: it ends now.
    await manager.shutdown({ timeoutMs: 0 });
    expect(await manager.get(retrying)).toMatchObject({ status: 'interrupted', reason: 'shutdown' });
  });

  it('a burst of requests over a real server: the acknowledged tasks all run, the rest are 503 with Retry-After', async () => {
    const gate = deferred();
    const ran = new Set<string>();
    const { url, manager } = await startApp(
      (app) => {
        app.use(async (ctx) => {
          const n = String(ctx.query.n);
          ctx.body = { id: ctx.tasks.addTask(() => void ran.add(n)), n };
        });
      },
      { concurrency: 1, maxQueued: 5 },
    );
    manager.add(async function blocker() {
      await gate.promise;
    });
    const responses = await Promise.all(Array.from({ length: 30 }, (_, n) => fetch(`${url}/?n=${n}`)));
    const acknowledged: string[] = [];
    let refused = 0;
    for (const response of responses) {
      if (response.status === 200) {
        acknowledged.push(((await response.json()) as { n: string }).n);
      } else {
        expect(response.status).toBe(503);
        expect(response.headers.get('retry-after')).toBe('1');
        expect(await response.text()).toMatch(/task queue is full/);
        refused++;
      }
    }
    expect(acknowledged).toHaveLength(5);
    expect(refused).toBe(25);
    gate.resolve();
    await manager.drain();
    expect([...ran].sort()).toEqual(acknowledged.sort());
    // Nothing recorded for the refused: the blocker and the five.
    expect((await manager.metrics()).byStatus).toMatchObject({ success: 6, cancelled: 0, pending: 0 });
  });

  it('a request refused part-way answers 503 even when its handler catches the error; its earlier tasks end cancelled (request_failed)', async () => {
    const { manager, release } = blockedManager(2);
    manager.add(() => {});
    const ids: string[] = [];
    const app = new Koa();
    app.silent = true;
    // An app error handler that renders errors itself and does not copy err.headers.
    app.use(async (ctx, next) => {
      try {
        await next();
      } catch (error) {
        ctx.status = (error as { status?: number }).status ?? 500;
        ctx.body = { error: (error as Error).message };
      }
    });
    app.use(manager.middleware());
    app.use(async (ctx) => {
      ids.push(ctx.tasks.addTask(() => {}));
      try {
        ctx.tasks.afterRoute.schedule(() => {});
      } catch {
        // Swallowed: the client must still not be told its work was accepted.
      }
      ctx.body = 'ok';
    });
    const { url } = await listen(app);
    const response = await fetch(url);
    expect(response.status).toBe(503);
    expect(response.headers.get('retry-after')).toBe('1');
    expect(await response.json()).toEqual({ error: expect.stringMatching(/"maxQueued"/) });
    expect(await manager.get(ids[0])).toMatchObject({ status: 'cancelled', reason: 'request_failed', attempts: 0 });
    release();
    await manager.drain();
    expect((await manager.metrics()).byStatus).toMatchObject({ success: 2, cancelled: 1 });
  });

  it("with a durable store, a refused task is not written and the request's earlier task is stored cancelled", async () => {
    const store = new SqliteStore({ path: `${tempDir()}/tasks.db` });
    const gate = deferred();
    const blocker = async function blocker() {
      await gate.promise;
    };
    const noop = function noop(_n: number) {};
    const ids: string[] = [];
    const manager = createManager({ store, concurrency: 1, maxQueued: 1 });
    manager.task(blocker);
    manager.task(noop);
    const { url } = await startApp((app) => {
      app.use(async (ctx) => {
        ids.push(ctx.tasks.addTask(noop, 1));
        ctx.tasks.addTask(noop, 2);
        ctx.body = 'ok';
      });
    }, manager);
    manager.add(blocker);
    const response = await fetch(url);
    expect(response.status).toBe(503);
    gate.resolve();
    await manager.drain();
    const records = await manager.list();
    expect(records.map((r) => [r.name, r.status, r.reason ?? null]).sort()).toEqual([
      ['blocker', 'success', null],
      ['noop', 'cancelled', 'request_failed'],
    ]);
    expect(records.find((r) => r.name === 'noop')?.id).toBe(ids[0]);
  });
});
