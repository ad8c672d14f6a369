import { isAbsolute } from 'node:path';
import { pathToFileURL } from 'node:url';
import { inspect } from 'node:util';
import type { TaskLimit, TaskRecord } from './types.js';

export type { TaskLimit };

/**
 * Per-task configuration. Levels merge `defaults < task() < with()`: a later level's value wins
 * unless it is `undefined`; `tags` are merged key by key instead of replaced.
 */
export interface TaskOptions {
  /** Name in spans, logs and records. Default: the registered name, else the function's name. */
  name?: string;
  /** Extra attempts after a failure. Default 0. */
  retries?: number;
  /** Milliseconds to wait before the first retry. Default 0. */
  delay?: number;
  /** Multiplier of the wait per retry: `delay * backoff^(n-1)`. Default 1. */
  backoff?: number;
  /** Upper bound of a retry wait in ms. Default none. */
  maxDelay?: number;
  /** Full jitter: each wait is uniformly random in `[0, computed wait]`. Default false. */
  jitter?: boolean;
  /** Milliseconds per attempt; on expiry the attempt's signal aborts and it fails with `TaskTimeoutError`. */
  timeout?: number;
  /** Integer 1–10, higher first through the process-wide queue. Unset ranks as 5. */
  priority?: number;
  /** `addTask` starts the task now instead of after the response. Not combinable with `priority`, `startAfter` or `runAt`. */
  eager?: boolean;
  /**
   * A delayed first attempt: the task starts no sooner than this many ms after it was added (BullMQ's `delay`;
   * ours, `delay`, is the retry wait). It still waits for its phase (after the response for `addTask`). At most
   * 2^31 − 1; for a later time use `runAt`. One of `startAfter` / `runAt` per level: a later level's replaces the other.
   */
  startAfter?: number;
  /** A delayed first attempt at this time (a `Date` or epoch ms), however far ahead; a past time runs at once. */
  runAt?: Date | number;
  /** Not aborted at shutdown; shutdown waits for it to end. */
  shield?: boolean;
  /** String labels; on the record, every event, span and log line. */
  tags?: Record<string, string>;
  /** A second task with this key (while the first has not failed) returns the first one's id. */
  idempotencyKey?: string;
  /** Write the record to a durable store before the response is sent. Default true with a durable store. */
  persist?: boolean;
  /**
   * Durable stores: a task whose process died while it ran, or that `shutdown()` handed back, runs again as
   * a new attempt (at-least-once). `false`: it ends `interrupted` instead (tasks that must never run twice).
   * Default true.
   */
  requeueOnInterrupt?: boolean;
  /**
   * How many times a task may be run again after its process died while running it; one more death and it
   * ends `failed` with a `TaskStalledError` (BullMQ's `maxStalledCount`). Shutdown hand-backs do not count.
   * Default 1.
   */
  maxStalls?: number;
  /** Run after-route/after-response tasks even when the request failed. */
  runOnError?: boolean;
  /**
   * How an attempt's span relates to the span active where the task was added (the request's). `'link'`
   * (default): each attempt starts its own trace, linked to it (bounded traces, tail sampling per task).
   * `'child'`: each attempt is a child of it, in the request's trace (one waterfall).
   */
  trace?: TraceMode;
  /** Called once when the task has finally failed (after its last retry). */
  onError?: (error: unknown, record: TaskRecord) => void | Promise<void>;
  /**
   * Per-key concurrency and rate limits, held by this process: the key is the task's name, or its name and the
   * value of tag `by`. A task over its limit waits (`pending`, queued) without holding a `concurrency` slot.
   * A later level's `limit` replaces a lower one's as a whole. Default none.
   */
  limit?: TaskLimit;
  /**
   * Where an attempt runs. `'thread'`: in the manager's pool of worker threads (piscina), so CPU-heavy work
   * does not block the app's event loop; the task must be registered with option `module`, and its args and
   * result cross by structured clone. `'none'` (default): on the app's event loop. See docs/api.md,
   * "CPU-heavy tasks: isolate".
   */
  isolate?: IsolateMode;
  /**
   * `task()` only: the module that exports the task's function, as a `URL` (`new URL('./resize.js',
   * import.meta.url)`), a `file:` URL string or an absolute path. A thread imports it and calls the export
   * named like the function (else the default export). Needed by `isolate: 'thread'`.
   */
  module?: URL | string;
}

