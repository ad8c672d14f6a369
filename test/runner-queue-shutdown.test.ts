import { describe, expect, it } from 'vitest';
import { getTaskContext, TaskManager, TaskManagerClosedError } from 'koa-taskflow';
import { createManager, deferred, startApp, waitFor } from './helpers/server.js';

describe('priority', () => {
  it('runs higher priorities first once the queue is saturated; equal priorities keep their order; unset ranks as 5', async () => {
    const manager = createManager({ concurrency: 1 });
    const gate = deferred();
    const order: string[] = [];
    manager.add(async function blocker() {
      await gate.promise;
    });
    const record = (label: string) => () => void order.push(label);
    manager.with({ priority: 1 }).add(record('p1'));
    manager.with({ priority: 10 }).add(record('p10-a'));
    manager.add(record('unset'));
    manager.with({ priority: 5 }).add(record('p5'));
    manager.with({ priority: 10 }).add(record('p10-b'));
    manager.with({ priority: 7 }).add(record('p7'));
    gate.resolve();
    await manager.drain();
    expect(order).toEqual(['p10-a', 'p10-b', 'p7', 'unset', 'p5', 'p1']);
  });

  it('orders after-response tasks of different requests through the same queue', async () => {
    const gate = deferred();
    const order: string[] = [];
    const { url, manager } = await startApp(
      (app) => {
        app.use(async (ctx) => {
          const priority = Number(ctx.query.p);
          ctx.tasks.with({ priority }).addTask(() => void order.push(`p${priority}`));
          ctx.status = 204;
        });
      },
      { concurrency: 1 },
    );
    manager.add(async function blocker() {
      await gate.promise;
    });
    for (const p of [2, 9, 4]) await fetch(`${url}/?p=${p}`);
    await waitFor(() => manager.queued === 3, 5_000, 'three queued tasks');
    gate.resolve();
    await manager.drain();
    expect(order).toEqual(['p9', 'p4', 'p2']);
  });
});

describe('concurrency', () => {
  it('never runs more than `concurrency` tasks at once, and runs them all', async () => {
    const manager = createManager({ concurrency: 3 });
    let running = 0;
    let peak = 0;
    let done = 0;
    for (let i = 0; i < 20; i++) {
      manager.add(async () => {
        running++;
        peak = Math.max(peak, running);
        await new Promise((r) => setTimeout(r, 2));
        running--;
        done++;
      });
    }
    await manager.drain();
    expect(peak).toBe(3);
    expect(done).toBe(20);
  });

  it('caps the after-response tasks of concurrent requests at `concurrency`, and runs them all', async () => {
    const gate = deferred();
    let running = 0;
    let peak = 0;
    let finished = 0;
    const { url, manager } = await startApp(
      (app) => {
        app.use(async (ctx) => {
          ctx.tasks.addTask(async function sendReceipt() {
            peak = Math.max(peak, ++running);
            await gate.promise;
            running--;
            finished++;
          });
          ctx.status = 204;
        });
      },
      { concurrency: 2 },
    );
    const responses = await Promise.all(Array.from({ length: 6 }, () => fetch(url)));
    expect(responses.map((r) => r.status)).toEqual([204, 204, 204, 204, 204, 204]);
    await waitFor(() => manager.running === 2 && manager.queued === 4, 5_000, 'two running, four queued');
    gate.resolve();
    await manager.drain();
    expect(peak).toBe(2);
    expect(finished).toBe(6);
  });

  it('releases the slot while a task waits for its retry', async () => {
    const manager = createManager({ concurrency: 1 });
    const order: string[] = [];
    const flaky = manager.task(
      function flaky() {
        order.push(`flaky ${getTaskContext()!.attempt}`);
        if (getTaskContext()!.attempt === 1) throw new Error('again');
      },
      { retries: 1, delay: 30 },
    );
    manager.add(flaky);
    manager.add(() => void order.push('other'));
    await manager.drain();
    expect(order).toEqual(['flaky 1', 'other', 'flaky 2']);
  });
});

describe('drain', () => {
  it('resolves at once when nothing is pending and waits for queued work otherwise', async () => {
    const manager = createManager();
    await manager.drain();
    let finished = false;
    manager.add(async () => {
      await new Promise((r) => setTimeout(r, 10));
      finished = true;
    });
    await manager.drain();
    expect(finished).toBe(true);
  });
});

