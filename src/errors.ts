import { types } from 'node:util';

/**
 * Base class of the errors koa-taskflow throws itself. `code` is stable across releases (match on it, not on
 * the message); the table of codes is in docs/errors.md.
 */
export class TaskflowError extends Error {
  override name = 'TaskflowError';
  readonly code: string = 'ERR_TASKFLOW';
  constructor(message?: string, options?: ErrorOptions & { code?: string }) {
    super(message, options);
    if (options?.code !== undefined) this.code = options.code;
  }
}

/** An attempt ran longer than its `timeout`; its `signal` was aborted with this error. */
export class TaskTimeoutError extends TaskflowError {
  override name = 'TaskTimeoutError';
  override readonly code = 'ERR_TASK_TIMEOUT';
  constructor(readonly timeoutMs: number) {
    super(
      `task attempt exceeded its timeout of ${timeoutMs} ms; raise the "timeout" option or make the task honour its AbortSignal sooner`,
    );
  }
}

/** A running task was aborted because `shutdown()` stopped waiting for it. */
export class TaskInterruptedError extends TaskflowError {
  override name = 'TaskInterruptedError';
  override readonly code = 'ERR_TASK_INTERRUPTED';
  constructor(reason = 'shutdown') {
    super(
      `task interrupted (${reason}); mark it "shield: true" to let shutdown wait for it (with a durable ` +
        `store it runs again on the next start unless "requeueOnInterrupt" is false)`,
    );
  }
}

/**
 * A task ended `cancelled`: it never started (its request failed, the manager shut down, `manager.cancel(id)`),
 * or `manager.cancel(id)` stopped it while it ran: its attempt's `signal` aborts with this error.
 */
export class TaskCancelledError extends TaskflowError {
  override name = 'TaskCancelledError';
  override readonly code = 'ERR_TASK_CANCELLED';
  constructor(
    readonly reason: string,
    whileRunning = false,
  ) {
    super(
      whileRunning
        ? `task cancelled while it ran (${reason}); its AbortSignal was aborted and it is not retried`
        : `task cancelled before it started (${reason})`,
    );
  }
}

/** The manager is shutting down or shut down and takes no new work. */
export class TaskManagerClosedError extends TaskflowError {
  override name = 'TaskManagerClosedError';
  override readonly code = 'ERR_MANAGER_CLOSED';
  /** Koa answers a request that hits this with 503 Service Unavailable. */
  readonly status = 503;
  readonly expose = true;
  constructor() {
    super('the TaskManager is shutting down and accepts no new tasks; add tasks before calling shutdown()');
  }
}

/** No task has this id. */
export class TaskNotFoundError extends TaskflowError {
  override name = 'TaskNotFoundError';
  override readonly code = 'ERR_TASK_NOT_FOUND';
  constructor(readonly id: string) {
    super(`no task with id ${JSON.stringify(id)}`);
  }
}

/**
 * A stored record's args could not be decrypted: no `encryptionKey`, another key, an altered ciphertext,
 * or an unknown format. The record is not returned (get/list) or not run (recovery); its args stay stored.
 */
export class TaskArgsDecryptionError extends TaskflowError {
  override name = 'TaskArgsDecryptionError';
  override readonly code = 'ERR_ARGS_DECRYPTION';
  constructor(
    readonly taskId: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(`the args of task ${taskId} ${message}`, options);
  }
}

/**
 * A task's process died while it ran more often than its `maxStalls` allows: it is not run again, it ends
 * `failed` with this error (the task itself probably kills its process: memory, a native crash, an exit).
 */
export class TaskStalledError extends TaskflowError {
  override name = 'TaskStalledError';
  override readonly code = 'ERR_TASK_STALLED';
  constructor(
    readonly stalls: number,
    readonly maxStalls: number,
  ) {
    super(
      `the process running this task died ${stalls} time(s), more than its "maxStalls" (${maxStalls}) ` +
        `allows; it is not run again. Find what ends the process (memory, a native crash, process.exit) or ` +
        `raise "maxStalls"`,
    );
  }
}

/**
 * This process already holds `maxQueued` tasks waiting for a slot: the task was not accepted (nothing was
 * recorded). Inside the middleware the request is answered 503 with `Retry-After`.
 */
export class TaskQueueFullError extends TaskflowError {
  override name = 'TaskQueueFullError';
  override readonly code = 'ERR_QUEUE_FULL';
  /** Koa answers a request that hits this with 503 Service Unavailable. */
  readonly status = 503;
  readonly expose = true;
  /** Koa's default error handler sets these on the 503 (the middleware sets them too, for other handlers). */
  readonly headers: Record<string, string>;
  constructor(
    readonly maxQueued: number,
    readonly retryAfterSeconds = 1,
  ) {
    super(
      `the task queue is full (${maxQueued} tasks waiting, the "maxQueued" option); the task was not ` +
        `accepted: retry later or raise "maxQueued"/"concurrency"`,
    );
    this.headers = { 'Retry-After': String(retryAfterSeconds) };
  }
}

/** The task store could not be reached or did not answer (Redis down, a closed store, a disk error). */
export class TaskStoreUnavailableError extends TaskflowError {
  override name = 'TaskStoreUnavailableError';
  override readonly code: string = 'ERR_STORE_UNAVAILABLE';
  /** Koa answers a request that hits this with 503 Service Unavailable. */
  readonly status = 503;
  readonly expose = true;
}

