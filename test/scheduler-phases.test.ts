import { AsyncLocalStorage } from 'node:async_hooks';
import { request as httpRequest } from 'node:http';
import { describe, expect, it } from 'vitest';
import { InMemoryObserver, type TaskHandle } from 'koa-taskflow';
import { createManager, deferred, listen, mountApp, startApp, waitFor } from './helpers/server.js';

describe('after-response tasks (addTask)', () => {
  it('deliver the response while the task is still blocked, then run', async () => {
    const gate = deferred();
    const events: string[] = [];
    const { url, manager } = await startApp((app) => {
      app.use(async (ctx) => {
        ctx.tasks.addTask(async function slow() {
          events.push('task started');
          await gate.promise;
          events.push('task ended');
        });
        ctx.body = { ok: true };
      });
    });

    const response = await fetch(url);
    expect(await response.json()).toEqual({ ok: true });
    // The client has the whole body; the task may have started but cannot have ended.
    expect(events).not.toContain('task ended');
    await waitFor(() => events.includes('task started'), 5_000, 'task start');
    gate.resolve();
    await manager.drain();
    expect(events).toEqual(['task started', 'task ended']);
  });

  it('do not start before the response has been sent', async () => {
    const bodySent = deferred();
    let startedBeforeFinish: boolean | undefined;
    const { url, manager } = await startApp((app) => {
      app.use(async (ctx, next) => {
        await next();
        ctx.res.once('finish', () => bodySent.resolve());
      });
      app.use(async (ctx) => {
        ctx.tasks.addTask(() => {
          startedBeforeFinish = !ctx.res.writableFinished;
        });
        ctx.body = 'x'.repeat(100_000);
      });
    });
    await (await fetch(url)).text();
    await bodySent.promise;
    await manager.drain();
    expect(startedBeforeFinish).toBe(false);
  });

  it('run one after another in the order added, even when a later one would be faster', async () => {
    const order: string[] = [];
    const { url, manager } = await startApp((app) => {
      app.use(async (ctx) => {
        const step = (name: string, ms: number) => async () => {
          order.push(`${name}:start`);
          await new Promise((r) => setTimeout(r, ms));
          order.push(`${name}:end`);
        };
        ctx.tasks.addTask(step('a', 30));
        ctx.tasks.addTask(step('b', 0));
        ctx.tasks.afterResponse.schedule(step('c', 10));
        ctx.tasks.addTask(() => void order.push('d:sync'));
        ctx.status = 204;
      });
    });
    await fetch(url);
    await manager.drain();
    expect(order).toEqual(['a:start', 'a:end', 'b:start', 'b:end', 'c:start', 'c:end', 'd:sync']);
  });

  it('a failing task does not stop the ones after it, nor change the response', async () => {
    const ran: string[] = [];
    const { url, manager } = await startApp((app) => {
      app.use(async (ctx) => {
        ctx.tasks.addTask(function explode() {
          throw new Error('boom');
        });
        ctx.tasks.addTask(() => void ran.push('second'));
        ctx.body = 'fine';
      });
    });
    const response = await fetch(url);
    expect(response.status).toBe(200);
    expect(await response.text()).toBe('fine');
    await manager.drain();
    expect(ran).toEqual(['second']);
    const [failed] = await manager.list({ name: 'explode' });
    expect(failed.status).toBe('failed');
    expect(failed.error).toMatchObject({ type: 'Error', message: 'boom' });
  });

  it('pass the arguments and return the task id, which finds the record', async () => {
    const seen: unknown[] = [];
    const { url, manager } = await startApp((app) => {
      app.use(async (ctx) => {
        ctx.body = { id: ctx.tasks.addTask((a: number, b: string) => void seen.push(a, b), 7, 'seven') };
      });
    });
    const { id } = (await (await fetch(url)).json()) as { id: string };
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    await manager.drain();
    expect(seen).toEqual([7, 'seven']);
    expect(await manager.get(id)).toMatchObject({ id, status: 'success', args: [7, 'seven'], attempts: 1 });
  });

  it('with eager: true start before the response is sent', async () => {
    const order: string[] = [];
    const { url, manager } = await startApp((app) => {
      app.use(async (ctx) => {
        ctx.tasks.with({ eager: true }).addTask(() => void order.push('eager task'));
        await new Promise((r) => setTimeout(r, 20));
        order.push('handler done');
        ctx.status = 204;
      });
    });
    await fetch(url);
    await manager.drain();
    expect(order).toEqual(['eager task', 'handler done']);
  });

  it('still run when the client disconnects before the response is finished', async () => {
    const handlerReached = deferred();
    const ran = deferred<string>();
    const { url, manager } = await startApp((app) => {
      app.use(async (ctx) => {
        ctx.tasks.addTask(() => ran.resolve('ran'));
        handlerReached.resolve();
        await new Promise((r) => setTimeout(r, 50));
        ctx.body = 'late';
      });
    });
    const req = httpRequest(url);
    req.on('error', () => {});
    req.end();
    await handlerReached.promise;
    req.destroy();
    expect(await ran.promise).toBe('ran');
    await manager.drain();
  });

  it("start once the turn of the event loop their response closed in has ended, after the app's own close listeners", async () => {
    const order: string[] = [];
    const { url, manager } = await startApp((app) => {
      app.use(async (ctx) => {
        ctx.tasks.addTask(() => void order.push('task'));
        // Registered after the manager's listener: it still runs first, and so do the microtasks it queues.
        ctx.res.on('close', () => {
          order.push('app close listener');
          void Promise.resolve().then(() => order.push('its microtask'));
          process.nextTick(() => order.push('its next tick'));
        });
        ctx.status = 204;
      });
    });
    await fetch(url);
    await manager.drain();
    expect(order).toEqual(['app close listener', 'its next tick', 'its microtask', 'task']);
  });

  it("of concurrent requests each run in its own request's async context (the app's AsyncLocalStorage)", async () => {
    const requestId = new AsyncLocalStorage<string>();
    const seen: [string, string | undefined][] = [];
    // More than the 16 slots: the later ones wait for a slot, which the end of another request's task frees.
    const ids = Array.from({ length: 40 }, (_, i) => `request-${i}`);
    // Every handler waits for the last request, so the responses end together and close in the same turn.
    const allArrived = deferred();
    let arrived = 0;
    const manager = createManager();
    const app = mountApp(manager, (app) => {
      app.use(async (ctx) => {
        if (++arrived === ids.length) allArrived.resolve();
        await allArrived.promise;
        const id = requestId.getStore()!;
        ctx.tasks.addTask(async (own: string) => {
          seen.push([own, requestId.getStore()]);
          await new Promise((r) => setTimeout(r, 1));
          seen.push([own, requestId.getStore()]);
        }, id);
        ctx.tasks.addTask((own: string) => void seen.push([own, requestId.getStore()]), id);
        ctx.status = 204;
      });
    });
    await manager.start();
    // The whole request in the store, response included, as HTTP instrumentation holds its span.
    const { url } = await listen(app, (handle, req, res) =>
      requestId.run(String(req.headers['x-request-id']), handle, req, res),
    );
    await Promise.all(ids.map((id) => fetch(url, { headers: { 'x-request-id': id } })));
    await manager.drain();
    expect(seen).toHaveLength(120);
    for (const [own, store] of seen) expect(store).toBe(own);
  });

  it('still run when shutdown begins in the turn their response closed in', async () => {
    const ran = deferred<string>();
    let shutdown: Promise<void> | undefined;
    const { url, manager } = await startApp((app) => {
      app.use(async (ctx) => {
        ctx.tasks.addTask(() => ran.resolve('ran'));
        ctx.res.on('close', () => {
          shutdown = manager.shutdown({ timeoutMs: 1_000 });
        });
        ctx.status = 204;
      });
    });
    await fetch(url);
    expect(await ran.promise).toBe('ran');
    await waitFor(() => shutdown !== undefined, 5_000, 'shutdown to begin');
    await shutdown;
  });
});

