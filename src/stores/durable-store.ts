import { DEFAULT_LEASE_MS } from '../durable.js';
import { TaskflowError } from '../errors.js';
import type { ArgsCipher, SaveResult, StoreLease, TaskRecord } from '../types.js';
import { GroupCommit, type WriteBatch } from './group-commit.js';

/** What SqliteStore and RedisStore share: the owner they write for, and group-committed writes. */
export abstract class GroupCommittedStore {
  readonly durable = true;
  readonly encryptsArgs = true;
  protected readonly commit = new GroupCommit((batch) => this.write(batch));
  /** The TaskManager owning the unfinished records this store writes ('' until attached). */
  protected ownerId = '';
  protected leaseMs = DEFAULT_LEASE_MS;
  protected closed: Promise<void> | undefined;
  /** Seals args on write and opens them on read when the TaskManager has an `encryptionKey`. */
  protected argsCipher: ArgsCipher | undefined;

  attach(lease: StoreLease): void {
    this.ownerId = lease.ownerId;
    this.leaseMs = lease.leaseMs;
    this.argsCipher = lease.argsCipher;
  }

  /**
   * Acceptances (a `pending` record not yet run: a response may wait for it) are committed at the end of
   * this event-loop turn; later status changes are batched lazily (see GroupCommit). `save([])` resolves
   * once everything saved before it is committed.
   */
  save(records: TaskRecord[]): Promise<SaveResult> {
    if (this.closed !== undefined) return Promise.reject(new TaskflowError(`${this.constructor.name}: the store is closed`));
    return this.commit.add(records, { lazy: records.every((r) => r.attempts > 0 || r.status !== 'pending') });
  }

  release(records: TaskRecord[]): Promise<void> {
    return this.commit.add(records, { release: true }).then(() => undefined);
  }

  /** Write one group commit's records (unfinished ones owned by `ownerId`, `released` ones by nobody). */
  protected abstract write(batch: WriteBatch): SaveResult | Promise<SaveResult>;
}
