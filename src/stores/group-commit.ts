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
  /** A lazy batch somebody waits for: written at the end of the turn. */
  soon = false;

  constructor(lazy: boolean) {
    this.lazy = lazy;
    this.promise = new Promise<SaveResult>((resolve, reject) => (this.settle = { resolve, reject }));
    // Callers attach their own handlers; this keeps a write nobody awaits from being an unhandled rejection.
    this.promise.catch(() => {});
  }
}

/**
 * Records one store round trip writes at most (one SQLite transaction, one Lua call): 10–25 ms of work on a
 * loaded 2-core machine (~50 µs a record on SQLite, ~65 µs of Redis time), so a bulk save neither holds the
 * app's thread or Redis for long nor runs past a client's socket timeout, and no argument list grows with it.
 */
export const MAX_BATCH_RECORDS = 200;

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
 * - A batch holds `maxRecords` at most. A save() that does not fit in the open batch closes it; a save()
 *   of up to `maxRecords` records is always written by one round trip (all or nothing), a larger one in
 *   batches of `maxRecords`, in order. Closed batches are written one after another, the event loop
 *   running between two, so a bulk save of any size cannot stall the app.
 *
 * Records are kept by id and serialised when the batch is written, so a record changed several times
 * before its batch goes out (accepted, started, finished) is written once, as it is by then.
 */
export class GroupCommit {
  #urgent: PendingBatch | undefined;
  #lazy: PendingBatch | undefined;
  readonly #inFlight = new Set<Promise<unknown>>();
  /** Full batches, written in order by #drain (one at a time). */
  #closed: (PendingBatch | undefined)[] = [];
  #draining: Promise<void> | undefined;
  /** Batches being written: their records are not the store's until the write has settled. */
  readonly #writing = new Set<PendingBatch>();

  readonly #failure: (error: unknown, records: number) => unknown;
  readonly #maxRecords: number;

  constructor(
    private readonly write: (batch: WriteBatch) => SaveResult | Promise<SaveResult>,
    options: {
      /** What the callers of a failed write get (the store's typed error), whatever the write threw. */
      failure?: (error: unknown, records: number) => unknown;
      /** Records per batch at most. Default MAX_BATCH_RECORDS. */
      maxRecords?: number;
    } = {},
  ) {
    this.#failure = options.failure ?? ((error) => error);
    this.#maxRecords = options.maxRecords ?? MAX_BATCH_RECORDS;
  }