describe('shutdown', () => {
  it('waits for running tasks that finish within the timeout', async () => {
    const manager = new TaskManager();
    const id = manager.add(async () => {
      await new Promise((r) => setTimeout(r, 30));
    });
    await manager.shutdown({ timeoutMs: 5_000 });
    expect((await manager.get(id))!.status).toBe('success');
  });

  it('aborts unshielded tasks after the timeout (interrupted), waits for shielded ones, cancels what never started', async () => {
    const manager = new TaskManager({ concurrency: 2 });
    const shieldGate = deferred();
    let sawAbort: unknown;
    let shieldedFinished = false;
    const stuck = manager.add(async () => {
      const { signal } = getTaskContext()!;
      await new Promise((resolve) => signal.addEventListener('abort', resolve));
      sawAbort = signal.reason;
    });
    const shielded = manager.with({ shield: true }).add(async () => {
      await shieldGate.promise;
      shieldedFinished = true;
    });
    const queued = manager.add(() => {});
    await waitFor(() => manager.running === 2, 5_000, 'two running tasks');

    const stopping = manager.shutdown({ timeoutMs: 30 });
    await waitFor(async () => (await manager.get(stuck))!.status === 'interrupted', 5_000, 'interruption');
    expect(shieldedFinished).toBe(false);
    shieldGate.resolve();
    await stopping;

    expect(shieldedFinished).toBe(true);
    expect((sawAbort as Error).name).toBe('TaskInterruptedError');
    expect(await manager.get(stuck)).toMatchObject({
      status: 'interrupted',
      reason: 'shutdown',
      error: { type: 'TaskInterruptedError' },
    });
    expect(await manager.get(shielded)).toMatchObject({ status: 'success' });
    expect(await manager.get(queued)).toMatchObject({ status: 'cancelled', reason: 'shutdown', attempts: 0 });
  });

  it('during requests: the unshielded after-response task ends interrupted after the timeout, the shielded one completes', async () => {
    const shieldGate = deferred();
    let sawAbort: unknown;
    let shieldedFinished = false;
    const { url, manager } = await startApp((app) => {
      app.use(async (ctx) => {
        if (ctx.path === '/export') {
          ctx.body = {
            id: ctx.tasks.addTask(async function exportReport() {
              const { signal } = getTaskContext()!;
              await new Promise((resolve) => signal.addEventListener('abort', resolve));
              sawAbort = signal.reason;
            }),
          };
        } else {
          ctx.body = {
            id: ctx.tasks.with({ shield: true }).addTask(async function capturePayment() {
              await shieldGate.promise;
              shieldedFinished = true;
            }),
          };
        }
      });
    });
    // Both responses are delivered before shutdown; their tasks run after them.
    const [unshielded, shielded] = await Promise.all(
      ['/export', '/pay'].map(async (path) => {
        const response = await fetch(url + path);
        expect(response.status).toBe(200);
        return ((await response.json()) as { id: string }).id;
      }),
    );
    await waitFor(() => manager.running === 2, 5_000, 'both after-response tasks running');

    const stopping = manager.shutdown({ timeoutMs: 30 });
    await waitFor(async () => (await manager.get(unshielded))!.status === 'interrupted', 5_000, 'interruption');
    expect(shieldedFinished).toBe(false);
    expect((await manager.get(shielded))!.status).toBe('running');
    shieldGate.resolve();
    await stopping;

    expect((sawAbort as Error).name).toBe('TaskInterruptedError');
    expect(await manager.get(unshielded)).toMatchObject({
      name: 'exportReport',
      status: 'interrupted',
      reason: 'shutdown',
      attempts: 1,
    });
    expect(await manager.get(shielded)).toMatchObject({ name: 'capturePayment', status: 'success' });
    expect(shieldedFinished).toBe(true);
  });

  it('does not hang on a task that ignores its signal: it ends interrupted and its slot is freed', async () => {
    const manager = new TaskManager({ concurrency: 1 });
    const deaf = manager.add(() => new Promise<void>(() => {}));
    const shieldedAfter = manager.with({ shield: true }).add(() => {});
    await waitFor(() => manager.running === 1, 5_000, 'the deaf task running');
    await manager.shutdown({ timeoutMs: 20 });
    expect(await manager.get(deaf)).toMatchObject({ status: 'interrupted', reason: 'shutdown', attempts: 1 });
    // The shielded task queued behind it still ran, in the slot the abandoned attempt gave back.
    expect(await manager.get(shieldedAfter)).toMatchObject({ status: 'success' });
  });

  it('ends a task waiting for its retry as interrupted', async () => {
    const manager = new TaskManager();
    const id = manager.with({ retries: 3, delay: 60_000 }).add(() => {
      throw new Error('down');
    });
    await waitFor(
      async () => (await manager.get(id))!.attempts === 1 && (await manager.get(id))!.status === 'pending',
      5_000,
      'retry wait',
    );
    await manager.shutdown({ timeoutMs: 10 });
    expect(await manager.get(id)).toMatchObject({ status: 'interrupted', attempts: 1 });
  });

  it('refuses new tasks once started, and a second call is harmless', async () => {
    const manager = new TaskManager();
    const first = manager.shutdown({ timeoutMs: 100 });
    expect(() => manager.add(() => {})).toThrow(TaskManagerClosedError);
    const second = manager.shutdown();
    expect(second).toBe(first);
    await Promise.all([first, second]);
  });

  it('closes observers, and a hanging close does not hang shutdown', async () => {
    let closed = false;
    const manager = new TaskManager({
      observers: [
        { close: () => new Promise<void>(() => {}) },
        {
          close: () => {
            closed = true;
          },
        },
      ],
    });
    await manager.start();
    await manager.shutdown({ timeoutMs: 20 });
    expect(closed).toBe(true);
  });

  it('a request adding a task during shutdown gets 503 instead of silently losing its task', async () => {
    const { url, manager } = await startApp((app) => {
      app.use(async (ctx) => {
        ctx.tasks.addTask(() => {});
        ctx.status = 204;
      });
    });
    await manager.shutdown({ timeoutMs: 10 });
    const response = await fetch(url);
    expect(response.status).toBe(503);
    expect(await manager.list()).toEqual([]);
  });
});
