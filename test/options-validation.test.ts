import { describe, expect, it } from 'vitest';
import { getTaskContext, TaskManager, filterObserver, MemoryStore, type TaskOptions } from 'koa-taskflow';
import { bullmqEngine } from 'koa-taskflow/bullmq';
import { RedisStore } from 'koa-taskflow/redis';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { mergeOptions } from '../src/options.js';
import { createManager, startApp } from './helpers/server.js';

describe('mergeOptions', () => {
  it('lets later defined values win and keeps earlier ones where the later is undefined', () => {
    const onError = () => {};
    expect(mergeOptions({ retries: 1, delay: 5, shield: true }, { retries: 3, delay: undefined, onError })).toEqual({
      retries: 3,
      delay: 5,
      shield: true,
      onError,
    });
  });

  it('merges tags key by key', () => {
    expect(mergeOptions({ tags: { a: '1', b: '1' } }, { tags: { b: '2', c: '3' } }).tags).toEqual({
      a: '1',
      b: '2',
      c: '3',
    });
  });

  it('returns the base itself when nothing is overridden', () => {
    const base = { retries: 2 };
    expect(mergeOptions(base, {})).toBe(base);
    expect(mergeOptions(base, { retries: undefined })).toBe(base);
  });
});

describe('option levels: defaults < task() < with()', () => {
  it('apply in that order, with tags merged across all three, on record and context', async () => {
    let seen: { tags: Record<string, string>; maxAttempts: number } | undefined;
    const { url, manager } = await startApp(
      (app, manager) => {
        const job = manager.task(
          async function job() {
            const ctx = getTaskContext()!;
            seen = { tags: { ...ctx.tags }, maxAttempts: ctx.maxAttempts };
          },
          { retries: 2, tags: { team: 'mail', level: 'task' } },
        );
        app.use(async (ctx) => {
          ctx.body = {
            id: ctx.tasks
              .with({ tags: { tenant: 'acme', level: 'with' } })
              .with({ retries: 4 })
              .addTask(job),
          };
        });
      },
      { defaults: { retries: 1, tags: { service: 'api', level: 'defaults' } } },
    );
    const { id } = (await (await fetch(url)).json()) as { id: string };
    await manager.drain();
    const expectedTags = { service: 'api', team: 'mail', tenant: 'acme', level: 'with' };
    expect(seen).toEqual({ tags: expectedTags, maxAttempts: 5 });
    expect(await manager.get(id)).toMatchObject({ tags: expectedTags, maxAttempts: 5 });
  });

  it('use the registered name unless with() names the task', async () => {
    const manager = createManager();
    const fn = manager.task(() => {}, { name: 'registered-name' });
    const a = manager.add(fn);
    const b = manager.with({ name: 'renamed' }).add(fn);
    await manager.drain();
    expect((await manager.get(a))!.name).toBe('registered-name');
    expect((await manager.get(b))!.name).toBe('renamed');
  });
});

describe('task()', () => {
  it('returns the same function, still directly callable', () => {
    const manager = createManager();
    const add = (a: number, b: number) => a + b;
    expect(manager.task(add)).toBe(add);
    expect(add(2, 3)).toBe(5);
  });

  it('throws when two different functions claim one name', () => {
    const manager = createManager();
    manager.task(function send() {});
    expect(() => manager.task(function send() {})).toThrow(/"send" is already registered/);
  });

  it('needs a name', () => {
    const manager = createManager();
    expect(() => manager.task(() => {})).toThrow(/needs a name/);
  });
});

