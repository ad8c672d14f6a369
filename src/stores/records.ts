import { TaskArgsDecryptionError } from '../errors.js';
import type { ArgsCipher, TaskRecord } from '../types.js';
import { openWithoutKey } from './args-cipher.js';

const DAY_MS = 86_400_000;

export function validateRetentionDays(where: string, value: number | undefined): number {
  if (value === undefined) return 7;
  if (typeof value !== 'number' || !(value > 0) || !Number.isFinite(value)) {
    throw new RangeError(`${where}: option "retentionDays" must be a number > 0, got ${JSON.stringify(value)}`);
  }
  return value;
}

/**
 * Failed and interrupted records (the dead letters) are kept `failedRetentionDays`, never less than
 * successes: by default twice `retentionDays`, so a failure outlives the successes around it.
 */
export function validateFailedRetentionDays(where: string, value: number | undefined, retentionDays: number): number {
  if (value === undefined) return 2 * retentionDays;
  if (typeof value !== 'number' || !(value >= retentionDays) || !Number.isFinite(value)) {
    throw new RangeError(`${where}: option "failedRetentionDays" must be a number >= "retentionDays" (${retentionDays}): failures are kept at least as long as successes, got ${JSON.stringify(value)}`);
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
 * path writes a readable stand-in for it. With a `cipher` the args are stored sealed (see args-cipher.ts).
 */
export function serialiseRecord(record: TaskRecord, cipher?: ArgsCipher): string {
  const sealed = sealedArgs(record, cipher);
  return toJson(sealed === undefined ? record : { ...record, args: sealed });
}

function toJson(value: unknown): string {
  try {
    return JSON.stringify(value);
  } catch {
    const seen = new WeakSet<object>();
    return JSON.stringify(value, (_key, inner: unknown) => {
      if (typeof inner === 'bigint') return inner.toString();
      if (inner !== null && typeof inner === 'object') {
        if (seen.has(inner)) return '[circular]';
        seen.add(inner);
      }
      return inner;
    });
  }
}

/**
 * The sealed form of a record's args, kept per record: a record is written several times (accepted,
 * running, ended) but its args never change, so they are encrypted once. `readable: false` marks args
 * that could not be opened: they are written back exactly as they were read, whatever the key.
 */
const sealedByRecord = new WeakMap<TaskRecord, { args: unknown[]; sealed: string; cipher: ArgsCipher | undefined; error?: TaskArgsDecryptionError }>();

function sealedArgs(record: TaskRecord, cipher: ArgsCipher | undefined): string | undefined {
  const known = sealedByRecord.get(record);
  if (known !== undefined && known.args === record.args && (known.error !== undefined || known.cipher === cipher)) return known.sealed;
  if (cipher === undefined) return undefined;
  const sealed = cipher.seal(record.id, toJson(record.args));
  sealedByRecord.set(record, { args: record.args, sealed, cipher });
  return sealed;
}

/**
 * A stored record back as a TaskRecord. Sealed args are opened with `cipher`; when they cannot be, this
 * throws a TaskArgsDecryptionError (naming `encryptionKey`), unless `keepUnreadable`: then the record
 * comes back with no args and the error is answered by `unreadableArgs(record)` (recovery ends such a
 * task instead of failing every other claim with it).
 */
export function parseRecord(text: string, cipher?: ArgsCipher, keepUnreadable = false): TaskRecord {
  const record = toRecord(JSON.parse(text) as TaskRecord);
  const stored: unknown = record.args;
  if (typeof stored !== 'string') return record;
  try {
    record.args = JSON.parse(cipher === undefined ? openWithoutKey(record.id, stored) : cipher.open(record.id, stored)) as unknown[];
    sealedByRecord.set(record, { args: record.args, sealed: stored, cipher });
  } catch (error) {
    if (!keepUnreadable || !(error instanceof TaskArgsDecryptionError)) throw error;
    record.args = [];
    sealedByRecord.set(record, { args: record.args, sealed: stored, cipher, error });
  }
  return record;
}

/** Why a record read with `keepUnreadable` has no args, if it could not open them. */
export function unreadableArgs(record: TaskRecord): TaskArgsDecryptionError | undefined {
  return sealedByRecord.get(record)?.error;
}

/** Every field present: records keep one shape. */
function toRecord(stored: TaskRecord): TaskRecord {
  const record: TaskRecord = {
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
    requestTraceFlags: stored.requestTraceFlags,
    retryOf: stored.retryOf,
    runAt: stored.runAt,
    options: stored.options,
  };
  // Only on a task whose process died under it (rare): the common record carries no slot for it.
  if (stored.stalls !== undefined) record.stalls = stored.stalls;
  return record;
}