export type TraceMode = 'link' | 'child';

export type IsolateMode = 'none' | 'thread';

/** Options with every default filled in: what a task actually runs with. */
export interface ResolvedTaskOptions {
  name: string;
  retries: number;
  delay: number;
  backoff: number;
  maxDelay: number | undefined;
  jitter: boolean;
  timeout: number | undefined;
  priority: number | undefined;
  eager: boolean;
  startAfter: number | undefined;
  /** As epoch ms. */
  runAt: number | undefined;
  shield: boolean;
  tags: Record<string, string>;
  idempotencyKey: string | undefined;
  persist: boolean | undefined;
  requeueOnInterrupt: boolean;
  maxStalls: number;
  runOnError: boolean;
  trace: TraceMode;
  onError: TaskOptions['onError'];
  limit: TaskLimit | undefined;
  isolate: IsolateMode;
  /** The `module` option as a URL string (`file:` for a path). */
  module: string | undefined;
}

const KNOWN_OPTIONS = new Set<string>([
  'name',
  'retries',
  'delay',
  'backoff',
  'maxDelay',
  'jitter',
  'timeout',
  'priority',
  'eager',
  'startAfter',
  'runAt',
  'shield',
  'tags',
  'idempotencyKey',
  'persist',
  'requeueOnInterrupt',
  'maxStalls',
  'runOnError',
  'trace',
  'onError',
  'limit',
  'isolate',
  'module',
]);

const BOOLEAN_OPTIONS = ['jitter', 'eager', 'shield', 'persist', 'requeueOnInterrupt', 'runOnError'] as const;

/**
 * A value as an error message shows it: as it would be written in code (`NaN`, `-Infinity`, `1n`,
 * `Symbol(x)`, `[Function: send]`, `Invalid Date`, `{ a: 1 }`), a string quoted. Never throws: the value may
 * be anything a caller passed (a Proxy, an object whose inspection throws).
 */
export function describeValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 200 ? `${value.slice(0, 200)}…` : value);
  try {
    return inspect(value, { depth: 1, breakLength: Infinity, maxArrayLength: 10, maxStringLength: 200 });
  } catch {
    return typeof value;
  }
}

/**
 * The longest wait a Node timer keeps: 2^31 − 1 ms (24.8 days). Node turns a longer one into 1 ms, so a
 * duration option above it is refused, and a computed wait (backoff) is capped at it.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export function optionError(
  where: string,
  option: string,
  expected: string,
  value: unknown,
  Kind: typeof TypeError | typeof RangeError = TypeError,
): Error {
  return new Kind(`${where}: option "${option}" must be ${expected}, got ${describeValue(value)}`);
}

/**
 * The error for a value that should have been a number in some range: a number out of it (NaN and the
 * infinities included) is a RangeError, a value of another type a TypeError.
 */
export function numberError(where: string, option: string, expected: string, value: unknown): Error {
  return optionError(where, option, expected, value, typeof value === 'number' ? RangeError : TypeError);
}

/** Throws a TypeError naming the first key of `options` that is not in `known` (`prefix`: the nested option's path). */
export function checkKnownKeys(where: string, options: object, known: ReadonlySet<string>, prefix = ''): void {
  for (const key of Object.keys(options)) {
    if (!known.has(key))
      throw new TypeError(`${where}: unknown option "${prefix}${key}"; known options are ${[...known].join(', ')}`);
  }
}

