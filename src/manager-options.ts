import {
  checkKnownKeys,
  numberError,
  optionError,
  validateTaskOptions,
  MAX_TIMER_MS,
  type TaskOptions,
} from './options.js';
import type { MeterProvider, TracerProvider } from '@opentelemetry/api';
import { kEngine, type TaskEngine } from './engine.js';
import { checkThreadPoolOptions, type ThreadPoolOptions } from './isolate.js';
import type { RedactOption } from './redact.js';
import type { TaskLogger, TaskObserver, TaskStore } from './types.js';

export interface TaskManagerOptions {
  /** A pino logger: every task log and lifecycle change is also written through it. */
  logger?: TaskLogger;
  /** Where records live. Default `new MemoryStore()`. */
  store?: TaskStore;
  /** Extra observers, after the built-in span-event and pino observers. */
  observers?: TaskObserver[];
  /** Tasks running at once in this process. Default 16. */
  concurrency?: number;
  /** Options for every task (lowest precedence). */
  defaults?: TaskOptions;
  /** Default: the global provider (a no-op until an OpenTelemetry SDK registers one). */
  tracerProvider?: TracerProvider;
  /** Default: the global provider, read again at `start()`. */
  meterProvider?: MeterProvider;
  /** How long `shutdown()` waits for running tasks. Default 10 000 ms. */
  shutdownTimeoutMs?: number;
  /** On `start()` and periodically, resume work a previous process left behind (durable stores). Default true. */
  requeuePending?: boolean;
  /**
   * Durable stores: how long this process's claim on its unfinished tasks lasts without a renewal
   * (renewed every `leaseMs / 3`). After a crash, its tasks are taken over once the lease has expired.
   * Default 30 000 ms.
   */
  leaseMs?: number;
  /** Durable stores: how often to look for tasks whose owner's lease has expired. Default 15 000 ms. */
  orphanCheckMs?: number;
  /** Extra key names or dotted paths to mask in args and log fields, or `false` to mask nothing. */
  redact?: RedactOption;
  /** 32-byte key for AES-256-GCM encryption of args at rest (durable stores). */
  encryptionKey?: Uint8Array;
  /**
   * How many accepted tasks this process may hold without running them (waiting for a slot, for their
   * request's response, for their store write, for a retry: `manager.queued`). Past it, adding a task throws
   * `TaskQueueFullError` and a request answers 503 with `Retry-After`. Default 10 000; `Infinity` for no bound.
   */
  maxQueued?: number;
  /**
   * An observer call that returned a promise and has not settled after this long counts as dropped (and
   * shutdown waits at most this long for observers' `close()`). Default 5 000 ms.
   */
  observerTimeoutMs?: number;
  /** Calls of one observer whose promises have not settled; past it, events for that observer are dropped. Default 1 000. */
  observerMaxInFlight?: number;
  /**
   * Run tasks on another engine instead of this process: `bullmqEngine({ connection })` from
   * `koa-taskflow/bullmq` (web processes enqueue, `manager.work()` processes run them). Default: this process.
   */
  engine?: TaskEngine;
  /** The worker threads of `isolate: 'thread'` tasks (a piscina pool, started at the first such attempt). */
  threads?: ThreadPoolOptions;
}

/** Default `maxQueued`: ~6 MB of queued tasks in the SDK itself (~570 B each, see the README's Backpressure). */
export const DEFAULT_MAX_QUEUED = 10_000;

const MANAGER_OPTIONS = new Set([
  'logger',
  'store',
  'observers',
  'concurrency',
  'defaults',
  'tracerProvider',
  'meterProvider',
  'shutdownTimeoutMs',
  'requeuePending',
  'redact',
  'encryptionKey',
  'leaseMs',
  'orphanCheckMs',
  'maxQueued',
  'observerTimeoutMs',
  'observerMaxInFlight',
  'engine',
  'threads',
]);

/** A duration option in ms: from `min` to the longest wait a Node timer keeps; an integer where a timer repeats it. */
export function checkMs(where: string, key: string, value: unknown, min: number, integer: boolean): void {
  if (
    value === undefined ||
    (typeof value === 'number' && value >= min && value <= MAX_TIMER_MS && (!integer || Number.isInteger(value)))
  )
    return;
  throw numberError(
    where,
    key,
    `${integer ? 'an integer' : 'a number'} from ${min} to ${MAX_TIMER_MS} (milliseconds)`,
    value,
  );
}

