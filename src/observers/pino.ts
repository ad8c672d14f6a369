import { INVALID_TRACEID } from '@opentelemetry/api';
import { formatTraceFlags } from '../otel.js';
import {
  LOG_LEVELS,
  type LifecycleEvent,
  type LogEvent,
  type LogLevel,
  type TaskLogger,
  type TaskObserver,
  type TaskStatus,
} from '../types.js';

// Successes are `debug`: the span and the metrics already count them, and at `info` a line per task would
// double the log volume of a task that logs once. Problems are `warn`/`error`.
const LIFECYCLE_LEVEL: Record<TaskStatus, LogLevel> = {
  pending: 'debug',
  running: 'debug',
  success: 'debug',
  failed: 'error',
  interrupted: 'warn',
  cancelled: 'warn',
};

/**
 * Writes task logs and lifecycle changes as pino lines carrying `trace_id`, `span_id`, `trace_flags`
 * (the names @opentelemetry/instrumentation-pino uses, so Grafana's derived fields work for both),
 * `task { id, name, attempt }` and `tags`.
 */
export function pinoObserver(logger: TaskLogger): TaskObserver {
  if (logger === null || typeof logger !== 'object' || typeof logger.info !== 'function') {
    throw new TypeError('pinoObserver: "logger" must be a pino logger (an object with info/warn/error… methods)');
  }
  // pino's own check: a line below the logger's level is not even built.
  const enabled = levelCheck(logger);
  return {
    wantsLog: enabled,
    onLog(event: LogEvent): void {
      if (!enabled(event.level)) return;
      const line: Record<string, unknown> = { ...event.fields };
      if (event.traceId !== INVALID_TRACEID && event.traceId !== '') {
        line.trace_id = event.traceId;
        line.span_id = event.spanId;
        line.trace_flags = formatTraceFlags(event.traceFlags ?? 0);
      }
      if (event.requestTraceId !== undefined) {
        line.request_trace_id = event.requestTraceId;
        line.request_span_id = event.requestSpanId;
      }
      line.task = { id: event.taskId, name: event.name, attempt: event.attempt };
      line.tags = event.tags;
      logger[event.level](line, event.message);
    },
    wantsLifecycle(status: TaskStatus, retrying: boolean): boolean {
      return enabled(retrying ? 'warn' : LIFECYCLE_LEVEL[status]);
    },
    onLifecycle(event: LifecycleEvent): void {
      // A failed attempt that will be retried returns to `pending` with its error: worth a warning.
      const level = event.status === 'pending' && event.error ? 'warn' : LIFECYCLE_LEVEL[event.status];
      if (!enabled(level)) return;
      const line: Record<string, unknown> = {};
      if (event.traceId !== undefined) {
        line.trace_id = event.traceId;
        line.span_id = event.spanId;
        if (event.traceFlags !== undefined) line.trace_flags = formatTraceFlags(event.traceFlags);
      }
      if (event.requestTraceId !== undefined) {
        line.request_trace_id = event.requestTraceId;
        line.request_span_id = event.requestSpanId;
      }
      line.task = { id: event.taskId, name: event.name, attempt: event.attempt };
      line.tags = event.tags;
      line.status = event.status;
      if (event.previousStatus !== undefined) line.previous_status = event.previousStatus;
      if (event.durationMs !== undefined) line.duration_ms = event.durationMs;
      if (event.reason !== undefined) line.reason = event.reason;
      if (event.error !== undefined) line.error = event.error;
      const verb = event.status === 'pending' && event.error ? 'attempt failed, retrying' : event.status;
      logger[level](line, `task ${event.name} ${verb}`);
    },
  };
}

/**
 * Whether the logger writes a level. A task asks up to four times (its log line, and its pending, running and
 * success events, which are `debug`): for a pino logger the answers are computed once per level the logger
 * is set to (pino's `levelVal`), so changing `logger.level` at run time still takes effect at the next call.
 */
function levelCheck(logger: TaskLogger): (level: LogLevel) => boolean {
  if (typeof logger.isLevelEnabled !== 'function') return () => true;
  const isLevelEnabled = (level: LogLevel) => logger.isLevelEnabled!(level);
  const pino = logger as TaskLogger & { readonly levelVal?: unknown };
  if (typeof pino.levelVal !== 'number') return isLevelEnabled;
  let answeredFor: unknown;
  const answers = new Map<LogLevel, boolean>();
  return (level) => {
    const now = pino.levelVal;
    if (now !== answeredFor) {
      answeredFor = now;
      for (const each of LOG_LEVELS) answers.set(each, isLevelEnabled(each));
    }
    return answers.get(level) ?? isLevelEnabled(level);
  };
}
