import { describe, expect, it } from 'vitest';
import {
  filterObserver,
  InMemoryObserver,
  pinoObserver,
  taskLog,
  type LifecycleEvent,
  type LogEvent,
  type TaskObserver,
} from 'koa-taskflow';
import { capturePino } from './helpers/pino.js';
import { createManager, startApp, waitFor } from './helpers/server.js';

describe('the observer chain', () => {
  it('calls built-ins first, then user observers in order, for every event', async () => {
    const calls: string[] = [];
    const { logger, lines } = capturePino();
    const first: TaskObserver = { onLog: (e) => void calls.push(`first:${e.message}`) };
    const second: TaskObserver = {
      onLog: (e) => void calls.push(`second:${e.message}:pino-wrote-it=${lines.some((l) => l.msg === e.message)}`),
    };
    const manager = createManager({ logger, observers: [first, second] });
    manager.add(() => taskLog('hello'));
    await manager.drain();
    // The pino observer wrote its line before the user observers saw the event.
    expect(calls).toEqual(['first:hello', 'second:hello:pino-wrote-it=true']);
  });

  it('isolates a throwing, a rejecting and a hanging observer: the task, other observers and the response are unaffected; each failure is reported once', async () => {
    const { logger, lines } = capturePino();
    const good = new InMemoryObserver();
    const throwing: TaskObserver = {
      onLog: () => {
        throw new Error('observer threw');
      },
      onLifecycle: () => {
        throw new Error('observer threw');
      },
    };
    const rejecting: TaskObserver = { onLifecycle: async () => Promise.reject(new Error('observer rejected')) };
    const hanging: TaskObserver = {
      onLog: () => new Promise<void>(() => {}),
      onLifecycle: () => new Promise<void>(() => {}),
    };
    let ran = 0;
    const { url, manager } = await startApp(
      (app) => {
        app.use(async (ctx) => {
          ctx.tasks.addTask(() => {
            taskLog('one');
            taskLog('two');
            ran++;
          });
          ctx.body = 'ok';
        });
      },
      { logger, observers: [throwing, rejecting, hanging, good] },
    );
    for (let i = 0; i < 3; i++) expect(await (await fetch(url)).text()).toBe('ok');
    await manager.drain();
    expect(ran).toBe(3);
    expect(good.logs).toHaveLength(6);
    expect(good.lifecycle.filter((e) => e.status === 'success')).toHaveLength(3);
    const successes = await manager.list({ status: 'success' });
    expect(successes).toHaveLength(3);
    await waitFor(
      () => lines.filter((l) => String(l.msg).includes('observer')).length === 2,
      2_000,
      'two failure reports',
    );
    const reports = lines.filter((l) => String(l.msg).includes('observer'));
    expect(reports.map((l) => l.level)).toEqual([50, 50]);
    expect(reports.map((l) => (l.err as { message: string }).message).sort()).toEqual([
      'observer rejected',
      'observer threw',
    ]);
  });

  it('does not build lifecycle events every observer declines through wantsLifecycle', async () => {
    const seen: string[] = [];
    const asked: string[] = [];
    const manager = createManager({
      observers: [
        {
          wantsLifecycle: (status, retrying) => (
            asked.push(`${status}${retrying ? ' (retrying)' : ''}`),
            status !== 'running'
          ),
          onLifecycle: (e) => void seen.push(e.status),
        },
      ],
    });
    manager.with({ retries: 1 }).add(() => {
      if (asked.filter((a) => a === 'running').length === 1) throw new Error('again');
    });
    await manager.drain();
    expect(asked).toEqual(['pending', 'running', 'pending (retrying)', 'running', 'success']);
    expect(seen).toEqual(['pending', 'pending', 'success']);
  });

  it('asks wantsLog(level) before building a log event: declined levels reach no observer', async () => {
    const asked: string[] = [];
    const seen: string[] = [];
    const manager = createManager({
      observers: [
        {
          wantsLog: (level) => (asked.push(level), level !== 'debug'),
          onLog: (e) => void seen.push(`${e.level}:${e.message}`),
        },
      ],
    });
    manager.add(() => {
      taskLog('detail', { level: 'debug' });
      taskLog('worth it', { level: 'warn' });
    });
    await manager.drain();
    expect(asked).toEqual(['debug', 'warn']);
    expect(seen).toEqual(['warn:worth it']);
  });

  it('treats a throwing wantsLifecycle as "wants it", reported once', async () => {
    // At `error` the built-in pino observer declines these statuses, so the user observer's hint is asked.
    const { logger, lines } = capturePino('error');
    const seen: string[] = [];
    const manager = createManager({
      logger,
      observers: [
        {
          wantsLifecycle: () => {
            throw new Error('hint broke');
          },
          onLifecycle: (e) => void seen.push(e.status),
        },
      ],
    });
    manager.add(() => {});
    await manager.drain();
    expect(seen).toEqual(['pending', 'running', 'success']);
    expect(lines.filter((l) => String(l.msg).includes('wantsLifecycle'))).toHaveLength(1);
  });

  it('subscribe() adds an observer at run time and its removal stops delivery', async () => {
    const manager = createManager();
    const seen: string[] = [];
    const unsubscribe = manager.subscribe({ onLog: (e) => void seen.push(e.message) });
    manager.add(() => taskLog('while subscribed'));
    await manager.drain();
    unsubscribe();
    manager.add(() => taskLog('after'));
    await manager.drain();
    expect(seen).toEqual(['while subscribed']);
  });

  it('startup() runs observer startup hooks; a failing one is reported and start still resolves', async () => {
    const { logger, lines } = capturePino();
    let started = false;
    const manager = createManager({
      logger,
      observers: [
        {
          startup: () => {
            throw new Error('cannot start');
          },
        },
        {
          startup: async () => {
            started = true;
          },
        },
      ],
    });
    await manager.start();
    await manager.start();
    expect(started).toBe(true);
    expect(lines.filter((l) => String(l.msg).includes('startup'))).toHaveLength(1);
  });
});

