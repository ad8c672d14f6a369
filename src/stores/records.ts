import { TaskArgsDecryptionError, TaskStoreError } from '../errors.js';
import { numberError } from '../options.js';
import { TASK_STATUSES, type ArgsCipher, type TaskRecord } from '../types.js';
import { openWithoutKey } from './args-cipher.js';

const DAY_MS = 86_400_000;

export function validateRetentionDays(where: string, value: number | undefined): number {
  if (value === undefined) return 7;
  if (typeof value !== 'number' || !(value > 0) || !Number.isFinite(value))
    throw numberError(where, 'retentionDays', 'a number > 0', value);
  return value;
}

/**
 * Failed and interrupted records (the dead letters) are kept `failedRetentionDays`, never less than
 * successes: by default twice `retentionDays`, so a failure outlives the successes around it.
 */
export function validateFailedRetentionDays(where: string, value: number | undefined, retentionDays: number): number {
  if (value === undefined) return 2 * retentionDays;
  if (typeof value !== 'number' || !(value >= retentionDays) || !Number.isFinite(value)) {
    throw numberError(
      where,
      'failedRetentionDays',
      `a number >= "retentionDays" (${retentionDays}): failures are kept at least as long as successes`,
      value,
    );
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
const sealedByRecord = new WeakMap<
  TaskRecord,
  { args: unknown[]; sealed: string; cipher: ArgsCipher | undefined; error?: TaskArgsDecryptionError }
>();

function sealedArgs(record: TaskRecord, cipher: ArgsCipher | undefined): string | undefined {
  const known = sealedByRecord.get(record);
  if (known !== undefined && known.args === record.args && (known.error !== undefined || known.cipher === cipher))
    return known.sealed;
  if (cipher === undefined) return undefined;
  const sealed = cipher.seal(record.id, toJson(record.args));
  sealedByRecord.set(record, { args: record.args, sealed, cipher });
  return sealed;
}

/**
 * A stored record back as a TaskRecord. A text that is not a task record (not JSON, a wrong shape, a
 * missing field, another id than `id`, the one it is stored under) throws a TaskStoreError with code
 * `ERR_STORE_UNREADABLE` naming the task: stores skip such a record in list() and recovery (see
 * `unreadableRecord`). Sealed args are opened with `cipher`; when they cannot be, this throws a
 * TaskArgsDecryptionError (naming `encryptionKey`), unless `keepUnreadable`: then the record comes back
 * with no args and the error is answered by `unreadableArgs(record)` (recovery ends such a task instead
 * of failing every other claim with it).
 */
export function parseRecord(id: string, text: unknown, cipher?: ArgsCipher, keepUnreadable = false): TaskRecord {
  const record = toRecord(id, text);
  const stored: unknown = record.args;
  if (typeof stored !== 'string') return record;
  try {
    record.args = JSON.parse(
      cipher === undefined ? openWithoutKey(record.id, stored) : cipher.open(record.id, stored),
    ) as unknown[];
    sealedByRecord.set(record, { args: record.args, sealed: stored, cipher });
  } catch (error) {
    if (!keepUnreadable || !(error instanceof TaskArgsDecryptionError)) throw error;
    record.args = [];
    sealedByRecord.set(record, { args: record.args, sealed: stored, cipher, error });
  }
  return record;
}

/** The error of a stored record that is not a task record; `why` never quotes the text (it may hold args). */
export function unreadableRecord(id: string, why: string): TaskStoreError {
  return new TaskStoreError(
    `the stored record of task ${JSON.stringify(id)} cannot be read (${why}): list(), metrics() and ` +
      `recovery skip it, and it was left as it is; repair or delete it in the store`,
    'ERR_STORE_UNREADABLE',
  );
}

/** Why a record read with `keepUnreadable` has no args, if it could not open them. */
export function unreadableArgs(record: TaskRecord): TaskArgsDecryptionError | undefined {
  return sealedByRecord.get(record)?.error;
}

const STATUSES = new Set<string>(TASK_STATUSES);
const NUMBERS = [
  'attempts',
  'maxAttempts',
  'priority',
  'startedAt',
  'endedAt',
  'durationMs',
  'runAt',
  'requestTraceFlags',
  'stalls',
  'progress',
] as const;
const STRINGS = [
  'idempotencyKey',
  'reason',
  'traceId',
  'spanId',
  'requestTraceId',
  'requestSpanId',
  'retryOf',
] as const;

/**
 * Every field present: records keep one shape. What the runtime relies on is checked, so a damaged record
 * fails here, by its id, rather than later in whatever reads it.
 */
function toRecord(id: string, text: unknown): TaskRecord {
  let stored: Record<string, unknown>;
  try {
    stored = JSON.parse(text as string) as Record<string, unknown>;
  } catch {
    // Not the SyntaxError's message: V8 quotes the start of the text, which may hold args or secrets.
    throw unreadableRecord(id, typeof text === 'string' ? 'not valid JSON' : `a ${typeof text}, not a JSON text`);
  }
  const why = shapeProblem(id, stored);
  if (why !== undefined) throw unreadableRecord(id, why);
  const record: TaskRecord = {
    id: stored.id as string,
    name: stored.name as string,
    status: stored.status as TaskRecord['status'],
    args: (stored.args ?? []) as unknown[],
    tags: (stored.tags ?? {}) as Record<string, string>,
    attempts: (stored.attempts ?? 0) as number,
    maxAttempts: (stored.maxAttempts ?? 1) as number,
    priority: stored.priority as number | undefined,
    idempotencyKey: stored.idempotencyKey as string | undefined,
    createdAt: stored.createdAt as number,
    startedAt: stored.startedAt as number | undefined,
    endedAt: stored.endedAt as number | undefined,
    durationMs: stored.durationMs as number | undefined,
    error: stored.error as TaskRecord['error'],
    reason: stored.reason as string | undefined,
    logs: (stored.logs ?? []) as TaskRecord['logs'],
    traceId: stored.traceId as string | undefined,
    spanId: stored.spanId as string | undefined,
    requestTraceId: stored.requestTraceId as string | undefined,
    requestSpanId: stored.requestSpanId as string | undefined,
    requestTraceFlags: stored.requestTraceFlags as number | undefined,
    retryOf: stored.retryOf as string | undefined,
    runAt: stored.runAt as number | undefined,
    options: stored.options as TaskRecord['options'],
  };
  // Only on a task whose process died under it (rare): the common record carries no slot for it.
  if (stored.stalls !== undefined) record.stalls = stored.stalls as number;
  // Only on a task that reported progress (taskProgress()).
  if (stored.progress !== undefined) record.progress = stored.progress as number;
  return record;
}

function shapeProblem(id: string, stored: Record<string, unknown>): string | undefined {
  if (stored === null || typeof stored !== 'object' || Array.isArray(stored))
    return `${kindOf(stored)}, not a JSON object`;
  if (stored.id !== id)
    return `its field "id" is ${typeof stored.id === 'string' ? 'another id' : 'missing or not a string'}, not the id it is stored under`;
  if (typeof stored.name !== 'string' || stored.name === '') return 'field "name" is missing or not a non-empty string';
  if (typeof stored.status !== 'string' || !STATUSES.has(stored.status))
    return 'field "status" is missing or not a task status';
  if (typeof stored.createdAt !== 'number' || !Number.isFinite(stored.createdAt))
    return 'field "createdAt" is missing or not a number';
  const { args, tags, logs } = stored;
  if (args != null && typeof args !== 'string' && !Array.isArray(args)) return 'field "args" is not an array';
  if (tags != null && (typeof tags !== 'object' || Array.isArray(tags) || !allStrings(tags as Record<string, unknown>)))
    return 'field "tags" is not an object of strings';
  if (logs != null && !Array.isArray(logs)) return 'field "logs" is not an array';
  for (const key of ['error', 'options'] as const) {
    if (stored[key] != null && typeof stored[key] !== 'object') return `field "${key}" is not an object`;
  }
  for (const key of NUMBERS)
    if (stored[key] != null && typeof stored[key] !== 'number') return `field "${key}" is not a number`;
  for (const key of STRINGS)
    if (stored[key] != null && typeof stored[key] !== 'string') return `field "${key}" is not a string`;
  return undefined;
}

function allStrings(object: Record<string, unknown>): boolean {
  for (const key in object) if (typeof object[key] !== 'string') return false;
  return true;
}

function kindOf(value: unknown): string {
  if (value === null) return 'null';
  return Array.isArray(value) ? 'an array' : `a ${typeof value}`;
}
