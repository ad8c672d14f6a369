import { Writable } from 'node:stream';
import { inspect } from 'node:util';
import pino from 'pino';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { describe, expect, it, vi } from 'vitest';
import { getTaskContext, InMemoryObserver, MemoryStore, REDACTED, taskLog, type TaskRecord } from 'koa-taskflow';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { expectJson, startAdmin, TOKEN } from './helpers/admin.js';
import { openSse } from './helpers/sse.js';
import { createManager } from './helpers/server.js';

describe('redaction: a secret never leaves a task', () => {
  it('not through the admin API, the event stream, pino lines or span events', async () => {
    const lines: string[] = [];
    const logger = pino(
      { level: 'trace' },
      new Writable({ write: (chunk: Buffer, _encoding, done) => (lines.push(chunk.toString()), done()) }),
    );
    const exporter = new InMemorySpanExporter();
    const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    // Default secret-looking names (password, apiKey, token…) plus a key name and a dotted path of our own.
    const manager = createManager({ logger, tracerProvider, redact: ['ssn', 'card.number'] });
    let received: string | undefined;
    const charge = manager.task(async function charge(
      order: { user: string; password: string; card: { number: string; holder: string } },
      note: string,
    ) {
      received = order.password;
      taskLog('charging', {
        apiKey: 'SECRET-api-key',
        card: { number: order.card.number, holder: order.card.holder },
        customer: { ssn: 'SECRET-ssn', nested: { authToken: 'SECRET-token' } },
        visible: `visible-${note}`,
      });
    });
    const { api, base } = await startAdmin({}, manager);
    const stream = await openSse(`${base}/events`, { authorization: `Bearer ${TOKEN}` });

    const id = manager.add(
      charge,
      { user: 'visible-user', password: 'SECRET-password', card: { number: 'SECRET-4111', holder: 'visible-holder' } },
      'note',
    );
    await manager.drain();
    await stream.until((m) =>
      m.some((e) => e.event === 'lifecycle' && (JSON.parse(e.data) as { status: string }).status === 'success'),
    );

    const record = await expectJson<TaskRecord>(await api(`/${id}`), 200);
    const surfaces: Record<string, string> = {
      'GET /tasks/:id': JSON.stringify(record),
      'GET /tasks': JSON.stringify(await expectJson(await api(''), 200)),
      'GET /tasks/events': stream.raw,
      pino: lines.join(''),
      spans: JSON.stringify(
        exporter.getFinishedSpans().map((s) => ({ name: s.name, attributes: s.attributes, events: s.events })),
      ),
    };
    for (const [where, text] of Object.entries(surfaces)) {
      expect(text, where).not.toContain('SECRET');
      // Not vacuous: each surface carries the task's log, with the secrets masked and the rest intact.
      expect(text, where).toContain('visible-note');
      expect(text, where).toContain('visible-holder');
      expect(text, where).toContain(REDACTED);
    }
    expect(record.args).toEqual([
      { user: 'visible-user', password: REDACTED, card: { number: REDACTED, holder: 'visible-holder' } },
      'note',
    ]);
    expect(record.logs[0].fields).toEqual({
      apiKey: REDACTED,
      card: { number: REDACTED, holder: 'visible-holder' },
      customer: { ssn: REDACTED, nested: { authToken: REDACTED } },
      visible: 'visible-note',
    });
    // Masking happens where values leave the task: the task itself got the real ones.
    expect(received).toBe('SECRET-password');
    expect(
      exporter
        .getFinishedSpans()
        .find((s) => s.name === 'task charge')
        ?.events.some((e) => e.name === 'task.log'),
    ).toBe(true);
  });
});

/** `leaf` wrapped in `depth` objects: `{ level: { level: … leaf } }`. */
function nest(depth: number, leaf: unknown): unknown {
  let value = leaf;
  for (let i = 0; i < depth; i++) value = { level: value };
  return value;
}

/**
 * Runs the task `add` adds, with the admin's event stream open, to its end; answers its id and every output
 * its args, log fields and tags leave through, as text.
 */
