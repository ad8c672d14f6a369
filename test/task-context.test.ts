import { AsyncLocalStorage } from 'node:async_hooks';
import { describe, expect, it, vi } from 'vitest';
import { getTaskContext, InMemoryObserver, taskLog, TaskManager, type TaskContext } from 'koa-taskflow';
import { createManager, startApp } from './helpers/server.js';

describe('getTaskContext()', () => {
  it('is undefined outside a task', () => {
    expect(getTaskContext()).toBeUndefined();
  });

  it('follows the task through awaits, timers, immediates and nested calls', async () => {
    const manager = createManager();
    const seen: (string | undefined)[] = [];
    const nested = () => getTaskContext()?.id;
    const id = manager.with({ tags: { tenant: 'acme' } }).add(async function traced() {
      seen.push(getTaskContext()?.id);
      await Promise.resolve();
      seen.push(nested());
      await new Promise((r) => setTimeout(r, 1));
      seen.push(getTaskContext()?.id);
      await new Promise<void>((resolve) =>
        setImmediate(() => {
          seen.push(getTaskContext()?.id);
          resolve();
        }),
      );
      await new Promise<void>((resolve) =>
        queueMicrotask(() => {
          seen.push(getTaskContext()?.id);
          resolve();
        }),
      );
    });
    await manager.drain();
    expect(seen).toEqual([id, id, id, id, id]);
  });

  it('carries id, name, attempt, maxAttempts, tags, signal and span', async () => {
    const manager = createManager();
    let ctx: TaskContext | undefined;
    const job = manager.task(
      function job() {
        ctx = getTaskContext();
      },
      { retries: 2, tags: { a: 'b' } },
    );
    const id = manager.add(job);
    await manager.drain();
    expect(ctx).toMatchObject({ id, name: 'job', attempt: 1, maxAttempts: 3, tags: { a: 'b' } });
    expect(ctx!.signal).toBeInstanceOf(AbortSignal);
    expect(typeof ctx!.span.spanContext).toBe('function');
  });

  it('keeps concurrent tasks apart', async () => {
    const manager = createManager({ concurrency: 10 });
    const mismatches: string[] = [];
    const ids = Array.from({ length: 10 }, (_, i) =>
      manager.add(async () => {
        const own = getTaskContext()!.id;
        await new Promise((r) => setTimeout(r, 10 - i));
        if (getTaskContext()!.id !== own) mismatches.push(own);
      }),
    );
    await manager.drain();
    expect(ids).toHaveLength(10);
    expect(mismatches).toEqual([]);
  });

  it('reaches tasks added through ctx.tasks by concurrent requests: own id and tags from with(), per attempt, across awaits and timers', async () => {
    const seen: string[] = [];
    const { url, manager } = await startApp((app, manager) => {
      const notify = manager.task(
        async function notify(user: string) {
          const before = getTaskContext()!;
          await new Promise((r) => setTimeout(r, 1));
          const { id, tags, attempt, maxAttempts, signal } = getTaskContext()!;
          seen.push(
            `${id === before.id ? id : 'switched'} ${tags.tenant} ${user} ${attempt}/${maxAttempts} aborted=${signal.aborted}`,
          );
          if (attempt === 1) throw new Error('once more');
        },
        { retries: 1 },
      );
      app.use(async (ctx) => {
        ctx.body = {
          id: ctx.tasks.with({ tags: { tenant: String(ctx.query.tenant) } }).addTask(notify, String(ctx.query.user)),
        };
      });
    });
    const ids = await Promise.all(
      [
        ['acme', 'ann'],
        ['globex', 'bob'],
      ].map(
        async ([tenant, user]) =>
          ((await (await fetch(`${url}/?tenant=${tenant}&user=${user}`)).json()) as { id: string }).id,
      ),
    );
    await manager.drain();
    expect(seen.sort()).toEqual(
      [
        `${ids[0]} acme ann 1/2 aborted=false`,
        `${ids[0]} acme ann 2/2 aborted=false`,
        `${ids[1]} globex bob 1/2 aborted=false`,
        `${ids[1]} globex bob 2/2 aborted=false`,
      ].sort(),
    );
  });

  it('is not visible to the request handler that scheduled the task', async () => {
    let inHandler: TaskContext | undefined = {} as TaskContext;
    const { url, manager } = await startApp((app) => {
      app.use(async (ctx) => {
        const handle = ctx.tasks.schedule(async () => {});
        await handle.done;
        inHandler = getTaskContext();
        ctx.status = 204;
      });
    });
    await fetch(url);
    await manager.drain();
    expect(inHandler).toBeUndefined();
  });

  it("leaves the app's own AsyncLocalStorage as it was where the task started: seen inside it, and the caller's context unchanged after", async () => {
    const manager = createManager();
    const appStorage = new AsyncLocalStorage<string>();
    const seen: (string | undefined)[] = [];
    const note = () => seen.push(`${appStorage.getStore()} ${getTaskContext()?.name}`);
    appStorage.run('request-1', () => {
      manager.add(async function job() {
        note();
        await new Promise((r) => setTimeout(r, 1));
        note();
      });
      note();
    });
    note();
    await manager.drain();
    expect(seen.sort()).toEqual(['request-1 job', 'request-1 job', 'request-1 undefined', 'undefined undefined']);
  });

  it.each([
    ['a free slot', { concurrency: 1 }, {}],
    ['its limit', { concurrency: 4 }, { name: 'per-tenant', limit: { concurrency: 1 } }],
  ] as const)(
    'starts a task that waited for %s in the context the manager was made in, not in that of the task whose end freed it',
    async (_, managerOptions, taskOptions) => {
      const appStorage = new AsyncLocalStorage<string>();
      const manager = appStorage.run('where the manager was made', () => createManager(managerOptions));
      const seen: string[] = [];
      const job = (name: string) => async () => {
        seen.push(`${name}: ${appStorage.getStore()}`);
        await new Promise((r) => setTimeout(r, 5));
        seen.push(`${name} after an await: ${appStorage.getStore()}`);
      };
      appStorage.run('request-a', () => manager.with(taskOptions).add(job('first')));
      appStorage.run('request-b', () => manager.with(taskOptions).add(job('second')));
      await manager.drain();
      expect(seen).toEqual([
        'first: request-a',
        'first after an await: request-a',
        'second: where the manager was made',
        'second after an await: where the manager was made',
      ]);
    },
  );
});