  /**
   * Queue `records`; resolves once their batches are committed. `add([])` writes everything queued now and
   * resolves once that and every write in flight has settled.
   */
  add(
    records: readonly TaskRecord[],
    options: { release?: boolean; lazy?: boolean; soon?: boolean } = {},
  ): Promise<SaveResult> {
    if (records.length === 0) return this.flush().then(() => undefined);
    const lazy = options.lazy === true;
    let batch = lazy ? this.#lazy : this.#urgent;
    // A save that fits in one batch is never split: it is committed, or not, as a whole.
    if (batch !== undefined && batch.records.size + records.length > this.#maxRecords) {
      this.#close(lazy);
      batch = undefined;
    }
    const large = records.length > this.#maxRecords;
    // Batches of a save larger than one batch are all closed, so they are written in order, after the ones before.
    let parts: Promise<SaveResult>[] | undefined;
    for (const record of records) {
      if (batch === undefined || (batch.records.size >= this.#maxRecords && !batch.records.has(record.id))) {
        if (batch !== undefined) this.#close(lazy);
        batch = this.#open(lazy);
        if (lazy) this.#lazy = batch;
        else this.#urgent = batch;
        if (large) (parts ??= []).push(batch.promise);
      }
      batch.records.set(record.id, record);
      if (options.release) batch.released.add(record.id);
    }
    // Somebody waits for this lazy write (a resumed task confirming its start): its batch goes at the end of
    // this turn instead of LAZY_WRITE_MS later, with whatever else it holds by then.
    if (options.soon === true && lazy && parts === undefined) this.#soon(batch!);
    if (parts === undefined) return batch!.promise;
    this.#close(lazy);
    return joined(parts);
  }

  /**
   * The record with this id that a write queued or in flight holds, if any: what the store will have once
   * it lands (a record is serialised when its batch is written, so the newest entry is the one that counts).
   * The store's reads answer it first, so a process reads its own writes. Nothing is kept for this beyond
   * the batches themselves: an entry goes when its batch's write settles.
   */
  queued(id: string): TaskRecord | undefined {
    const found = this.#lazy?.records.get(id) ?? this.#urgent?.records.get(id);
    if (found !== undefined) return found;
    for (let i = this.#closed.length - 1; i >= 0; i--) {
      const record = this.#closed[i]?.records.get(id);
      if (record !== undefined) return record;
    }
    for (const batch of this.#writing) {
      const record = batch.records.get(id);
      if (record !== undefined) return record;
    }
    return undefined;
  }

  /**
   * Write the open batch of status changes now and wait for the writes in flight: what a read of this
   * process's own changes needs (list, metrics), without waiting behind the closed batches of a bulk save.
   */
  async flushChanges(): Promise<void> {
    await this.#flush(this.#take(true));
    await Promise.allSettled([...this.#inFlight]);
  }

  /** Write what is queued now and wait for every write still in flight (drain, orphan checks, close). */
  async flush(): Promise<void> {
    const open = [this.#take(false), this.#take(true)].filter((batch) => batch !== undefined);
    if (this.#draining === undefined) {
      // Nothing closed is waiting: the open batches are written now, as they always were.
      await Promise.allSettled(open.map((batch) => this.#flush(batch)));
    } else {
      // After the closed batches before them, in order.
      this.#closed.push(...open);
      await this.#draining;
    }
    await Promise.allSettled([...this.#inFlight]);
  }

  #open(lazy: boolean): PendingBatch {
    const batch = new PendingBatch(lazy);
    batch.timer = lazy
      ? setTimeout(() => void this.#flush(this.#take(true)), LAZY_WRITE_MS)
      : setImmediate(() => void this.#flush(this.#take(false)));
    return batch;
  }

  #soon(batch: PendingBatch): void {
    if (batch !== this.#lazy || batch.soon) return;
    batch.soon = true;
    clearTimeout(batch.timer as NodeJS.Timeout);
    batch.timer = setImmediate(() => void this.#flush(this.#take(true)));
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

  /** The open batch of that kind takes no more records: it is written after the batches closed before it. */
  #close(lazy: boolean): void {
    const batch = this.#take(lazy);
    if (batch === undefined) return;
    this.#closed.push(batch);
    this.#draining ??= this.#drain();
  }

  async #drain(): Promise<void> {
    // A closed batch waits for the end of this turn, as an urgent one does: its caller may still be adding.
    // #flush never throws (it settles its batch whatever happens), so every batch queued here is written.
    for (let i = 0; i < this.#closed.length; i++) {
      await new Promise((resolve) => setImmediate(resolve));
      const batch = this.#closed[i];
      this.#closed[i] = undefined;
      await this.#flush(batch);
    }
    this.#closed = [];
    this.#draining = undefined;
  }

  /** Writes `batch` and settles its promise, whatever `write` does: every waiter gets an answer. */
  async #flush(batch: PendingBatch | undefined): Promise<void> {
    if (batch === undefined) return;
    let done: Promise<SaveResult> | undefined;
    this.#writing.add(batch);
    try {
      const result = this.write({ records: [...batch.records.values()], released: batch.released, lazy: batch.lazy });
      if (!(result instanceof Promise)) return batch.settle.resolve(result);
      done = result;
      this.#inFlight.add(done);
      batch.settle.resolve(await done);
    } catch (error) {
      batch.settle.reject(this.#typed(error, batch.records.size));
    } finally {
      this.#writing.delete(batch);
      if (done !== undefined) this.#inFlight.delete(done);
    }
  }

  #typed(error: unknown, records: number): unknown {
    try {
      return this.#failure(error, records);
    } catch (thrown) {
      return thrown;
    }
  }
}

/** Resolves once every part has, with the duplicates all of them reported; rejects with the first failure. */
function joined(parts: readonly Promise<SaveResult>[]): Promise<SaveResult> {
  return new Promise<SaveResult>((resolve, reject) => {
    let left = parts.length;
    let duplicates: Map<string, string> | undefined;
    for (const part of parts) {
      part.then((result) => {
        if (result !== undefined) for (const [id, holder] of result) (duplicates ??= new Map()).set(id, holder);
        if (--left === 0) resolve(duplicates);
      }, reject);
    }
  });
}