async function runAndCollect(
  traced: ReturnType<typeof tracedPinoManager>,
  add: () => string,
): Promise<{ id: string; outputs: Record<string, string> }> {
  const { manager, lines, exporter } = traced;
  const { api, base } = await startAdmin({}, manager);
  const stream = await openSse(`${base}/events`, { authorization: `Bearer ${TOKEN}` });
  const id = add();
  await manager.drain();
  await stream.until((m) =>
    m.some((e) => e.event === 'lifecycle' && (JSON.parse(e.data) as { status: string }).status === 'success'),
  );
  const outputs = {
    'GET /tasks/:id': JSON.stringify(await expectJson(await api(`/${id}`), 200)),
    'GET /tasks': JSON.stringify(await expectJson(await api(''), 200)),
    'GET /tasks/events': stream.raw,
    pino: lines.join(''),
    spans: JSON.stringify(
      exporter.getFinishedSpans().map((s) => ({ name: s.name, attributes: s.attributes, events: s.events })),
    ),
  };
  return { id, outputs };
}

function tracedPinoManager(options: Parameters<typeof createManager>[0] = {}) {
  const lines: string[] = [];
  const logger = pino(
    { level: 'trace' },
    new Writable({ write: (chunk: Buffer, _encoding, done) => (lines.push(chunk.toString()), done()) }),
  );
  const exporter = new InMemorySpanExporter();
  const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  return { lines, exporter, manager: createManager({ logger, tracerProvider, ...options }) };
}