function checkNumber(
  where: string,
  option: string,
  value: unknown,
  { min = 0, integer = false, max = Infinity } = {},
): void {
  if (value === undefined) return;
  if (typeof value !== 'number') throw optionError(where, option, 'a number', value);
  const expected = `${integer ? 'an integer' : 'a number'} ${max === Infinity ? `>= ${min}` : `from ${min} to ${max}`}`;
  if (!Number.isFinite(value) || (integer && !Number.isInteger(value)) || value < min || value > max) {
    throw optionError(where, option, expected, value, RangeError);
  }
}

/** Tag maps are checked wherever they enter: keys non-empty, values strings. */
export function checkTags(where: string, tags: unknown, option = 'tags'): void {
  if (tags === undefined) return;
  if (tags === null || typeof tags !== 'object' || Array.isArray(tags))
    throw optionError(where, option, 'an object of string values', tags);
  for (const [key, value] of Object.entries(tags)) {
    if (key === '') throw optionError(where, option, 'an object whose keys are non-empty', tags);
    if (typeof value !== 'string') throw optionError(where, `${option}.${key}`, 'a string', value);
  }
}

/** Throws a TypeError/RangeError naming the first bad option. */
export function validateTaskOptions(where: string, options: unknown): asserts options is TaskOptions {
  if (options === undefined) return;
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new TypeError(`${where}: options must be an object, got ${describeValue(options)}`);
  }
  const o = options as Record<string, unknown>;
  checkKnownKeys(where, o, KNOWN_OPTIONS);
  if (o.name !== undefined && (typeof o.name !== 'string' || o.name.trim() === ''))
    throw optionError(where, 'name', 'a non-empty string', o.name);
  checkNumber(where, 'retries', o.retries, { integer: true });
  checkNumber(where, 'delay', o.delay, { max: MAX_TIMER_MS });
  checkNumber(where, 'backoff', o.backoff, { min: 1 });
  checkNumber(where, 'maxDelay', o.maxDelay, { max: MAX_TIMER_MS });
  checkNumber(where, 'timeout', o.timeout, { min: 1, max: MAX_TIMER_MS });
  checkNumber(where, 'priority', o.priority, { min: 1, max: 10, integer: true });
  checkNumber(where, 'maxStalls', o.maxStalls, { integer: true });
  checkNumber(where, 'startAfter', o.startAfter, { max: MAX_TIMER_MS });
  if (o.runAt !== undefined) {
    const time = o.runAt instanceof Date ? o.runAt.getTime() : o.runAt;
    if (typeof time !== 'number') throw optionError(where, 'runAt', 'a Date or epoch milliseconds', o.runAt);
    if (!Number.isFinite(time))
      throw optionError(where, 'runAt', 'a valid Date or finite epoch milliseconds', o.runAt, RangeError);
  }
  if (o.startAfter !== undefined && o.runAt !== undefined) {
    throw new TypeError(
      `${where}: options "startAfter" and "runAt" cannot be combined: both set when the first attempt is due; pass one`,
    );
  }
  for (const key of BOOLEAN_OPTIONS) {
    if (o[key] !== undefined && typeof o[key] !== 'boolean') throw optionError(where, key, 'a boolean', o[key]);
  }
  checkTags(where, o.tags);
  if (o.idempotencyKey !== undefined && (typeof o.idempotencyKey !== 'string' || o.idempotencyKey === '')) {
    throw optionError(where, 'idempotencyKey', 'a non-empty string', o.idempotencyKey);
  }
  if (o.trace !== undefined && o.trace !== 'link' && o.trace !== 'child')
    throw optionError(where, 'trace', '"link" or "child"', o.trace);
  if (o.onError !== undefined && typeof o.onError !== 'function')
    throw optionError(where, 'onError', 'a function', o.onError);
  checkLimit(where, o.limit);
  if (o.isolate !== undefined && o.isolate !== 'none' && o.isolate !== 'thread')
    throw optionError(where, 'isolate', '"none" or "thread"', o.isolate);
  if (o.module !== undefined) {
    if (where !== 'task()')
      throw new TypeError(
        `${where}: option "module" is given to manager.task() only: it says where the registered function lives`,
      );
    moduleHref(where, o.module);
  }
  checkEagerPriority(where, o);
}