// Every bad value throws at the call that received it, naming the option.
const badTaskOptions: [string, TaskOptions, RegExp, ErrorConstructor][] = [
  ['negative retries', { retries: -1 }, /"retries"/, RangeError],
  ['fractional retries', { retries: 1.5 }, /"retries"/, RangeError],
  ['string retries', { retries: '2' as unknown as number }, /"retries"/, TypeError],
  ['negative delay', { delay: -5 }, /"delay"/, RangeError],
  ['backoff below 1', { backoff: 0.5 }, /"backoff"/, RangeError],
  ['negative maxDelay', { maxDelay: -1 }, /"maxDelay"/, RangeError],
  ['non-boolean jitter', { jitter: 'yes' as unknown as boolean }, /"jitter"/, TypeError],
  ['zero timeout', { timeout: 0 }, /"timeout"/, RangeError],
  ['infinite timeout', { timeout: Infinity }, /"timeout"/, RangeError],
  ['priority 11', { priority: 11 }, /"priority"/, RangeError],
  ['priority 0', { priority: 0 }, /"priority"/, RangeError],
  ['fractional priority', { priority: 2.5 }, /"priority"/, RangeError],
  ['eager with priority', { eager: true, priority: 3 }, /"eager" and "priority"/, TypeError],
  ['non-boolean shield', { shield: 1 as unknown as boolean }, /"shield"/, TypeError],
  ['non-boolean eager', { eager: 'x' as unknown as boolean }, /"eager"/, TypeError],
  ['non-string tag value', { tags: { tenant: 42 as unknown as string } }, /"tags\.tenant"/, TypeError],
  ['tags not an object', { tags: 'a=b' as unknown as Record<string, string> }, /"tags"/, TypeError],
  ['empty idempotencyKey', { idempotencyKey: '' }, /"idempotencyKey"/, TypeError],
  ['non-string idempotencyKey', { idempotencyKey: 42 as unknown as string }, /"idempotencyKey"/, TypeError],
  ['empty tag key', { tags: { '': 'x' } }, /"tags"/, TypeError],
  ['non-function onError', { onError: 'log' as unknown as () => void }, /"onError"/, TypeError],
  ['non-boolean runOnError', { runOnError: 'true' as unknown as boolean }, /"runOnError"/, TypeError],
  ['non-boolean persist', { persist: 0 as unknown as boolean }, /"persist"/, TypeError],
  [
    'non-boolean requeueOnInterrupt',
    { requeueOnInterrupt: 'no' as unknown as boolean },
    /"requeueOnInterrupt"/,
    TypeError,
  ],
  ['negative maxStalls', { maxStalls: -1 }, /option "maxStalls" must be an integer >= 0, got -1/, RangeError],
  ['fractional maxStalls', { maxStalls: 1.5 }, /"maxStalls"/, RangeError],
  ['non-number maxStalls', { maxStalls: '2' as unknown as number }, /"maxStalls"/, TypeError],
  ['empty name', { name: ' ' }, /"name"/, TypeError],
  ['unknown option', { retires: 3 } as unknown as TaskOptions, /unknown option "retires"/, TypeError],
];

describe.each(badTaskOptions)('bad task option: %s', (_label, options, message, Kind) => {
  it('throws from task()', () => {
    const manager = createManager();
    expect(() => manager.task(function named() {}, options)).toThrow(Kind);
    expect(() => manager.task(function named() {}, options)).toThrow(message);
  });

  it('throws from manager.with()', () => {
    const manager = createManager();
    expect(() => manager.with(options)).toThrow(Kind);
    expect(() => manager.with(options)).toThrow(message);
  });

  it('throws from ctx.tasks.with() inside a request, as a 500 the handler can catch', async () => {
    let caught: unknown;
    const { url } = await startApp((app) => {
      app.use(async (ctx) => {
        try {
          ctx.tasks.with(options);
        } catch (error) {
          caught = error;
        }
        ctx.status = 204;
      });
    });
    await fetch(url);
    expect(caught).toBeInstanceOf(Kind);
    expect((caught as Error).message).toMatch(message);
  });

  it('throws from new TaskManager({ defaults })', () => {
    expect(() => new TaskManager({ defaults: options })).toThrow(message);
  });
});

describe('eager and priority across levels', () => {
  it('throw at enqueue when the merged options combine them', () => {
    const manager = createManager();
    const fn = manager.task(function urgent() {}, { priority: 8 });
    expect(() => manager.with({ eager: true }).add(fn)).toThrow(/"eager" and "priority"/);
    expect(manager.unfinished).toBe(0);
  });
});

