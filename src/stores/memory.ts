import { FINAL_STATUSES, type TaskFilter, type TaskRecord, type TaskStore } from '../types.js';
import { compileFilter, matchesFilter } from './filter.js';

export interface MemoryStoreOptions {
  /** Records kept at most; past it the oldest finished records go first. Unfinished ones are never dropped. Default 10 000. */
  maxRecords?: number;
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
  // Ids in the order their tasks ended: eviction takes from the front, so it never scans unfinished records.
  #ended: string[] = [];
  #endedHead = 0;

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
    if (FINAL_STATUSES.has(record.status)) this.#ended.push(record.id);
    if (this.#records.size > this.maxRecords) this.#trim();
  }

  /** The task of a live record has ended: it may now be dropped to keep within `maxRecords`. */
  ended(record: TaskRecord): void {
    this.#ended.push(record.id);
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
    const ended = this.#ended;
    while (this.#records.size > this.maxRecords && this.#endedHead < ended.length) {
      const id = ended[this.#endedHead];
      // Cleared, not just passed: a consumed slot would keep the id alive until the next compaction, and the
      // garbage collector then copies and promotes a young id referenced from this old array, task after task.
      ended[this.#endedHead++] = undefined as unknown as string;
      const record = this.#records.get(id);
      if (record === undefined || !FINAL_STATUSES.has(record.status)) continue;
      this.#records.delete(id);
      if (record.idempotencyKey !== undefined && this.#keys.get(record.idempotencyKey) === id) this.#keys.delete(record.idempotencyKey);
    }
    if (this.#endedHead > 1024 && this.#endedHead * 2 > ended.length) {
      this.#ended = ended.slice(this.#endedHead);
      this.#endedHead = 0;
    }
  }
}
