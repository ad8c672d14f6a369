import type { SaveResult, TaskRecord } from '../types.js';

/** The records of one flush; `released` ids are written as unowned pending work. */
export interface WriteBatch {
  records: TaskRecord[];
  released: ReadonlySet<string>;
  /** Status changes after acceptance (nobody waits for them), as opposed to acceptances a response waits for. */
  lazy: boolean;
}

/** How long status changes after acceptance may wait to be written together. */
export const LAZY_WRITE_MS = 50;

/** One batch being gathered: its records by id, and the promise every contributor awaits. */
class PendingBatch {
  readonly records = new Map<string, TaskRecord>();
  readonly released = new Set<string>();
  readonly promise: Promise<SaveResult>;
  readonly lazy: boolean;
  settle!: { resolve(result: SaveResult): void; reject(error: unknown): void };
  timer: NodeJS.Immediate | NodeJS.Timeout | undefined;

  constructor(lazy: boolean) {
    this.lazy = lazy;
    this.promise = new Promise<SaveResult>((resolve, reject) => (this.settle = { resolve, reject }));
    // Callers attach their own handlers; this keeps a write nobody awaits from being an unhandled rejection.
    this.promise.catch(() => {});
  }
}

/**
 * Group commit: writes go out together, in one transaction (SQLite) or one round trip (Redis), and every
 * caller awaits that same write.
 *
 * - Urgent writes (a task being accepted: a response waits for it) are flushed at the end of the current
 *   event-loop turn: every request served in that turn shares one commit.
 * - Lazy writes (status changes after acceptance: running, retry, end) wait up to LAZY_WRITE_MS and go
 *   out in one larger batch; nobody waits on them, and a larger batch is much cheaper per record. The
 *   cost: a crash within that window forgets the last status change, so the task runs again
 *   (at-least-once).
 *
 * Records are kept by id and serialised when the batch is written, so a record changed several times
 * before its batch goes out (accepted, started, finished) is written once, as it is by then.
 */
export class GroupCommit {
  #urgent: PendingBatch | undefined;
  #lazy: PendingBatch | undefined;
  readonly #inFlight = new Set<Promise<unknown>>();

  constructor(private readonly write: (batch: WriteBatch) => SaveResult | Promise<SaveResult>) {}

  /**
   * Queue `records`; resolves once their batch is committed. `add([])` writes everything queued now and
   * resolves once that and every write in flight has settled.
   */
  add(records: readonly TaskRecord[], options: { release?: boolean; lazy?: boolean } = {}): Promise<SaveResult> {
    if (records.length === 0) return this.flush().then(() => undefined);
    let batch: PendingBatch;
    if (options.lazy) {
      batch = this.#lazy ??= this.#open(true);
    } else {
      batch = this.#urgent ??= this.#open(false);
    }
    for (const record of records) {
      batch.records.set(record.id, record);
      if (options.release) batch.released.add(record.id);
    }
    return batch.promise;
  }

  /** Write what is queued now and wait for every write still in flight (drain, orphan checks, close). */
  async flush(): Promise<void> {
    const pending = [this.#take(false), this.#take(true)].filter((batch) => batch !== undefined);
    await Promise.allSettled(pending.map((batch) => this.#flush(batch)));
    await Promise.allSettled([...this.#inFlight]);
  }

  #open(lazy: boolean): PendingBatch {
    const batch = new PendingBatch(lazy);
    batch.timer = lazy
      ? setTimeout(() => void this.#flush(this.#take(true)!), LAZY_WRITE_MS)
      : setImmediate(() => void this.#flush(this.#take(false)!));
    return batch;
  }

  #take(lazy: boolean): PendingBatch | undefined {
    const batch = lazy ? this.#lazy : this.#urgent;
    if (batch === undefined) return undefined;
    if (lazy) this.#lazy = undefined;
    else this.#urgent = undefined;
    clearTimeout(batch.timer as NodeJS.Timeout);
    clearImmediate(batch.timer as NodeJS.Immediate);
    return batch;
  }

  async #flush(batch: PendingBatch): Promise<void> {
    let done: Promise<SaveResult> | undefined;
    try {
      const result = this.write({ records: [...batch.records.values()], released: batch.released, lazy: batch.lazy });
      if (!(result instanceof Promise)) return batch.settle.resolve(result);
      done = result;
      this.#inFlight.add(done);
      batch.settle.resolve(await done);
    } catch (error) {
      batch.settle.reject(error);
    } finally {
      if (done !== undefined) this.#inFlight.delete(done);
    }
  }
}
