import { DEAD_LETTER_STATUSES, FINAL_STATUSES, type TaskFilter, type TaskRecord, type TaskStore } from '../types.js';
import { compileFilter, matchesFilter } from './filter.js';

export interface MemoryStoreOptions {
  /**
   * Records kept at most. Past it the oldest successes (and cancellations) go first; failed and interrupted
   * records (the dead letters) only when no other finished record is left, oldest first. Unfinished ones
   * are never dropped. Default 10 000.
   */
  maxRecords?: number;
}

/**
 * Ids in the order their tasks ended: eviction takes from the front, so it never scans unfinished records.
 * Consumed slots are cleared, not just passed: a consumed slot would keep the id alive until the next
 * compaction, and the garbage collector then copies and promotes a young id referenced from this old array,
 * task after task.
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

/**
 * The default store: records live in this process only. It keeps the live record objects, so the runner's
 * updates are visible without a write.
 */
export class MemoryStore implements TaskStore {
  readonly durable = false;
  readonly maxRecords: number;
  readonly #records = new Map<string, TaskRecord>();
  readonly #keys = new Map<string, string>();
  // Two queues, so that evicting a success never walks past the failures kept before it.
  readonly #ended = new EndedQueue();
  readonly #dead = new EndedQueue();

  constructor(options: MemoryStoreOptions = {}) {
    const maxRecords = options.maxRecords ?? 10_000;
    if (!Number.isInteger(maxRecords) || maxRecords < 1) {
      throw new RangeError(`MemoryStore: option "maxRecords" must be a positive integer, got ${JSON.stringify(options.maxRecords)}`);
    }
    this.maxRecords = maxRecords;
  }

  async save(records: TaskRecord[]): Promise<void> {
    this.saveNow(records);
  }

  /** Synchronous `save`, used by the manager to make a record visible the moment its task is accepted. */
  saveNow(records: TaskRecord[]): void {
    for (const record of records) this.saveOne(record);
  }

  saveOne(record: TaskRecord): void {
    this.#records.set(record.id, record);
    if (FINAL_STATUSES.has(record.status)) this.ended(record);
    else if (this.#records.size > this.maxRecords) this.#trim();
  }

  /** The task of a live record has ended: it may now be dropped to keep within `maxRecords`. */
  ended(record: TaskRecord): void {
    (DEAD_LETTER_STATUSES.has(record.status) ? this.#dead : this.#ended).push(record.id);
    if (this.#records.size > this.maxRecords) this.#trim();
  }

  async get(id: string): Promise<TaskRecord | undefined> {
    return this.#records.get(id);
  }

  async list(filter?: TaskFilter): Promise<TaskRecord[]> {
    const f = compileFilter(filter);
    const all = [...this.#records.values()];
    const out: TaskRecord[] = [];
    // Insertion order is creation order: walk backwards for newest first.
    for (let i = all.length - 1; i >= 0 && out.length < f.limit; i--) {
      if (matchesFilter(all[i], f)) out.push(all[i]);
    }
    return out;
  }

  async claimKey(key: string, id: string): Promise<string | undefined> {
    return this.claimKeyNow(key, id);
  }

  /** Synchronous `claimKey`. */
  claimKeyNow(key: string, id: string): string | undefined {
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
    this.#evictFrom(this.#ended);
    // Only failures (and unfinished tasks) left: the oldest failure goes, or the store would grow without bound.
    this.#evictFrom(this.#dead);
  }

  #evictFrom(queue: EndedQueue): void {
    while (this.#records.size > this.maxRecords) {
      const id = queue.shift();
      if (id === undefined) return;
      const record = this.#records.get(id);
      if (record === undefined || !FINAL_STATUSES.has(record.status)) continue;
      this.#records.delete(id);
      if (record.idempotencyKey !== undefined && this.#keys.get(record.idempotencyKey) === id) this.#keys.delete(record.idempotencyKey);
    }
  }
}
