import { INVALID_TRACEID, type SpanContext } from '@opentelemetry/api';
import { formatTraceFlags } from '../otel.js';
import {
  type LifecycleEvent,
  type LogEvent,
  type LogLevel,
  type TaskLogger,
  type TaskObserver,
  type TaskRecord,
  type TaskStatus,
} from '../types.js';

/**
 * @internal The pino observer's `onLog` line written straight from an attempt's parts, after the chain's
 * `wantsLog(level)`: when it is the only log observer (a manager's `logger` and no other), no LogEvent is
 * built for a line that reads five of its fields. Same line, same level check (already made by the caller).
 */
export const kWriteLog = Symbol('koa-taskflow.writeLog');

export type WriteLog = (
  level: LogLevel,
  message: string,
  fields: Record<string, unknown> | undefined,
  record: Pick<TaskRecord, 'id' | 'name' | 'requestTraceId' | 'requestSpanId'>,
  attempt: number,
  tags: Readonly<Record<string, string>>,
  spanContext: SpanContext,
) => void;

/**
 * Successes are `debug`: the span and the metrics already count them, and at `info` a line per task would
 * double the log volume of a task that logs once. Problems are `warn`/`error`. A switch, not a lookup in a
 * literal: a status read as a key by name goes megamorphic in V8 (three names per task), a switch compares.
 */
function lifecycleLevel(status: TaskStatus): LogLevel {
  switch (status) {
    case 'pending':
    case 'running':
    case 'success':
      return 'debug';
    case 'failed':
      return 'error';
    default:
      return 'warn';
  }
}

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
  /** A task's log line: its fields, then the ids of its attempt span and its request's, the task, its tags. */
  const writeLine = (
    level: LogLevel,
    message: string,
    fields: Record<string, unknown> | undefined,
    traceId: string,
    spanId: string,
    traceFlags: number | undefined,
    requestTraceId: string | undefined,
    requestSpanId: string | undefined,
    task: { id: string; name: string; attempt: number },
    tags: Readonly<Record<string, string>>,
  ): void => {
    const line: Record<string, unknown> = { ...fields };
    if (traceId !== INVALID_TRACEID && traceId !== '') {
      line.trace_id = traceId;
      line.span_id = spanId;
      line.trace_flags = formatTraceFlags(traceFlags ?? 0);
    }
    if (requestTraceId !== undefined) {
      line.request_trace_id = requestTraceId;
      line.request_span_id = requestSpanId;
    }
    line.task = task;
    line.tags = tags;
    logger[level](line, message);
  };
  const writeLog: WriteLog = (level, message, fields, record, attempt, tags, spanContext) =>
    writeLine(
      level,
      message,
      fields,
      spanContext.traceId,
      spanContext.spanId,
      spanContext.traceFlags,
      record.requestTraceId,
      record.requestSpanId,
      { id: record.id, name: record.name, attempt },
      tags,
    );
  const observer: TaskObserver & { [kWriteLog]: WriteLog } = {
    wantsLog: enabled,
    onLog(event: LogEvent): void {
      if (!enabled(event.level)) return;
      writeLine(
        event.level,
        event.message,
        event.fields,
        event.traceId,
        event.spanId,
        event.traceFlags,
        event.requestTraceId,
        event.requestSpanId,
        { id: event.taskId, name: event.name, attempt: event.attempt },
        event.tags,
      );
    },
    [kWriteLog]: writeLog,
    wantsLifecycle(status: TaskStatus, retrying: boolean): boolean {
      return enabled(retrying ? 'warn' : lifecycleLevel(status));
    },
    onLifecycle(event: LifecycleEvent): void {
      // A failed attempt that will be retried returns to `pending` with its error: worth a warning.
      const level = event.status === 'pending' && event.error ? 'warn' : lifecycleLevel(event.status);
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
  return observer;
}

/**
 * `answers[level]`, the two levels a task asks most (`debug` for its lifecycle, `info` for its log lines) read
 * by name: a lookup by a varying key goes megamorphic in V8.
 */
function answerFor(answers: Readonly<Record<LogLevel, boolean>>, level: LogLevel): boolean | undefined {
  return level === 'debug' ? answers.debug : level === 'info' ? answers.info : answers[level];
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
  // A literal of the six levels, not a Map: read by name without hashing, up to four times per task.
  let answers: Readonly<Record<LogLevel, boolean>> | undefined;
  return (level) => {
    const now = pino.levelVal;
    if (now !== answeredFor || answers === undefined) {
      answeredFor = now;
      answers = {
        trace: isLevelEnabled('trace'),
        debug: isLevelEnabled('debug'),
        info: isLevelEnabled('info'),
        warn: isLevelEnabled('warn'),
        error: isLevelEnabled('error'),
        fatal: isLevelEnabled('fatal'),
      };
    }
    return answerFor(answers, level) ?? isLevelEnabled(level);
  };
}
