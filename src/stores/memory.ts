import {
  isDeadLetterStatus,
  isFinalStatus,
  kLiveRecords,
  type LiveRecords,
  type TaskFilter,
  type TaskRecord,
  type TaskStore,
} from '../types.js';
import { checkKnownKeys, describeValue, numberError } from '../options.js';
import { compileFilter, matchesFilter } from './filter.js';

const MEMORY_STORE_OPTIONS = new Set(['maxRecords']);

export interface MemoryStoreOptions {
  /**
   * Records kept at most; past it the oldest successes (and cancellations) go first. Failed and interrupted
   * records (the dead letters) are not pushed out by other records: only when they alone are more than
   * `maxRecords`, the oldest of them goes. Unfinished ones are never dropped. Default 10 000.
   */
  maxRecords?: number;
}

/**
 * Ids in the order their tasks ended: eviction takes from the front, so it never scans unfinished records.
 * A consumed slot is cleared, not just passed: it would keep the id alive until the next compaction, and
 * the garbage collector then copies and promotes a young id referenced from this old array, task after task.
 */
class EndedQueue {
  #ids: string[] = [];
  #head = 0;

  push(id: string): void {
    this.#ids.push(id);
  }

  shift(): string | undefined {
    if (this.#head === this.#ids.length) return undefined;
    const id = this.#ids[this.#head];
    this.#ids[this.#head++] = undefined as unknown as string;
    if (this.#head > 1024 && this.#head * 2 > this.#ids.length) {
      this.#ids = this.#ids.slice(this.#head);
      this.#head = 0;
    }
    return id;
  }
}

/** The fields compactRecord() copies (the traced ones only in its traced shape). */
type CopiedField =
  | 'id'
  | 'name'
  | 'status'
  | 'args'
  | 'tags'
  | 'attempts'
  | 'maxAttempts'
  | 'createdAt'
  | 'logs'
  | 'startedAt'
  | 'endedAt'
  | 'durationMs'
  | 'traceId'
  | 'spanId'
  | 'requestTraceId'
  | 'requestSpanId'
  | 'requestTraceFlags';
/** The fields that, when set, keep the live record as it is. */
type LiveField =
  | 'error'
  | 'priority'
  | 'idempotencyKey'
  | 'retryOf'
  | 'options'
  | 'stalls'
  | 'progress'
  | 'reason'
  | 'cancelRequested'
  | 'runAt';

/**
 * A first-attempt success as one object, for the history: the live record got the fields a run sets after it
 * was made (startedAt, the span's ids, endedAt, durationMs), so V8 keeps them in a second, separate array
 * (a "property array") made young and copied by the garbage collector as the record ages; the copy holds them
 * all in place, made where the history's long-lived records are made, so V8 may allocate it in the old
 * generation at once. The same fields in the same order, the same values; any other record is kept as it is.
 * Two shapes: untraced outside a request, and traced in one (the common mixes).
 */
function compactRecord(r: TaskRecord): TaskRecord {
  // Every field of a TaskRecord is either copied below or, when set, keeps the record live: a field added to
  // TaskRecord and to neither list fails to compile here rather than vanishing from the history.
  const handled: [Exclude<keyof TaskRecord, CopiedField | LiveField>] extends [never] ? true : never = true;
  void handled;
  if (
    r.status !== 'success' ||
    r.attempts !== 1 ||
    r.error !== undefined ||
    r.priority !== undefined ||
    r.idempotencyKey !== undefined ||
    r.retryOf !== undefined ||
    r.options !== undefined ||
    r.stalls !== undefined ||
    r.progress !== undefined ||
    r.reason !== undefined ||
    r.cancelRequested !== undefined ||
    'runAt' in r
  )
    return r;
  const { id, name, status, args, tags, attempts, maxAttempts, createdAt, logs, startedAt, endedAt, durationMs } = r;
  if (r.requestTraceId === undefined && r.traceId === undefined)
    return { id, name, status, args, tags, attempts, maxAttempts, createdAt, logs, startedAt, endedAt, durationMs };
  // Traced, added in a request: the other two mixes (no request, or an attempt not recorded) are kept as they are.
  if (r.requestTraceId === undefined || r.traceId === undefined) return r;
  const { requestTraceId, requestSpanId, requestTraceFlags, traceId, spanId } = r;
  return {
    id,
    name,
    status,
    args,
    tags,
    attempts,
    maxAttempts,
    createdAt,
    logs,
    requestTraceId,
    requestSpanId,
    requestTraceFlags,
    startedAt,
    traceId,
    spanId,
    endedAt,
    durationMs,
  };
}

/**
 * The default store: records live in this process only. It keeps the live record objects, so the runner's
 * updates are visible without a write.
 */
export class MemoryStore implements TaskStore {
  readonly durable = false;
  readonly maxRecords: number;
  readonly #records = new Map<string, TaskRecord>();
  readonly #keys = new Map<string, string>();
  readonly #ended = new EndedQueue();
  // The dead letters apart: their own queue, and the set of those held (how many, and which to skip above).
  readonly #dead = new EndedQueue();
  readonly #deadIds = new Set<string>();

