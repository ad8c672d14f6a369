import type { AttributeValue, Attributes } from '@opentelemetry/api';
import { currentAttempt } from '../context.js';
import { ATTR_LOG_LEVEL, ATTR_LOG_MESSAGE, EVENT_TASK_LOG } from '../otel.js';
import type { LogEvent, TaskObserver } from '../types.js';

function toAttributeValue(value: unknown): AttributeValue | undefined {
  switch (typeof value) {
    case 'string':
    case 'number':
    case 'boolean':
      return value;
    case 'undefined':
    case 'function':
    case 'symbol':
      return undefined;
    case 'bigint':
      return value.toString();
    default:
      if (value === null) return undefined;
      if (Array.isArray(value) && value.every((v) => typeof v === 'string')) return value;
      if (Array.isArray(value) && value.every((v) => typeof v === 'number')) return value;
      if (value instanceof Error) return `${value.name}: ${value.message}`;
      try {
        return JSON.stringify(value);
      } catch {
        // eslint-disable-next-line @typescript-eslint/no-base-to-string -- not JSON (a cycle, a BigInt): its toString()
        return String(value);
      }
  }
}

/** Log fields as span attributes: scalars as they are, objects as JSON. */
export function fieldsToAttributes(fields: Record<string, unknown>, into: Attributes = {}): Attributes {
  for (const key in fields) {
    const value = toAttributeValue(fields[key]);
    if (value !== undefined) into[key] = value;
  }
  return into;
}

/**
 * Each `LogEvent` becomes a `task.log` event on the span of the attempt that is logging. The TaskManager
 * does not need it (an attempt writes that event on its own span, before any observer runs): it is kept
 * for observer chains driven some other way.
 */
export function spanEventObserver(): TaskObserver {
  return {
    onLog(event: LogEvent): void {
      const attempt = currentAttempt();
      // Called synchronously from taskLog(), so this is the logging attempt; the id check guards
      // against an observer chain a user invokes by hand elsewhere.
      if (attempt === undefined || attempt.id !== event.taskId || !attempt.span.isRecording()) return;
      const attributes = fieldsToAttributes(event.fields, {
        [ATTR_LOG_MESSAGE]: event.message,
        [ATTR_LOG_LEVEL]: event.level,
      });
      attempt.span.addEvent(EVENT_TASK_LOG, attributes, event.time);
    },
  };
}
