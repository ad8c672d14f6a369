import type { TaskRecord } from '../types.js';

const DAY_MS = 86_400_000;

export function validateRetentionDays(where: string, value: number | undefined): number {
  if (value === undefined) return 7;
  if (typeof value !== 'number' || !(value > 0) || !Number.isFinite(value)) {
    throw new RangeError(`${where}: option "retentionDays" must be a number > 0, got ${JSON.stringify(value)}`);
  }
  return value;
}

/** Finished records that ended before this time are deleted. */
export function retentionCutoff(now: number, retentionDays: number): number {
  return now - retentionDays * DAY_MS;
}

/**
 * A record as stored. Args were checked at enqueue, but log fields (and the args of `persist: false`
 * tasks) can hold anything: a value JSON cannot write must not fail the whole group commit, so the slow
 * path writes a readable stand-in for it.
 */
export function serialiseRecord(record: TaskRecord): string {
  try {
    return JSON.stringify(record);
  } catch {
    const seen = new WeakSet<object>();
    return JSON.stringify(record, (_key, value: unknown) => {
      if (typeof value === 'bigint') return value.toString();
      if (value !== null && typeof value === 'object') {
        if (seen.has(value)) return '[circular]';
        seen.add(value);
      }
      return value;
    });
  }
}

/** A stored record back as a TaskRecord with every field present (records keep one shape). */
export function parseRecord(text: string): TaskRecord {
  const stored = JSON.parse(text) as TaskRecord;
  return {
    id: stored.id,
    name: stored.name,
    status: stored.status,
    args: stored.args ?? [],
    tags: stored.tags ?? {},
    attempts: stored.attempts ?? 0,
    maxAttempts: stored.maxAttempts ?? 1,
    priority: stored.priority,
    idempotencyKey: stored.idempotencyKey,
    createdAt: stored.createdAt,
    startedAt: stored.startedAt,
    endedAt: stored.endedAt,
    durationMs: stored.durationMs,
    error: stored.error,
    reason: stored.reason,
    logs: stored.logs ?? [],
    traceId: stored.traceId,
    spanId: stored.spanId,
    requestTraceId: stored.requestTraceId,
    requestSpanId: stored.requestSpanId,
    retryOf: stored.retryOf,
    runAt: stored.runAt,
    options: stored.options,
  };
}