describe('redaction has no depth hole', () => {
  it('masks secrets nested at any depth in args and log fields, replaces cycles and what is nested too deep, in every output', async () => {
    const traced = tracedPinoManager();
    const { manager } = traced;
    const cyclic: Record<string, unknown> = { label: 'visible-cycle', token: 'SECRET-cycle' };
    cyclic.self = cyclic;
    const deep = (): unknown => ({
      at40: nest(40, { password: 'SECRET-at-40', label: 'visible-40' }),
      at100: nest(100, { password: 'SECRET-at-100' }),
      // Far deeper than any stack: must neither overflow nor pass through.
      at100k: nest(100_000, { password: 'SECRET-at-100k' }),
      cyclic,
    });
    const job = manager.task(async function deepJob(_input: unknown) {
      taskLog('deep fields', { fields: deep(), note: 'visible-note' });
    });
    const { id, outputs } = await runAndCollect(traced, () => manager.add(job, deep()));
    for (const [where, text] of Object.entries(outputs)) {
      expect(text, where).not.toContain('SECRET');
      expect(text, where).toContain('visible-note');
      expect(text, where).toContain(REDACTED);
      // The parts it could not search are replaced by markers, not dropped silently.
      expect(text, where).toContain('[too deep]');
      expect(text, where).toContain('[circular]');
      expect(text, where).toContain('visible-cycle');
    }
    const record = (await manager.get(id))!;
    const args = record.args[0] as { at40: unknown; cyclic: unknown };
    expect(args.at40).toEqual(nest(40, { password: REDACTED, label: 'visible-40' }));
    expect(args.cyclic).toEqual({ label: 'visible-cycle', token: REDACTED, self: '[circular]' });
  });

  it('masks flat log fields of scalars too (a secret-looking key, a configured key name), and drops unreadable ones', async () => {
    // The common shape of log fields (a few scalars, nothing nested) is checked without the full walk.
    const traced = tracedPinoManager({ redact: ['customerSsn'] });
    const { manager } = traced;
    const job = manager.task(async function flatJob() {
      taskLog('flat fields', { sessionToken: 'SECRET-token', customerSsn: 'SECRET-ssn', note: 'visible-note' });
      const broken = { note: 'visible-broken' };
      Object.defineProperty(broken, 'amount', {
        enumerable: true,
        get: () => {
          throw new Error('SECRET-getter');
        },
      });
      taskLog('a getter throws', broken);
    });
    const { outputs } = await runAndCollect(traced, () => manager.add(job));
    for (const [where, text] of Object.entries(outputs)) {
      expect(text, where).not.toContain('SECRET');
      expect(text, where).toContain('visible-note');
      expect(text, where).toContain(REDACTED);
      // Fields that cannot be read are not logged at all (taskLog never throws), as before the shortcut.
      expect(text, where).not.toContain('a getter throws');
    }
  });

  it('walks a value that shares its parts (2^20 paths through 20 levels) about once per part', async () => {
    const { createRedactor } = await import('../src/redact.js');
    let reads = 0;
    let shared: unknown = { password: 'SECRET', label: 'visible' };
    for (let i = 0; i < 20; i++) {
      const child = shared;
      const level = {};
      for (const key of ['a', 'b'])
        Object.defineProperty(level, key, { enumerable: true, get: () => (reads++, child) });
      shared = level;
    }
    type Shared = { a: Shared; b: Shared };
    const redacted = createRedactor(undefined)(shared) as Shared;
    // Walked path by path that is 2^21 reads; shared parts are walked once each once a walk gets large.
    expect(reads).toBeLessThan(10_000);
    let leaf = redacted;
    for (let i = 0; i < 20; i++) leaf = leaf.b;
    expect(leaf).toEqual({ password: REDACTED, label: 'visible' });
  });

  it('masks the fields of taskLog() called outside a task, at any depth, in the logger and the console', async () => {
    const { lines, manager } = tracedPinoManager({ redact: ['ssn'] });
    await manager.start();
    taskLog('outside', {
      password: 'SECRET-outside',
      nested: { deeper: { apiKey: 'SECRET-nested', ssn: 'SECRET-ssn' } },
      visible: 'visible-outside',
    });
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0])).toMatchObject({
      msg: 'outside',
      password: REDACTED,
      nested: { deeper: { apiKey: REDACTED, ssn: REDACTED } },
      visible: 'visible-outside',
    });

    vi.resetModules();
    const fresh = await import('../src/context.js');
    const spy = vi.spyOn(console, 'info').mockImplementation(() => {});
    fresh.taskLog('to the console', { nested: { token: 'SECRET-console' }, visible: 1 });
    expect(spy).toHaveBeenCalledWith('to the console', { nested: { token: REDACTED }, visible: 1 });
    spy.mockRestore();
  });

  it('masks the values of tags named like secrets on records, events, pino lines and span attributes; filters still match them', async () => {
    const traced = tracedPinoManager({ redact: ['customerSsn'] });
    const { manager, exporter } = traced;
    let seen: Record<string, string> | undefined;
    const job = manager.task(async function tagged() {
      seen = { ...getTaskContext()!.tags };
      taskLog('tagged log', { note: 'visible-note' });
    });
    const tags = { apiToken: 'SECRET-tag-token', customerSsn: 'SECRET-tag-ssn', tenant: 'visible-tenant' };
    const { id, outputs } = await runAndCollect(traced, () => manager.with({ tags }).add(job));
    for (const [where, text] of Object.entries(outputs)) {
      expect(text, where).not.toContain('SECRET');
      expect(text, where).toContain('visible-tenant');
      expect(text, where).toContain(REDACTED);
    }
    const masked = { apiToken: REDACTED, customerSsn: REDACTED, tenant: 'visible-tenant' };
    expect((await manager.get(id))!.tags).toEqual(masked);
    expect(exporter.getFinishedSpans().find((s) => s.name === 'task tagged')!.attributes).toMatchObject({
      'task.tag.apiToken': REDACTED,
      'task.tag.customerSsn': REDACTED,
      'task.tag.tenant': 'visible-tenant',
    });
    // Inside the task, and for filtering, tags keep their values.
    expect(seen).toEqual(tags);
    expect((await manager.list({ tags: { apiToken: 'SECRET-tag-token' } })).map((r) => r.id)).toEqual([id]);
  });
});