describe('taskLog()', () => {
  it('inside a task: one LogEvent with level, fields, tags and attempt; a record log entry', async () => {
    const observer = new InMemoryObserver();
    const manager = createManager({ observers: [observer] });
    const id = manager.with({ tags: { tenant: 'acme' } }).add(function logs() {
      taskLog('plain');
      taskLog('detailed', { level: 'warn', orderId: 42 });
    });
    await manager.drain();
    expect(
      observer.logs.map(({ level, message, fields, tags, attempt, taskId, name }) => ({
        level,
        message,
        fields,
        tags,
        attempt,
        taskId,
        name,
      })),
    ).toEqual([
      { level: 'info', message: 'plain', fields: {}, tags: { tenant: 'acme' }, attempt: 1, taskId: id, name: 'logs' },
      {
        level: 'warn',
        message: 'detailed',
        fields: { orderId: 42 },
        tags: { tenant: 'acme' },
        attempt: 1,
        taskId: id,
        name: 'logs',
      },
    ]);
    const record = await manager.get(id);
    expect(record!.logs.map((l) => [l.level, l.message, l.fields])).toEqual([
      ['info', 'plain', undefined],
      ['warn', 'detailed', { orderId: 42 }],
    ]);
  });

  it('outside a task: goes to the latest started manager logger and never throws', async () => {
    const lines: [object, string | undefined][] = [];
    const sink = (obj: object, msg?: string) => void lines.push([obj, msg]);
    const logger = { trace: sink, debug: sink, info: sink, warn: sink, error: sink, fatal: sink };
    const manager = new TaskManager({ logger });
    await manager.start();
    taskLog('from a script', { level: 'error', job: 'nightly' });
    taskLog('bad level', { level: 'loud' as never });
    expect(() => taskLog(undefined as never, null as never)).not.toThrow();
    expect(lines.slice(0, 2)).toEqual([
      [{ job: 'nightly' }, 'from a script'],
      [{}, 'bad level'],
    ]);
    const before = lines.length;
    await manager.shutdown();
    // Shut down, it is no longer where such lines go.
    const spy = vi.spyOn(console, 'info').mockImplementation(() => {});
    taskLog('after shutdown');
    spy.mockRestore();
    expect(lines).toHaveLength(before);
  });

  it('outside a task with no logger anywhere: writes to the console', async () => {
    vi.resetModules();
    const fresh = await import('../src/context.js');
    const spy = vi.spyOn(console, 'warn').mockImplementation(() => {});
    fresh.taskLog('careful', { level: 'warn', n: 1 });
    expect(spy).toHaveBeenCalledWith('careful', { n: 1 });
    spy.mockRestore();
  });
});

describe('getTaskContext() with tracing on', () => {
  it('finds the right task when traced and untraced tasks start inside each other', async () => {
    const { AsyncLocalStorageContextManager } = await import('@opentelemetry/context-async-hooks');
    const { BasicTracerProvider } = await import('@opentelemetry/sdk-trace-base');
    const { context } = await import('@opentelemetry/api');
    const contextManager = new AsyncLocalStorageContextManager().enable();
    context.setGlobalContextManager(contextManager);
    try {
      const traced = createManager({ tracerProvider: new BasicTracerProvider() });
      const untraced = createManager();
      const seen: Record<string, (string | undefined)[]> = {};
      const note = (label: string) => (seen[label] ??= []).push(getTaskContext()?.name);
      const inner = async (label: string) => {
        note(label);
        await new Promise((r) => setTimeout(r, 1));
        note(label);
      };
      traced.add(async function outerTraced() {
        note('outerTraced');
        untraced.add(async function innerUntraced() {
          await inner('innerUntraced');
        });
        await new Promise((r) => setTimeout(r, 5));
        note('outerTraced');
      });
      untraced.add(async function outerUntraced() {
        traced.add(async function innerTraced() {
          await inner('innerTraced');
        });
        await new Promise((r) => setTimeout(r, 5));
        note('outerUntraced');
      });
      await Promise.all([traced.drain(), untraced.drain()]);
      await Promise.all([traced.drain(), untraced.drain()]);
      expect(seen).toEqual({
        outerTraced: ['outerTraced', 'outerTraced'],
        innerUntraced: ['innerUntraced', 'innerUntraced'],
        innerTraced: ['innerTraced', 'innerTraced'],
        outerUntraced: ['outerUntraced'],
      });
    } finally {
      context.disable();
    }
  });
});