const LIMIT_KEYS = new Set(['by', 'concurrency', 'rate']);
const RATE_KEYS = new Set(['max', 'intervalMs']);

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function checkLimit(where: string, limit: unknown): void {
  if (limit === undefined) return;
  if (!isPlainObject(limit))
    throw optionError(where, 'limit', 'an object { by?, concurrency?, rate?: { max, intervalMs } }', limit);
  checkKnownKeys(where, limit, LIMIT_KEYS, 'limit.');
  if (limit.by !== undefined && (typeof limit.by !== 'string' || limit.by === ''))
    throw optionError(where, 'limit.by', 'a non-empty string (a tag name)', limit.by);
  checkNumber(where, 'limit.concurrency', limit.concurrency, { min: 1, integer: true });
  const { rate } = limit;
  if (rate !== undefined) {
    if (!isPlainObject(rate)) throw optionError(where, 'limit.rate', 'an object { max, intervalMs }', rate);
    checkKnownKeys(where, rate, RATE_KEYS, 'limit.rate.');
    if (rate.max === undefined) throw optionError(where, 'limit.rate.max', 'an integer >= 1', rate.max);
    if (rate.intervalMs === undefined)
      throw optionError(where, 'limit.rate.intervalMs', `a number from 1 to ${MAX_TIMER_MS}`, rate.intervalMs);
    checkNumber(where, 'limit.rate.max', rate.max, { min: 1, integer: true });
    checkNumber(where, 'limit.rate.intervalMs', rate.intervalMs, { min: 1, max: MAX_TIMER_MS });
  }
  if (limit.concurrency === undefined && rate === undefined) {
    throw new TypeError(
      `${where}: option "limit" must set "concurrency" or "rate" (or both), got ${describeValue(limit)}`,
    );
  }
}

function checkEagerPriority(where: string, o: Pick<TaskOptions, 'eager' | 'priority' | 'startAfter' | 'runAt'>): void {
  if (o.eager !== true) return;
  if (o.priority !== undefined) {
    throw new TypeError(
      `${where}: options "eager" and "priority" cannot be combined: a prioritised task waits its turn in ` +
        `the queue, an eager one starts at once`,
    );
  }
  const delayed = o.startAfter !== undefined ? 'startAfter' : o.runAt !== undefined ? 'runAt' : undefined;
  if (delayed !== undefined) {
    throw new TypeError(
      `${where}: options "eager" and "${delayed}" cannot be combined: a delayed task starts when it is due, an eager one at once`,
    );
  }
}

/**
 * The `module` option as a URL string a thread can import: a `URL`, a `file:` URL string or an absolute path.
 * A relative path is refused: relative to what would be a guess (the app's cwd, this package's folder).
 */
export function moduleHref(where: string, value: unknown): string {
  if (value instanceof URL) {
    if (value.protocol === 'file:' || value.protocol === 'data:') return value.href;
  } else if (typeof value === 'string') {
    if (isAbsolute(value)) return pathToFileURL(value).href;
    if (value.startsWith('file:') && URL.canParse(value)) return value;
  }
  throw optionError(
    where,
    'module',
    "a file URL or an absolute path, such as new URL('./resize.js', import.meta.url)",
    value instanceof URL ? value.href : value,
  );
}

/**
 * `base` overlaid with the defined values of `over`; tags merged. Returns `base` itself when `over` adds
 * nothing. What it takes from `over` is copied (tags, `limit`, a `runAt` Date): options are fixed by the
 * call that validated them, whatever their owner changes in its objects afterwards.
 */