describe('bad arguments', () => {
  it('a non-function task throws a TypeError naming "fn" at every entry point', async () => {
    const manager = createManager();
    const notFn = 'sendMail' as unknown as () => void;
    expect(() => manager.add(notFn)).toThrow(/manager\.add: argument "fn" must be a function, got string/);
    expect(() => manager.task(notFn)).toThrow(/argument "fn" must be a function/);
    const errors: string[] = [];
    const { url } = await startApp((app) => {
      app.use(async (ctx) => {
        for (const call of [
          () => ctx.tasks.addTask(notFn),
          () => ctx.tasks.schedule(notFn),
          () => ctx.tasks.afterRoute.schedule(notFn),
          () => ctx.tasks.afterResponse.schedule(notFn),
        ]) {
          try {
            call();
          } catch (error) {
            errors.push((error as Error).message);
          }
        }
        ctx.status = 204;
      });
    });
    await fetch(url);
    expect(errors).toEqual([
      expect.stringMatching(/ctx\.tasks\.addTask: argument "fn"/),
      expect.stringMatching(/ctx\.tasks\.schedule: argument "fn"/),
      expect.stringMatching(/ctx\.tasks\.afterRoute\.schedule: argument "fn"/),
      expect.stringMatching(/ctx\.tasks\.afterResponse\.schedule: argument "fn"/),
    ]);
  });

  it('bad manager options throw at construction, naming the option', () => {
    expect(() => new TaskManager({ concurrency: 0 })).toThrow(/"concurrency"/);
    expect(() => new TaskManager({ concurrency: 2.5 })).toThrow(RangeError);
    expect(() => new TaskManager({ shutdownTimeoutMs: -1 })).toThrow(/"shutdownTimeoutMs"/);
    expect(() => new TaskManager({ logger: console.log as never })).toThrow(/"logger"/);
    expect(() => new TaskManager({ store: {} as never })).toThrow(/"store"/);
    expect(() => new TaskManager({ observers: [null as never] })).toThrow(/"observers"/);
    expect(() => new TaskManager({ redact: 'password' as never })).toThrow(/"redact"/);
    expect(() => new TaskManager({ encryptionKey: Buffer.alloc(16) })).toThrow(/"encryptionKey"/);
    expect(() => new TaskManager({ encryptionKey: Buffer.alloc(32) })).toThrow(/durable store/);
    expect(() => new TaskManager({ concurency: 2 } as never)).toThrow(/unknown option "concurency"/);
    expect(() => new MemoryStore({ maxRecords: 0 })).toThrow(/"maxRecords"/);
  });

  it.each<[string, Record<string, unknown>, RegExp, ErrorConstructor]>([
    ['tracerProvider {}', { tracerProvider: {} }, /"tracerProvider"/, TypeError],
    ['tracerProvider 42', { tracerProvider: 42 }, /"tracerProvider"/, TypeError],
    ['meterProvider {}', { meterProvider: {} }, /"meterProvider"/, TypeError],
    ['meterProvider 42', { meterProvider: 42 }, /"meterProvider"/, TypeError],
    ['non-boolean requeuePending', { requeuePending: 'yes' }, /"requeuePending"/, TypeError],
    ['leaseMs below 10', { leaseMs: 5 }, /"leaseMs"/, RangeError],
    ['string leaseMs', { leaseMs: '30s' }, /"leaseMs"/, TypeError],
    ['fractional orphanCheckMs', { orphanCheckMs: 100.5 }, /"orphanCheckMs"/, RangeError],
    ['string orphanCheckMs', { orphanCheckMs: '1m' }, /"orphanCheckMs"/, TypeError],
  ])('bad manager option %s throws at construction, naming it', (_label, options, message, Kind) => {
    expect(() => new TaskManager(options as never)).toThrow(Kind);
    expect(() => new TaskManager(options as never)).toThrow(message);
  });

  it('real OpenTelemetry providers pass the check', async () => {
    const { BasicTracerProvider } = await import('@opentelemetry/sdk-trace-base');
    const { MeterProvider } = await import('@opentelemetry/sdk-metrics');
    expect(() =>
      createManager({ tracerProvider: new BasicTracerProvider(), meterProvider: new MeterProvider() }),
    ).not.toThrow();
  });

  it.each<[string, unknown, RegExp, ErrorConstructor]>([
    ['unknown status', { status: 'done' }, /"status"/, RangeError],
    ['unknown status in an array', { status: ['failed', 'broken'] }, /"status"/, RangeError],
    ['non-string status', { status: [1] }, /"status"/, TypeError],
    ['non-string name', { name: 42 }, /"name"/, TypeError],
    ['tags not an object', { tags: 'tenant=acme' }, /"tags"/, TypeError],
    ['non-string tag value', { tags: { tenant: 1 } }, /"tags\.tenant"/, TypeError],
    ['fractional limit', { limit: 1.5 }, /"limit"/, RangeError],
    ['negative limit', { limit: -1 }, /"limit"/, RangeError],
    ['string limit', { limit: '10' }, /"limit"/, TypeError],
    ['string since', { since: 'yesterday' }, /"since"/, TypeError],
    ['invalid Date since', { since: new Date('not a date') }, /"since"/, RangeError],
    ['a string filter', 'failed', /filter must be an object/, TypeError],
  ])('list() with %s rejects, naming the option', async (_label, filter, message, Kind) => {
    const manager = createManager();
    await expect(manager.list(filter as never)).rejects.toThrow(Kind);
    await expect(manager.list(filter as never)).rejects.toThrow(message);
  });

  it('bad arguments to shutdown, get and subscribe throw naming them', async () => {
    const manager = createManager();
    expect(() => manager.shutdown(null as never)).toThrow(TypeError);
    expect(() => manager.shutdown(null as never)).toThrow(/"options"/);
    expect(() => manager.shutdown({ timeoutMs: '5' as never })).toThrow(TypeError);
    expect(() => manager.shutdown({ timeoutMs: '5' as never })).toThrow(/"timeoutMs"/);
    await expect(manager.get(123 as never)).rejects.toThrow(TypeError);
    await expect(manager.get(123 as never)).rejects.toThrow(/"id"/);
    expect(() => manager.subscribe(null as never)).toThrow(TypeError);
    expect(() => manager.subscribe(null as never)).toThrow(/"observer"/);
  });

  it('bad filters and list options throw naming the option', async () => {
    const manager = createManager();
    expect(() => filterObserver({ minLevel: 'loud' as never }, {})).toThrow(/"minLevel"/);
    expect(() => filterObserver({ statuses: ['done' as never] }, {})).toThrow(/"statuses"/);
    expect(() => filterObserver({ tags: { a: 1 as never } }, {})).toThrow(/"tags\.a"/);
    expect(() => filterObserver({ names: 'x' as never }, {})).toThrow(/"names"/);
    await expect(manager.list({ limit: -1 })).rejects.toThrow(/"limit"/);
    await expect(manager.list({ since: 'yesterday' as never })).rejects.toThrow(/"since"/);
    expect(() => manager.shutdown({ timeoutMs: -5 })).toThrow(/"timeoutMs"/);
  });
});

