import { join } from 'node:path';
import { SpanStatusCode } from '@opentelemetry/api';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { describe, expect, it } from 'vitest';
import { InMemoryObserver, type TaskManager, type TaskRecord } from 'koa-taskflow';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { startAdmin, TOKEN } from './helpers/admin.js';
import { tempDir } from './helpers/files.js';
import { capturePino } from './helpers/pino.js';
import { createManager, onCleanup } from './helpers/server.js';
import { openSse } from './helpers/sse.js';

const trap = (): never => {
  throw new Error('trap');
};
const TRAPS = [
  'get',
  'set',
  'has',
  'ownKeys',
  'getPrototypeOf',
  'setPrototypeOf',
  'getOwnPropertyDescriptor',
  'defineProperty',
  'deleteProperty',
  'isExtensible',
  'preventExtensions',
];

function errorWith(property: 'name' | 'message' | 'stack'): Error {
  const error = new Error('plain message');
  Object.defineProperty(error, property, { get: trap });
  return error;
}

/** Everything JavaScript can throw that is awkward to describe: [label, the value, error.type, error.message]. */
const HOSTILE: [string, () => unknown, string, string | RegExp][] = [
  ['a null-prototype object', () => Object.create(null) as object, 'object', '[unprintable Object]'],
  ['an object whose toString throws', () => ({ toString: trap }), 'object', '[unprintable Object]'],
  [
    'an object whose toPrimitive, valueOf and toString throw',
    () => ({ [Symbol.toPrimitive]: trap, valueOf: trap, toString: trap }),
    'object',
    '[unprintable Object]',
  ],
  [
    'a Proxy whose every trap throws',
    () => new Proxy({}, Object.fromEntries(TRAPS.map((t) => [t, trap]))),
    'object',
    '[unprintable Proxy]',
  ],
  [
    'a revoked Proxy',
    () => {
      const { proxy, revoke } = Proxy.revocable({}, {});
      revoke();
      return proxy;
    },
    'object',
    '[unprintable Proxy]',
  ],
  [
    'a thenable whose then throws',
    () => ({
      get then() {
        return trap();
      },
    }),
    'object',
    '[object Object]',
  ],
  ['a symbol', () => Symbol('boom'), 'symbol', 'Symbol(boom)'],
  ['undefined', () => undefined, 'Error', 'the task threw undefined'],
  ['null', () => null, 'Error', 'the task threw null'],
  ['a number', () => 42, 'number', '42'],
  ['a BigInt', () => 10n ** 30n, 'bigint', '1000000000000000000000000000000'],
  ['a 1 MB string', () => 'x'.repeat(1_000_000), 'string', /^x{8192}… \[991808 more characters cut\]$/],
  ['an Error whose name getter throws', () => errorWith('name'), 'Error', 'plain message'],
  ['an Error whose message getter throws', () => errorWith('message'), 'Error', '[unreadable message]'],
  ['an Error whose stack getter throws', () => errorWith('stack'), 'Error', 'plain message'],
  [
    'an Error with a cyclic cause',
    () => {
      const error = new TypeError('cyclic');
      error.cause = { error, again: error };
      (error.cause as Record<string, unknown>).self = error.cause;
      return error;
    },
    'TypeError',
    'cyclic',
  ],
];

/** Register one sync and one async task per hostile value, each with one retry and an onError that throws a hostile value too. */
function registerHostile(
  manager: TaskManager,
  onErrorCalls: Map<string, number>,
): { add(): { id: string; label: string; sync: boolean }[] } {
  const tasks = HOSTILE.map(([label, make], i) => {
    const onError = (_error: unknown, record: TaskRecord): never => {
      onErrorCalls.set(record.id, (onErrorCalls.get(record.id) ?? 0) + 1);
      throw HOSTILE[(i + 3) % HOSTILE.length][1]();
    };
    const sync = manager.task(
      function hostileSync(): void {
        throw make();
      },
      { name: `hostile-sync-${i}`, retries: 1, onError },
    );
    const async = manager.task(
      async function hostileAsync(): Promise<void> {
        await Promise.resolve();
        throw make();
      },
      // The async one's onError rejects instead of throwing.
      { name: `hostile-async-${i}`, retries: 1, onError: async (error, record) => onError(error, record) },
    );
    return { label, sync, async };
  });
  return {
    add: () =>
      tasks.flatMap(({ label, sync, async }) => [
        { id: manager.add(sync), label, sync: true },
        { id: manager.add(async), label, sync: false },
      ]),
  };
}

function expectedError(label: string): { type: string; message: string | RegExp } {
  const [, , type, message] = HOSTILE.find(([l]) => l === label)!;
  return { type, message };
}

function expectMessage(actual: string, expected: string | RegExp, where: string): void {
  if (typeof expected === 'string') expect(actual, where).toBe(expected);
  else expect(actual, where).toMatch(expected);
}

