import type { StatementSync } from 'node:sqlite';

/** What a record adds to `taskflow_counts`: its name and status, its duration (successes), as stored beside it. */
export interface Counted {
  name: string;
  status: string;
  durationMs: number | null;
}

interface Change {
  name: string;
  status: string;
  le: number;
  count: number;
  sumMs: number;
}

/**
 * The changes one transaction makes to `taskflow_counts` (schema version 4): gathered while records are
 * written, applied by `apply()` before the commit, one row write per name, status and bucket however many
 * records changed. A row is counted as the delete trigger and the version-2 triggers count it: in the bucket
 * of its duration (the first bound at or above it) when it is a success with a duration, else in bucket 0.
 */
export class CountChanges {
  readonly #bounds: readonly number[];
  #changes = new Map<string, Change>();

  /** `bounds`: the upper bounds (ms) of the file's duration buckets, ascending, the last one Infinity. */
  constructor(bounds: readonly number[]) {
    this.#bounds = bounds;
  }

  /** A row that now counts (`sign` 1) or no longer does (-1). */
  add(row: Counted, sign: 1 | -1): void {
    const ms = row.status === 'success' ? row.durationMs : null;
    const le = ms === null ? 0 : this.#bucket(ms);
    const key = `${le} ${row.status} ${row.name}`;
    let change = this.#changes.get(key);
    if (change === undefined) {
      change = { name: row.name, status: row.status, le, count: 0, sumMs: 0 };
      this.#changes.set(key, change);
    }
    change.count += sign;
    if (ms !== null) change.sumMs += sign * ms;
  }

  /** A row rewritten (its name never changes) from `before`: counted again when its status or duration changed. */
  replace(before: Counted, status: string, durationMs: number | null): void {
    if (before.status === status && before.durationMs === durationMs) return;
    this.add(before, -1);
    this.add({ name: before.name, status, durationMs }, 1);
  }

  /** Writes the gathered changes with `upsert()`'s statement (name, status, le, count, sum_ms) and forgets them. */
  apply(upsert: () => StatementSync): void {
    if (this.#changes.size === 0) return;
    const statement = upsert();
    for (const change of this.#changes.values())
      if (change.count !== 0 || change.sumMs !== 0)
        statement.run(change.name, change.status, change.le, change.count, change.sumMs);
    this.clear();
  }

  clear(): void {
    if (this.#changes.size > 0) this.#changes = new Map();
  }

  #bucket(ms: number): number {
    for (const bound of this.#bounds) if (ms <= bound) return bound;
    return Infinity;
  }
}
