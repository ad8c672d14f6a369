import { AsyncLocalStorage } from 'node:async_hooks';
import { LOG_LEVELS, type LogLevel, type TaskContext, type TaskLogger } from './types.js';

export const kLog = Symbol('koa-taskflow.log');

/** The context of a running attempt, plus the hook `taskLog()` writes through. */
export interface ActiveAttempt extends TaskContext {
  [kLog](level: LogLevel, message: string, fields: Record<string, unknown> | undefined): void;
}

/** One entry per attempt: our context; the OpenTelemetry span rides along as `span`. */
export const attemptStorage = new AsyncLocalStorage<ActiveAttempt>();

/** The current task's context; `undefined` outside a task. Survives awaits, timers and nested calls. */
export function getTaskContext(): TaskContext | undefined {
  return attemptStorage.getStore();
}

let fallbackLogger: TaskLogger | undefined;

/** The logger `taskLog()` uses outside a task: the most recently created TaskManager's. */
export function setFallbackLogger(logger: TaskLogger | undefined): void {
  fallbackLogger = logger;
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
export function splitLevel(fields: Record<string, unknown> | undefined): [LogLevel, Record<string, unknown> | undefined] {
  if (fields === undefined || fields === null || typeof fields !== 'object') return ['info', undefined];
  if (!('level' in fields)) return ['info', fields];
  const { level, ...rest } = fields;
  return [LOG_LEVELS.includes(level as LogLevel) ? (level as LogLevel) : 'info', rest];
}

/**
 * Log from inside a task: a span event on the attempt's span, a pino line, and a `LogEvent` through
 * the observer chain. `fields.level` picks the level (default `info`). Outside a task the line goes to
 * the logger of the latest TaskManager (or the console). Never throws.
 */
export function taskLog(message: string, fields?: Record<string, unknown> & { level?: LogLevel }): void {
  try {
    const text = typeof message === 'string' ? message : String(message);
    const attempt = attemptStorage.getStore();
    if (attempt !== undefined) {
      const [level, rest] = splitLevel(fields);
      attempt[kLog](level, text, rest);
      return;
    }
    const [level, rest] = splitLevel(fields);
    if (fallbackLogger !== undefined) fallbackLogger[level](rest ?? {}, text);
    else if (rest === undefined) console[CONSOLE_METHOD[level]](text);
    else console[CONSOLE_METHOD[level]](text, rest);
  } catch {
    // Logging is never allowed to break the caller.
  }
}
