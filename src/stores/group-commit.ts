import type { SaveResult, TaskRecord } from '../types.js';

/** The records of one flush; `released` ids are written as unowned pending work. */
export interface WriteBatch {
  records: TaskRecord[];
  released: ReadonlySet<string>;
}

/**
 * Group commit: every write asked for in one event-loop turn goes out together, in one transaction
 * (SQLite) or one round trip (Redis), and every caller awaits that same write. A request never pays for a
 * commit of its own, and the commit cost is shared by all the requests served in that turn.
 *
 * Records are kept by id and serialised when the batch is written, so a record changed several times in
 * a turn (accepted, then started, then finished) is written once, as it is by then.
 */
export class GroupCommit {
  #records = new Map<string, TaskRecord>();
  #released = new Set<string>();
  #settle: { resolve(result: SaveResult): void; reject(error: unknown): void } | undefined;
  #promise: Promise<SaveResult> | undefined;
  #timer: NodeJS.Immediate | undefined;
  readonly #inFlight = new Set<Promise<unknown>>();

  constructor(private readonly write: (batch: WriteBatch) => SaveResult | Promise<SaveResult>) {}

  /** Queue `records` for this turn's write; resolves once it is committed. `add([])` waits for what is queued or in flight. */
  add(records: readonly TaskRecord[], release = false): Promise<SaveResult> {
    for (const record of records) {
      this.#records.set(record.id, record);
      if (release) this.#released.add(record.id);
    }
    if (this.#promise === undefined) {
      this.#promise = new Promise<SaveResult>((resolve, reject) => (this.#settle = { resolve, reject }));
      // Callers attach their own handlers; this keeps a write nobody awaits from being an unhandled rejection.
      this.#promise.catch(() => {});
      this.#timer = setImmediate(() => void this.#flush());
    }
    return this.#promise;
  }

  /** Write what is queued now and wait for every write still in flight (close). */
  async flush(): Promise<void> {
    if (this.#timer !== undefined) {
      clearImmediate(this.#timer);
      await this.#flush();
    }
    await Promise.allSettled([...this.#inFlight]);
  }

  async #flush(): Promise<void> {
    const settle = this.#settle!;
    const batch: WriteBatch = { records: [...this.#records.values()], released: this.#released };
    this.#records = new Map();
    this.#released = new Set();
    this.#settle = undefined;
    this.#promise = undefined;
    this.#timer = undefined;
    let done: Promise<SaveResult> | undefined;
    if (batch.records.length === 0) {
      await Promise.allSettled([...this.#inFlight]);
      return settle.resolve(undefined);
    }
    try {
      const result = this.write(batch);
      if (!(result instanceof Promise)) return settle.resolve(result);
      done = result;
      this.#inFlight.add(done);
      settle.resolve(await done);
    } catch (error) {
      settle.reject(error);
    } finally {
      if (done !== undefined) this.#inFlight.delete(done);
    }
  }
}