/** What `call` threw or rejected with; fails the test when it did neither. */
async function refusal(call: () => unknown): Promise<Error> {
  try {
    await call();
  } catch (error) {
    return error as Error;
  }
  throw new Error('the call was accepted');
}

describe('every call taking options refuses an unknown option name, naming it', () => {
  const manager = (): TaskManager => createManager();
  it.each<[string, () => unknown, string]>([
    ['task()', () => manager().task(function job() {}, { retires: 3 } as never), 'retires'],
    ['with()', () => manager().with({ timout: 5 } as never), 'timout'],
    ['repeat() schedule', () => manager().repeat(function tick() {}, { every: 1_000, at: 1 } as never), 'at'],
    ['repeat() options', () => manager().repeat(function tick() {}, { every: 1_000 }, { retry: 1 } as never), 'retry'],
    ['shutdown()', () => manager().shutdown({ timeout: 100 } as never), 'timeout'],
    ['cancel()', () => manager().cancel('some-id', { reasn: 'x' } as never), 'reasn'],
    ['list()', () => manager().list({ state: 'failed' } as never), 'state'],
    ['admin()', () => manager().admin({ auth: 'none', colour: 'red' } as never), 'colour'],
    ['new TaskManager()', () => new TaskManager({ concurency: 2 } as never), 'concurency'],
    ['new TaskManager() threads', () => new TaskManager({ threads: { maxthreads: 2 } } as never), 'threads.maxthreads'],
    [
      'new TaskManager() threads.resourceLimits',
      () => new TaskManager({ threads: { resourceLimits: { maxOldGenMb: 64 } } } as never),
      'threads.resourceLimits.maxOldGenMb',
    ],
    ['new TaskManager() defaults', () => new TaskManager({ defaults: { retires: 1 } } as never), 'retires'],
    ['new MemoryStore()', () => new MemoryStore({ maxrecords: 5 } as never), 'maxrecords'],
    ['new SqliteStore()', () => new SqliteStore({ path: ':memory:', busyTimeout: 5 } as never), 'busyTimeout'],
    ['new RedisStore()', () => new RedisStore({ url: 'redis://127.0.0.1:1' }, { prefx: 'app' } as never), 'prefx'],
    ['filterObserver()', () => filterObserver({ name: 'job' } as never, {}), 'name'],
    ['bullmqEngine()', () => bullmqEngine({ connection: {}, workers: 2 } as never), 'workers'],
  ])('%s', async (_label, call, option) => {
    const error = await refusal(call);
    expect(error).toBeInstanceOf(TypeError);
    expect(error.message).toMatch(new RegExp(`unknown option "${option.replaceAll('.', '\\.')}"; known options are `));
  });

  it('shutdown() with an unknown option throws before it begins: the manager still takes tasks', async () => {
    const manager = createManager();
    expect(() => manager.shutdown({ timeout: 100 } as never)).toThrow(TypeError);
    let ran = false;
    manager.add(() => {
      ran = true;
    });
    await manager.drain();
    expect(ran).toBe(true);
  });
});