/** A count option: a positive integer, or `Infinity` for no bound. */
function checkBound(where: string, key: string, value: unknown): void {
  if (value === undefined || value === Infinity || (Number.isInteger(value) && (value as number) >= 1)) return;
  throw numberError(where, key, 'a positive integer or Infinity', value);
}

/** An OpenTelemetry provider option: an object with its `method`. */
function checkProvider(where: string, key: string, value: unknown, kind: string, method: string): void {
  if (
    value === undefined ||
    (value !== null && typeof value === 'object' && typeof (value as Record<string, unknown>)[method] === 'function')
  )
    return;
  throw optionError(where, key, `an OpenTelemetry ${kind} (an object with ${method}())`, value);
}

export function validateManagerOptions(options: TaskManagerOptions): void {
  const where = 'new TaskManager';
  if (options === null || typeof options !== 'object') throw new TypeError(`${where}: options must be an object`);
  checkKnownKeys(where, options, MANAGER_OPTIONS);
  const { concurrency, shutdownTimeoutMs, logger, store, observers, encryptionKey } = options;
  checkMs(where, 'leaseMs', options.leaseMs, 10, true);
  checkMs(where, 'orphanCheckMs', options.orphanCheckMs, 10, true);
  checkMs(where, 'observerTimeoutMs', options.observerTimeoutMs, 1, true);
  checkMs(where, 'shutdownTimeoutMs', shutdownTimeoutMs, 0, false);
  checkBound(where, 'maxQueued', options.maxQueued);
  checkBound(where, 'observerMaxInFlight', options.observerMaxInFlight);
  if (options.requeuePending !== undefined && typeof options.requeuePending !== 'boolean')
    throw optionError(where, 'requeuePending', 'a boolean', options.requeuePending);
  if (concurrency !== undefined && (!Number.isInteger(concurrency) || concurrency < 1)) {
    throw numberError(where, 'concurrency', 'an integer >= 1', concurrency);
  }
  if (
    logger !== undefined &&
    (logger === null ||
      typeof logger !== 'object' ||
      typeof logger.info !== 'function' ||
      typeof logger.error !== 'function')
  ) {
    throw optionError(where, 'logger', 'a pino logger', logger);
  }
  if (
    store !== undefined &&
    (store === null || typeof store !== 'object' || typeof store.save !== 'function' || typeof store.get !== 'function')
  ) {
    throw optionError(where, 'store', 'a TaskStore (MemoryStore, SqliteStore, RedisStore…)', store);
  }
  if (
    observers !== undefined &&
    (!Array.isArray(observers) || observers.some((o) => o === null || typeof o !== 'object'))
  ) {
    throw optionError(where, 'observers', 'an array of observer objects', observers);
  }
  // Checked here: a non-provider would otherwise fail later, inside getTracer/getMeter, with no option named.
  checkProvider(where, 'tracerProvider', options.tracerProvider, 'TracerProvider', 'getTracer');
  checkProvider(where, 'meterProvider', options.meterProvider, 'MeterProvider', 'getMeter');
  if (encryptionKey !== undefined) {
    if (!(encryptionKey instanceof Uint8Array) || encryptionKey.length !== 32) {
      throw optionError(
        where,
        'encryptionKey',
        'a 32-byte Buffer/Uint8Array',
        encryptionKey instanceof Uint8Array ? `${encryptionKey.length} bytes` : encryptionKey,
        RangeError,
      );
    }
    if (!store?.durable)
      throw new TypeError(
        `${where}: option "encryptionKey" protects args at rest and needs a durable store (SqliteStore or RedisStore)`,
      );
    if (store.encryptsArgs !== true || typeof store.attach !== 'function') {
      throw new TypeError(
        `${where}: option "encryptionKey" needs a store that encrypts args (SqliteStore, RedisStore, or a ` +
          `store with "encryptsArgs = true" honouring attach({ argsCipher }))`,
      );
    }
  }
  const engine = options.engine as Partial<TaskEngine> | null | undefined;
  if (engine !== undefined && (engine === null || typeof engine !== 'object' || engine[kEngine] === undefined))
    throw optionError(
      where,
      'engine',
      'an engine made by its entry point (bullmqEngine() of koa-taskflow/bullmq)',
      engine,
    );
  if (engine !== undefined && store?.durable === true)
    throw new TypeError(
      `${where}: option "engine" keeps tasks in its own queue; drop option "store" (a durable store would hold records the engine never updates)`,
    );
  checkThreadPoolOptions(where, options.threads);
  validateTaskOptions(`${where}: defaults`, options.defaults);
}