  constructor(options: MemoryStoreOptions = {}) {
    if (options === null || typeof options !== 'object')
      throw new TypeError(`MemoryStore: options must be an object, got ${describeValue(options)}`);
    checkKnownKeys('MemoryStore', options, MEMORY_STORE_OPTIONS);
    const maxRecords = options.maxRecords ?? 10_000;
    if (!Number.isInteger(maxRecords) || maxRecords < 1)
      throw numberError('MemoryStore', 'maxRecords', 'a positive integer', maxRecords);
    this.maxRecords = maxRecords;
  }

  async save(records: TaskRecord[]): Promise<void> {
    for (const record of records) this.#save(record);
  }

  /** @internal The manager's synchronous access: records are the live objects, visible the moment they are added. */
  readonly [kLiveRecords]: LiveRecords = {
    add: (record) => this.#save(record),
    claimKey: (key, id) => this.#claimKey(key, id),
    ended: (record) => {
      // Not held (an engine's unkeyed task, see Acceptance): nothing to age.
      if (this.#records.get(record.id) !== record) return;
      // Nothing changes a finished record again: the history keeps a compact copy (see compactRecord).
      const compact = compactRecord(record);
      if (compact !== record) this.#records.set(record.id, compact);
      this.#endedNow(record);
      if (this.#records.size > this.maxRecords) this.#trim();
    },
  };

  #save(record: TaskRecord): void {
    this.#records.set(record.id, record);
    if (isFinalStatus(record.status)) this.#endedNow(record);
    if (this.#records.size > this.maxRecords) this.#trim();
  }

  #endedNow(record: TaskRecord): void {
    if (!isDeadLetterStatus(record.status)) {
      this.#ended.push(record.id);
    } else if (!this.#deadIds.has(record.id)) {
      this.#deadIds.add(record.id);
      this.#dead.push(record.id);
    }
  }

  async get(id: string): Promise<TaskRecord | undefined> {
    return this.#records.get(id);
  }

  async list(filter?: TaskFilter): Promise<TaskRecord[]> {
    const f = compileFilter(filter);
    const all = [...this.#records.values()];
    const out: TaskRecord[] = [];
    // Insertion order is creation order: walk backwards for newest first. A page after a record still held
    // starts right after it; after one dropped since, with those created before it.
    let i = all.length - 1;
    if (f.before !== undefined) {
      const { createdAt, id } = f.before;
      const after = this.#records.has(id) ? all.lastIndexOf(this.#records.get(id)!) : -1;
      if (after >= 0) i = after - 1;
      else while (i >= 0 && all[i].createdAt >= createdAt) i--;
    }
    for (; i >= 0 && out.length < f.limit; i--) {
      if (matchesFilter(all[i], f)) out.push(all[i]);
    }
    return out;
  }

  async claimKey(key: string, id: string): Promise<string | undefined> {
    return this.#claimKey(key, id);
  }

  #claimKey(key: string, id: string): string | undefined {
    const holder = this.#keys.get(key);
    if (holder !== undefined && holder !== id) {
      const record = this.#records.get(holder);
      if (record !== undefined && record.status !== 'failed') return holder;
    }
    this.#keys.set(key, id);
    return undefined;
  }

  /** Nothing outlives the process, so there is never an orphan to claim. */
  async claimOrphans(): Promise<TaskRecord[]> {
    return [];
  }

  async close(): Promise<void> {}

  #trim(): void {
    for (let id = this.#ended.shift(); id !== undefined; id = this.#ended.shift()) {
      const record = this.#records.get(id);
      // Ended here: final, or `pending` as handed over (to BullMQ, or to a restart at shutdown), which this
      // process never changes again. Without the latter a web process on BullMQ kept every task it enqueued.
      const endedHere = record !== undefined && (record.status === 'pending' || isFinalStatus(record.status));
      if (!endedHere || (this.#deadIds.size > 0 && this.#deadIds.has(id))) continue;
      this.#delete(record);
      if (this.#records.size <= this.maxRecords) return;
    }
    // Unfinished tasks never push a dead letter out (they end as successes, which go first); the dead
    // letters alone past the bound would grow the store for ever, so then the oldest goes.
    while (this.#deadIds.size > this.maxRecords) {
      const id = this.#dead.shift()!;
      if (!this.#deadIds.delete(id)) continue;
      const record = this.#records.get(id);
      if (record !== undefined && isFinalStatus(record.status)) this.#delete(record);
    }
  }

  #delete(record: TaskRecord): void {
    this.#records.delete(record.id);
    if (record.idempotencyKey !== undefined && this.#keys.get(record.idempotencyKey) === record.id)
      this.#keys.delete(record.idempotencyKey);
  }
}