export function mergeOptions(base: TaskOptions, over: TaskOptions | undefined): TaskOptions {
  if (over === undefined) return base;
  const merged: TaskOptions = { ...base };
  let changed = false;
  for (const key of Object.keys(over) as (keyof TaskOptions)[]) {
    const value = over[key];
    if (value === undefined) continue;
    changed = true;
    if (key === 'tags') merged.tags = { ...base.tags, ...(value as Record<string, string>) };
    else (merged as Record<string, unknown>)[key] = fixed(value);
    // Two ways to say when the first attempt is due: a level that says it replaces what a lower one said.
    if (key === 'startAfter') delete merged.runAt;
    else if (key === 'runAt') delete merged.startAfter;
  }
  return changed ? merged : base;
}

/** An option's value as it was given: one its owner may change later (a Date, `limit`, a URL) is copied. */
function fixed(value: unknown): unknown {
  if (value instanceof Date) return new Date(value.getTime());
  if (value instanceof URL) return new URL(value.href);
  if (!isPlainObject(value)) return value;
  const copy: Record<string, unknown> = { ...value };
  if (isPlainObject(copy.rate)) copy.rate = { ...copy.rate };
  return copy;
}

/** Fill in defaults. `fallbackName` is the registered or function name. */
export function resolveOptions(where: string, options: TaskOptions, fallbackName: string): ResolvedTaskOptions {
  checkEagerPriority(where, options);
  return {
    name: options.name ?? fallbackName,
    retries: options.retries ?? 0,
    delay: options.delay ?? 0,
    backoff: options.backoff ?? 1,
    maxDelay: options.maxDelay,
    jitter: options.jitter ?? false,
    timeout: options.timeout,
    priority: options.priority,
    eager: options.eager ?? false,
    startAfter: options.startAfter,
    runAt: options.runAt instanceof Date ? options.runAt.getTime() : options.runAt,
    shield: options.shield ?? false,
    tags: options.tags ?? {},
    idempotencyKey: options.idempotencyKey,
    persist: options.persist,
    requeueOnInterrupt: options.requeueOnInterrupt ?? true,
    maxStalls: options.maxStalls ?? 1,
    runOnError: options.runOnError ?? false,
    trace: options.trace ?? 'link',
    onError: options.onError,
    limit: options.limit,
    isolate: options.isolate ?? 'none',
    module: options.module === undefined ? undefined : moduleHref(where, options.module),
  };
}

/** When the first attempt of a task added now is due (epoch ms), or undefined when it is due at once. */
export function dueTime(options: Pick<ResolvedTaskOptions, 'startAfter' | 'runAt'>, now: number): number | undefined {
  const due = options.runAt ?? (options.startAfter === undefined ? undefined : now + options.startAfter);
  return due !== undefined && due > now ? due : undefined;
}

/**
 * Wait before retry number `retry` (1 = the first retry): `delay * backoff^(retry-1)`, capped by `maxDelay`
 * and by MAX_TIMER_MS (exponential backoff without `maxDelay` passes 2^31 ms after a few dozen retries, and
 * Node would fire it after 1 ms), then with full jitter a uniform draw in `[0, wait]`.
 */
export function retryDelay(
  options: Pick<ResolvedTaskOptions, 'delay' | 'backoff' | 'maxDelay' | 'jitter'>,
  retry: number,
  random: () => number = Math.random,
): number {
  // delay 0 stays 0 even when backoff^n overflows to Infinity (0 * Infinity is NaN).
  let wait = options.delay === 0 ? 0 : options.delay * options.backoff ** (retry - 1);
  if (options.maxDelay !== undefined && wait > options.maxDelay) wait = options.maxDelay;
  if (wait > MAX_TIMER_MS) wait = MAX_TIMER_MS;
  if (options.jitter) wait = random() * wait;
  return wait;
}