describe('schedule (now)', () => {
  it('runs concurrently with the handler and its handle resolves', async () => {
    const order: string[] = [];
    let handle: TaskHandle | undefined;
    const { url, manager } = await startApp((app) => {
      app.use(async (ctx) => {
        const gate = deferred();
        handle = ctx.tasks.schedule(async (label: string) => {
          order.push(`task ${label} started`);
          gate.resolve();
        }, 'now');
        await handle.started;
        await gate.promise;
        order.push('handler continues');
        ctx.status = 204;
      });
    });
    await fetch(url);
    await manager.drain();
    expect(order).toEqual(['task now started', 'handler continues']);
    const record = await handle!.done;
    expect(record).toMatchObject({ status: 'success', args: ['now'] });
    expect(handle!.args).toEqual(['now']);
    expect(handle!.options.retries).toBe(0);
  });
});

describe('afterRoute', () => {
  it('starts after the downstream returned and never delays the response', async () => {
    const gate = deferred();
    const order: string[] = [];
    const { url, manager } = await startApp((app) => {
      app.use(async (ctx) => {
        ctx.tasks.afterRoute.schedule(async () => {
          order.push('after-route task started');
          await gate.promise;
        });
        order.push('handler returns');
        ctx.body = 'done';
      });
    });
    const response = await fetch(url);
    expect(await response.text()).toBe('done');
    expect(order).toEqual(['handler returns', 'after-route task started']);
    gate.resolve();
    await manager.drain();
  });
});