/** An object whose JSON is not its own keys: a private password, written out by toJSON(). */
class Account {
  readonly #password: string;
  constructor(
    readonly user: string,
    password: string,
  ) {
    this.#password = password;
  }
  toJSON(): unknown {
    return { user: this.user, password: this.#password };
  }
}

describe('redaction searches what leaves, not only own keys', () => {
  it('masks what toJSON() returns, at any depth, in args and log fields, in every output', async () => {
    const traced = tracedPinoManager();
    const { manager } = traced;
    // toJSON() returning another object with toJSON(), below a plain object, inside an array.
    const wrapped = { toJSON: () => ({ inner: new Account('visible-inner', 'SECRET-inner') }) };
    const job = manager.task(async function accounts(_account: Account, _nested: unknown) {
      taskLog('accounts', { account: new Account('visible-log', 'SECRET-log'), deep: { list: [wrapped] } });
    });
    const { id, outputs } = await runAndCollect(traced, () =>
      manager.add(job, new Account('visible-arg', 'SECRET-arg'), nest(10, [wrapped])),
    );
    for (const [where, text] of Object.entries(outputs)) {
      expect(text, where).not.toContain('SECRET');
      expect(text, where).toContain('visible-log');
      expect(text, where).toContain('visible-inner');
    }
    const record = (await manager.get(id))!;
    expect(record.args).toEqual([
      { user: 'visible-arg', password: REDACTED },
      nest(10, [{ inner: { user: 'visible-inner', password: REDACTED } }]),
    ]);
    expect(record.logs[0].fields).toEqual({
      account: { user: 'visible-log', password: REDACTED },
      deep: { list: [{ inner: { user: 'visible-inner', password: REDACTED } }] },
    });
  });
});

describe('what leaves a task is the value as it was then', () => {
  it.each([
    ['MemoryStore', () => undefined],
    ['SqliteStore', () => new SqliteStore({ path: ':memory:' })],
  ])(
    'log fields are kept as logged (%s): a change the task makes afterwards reaches no record, event or observer',
    async (_, store) => {
      const observer = new InMemoryObserver();
      const traced = tracedPinoManager({ store: store(), observers: [observer] });
      const { manager } = traced;
      const job = manager.task(async function createUser(input: { profile: Record<string, unknown> }) {
        const user: Record<string, unknown> = { email: 'visible-email', roles: ['reader'], profile: { city: 'Lyon' } };
        taskLog('creating user', { user, step: 1 });
        const flat: Record<string, unknown> = { email: 'visible-flat' };
        taskLog('flat', flat);
        // The very common next lines: the object logged gets its secret, and changes.
        user.passwordHash = 'SECRET-hash';
        (user.roles as string[]).push('SECRET-role');
        (user.profile as Record<string, unknown>).city = 'SECRET-city';
        user.email = 'SECRET-email';
        flat.email = 'SECRET-flat';
        // Args are the caller's objects (records show them as they are when read): masked whenever read.
        input.profile.apiKey = 'SECRET-arg-key';
      });
      const { id, outputs } = await runAndCollect(traced, () => manager.add(job, { profile: {} }));
      for (const [where, text] of Object.entries(outputs)) {
        expect(text, where).not.toContain('SECRET');
        expect(text, where).toContain('visible-email');
      }
      const logged = { user: { email: 'visible-email', roles: ['reader'], profile: { city: 'Lyon' } }, step: 1 };
      const record = (await manager.get(id))!;
      expect(record.logs.map((l) => l.fields)).toEqual([logged, { email: 'visible-flat' }]);
      expect(observer.events.filter((e) => e.type === 'log').map((e) => e.fields)).toEqual([
        logged,
        { email: 'visible-flat' },
      ]);
    },
  );
});

describe('an error stays an error once its secrets are masked', () => {
  it('keeps type, message, stack, code and cause; masks what its properties, cause and AggregateError errors hold', async () => {
    const traced = tracedPinoManager();
    const { manager, lines, exporter } = traced;
    class HttpError extends Error {
      code = 'ERR_BAD_RESPONSE';
      // An HTTP client's error writes its request config, Authorization header included (as axios's does).
      toJSON(): unknown {
        return { message: this.message, config: this.config };
      }
      constructor(
        message: string,
        readonly config: unknown,
        options?: ErrorOptions,
      ) {
        super(message, options);
      }
    }
    const make = () => {
      const cause = Object.assign(new Error('visible-cause'), { request: { headers: { cookie: 'SECRET-cookie' } } });
      const inner = new HttpError(
        'visible-401',
        { url: '/charge', headers: { Authorization: 'SECRET-bearer' }, account: new Account('u', 'SECRET-acct') },
        { cause },
      );
      return new AggregateError([inner], 'visible-all-failed');
    };
    const job = manager.task(async function callApi(_err: unknown) {
      taskLog('call failed', { err: make(), failure: make().errors[0] as unknown });
    });
    const { id, outputs } = await runAndCollect(traced, () => manager.add(job, make()));
    for (const [where, text] of Object.entries(outputs)) {
      expect(text, where).not.toContain('SECRET');
      expect(text, where).toContain('visible-all-failed');
    }
    // pino's err serializer: the type, message and stack kept; the nested errors searched.
    const line = JSON.parse(lines.find((l) => l.includes('call failed'))!) as Record<string, Record<string, unknown>>;
    expect(line.err).toMatchObject({
      type: 'AggregateError',
      message: 'visible-all-failed',
      aggregateErrors: [
        {
          type: 'HttpError',
          code: 'ERR_BAD_RESPONSE',
          config: { url: '/charge', headers: { Authorization: REDACTED }, account: { password: REDACTED } },
        },
      ],
    });
    expect(line.err.stack).toMatch(/^AggregateError: visible-all-failed\n {4}at /);
    // A span attribute reads as an error, not as the JSON of a plain object.
    const event = exporter
      .getFinishedSpans()
      .flatMap((s) => s.events)
      .find((e) => e.name === 'task.log')!;
    expect(event.attributes).toMatchObject({
      err: 'AggregateError: visible-all-failed',
      failure: 'Error: visible-401',
    });
    // The record: an Error with its fields; served as JSON with type, message and stack.
    const fields = (await manager.get(id))!.logs[0].fields as { err: AggregateError; failure: HttpError };
    expect(fields.err).toBeInstanceOf(AggregateError);
    expect(fields.failure).toBeInstanceOf(HttpError);
    expect(fields.failure).toMatchObject({ message: 'visible-401', code: 'ERR_BAD_RESPONSE' });
    expect((fields.failure.cause as Error).message).toBe('visible-cause');
    expect(fields.failure.stack).toMatch(/^Error: visible-401\n/);
    const served = JSON.parse(outputs['GET /tasks/:id']) as TaskRecord;
    expect(served.logs[0].fields!.failure).toMatchObject({
      type: 'Error',
      message: 'visible-401',
      code: 'ERR_BAD_RESPONSE',
      config: { headers: { Authorization: REDACTED } },
      cause: { type: 'Error', message: 'visible-cause', request: { headers: { cookie: REDACTED } } },
    });
    expect(served.args[0]).toMatchObject({ type: 'AggregateError', errors: [{ message: 'visible-401' }] });
  });
});

describe('collections are searched: Map, Set, Headers, URLSearchParams', () => {
  const collections = () => ({
    map: new Map<unknown, unknown>([
      ['password', 'SECRET-map'],
      ['nested', { apiKey: 'SECRET-map-nested', label: 'visible-map' }],
      [{ token: 'SECRET-map-key' }, 'visible-object-key'],
    ]),
    set: new Set([{ secret: 'SECRET-set', label: 'visible-set' }]),
    headers: new Headers({ authorization: 'Bearer SECRET-headers', accept: 'visible/json' }),
    query: new URLSearchParams({ api_key: 'SECRET-query', page: 'visible-2' }),
  });

  it('in args and log fields: get() answers copies with the secrets masked, which print without them', async () => {
    const manager = createManager();
    const job = manager.task(async function collect(_c: unknown) {
      taskLog('collections', collections());
    });
    const id = manager.add(job, collections());
    await manager.drain();
    const record = (await manager.get(id))!;
    const printed = inspect(record, { depth: Infinity });
    expect(printed).not.toContain('SECRET');
    for (const visible of ['visible-map', 'visible-object-key', 'visible-set', 'visible/json', 'visible-2'])
      expect(printed).toContain(visible);
    for (const found of [record.args[0], record.logs[0].fields] as ReturnType<typeof collections>[]) {
      expect(found.map.get('password')).toBe(REDACTED);
      expect(found.map.get('nested')).toEqual({ apiKey: REDACTED, label: 'visible-map' });
      expect([...found.set]).toEqual([{ secret: REDACTED, label: 'visible-set' }]);
      expect(found.headers.get('authorization')).toBe(REDACTED);
      expect(found.headers.get('accept')).toBe('visible/json');
      expect(found.query.toString()).toBe('api_key=%5Bredacted%5D&page=visible-2');
    }
  });

  it('in the fields of taskLog() outside a task, written to the console', async () => {
    vi.resetModules();
    const fresh = await import('../src/context.js');
    const spy = vi.spyOn(console, 'info').mockImplementation(() => {});
    fresh.taskLog('outside', collections());
    expect(spy).toHaveBeenCalledTimes(1);
    const printed = inspect(spy.mock.calls[0], { depth: Infinity });
    spy.mockRestore();
    expect(printed).not.toContain('SECRET');
    expect(printed).toContain('visible-map');
    expect(printed).toContain('visible/json');
  });
});

/** A handle that refuses to be written out. */
class Closed {
  toJSON(): never {
    throw new Error('connection is closed');
  }
}

describe('one value that cannot be written out costs only itself', () => {
  it('an arg or log field whose toJSON() throws is "[unreadable]"; the list and the record answer 200', async () => {
    const manager = createManager();
    const ok = manager.task(async function ok(_conn?: Closed) {});
    const logs = manager.task(async function logsClosed() {
      taskLog('using', { conn: new Closed(), note: 'visible-note' });
    });
    const { api } = await startAdmin({}, manager);
    manager.add(ok);
    const badArg = manager.add(ok, new Closed());
    const badLog = manager.add(logs);
    await manager.drain();
    const list = await expectJson<{ tasks: TaskRecord[] }>(await api(''), 200);
    expect(list.tasks).toHaveLength(3);
    expect((await expectJson<TaskRecord>(await api(`/${badArg}`), 200)).args).toEqual(['[unreadable]']);
    expect((await expectJson<TaskRecord>(await api(`/${badLog}`), 200)).logs[0].fields).toEqual({
      conn: '[unreadable]',
      note: 'visible-note',
    });
    expect((await expectJson<{ tasks: TaskRecord[] }>(await api('?name=ok'), 200)).tasks).toHaveLength(2);
  });

  it('also from a store that answers such a value (with redact: false), on the list and the record', async () => {
    // A store of the app's own may answer anything in a record it kept.
    class OddStore extends MemoryStore {
      #odd = (record: TaskRecord): TaskRecord => ({
        ...record,
        logs: [{ ...record.logs[0], fields: { conn: new Closed(), n: 10n } }],
      });
      override async get(id: string) {
        const record = await super.get(id);
        return record && this.#odd(record);
      }
      override async list(filter?: Parameters<MemoryStore['list']>[0]) {
        return (await super.list(filter)).map(this.#odd);
      }
    }
    const manager = createManager({ store: new OddStore(), redact: false });
    const job = manager.task(async function logsOnce() {
      taskLog('once');
    });
    const { api } = await startAdmin({}, manager);
    const id = manager.add(job);
    manager.add(job);
    await manager.drain();
    const list = await expectJson<{ tasks: TaskRecord[] }>(await api(''), 200);
    expect(list.tasks.map((t) => t.logs[0].fields)).toEqual([
      { conn: '[unreadable]', n: '10' },
      { conn: '[unreadable]', n: '10' },
    ]);
    expect((await expectJson<TaskRecord>(await api(`/${id}`), 200)).logs[0].message).toBe('once');
  });
});