describe('any thrown value ends the task', () => {
  it('as a failed record with a safe error, after its retries, through onError, spans, pino, observers and the event stream (MemoryStore)', async () => {
    const { logger, lines } = capturePino();
    const exporter = new InMemorySpanExporter();
    const observer = new InMemoryObserver();
    const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    const onErrorCalls = new Map<string, number>();
    let hostile!: ReturnType<typeof registerHostile>;
    const { manager, base } = await startAdmin({}, { logger, tracerProvider, observers: [observer] }, (m) => {
      hostile = registerHostile(m, onErrorCalls);
    });
    const stream = await openSse(`${base}/events`, { authorization: `Bearer ${TOKEN}` });

    const added = hostile.add();
    await manager.drain();

    for (const { id, label, sync } of added) {
      const where = `${label} (${sync ? 'sync' : 'async'})`;
      const { type, message } = expectedError(label);
      const record = (await manager.get(id))!;
      expect(record, where).toMatchObject({ status: 'failed', attempts: 2, error: { type } });
      expectMessage(record.error!.message, message, where);
      expect(onErrorCalls.get(id), where).toBe(1);
      // Each attempt's span ended ERROR with an exception event of the same type.
      const spans = exporter.getFinishedSpans().filter((s) => s.attributes['task.id'] === id);
      expect(
        spans.map((s) => [s.status.code, s.attributes['error.type']]),
        where,
      ).toEqual([
        [SpanStatusCode.ERROR, type],
        [SpanStatusCode.ERROR, type],
      ]);
      expect(
        spans.every((s) =>
          s.events.some((e) => e.name === 'exception' && e.attributes?.['exception.message'] === record.error!.message),
        ),
        where,
      ).toBe(true);
      // Observers and pino got the same safe description, for the retry and for the final failure.
      const failures = observer.lifecycle
        .filter((e) => e.taskId === id && e.error !== undefined)
        .map((e) => [e.status, e.error!.type, e.error!.message]);
      expect(failures, where).toEqual([
        ['pending', type, record.error!.message],
        ['failed', type, record.error!.message],
      ]);
      const failedLine = lines.find((l) => (l.task as { id?: string } | undefined)?.id === id && l.status === 'failed');
      expect(failedLine?.error, where).toEqual(record.error);
    }
    // The onError that threw was contained and reported through the logger, once per task.
    expect(lines.filter((l) => String(l.msg).startsWith('koa-taskflow: onError of task hostile-')).length).toBe(
      added.length,
    );
    await stream.until(
      (messages) =>
        messages.filter(
          (m) => m.event === 'lifecycle' && (JSON.parse(m.data) as { status: string }).status === 'failed',
        ).length === added.length,
    );
    const streamed = stream.messages
      .filter((m) => m.event === 'lifecycle')
      .map((m) => JSON.parse(m.data) as { taskId: string; status: string; error?: { type: string } });
    for (const { id, label } of added) {
      expect(streamed.find((e) => e.taskId === id && e.status === 'failed')?.error?.type, label).toBe(
        expectedError(label).type,
      );
    }
    await manager.shutdown();
  });

  it('caps the recorded message and stack at 8 KiB, with a marker', async () => {
    const manager = createManager();
    const id = manager.add(function huge() {
      throw new Error('y'.repeat(1_000_000));
    });
    await manager.drain();
    const { error } = (await manager.get(id))!;
    expect(error!.message).toBe(`${'y'.repeat(8192)}… [${1_000_000 - 8192} more characters cut]`);
    expect(error!.stack!.length).toBeLessThan(8300);
    expect(error!.stack).toMatch(/^Error: y+… \[\d+ more characters cut\]$/);
  });

  it('with SqliteStore: every record ends failed (none left running), and drain() and shutdown() resolve', async () => {
    const path = join(tempDir(), 'tasks.db');
    const store = new SqliteStore({ path });
    const { logger } = capturePino('fatal');
    const manager = createManager({ store, logger });
    const onErrorCalls = new Map<string, number>();
    const hostile = registerHostile(manager, onErrorCalls);
    await manager.start();
    const added = hostile.add();
    await manager.drain();
    await manager.shutdown();

    const reader = new SqliteStore({ path });
    onCleanup(() => reader.close());
    for (const { id, label, sync } of added) {
      const where = `${label} (${sync ? 'sync' : 'async'})`;
      const { type, message } = expectedError(label);
      const record = await reader.get(id);
      expect(record, where).toMatchObject({ status: 'failed', attempts: 2, error: { type } });
      expectMessage(record!.error!.message, message, where);
      expect(onErrorCalls.get(id), where).toBe(1);
    }
    expect((await reader.list({ status: 'running' })).length).toBe(0);
  });
});