describe('a failed request', () => {
  it('cancels its pending after-route and after-response tasks (reason request_failed) unless runOnError', async () => {
    const ran: string[] = [];
    const ids: Record<string, string> = {};
    const observer = new InMemoryObserver();
    const { url, manager } = await startApp(
      (app) => {
        app.use(async (ctx) => {
          ids.response = ctx.tasks.addTask(() => void ran.push('response'));
          ids.route = ctx.tasks.afterRoute.schedule(() => void ran.push('route')).id;
          ids.cleanup = ctx.tasks.with({ runOnError: true }).addTask(() => void ran.push('cleanup'));
          ids.now = ctx.tasks.schedule(() => void ran.push('now')).id;
          throw new Error('handler failed');
        });
      },
      { observers: [observer] },
    );
    const response = await fetch(url);
    expect(response.status).toBe(500);
    await manager.drain();
    expect(ran.sort()).toEqual(['cleanup', 'now']);
    expect(await manager.get(ids.response)).toMatchObject({
      status: 'cancelled',
      reason: 'request_failed',
      attempts: 0,
    });
    expect(await manager.get(ids.route)).toMatchObject({ status: 'cancelled', reason: 'request_failed' });
    expect(await manager.get(ids.cleanup)).toMatchObject({ status: 'success' });
    const cancelled = observer.lifecycle.find((e) => e.taskId === ids.response && e.status === 'cancelled');
    expect(cancelled).toMatchObject({ previousStatus: 'pending', reason: 'request_failed' });
  });

  it("rejects a cancelled task's started promise but resolves done with the record", async () => {
    let handle: TaskHandle | undefined;
    const { url } = await startApp((app) => {
      app.use(async (ctx) => {
        handle = ctx.tasks.afterResponse.schedule(() => {});
        ctx.throw(409, 'conflict');
      });
    });
    expect((await fetch(url)).status).toBe(409);
    await expect(handle!.started).rejects.toThrow(/cancelled/);
    expect(await handle!.done).toMatchObject({ status: 'cancelled', reason: 'request_failed' });
  });
});

describe('ctx.state.tasks', () => {
  it('is the same scheduler as ctx.tasks', async () => {
    let same = false;
    const { url } = await startApp((app) => {
      app.use(async (ctx) => {
        same = ctx.state.tasks === ctx.tasks;
        ctx.status = 204;
      });
    });
    await fetch(url);
    expect(same).toBe(true);
  });
});
