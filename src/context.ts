import { AsyncLocalStorage } from 'node:async_hooks';
import { context, createContextKey } from '@opentelemetry/api';
import { createRedactor, type Redactor } from './redact.js';
import { LOG_LEVELS, type LogLevel, type TaskContext, type TaskLogger } from './types.js';

export const kLog = Symbol('koa-taskflow.log');
export const kSeq = Symbol('koa-taskflow.seq');
export const kProgress = Symbol('koa-taskflow.progress');

/** The context of a running attempt, plus the hook `taskLog()` writes through. */
export interface ActiveAttempt extends TaskContext {
  /** Increases with every attempt started in this process: the later of two candidates is the inner one. */
  readonly [kSeq]: number;
  [kLog](level: LogLevel, message: string, fields: Record<string, unknown> | undefined): void;
  [kProgress](value: number, fields: Record<string, unknown> | undefined): void;
}

/**
 * Where a running attempt is found. An untraced attempt is one entry in our own AsyncLocalStorage. A traced
 * attempt must make its span active in the OpenTelemetry context anyway, so it rides in that context under
 * ATTEMPT_KEY instead: one context entry per attempt either way.
 */
export const attemptStorage = new AsyncLocalStorage<ActiveAttempt>();
export const ATTEMPT_KEY = createContextKey('koa-taskflow attempt');

/** The innermost running attempt of the current async context, whichever way it was entered. */
export function currentAttempt(): ActiveAttempt | undefined {
  const own = attemptStorage.getStore();
  const traced = context.active().getValue(ATTEMPT_KEY) as ActiveAttempt | undefined;
  if (traced === undefined) return own;
  // An attempt started inside another's async context (a task adding a task, the next task starting where
  // the previous ended) inherits the outer one in the other carrier: the later-started is the current.
  if (own === undefined || traced[kSeq] > own[kSeq]) return traced;
  return own;
}

/** The current task's context; `undefined` outside a task. Survives awaits, timers and nested calls. */
export function getTaskContext(): TaskContext | undefined {
  return currentAttempt();
}

let fallbackLogger: TaskLogger | undefined;
// Outside a task the fields leave through the fallback logger (or the console): masked like a task's.
let fallbackRedact: Redactor | undefined;
let fallbackOwner: object | undefined;

/**
 * The logger `taskLog()` uses outside a task: the most recently started TaskManager's that has one, with
 * that manager's redaction (the console: the latest started manager's, else the default secret-looking keys).
 * Set by `start()`, not by a constructor: making a manager changes nothing outside it.
 */
export function setFallbackLogger(owner: object, logger: TaskLogger | undefined, redact: Redactor): void {
  if (logger !== undefined) {
    fallbackLogger = logger;
    fallbackOwner = owner;
  }
  if (logger !== undefined || fallbackLogger === undefined) fallbackRedact = redact;
}

/** The manager shut down: its logger is no longer the fallback. */
export function clearFallbackLogger(owner: object): void {
  if (fallbackOwner !== owner) return;
  fallbackLogger = fallbackOwner = undefined;
}

const CONSOLE_METHOD: Record<LogLevel, 'debug' | 'info' | 'warn' | 'error'> = {
  trace: 'debug',
  debug: 'debug',
  info: 'info',
  warn: 'warn',
  error: 'error',
  fatal: 'error',
};

/** Splits `{ level, ...rest }`; an unknown level falls back to `info` rather than throwing from a log call. */
export function splitLevel(
  fields: Record<string, unknown> | undefined,
): [LogLevel, Record<string, unknown> | undefined] {
  if (fields === undefined || fields === null || typeof fields !== 'object') return ['info', undefined];
  if (!('level' in fields)) return ['info', fields];
  const { level, ...rest } = fields;
  return [LOG_LEVELS.includes(level as LogLevel) ? (level as LogLevel) : 'info', rest];
}

/**
 * Log from inside a task: a span event on the attempt's span, a pino line, and a `LogEvent` through
 * the observer chain. `fields.level` picks the level (default `info`). Outside a task the line goes to
 * the logger of the latest started TaskManager (or the console). Never throws.
 */
export function taskLog(message: string, fields?: Record<string, unknown> & { level?: LogLevel }): void {
  try {
    const text = typeof message === 'string' ? message : String(message);
    const attempt = currentAttempt();
    if (attempt !== undefined) {
      // Most calls pass no fields: no [level, rest] pair to make for them.
      if (fields === undefined) return attempt[kLog]('info', text, undefined);
      const [level, rest] = splitLevel(fields);
      attempt[kLog](level, text, rest);
      return;
    }
    const [level, unsafe] = splitLevel(fields);
    const rest = unsafe === undefined ? undefined : (fallbackRedact ??= createRedactor(undefined))(unsafe);
    if (fallbackLogger !== undefined) fallbackLogger[level](rest ?? {}, text);
    else if (rest === undefined) console[CONSOLE_METHOD[level]](text);
    else console[CONSOLE_METHOD[level]](text, rest);
  } catch {
    // Logging is never allowed to break the caller.
  }
}

/**
 * Report how far the current task is, `value` from 0 to 1: kept on its record at once, and (throttled to one
 * per task per 100 ms, the latest value winning) a `task.progress` event on the attempt's span, a
 * ProgressEvent to observers' `onProgress` and the admin's event stream. Cheap enough for a tight loop.
 * Outside a task it does nothing. A `value` that is not a number from 0 to 1 is a programming error: a
 * TypeError (not a number) or RangeError (NaN, infinite, out of range) naming "value", thrown in or out of a task.
 */
export function taskProgress(value: number, fields?: Record<string, unknown>): void {
  if (typeof value !== 'number')
    throw new TypeError(`taskProgress: "value" must be a number from 0 to 1, got ${typeof value}`);
  if (!(value >= 0 && value <= 1))
    throw new RangeError(`taskProgress: "value" must be a number from 0 to 1, got ${String(value)}`);
  const attempt = currentAttempt();
  if (attempt === undefined) return;
  try {
    attempt[kProgress](value, fields !== null && typeof fields === 'object' ? fields : undefined);
  } catch {
    // Reporting progress is never allowed to break the task.
  }
}