/**
 * A store's file or data cannot be used as it is: `code` says why (`ERR_STORE_UNREADABLE`,
 * `ERR_STORE_READ_ONLY`, `ERR_STORE_SCHEMA`, `ERR_STORE_NEWER_SCHEMA`). The data was not modified.
 */
export class TaskStoreError extends TaskflowError {
  override name = 'TaskStoreError';
  constructor(
    message: string,
    code: 'ERR_STORE_UNREADABLE' | 'ERR_STORE_READ_ONLY' | 'ERR_STORE_SCHEMA' | 'ERR_STORE_NEWER_SCHEMA',
    options?: ErrorOptions,
  ) {
    super(message, { ...options, code });
  }
}

/** What a record, an event, a log line or a span keeps of a thrown value: plain strings, whatever was thrown. */
export interface ErrorInfo {
  type: string;
  message: string;
  stack?: string;
}

// Values standing for something thrown in another thread, with the description made there (describedAs).
const described = new WeakMap<object, ErrorInfo>();

/**
 * Makes `toErrorInfo(value)` answer `info`: for the copy of a value a task threw in a worker thread, or the
 * Error standing in for one that cannot be copied, described where it was thrown, so that its record, span
 * and log lines read as they would had the task run on the main thread. Returns `value`.
 */
export function describedAs<T>(value: T, info: ErrorInfo): T {
  if (value !== null && (typeof value === 'object' || typeof value === 'function')) described.set(value, info);
  return value;
}

/** Longest `message` / `stack` kept from a thrown value (a task may throw a 100 MB string); the rest is cut with a marker. */
export const MAX_ERROR_TEXT = 8 * 1024;

/**
 * A safe description of anything JavaScript can throw. Never throws itself: a thrown value is the task's,
 * and reading it may run its code (getters, `toString`, `Symbol.toPrimitive`, Proxy traps, revoked
 * proxies); whatever of it cannot be read is described instead, so a task always ends with a record.
 */
export function toErrorInfo(error: unknown): ErrorInfo {
  if (error === null || (typeof error !== 'object' && typeof error !== 'function')) {
    // String() works on every primitive, symbols included (a template literal would throw on those).
    return { type: error === null ? 'null' : typeof error, message: capText(String(error), MAX_ERROR_TEXT) };
  }
  // A WeakMap lookup runs none of the value's code (no Proxy trap).
  const known = described.get(error);
  if (known !== undefined) return { ...known };
  if (!readOr(() => error instanceof Error, false)) {
    return {
      type: typeof error,
      // eslint-disable-next-line @typescript-eslint/no-base-to-string -- a thrown object's toString() is its message
      message: capText(readOr(() => String(error), undefined) ?? unprintable(error), MAX_ERROR_TEXT),
    };
  }
  const e = error as Error;
  const type = textOf(() => e.name) || textOf(() => e.constructor.name) || 'Error';
  const message =
    readOr(
      () => (typeof e.message === 'string' ? e.message : e.message === undefined ? '' : String(e.message)),
      undefined,
    ) ?? '[unreadable message]';
  const stack = textOf(() => e.stack);
  return {
    type: capText(type, 256),
    message: capText(message, MAX_ERROR_TEXT),
    stack: stack === '' ? undefined : capText(stack, MAX_ERROR_TEXT),
  };
}

/**
 * A plain Error carrying the safe description of `error`: what a report writes when the logger refused the
 * value itself (an `onError` that threw a Proxy must still be reported).
 */
export function toSafeError(error: unknown): Error {
  return errorFromInfo(toErrorInfo(error));
}

/** A plain Error with the type, message and stack of `info` (a one-line stack of the two when it has none). */
export function errorFromInfo(info: ErrorInfo): Error {
  const error = new Error(info.message);
  error.name = info.type;
  error.stack = info.stack ?? `${info.type}: ${info.message}`;
  return error;
}

/** What `read` answers, or `fallback` when it throws: a value read without trusting it (getters, Proxy traps). */
export function readOr<T, F>(read: () => T, fallback: F): T | F {
  try {
    return read();
  } catch {
    return fallback;
  }
}

/** A string property read without trusting it: '' when it throws or is not a string. */
function textOf(read: () => unknown): string {
  const value = readOr(read, undefined);
  return typeof value === 'string' ? value : '';
}

function unprintable(value: object): string {
  // '[object Object]' → 'Object'; a Proxy is not asked at all (every trap may throw).
  const tag = types.isProxy(value)
    ? 'Proxy'
    : readOr(() => Object.prototype.toString.call(value).slice(8, -1), typeof value);
  return `[unprintable ${tag}]`;
}

/** `text`, or its first `max` characters and a marker saying how much was cut. */
export function capText(text: string, max: number): string {
  if (text.length <= max) return text;
  // Not cutting a surrogate pair in half.
  const end = text.charCodeAt(max - 1) >= 0xd800 && text.charCodeAt(max - 1) <= 0xdbff ? max - 1 : max;
  return `${text.slice(0, end)}… [${text.length - end} more characters cut]`;
}