describe('a bad number option shows the value as given; a number is a RangeError, another type a TypeError', () => {
  const entryPoints: [string, (value: unknown) => unknown][] = [
    ['with() retries', (v) => createManager().with({ retries: v as number })],
    ['task() timeout', (v) => createManager().task(function job() {}, { timeout: v as number })],
    ['with() startAfter', (v) => createManager().with({ startAfter: v as number })],
    ['with() limit.concurrency', (v) => createManager().with({ limit: { concurrency: v as number } })],
    ['new TaskManager() concurrency', (v) => new TaskManager({ concurrency: v as number })],
    ['new TaskManager() shutdownTimeoutMs', (v) => new TaskManager({ shutdownTimeoutMs: v as number })],
    ['new TaskManager() threads.maxThreads', (v) => new TaskManager({ threads: { maxThreads: v as number } })],
    ['shutdown() timeoutMs', (v) => createManager().shutdown({ timeoutMs: v as number })],
    ['list() limit', (v) => createManager().list({ limit: v as number })],
    ['repeat() every', (v) => createManager().repeat(function tick() {}, { every: v as number })],
    ['new MemoryStore() maxRecords', (v) => new MemoryStore({ maxRecords: v as number })],
    ['new SqliteStore() busyTimeoutMs', (v) => new SqliteStore({ path: ':memory:', busyTimeoutMs: v as number })],
    ['new SqliteStore() retentionDays', (v) => new SqliteStore({ path: ':memory:', retentionDays: v as number })],
  ];
  const values: [unknown, string, ErrorConstructor][] = [
    [NaN, 'NaN', RangeError],
    [Infinity, 'Infinity', RangeError],
    [-Infinity, '-Infinity', RangeError],
    [1n, '1n', TypeError],
    [Symbol('x'), 'Symbol(x)', TypeError],
    [function send() {}, '[Function: send]', TypeError],
    ['5', '"5"', TypeError],
  ];
  it.each(entryPoints)('%s', async (_label, use) => {
    for (const [value, shown, Kind] of values) {
      const error = await refusal(() => use(value));
      expect(error, shown).toBeInstanceOf(Kind);
      expect(error.message, shown).toMatch(/option "[\w.]+" must be /);
      expect(error.message.endsWith(`, got ${shown}`), `${error.message} ends with "got ${shown}"`).toBe(true);
    }
  });
});