describe('a filter on a tag named like a secret matches the value the task was given', () => {
  it('on the event stream as on GET /tasks, never "[redacted]", and the value is not sent', async () => {
    const manager = createManager();
    const job = manager.task(async function tenantJob() {});
    const { api, base } = await startAdmin({}, manager);
    const headers = { authorization: `Bearer ${TOKEN}` };
    const real = await openSse(`${base}/events?tag.apiToken=SECRET-tenant-42`, headers);
    const masked = await openSse(`${base}/events?tag.apiToken=${encodeURIComponent(REDACTED)}`, headers);
    const tagged = manager.with({ tags: { apiToken: 'SECRET-tenant-42' } }).add(job);
    manager.with({ tags: { apiToken: 'SECRET-other' } }).add(job);
    // Its real value is "[redacted]": once the masked-value stream has its end, it has had every earlier event.
    const literal = manager.with({ tags: { apiToken: REDACTED } }).add(job);
    await manager.drain();
    const ended = (id: string) => (messages: { data: string }[]) =>
      messages.some((e) => e.data.includes(`"taskId":"${id}"`) && e.data.includes('"status":"success"'));
    await real.until(ended(tagged));
    await masked.until(ended(literal));
    const ids = (stream: typeof real) =>
      new Set(stream.messages.map((e) => (JSON.parse(e.data) as { taskId: string }).taskId));
    expect(ids(real)).toEqual(new Set([tagged]));
    expect(ids(masked)).toEqual(new Set([literal]));
    expect(real.raw + masked.raw).not.toContain('SECRET');
    const listed = await expectJson<{ tasks: TaskRecord[] }>(await api('?tag.apiToken=SECRET-tenant-42'), 200);
    expect(listed.tasks.map((t) => t.id)).toEqual([tagged]);
  });
});
