import { DEFAULT_LEASE_MS } from '../durable.js';
import { TaskflowError, TaskStoreError, TaskStoreUnavailableError, toErrorInfo } from '../errors.js';
import {
  kSaveSoon,
  type ArgsCipher,
  type SaveResult,
  type StoreCapabilities,
  type StoreLease,
  type TaskRecord,
} from '../types.js';
import { GroupCommit, MAX_BATCH_RECORDS, type WriteBatch } from './group-commit.js';
import { parseRecord, serialiseRecord } from './records.js';

/**
 * Orphans one `claimOrphans()` call takes at most, in batches of MAX_BATCH_RECORDS: a crash that left
 * 100 000 tasks behind is claimed a few batches per call, none holding Redis past a client's socket timeout
 * or the app's thread for long. The recovery calls again at once when a call comes back full.
 */
export const MAX_ORPHANS_PER_CLAIM = 5 * MAX_BATCH_RECORDS;

/** One batch of an orphan claim: the records it took, and how many tasks it took (unreadable ones too). */
export interface OrphanBatch {
  records: TaskRecord[];
  taken: number;
}

/** What SqliteStore and RedisStore share: the owner they write for, and group-committed writes. */
export abstract class GroupCommittedStore {
  readonly durable = true;
  readonly encryptsArgs = true;
  readonly capabilities: StoreCapabilities = { claimsKeysOnSave: true };
  protected readonly commit = new GroupCommit((batch) => this.write(batch), {
    failure: (error, records) => this.writeFailed(error, records),
  });
  /** The TaskManager owning the unfinished records this store writes ('' until attached). */
  protected ownerId = '';
  protected leaseMs = DEFAULT_LEASE_MS;
  protected closed: Promise<void> | undefined;
  /** Seals args on write and opens them on read when the TaskManager has an `encryptionKey`. */
  protected argsCipher: ArgsCipher | undefined;
  #lease: StoreLease | undefined;

  attach(lease: StoreLease): void {
    this.ownerId = lease.ownerId;
    this.leaseMs = lease.leaseMs;
    this.argsCipher = lease.argsCipher;
    this.#lease = lease;
  }

  /**
   * The record as this process last wrote it: one still queued for (or in) a group commit is answered as
   * queued, not as the store has it until that write lands (up to LAZY_WRITE_MS later). An id that lost an
   * idempotency claim answers its holder's record, that one too as queued here if it is.
   */
  async get(id: string): Promise<TaskRecord | undefined> {
    const queued = this.queuedRecord(id);
    if (queued !== undefined) return queued;
    const stored = await this.read(id);
    // Queued while the read was under way: newer than what it found.
    return this.queuedRecord(stored?.id ?? id) ?? stored;
  }

  /** The stored record of `id` (an alias: its holder's), as get() answers it when nothing is queued here. */
  protected abstract read(id: string): Promise<TaskRecord | undefined>;

  /** A copy of the record a queued write holds, read back as the store would answer it once written. */
  protected queuedRecord(id: string): TaskRecord | undefined {
    const record = this.commit.queued(id);
    return record && parseRecord(record.id, serialiseRecord(record));
  }

  /**
   * A stored record, or undefined when it is not a task record (not JSON, a wrong shape): that one is
   * skipped and reported, and the caller carries on with the rest (list, metrics, recovery).
   */
  protected readRecord(id: string, text: unknown, keepUnreadable = false): TaskRecord | undefined {
    try {
      return parseRecord(id, text, this.argsCipher, keepUnreadable);
    } catch (error) {
      if (!(error instanceof TaskStoreError)) throw error;
      this.unreadable(id, error);
      return undefined;
    }
  }

  /** `get(id)`: a record that cannot be read is an error naming it (reported too), not a missing task. */
  protected getRecord(id: string, text: unknown): TaskRecord {
    try {
      return parseRecord(id, text, this.argsCipher);
    } catch (error) {
      if (error instanceof TaskStoreError) this.unreadable(id, error);
      throw error;
    }
  }

  protected unreadable(id: string, error: TaskStoreError): void {
    this.#lease?.reportUnreadable?.(id, error);
  }

  /**
   * Claims orphans a batch at a time (`claimBatch(limit)` takes at most `limit` tasks), yielding to the event
   * loop between batches, until a batch comes back short or MAX_ORPHANS_PER_CLAIM are taken.
   */
  protected async claimInBatches(claimBatch: (limit: number) => Promise<OrphanBatch>): Promise<TaskRecord[]> {
    const records: TaskRecord[] = [];
    // The first batch runs even on a closed store: it is what refuses the call.
    for (let taken = 0; ;) {
      const limit = Math.min(MAX_BATCH_RECORDS, MAX_ORPHANS_PER_CLAIM - taken);
      const batch = await claimBatch(limit);
      for (const record of batch.records) records.push(record);
      taken += batch.taken;
      if (batch.taken < limit || taken >= MAX_ORPHANS_PER_CLAIM || this.closed !== undefined) break;
      await new Promise((resolve) => setImmediate(resolve));
    }
    return records;
  }

  /**
   * Acceptances (a `pending` record not yet run: a response may wait for it) are committed at the end of
   * this event-loop turn; later status changes are batched lazily (see GroupCommit). `save([])` resolves
   * once everything saved before it is committed.
   */
  save(records: TaskRecord[]): Promise<SaveResult> {
    return this.#save(records, false);
  }

  /** save(), a status change written at the end of this turn rather than in the next lazy batch. */
  [kSaveSoon](records: TaskRecord[]): Promise<SaveResult> {
    return this.#save(records, true);
  }

  #save(records: TaskRecord[], soon: boolean): Promise<SaveResult> {
    if (this.closed !== undefined)
      return Promise.reject(new TaskStoreUnavailableError(`${this.constructor.name}: the store is closed`));
    return this.commit.add(records, { lazy: records.every((r) => r.attempts > 0 || r.status !== 'pending'), soon });
  }

  release(records: TaskRecord[]): Promise<void> {
    return this.commit.add(records, { release: true }).then(() => undefined);
  }

  /**
   * What the callers of a batch whose write failed get: the store's own errors as they are; anything else
   * (a thrown non-Error, a record that cannot be serialised, a bug) as a TaskStoreUnavailableError that keeps
   * it as its cause, so a request gets its 503 and a status write is retried like any failed write.
   */
  protected writeFailed(error: unknown, records: number): TaskflowError {
    let ours = false;
    try {
      ours = error instanceof TaskflowError;
    } catch {
      // a Proxy whose prototype cannot be read: not one of ours
    }
    if (ours) return error as TaskflowError;
    const { message } = toErrorInfo(error);
    return new TaskStoreUnavailableError(
      `${this.constructor.name}: the write of ${records} task record(s) failed: ${message}`,
      { cause: error },
    );
  }

  /** Write one group commit's records (unfinished ones owned by `ownerId`, `released` ones by nobody). */
  protected abstract write(batch: WriteBatch): SaveResult | Promise<SaveResult>;
}