describe('durations above the longest timer (2^31 − 1 ms, which Node turns into 1 ms)', () => {
  const MAX = 2 ** 31 - 1;
  const add = (manager: TaskManager, options: TaskOptions) => manager.with(options).add(() => {});

  it.each<[string, (manager: TaskManager, ms: number) => unknown, string]>([
    ['task() timeout', (m, ms) => m.task(function a() {}, { timeout: ms }), 'timeout'],
    ['task() delay', (m, ms) => m.task(function b() {}, { delay: ms }), 'delay'],
    ['task() maxDelay', (m, ms) => m.task(function c() {}, { maxDelay: ms }), 'maxDelay'],
    ['with() timeout', (m, ms) => add(m, { timeout: ms }), 'timeout'],
    ['with() delay', (m, ms) => add(m, { delay: ms }), 'delay'],
    ['with() maxDelay', (m, ms) => add(m, { maxDelay: ms }), 'maxDelay'],
    ['defaults timeout', (_m, ms) => new TaskManager({ defaults: { timeout: ms } }), 'timeout'],
    ['shutdownTimeoutMs', (_m, ms) => new TaskManager({ shutdownTimeoutMs: ms }), 'shutdownTimeoutMs'],
    ['leaseMs', (_m, ms) => new TaskManager({ leaseMs: ms }), 'leaseMs'],
    ['orphanCheckMs', (_m, ms) => new TaskManager({ orphanCheckMs: ms }), 'orphanCheckMs'],
    ['shutdown({ timeoutMs })', (m, ms) => m.shutdown({ timeoutMs: ms }), 'timeoutMs'],
  ])('%s: 2^31 ms is a RangeError naming the option; 2^31 − 1 ms is accepted', async (_label, use, option) => {
    const manager = createManager();
    expect(() => use(manager, MAX + 1)).toThrow(RangeError);
    expect(() => use(manager, MAX + 1)).toThrow(new RegExp(`"${option}"[^]*2147483647`));
    const accepted = use(manager, MAX);
    if (accepted instanceof TaskManager) await accepted.shutdown({ timeoutMs: 0 });
  });
});

describe('options are fixed by the call that received them', () => {
  it('one tags object reused in a loop: each task keeps the tags of its own add', async () => {
    const manager = createManager();
    const job = manager.task(async function tenantJob(_tenant: string) {});
    const tags: Record<string, string> = {};
    const ids: string[] = [];
    for (const tenant of ['acme', 'globex', 'initech']) {
      tags.tenant = tenant;
      ids.push(manager.with({ tags, startAfter: 20 }).add(job, tenant));
    }
    (tags as Record<string, unknown>).tenant = 12_345; // would have been refused by the add
    await manager.drain();
    const records = await Promise.all(ids.map((id) => manager.get(id)));
    expect(records.map((r) => r!.tags)).toEqual([{ tenant: 'acme' }, { tenant: 'globex' }, { tenant: 'initech' }]);
    expect((await manager.list({ tags: { tenant: 'acme' } })).map((r) => r.id)).toEqual([ids[0]]);
  });

  it('changing what was given to with(), task() or defaults afterwards changes no later add, unvalidated', async () => {
    const defaults: TaskOptions = { tags: { service: 'api' } };
    const manager = createManager({ defaults });
    const registered: TaskOptions = { retries: 1, tags: { team: 'mail' } };
    const attempts: number[] = [];
    const job = manager.task(async function failing() {
      attempts.push(getTaskContext()!.attempt);
      throw new Error('fails');
    }, registered);
    const given: TaskOptions = { limit: { concurrency: 1 }, runAt: new Date(Date.now() + 10) };
    const scheduler = manager.with(given);
    Object.assign(given, { retries: Number.NaN, priority: 99, timeout: -1, tags: { tenant: 7 } });
    given.limit!.concurrency = 0;
    (given.runAt as Date).setTime(Number.NaN);
    Object.assign(registered, { retries: Number.NaN });
    registered.tags!.team = 'SECRET-changed';
    defaults.tags!.service = 'changed';
    const id = scheduler.add(job);
    await manager.drain();
    const record = (await manager.get(id))!;
    expect(record).toMatchObject({
      status: 'failed',
      attempts: 2,
      maxAttempts: 2,
      tags: { service: 'api', team: 'mail' },
    });
    expect(record.priority).toBeUndefined();
    expect(attempts).toEqual([1, 2]);
  });
});