describe('pinoObserver', () => {
  it('writes task logs at their level with task, tags and fields, and lifecycle lines', async () => {
    const { logger, lines } = capturePino();
    const manager = createManager({ logger });
    const id = manager.with({ tags: { tenant: 'acme' } }).add(function report() {
      taskLog('disk almost full', { level: 'warn', percent: 91 });
    });
    await manager.drain();
    const log = lines.find((l) => l.msg === 'disk almost full')!;
    expect(log).toMatchObject({
      level: 40,
      percent: 91,
      task: { id, name: 'report', attempt: 1 },
      tags: { tenant: 'acme' },
    });
    // No OpenTelemetry SDK here: no fake trace ids either.
    expect(log.trace_id).toBeUndefined();
    const lifecycle = lines
      .filter((l) => (l.task as { id?: string } | undefined)?.id === id && l.status !== undefined)
      .map((l) => [l.level, l.status, l.msg]);
    expect(lifecycle).toEqual([
      [20, 'pending', 'task report pending'],
      [20, 'running', 'task report running'],
      [20, 'success', 'task report success'],
    ]);
  });

  it('logs a failure at error level with the error, and a retried attempt as a warning', async () => {
    const { logger, lines } = capturePino();
    const manager = createManager({ logger });
    manager.with({ retries: 1 }).add(function broken() {
      throw new TypeError('nope');
    });
    await manager.drain();
    const byMsg = (msg: string) => lines.find((l) => l.msg === msg)!;
    expect(byMsg('task broken attempt failed, retrying')).toMatchObject({
      level: 40,
      status: 'pending',
      error: { type: 'TypeError', message: 'nope' },
    });
    expect(byMsg('task broken failed')).toMatchObject({ level: 50, status: 'failed', error: { type: 'TypeError' } });
  });

  it("follows the logger's level when it changes at run time, for log lines and lifecycle lines", async () => {
    const { logger, lines } = capturePino('info');
    const manager = createManager({ logger });
    const job = manager.task(function levels(round: string) {
      taskLog(`debug ${round}`, { level: 'debug' });
      taskLog(`info ${round}`);
      taskLog(`warn ${round}`, { level: 'warn' });
    });
    const run = async (round: string) => {
      const id = manager.add(job, round);
      await manager.drain();
      const own = lines.filter((l) => (l.task as { id?: string } | undefined)?.id === id);
      return own.map((l) => String(l.msg));
    };
    expect(await run('at info')).toEqual(['info at info', 'warn at info']);
    logger.level = 'warn';
    expect(await run('at warn')).toEqual(['warn at warn']);
    logger.level = 'debug';
    expect(await run('at debug')).toEqual([
      'task levels pending',
      'task levels running',
      'debug at debug',
      'info at debug',
      'warn at debug',
      'task levels success',
    ]);
  });

  it('rejects something that is not a logger', () => {
    expect(() => pinoObserver({} as never)).toThrow(/"logger"/);
  });
});

describe('filterObserver', () => {
  function events(manager: ReturnType<typeof createManager>) {
    manager.with({ tags: { tenant: 'acme', plan: 'pro' } }).add(function billing() {
      taskLog('debug line', { level: 'debug' });
      taskLog('warn line', { level: 'warn' });
    });
    manager.with({ tags: { tenant: 'other' } }).add(function billing() {
      taskLog('other tenant', { level: 'error' });
    });
    manager.with({ tags: { tenant: 'acme' } }).add(function mailer() {
      throw new Error('mail down');
    });
    return manager.drain();
  }

  it('passes only events whose tags all match', async () => {
    const inner = new InMemoryObserver();
    await events(createManager({ observers: [filterObserver({ tags: { tenant: 'acme', plan: 'pro' } }, inner)] }));
    expect(new Set(inner.events.map((e) => e.name))).toEqual(new Set(['billing']));
    expect(inner.logs.map((e) => e.message)).toEqual(['debug line', 'warn line']);
  });

  it('filters by names, minLevel (logs only) and statuses (lifecycle only)', async () => {
    const byLevel = new InMemoryObserver();
    const byStatus = new InMemoryObserver();
    const byName = new InMemoryObserver();
    await events(
      createManager({
        observers: [
          filterObserver({ minLevel: 'warn' }, byLevel),
          filterObserver({ statuses: ['failed'] }, byStatus),
          filterObserver({ names: ['mailer'] }, byName),
        ],
      }),
    );
    expect(byLevel.logs.map((e: LogEvent) => e.message).sort()).toEqual(['other tenant', 'warn line']);
    expect(byLevel.lifecycle.length).toBeGreaterThan(0);
    expect(byStatus.lifecycle.map((e: LifecycleEvent) => [e.name, e.status])).toEqual([['mailer', 'failed']]);
    expect(byStatus.logs).toHaveLength(3);
    expect(new Set(byName.events.map((e) => e.name))).toEqual(new Set(['mailer']));
  });

  it('forwards startup and close to the inner observer', async () => {
    const calls: string[] = [];
    const manager = createManager({
      observers: [
        filterObserver(
          { names: ['x'] },
          { startup: () => void calls.push('startup'), close: () => void calls.push('close') },
        ),
      ],
    });
    await manager.start();
    await manager.shutdown();
    expect(calls).toEqual(['startup', 'close']);
  });
});
