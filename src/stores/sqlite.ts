import { accessSync, constants } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { DatabaseSync, StatementSync } from 'node:sqlite';
import { DatabaseSync as Database } from './node-sqlite.js';
import { TaskflowError, TaskStoreError, TaskStoreUnavailableError } from '../errors.js';
import { metricsFromBuckets, type DurationBucket, type StatusCount } from '../metrics.js';
import {
  DEAD_LETTER_STATUSES,
  FINAL_STATUSES,
  type CancelRequest,
  type SaveResult,
  type StoreMetrics,
  type TaskFilter,
  type TaskRecord,
  type TaskStatus,
  type TaskStore,
} from '../types.js';
import { checkKnownKeys, numberError, optionError } from '../options.js';
import { compileFilter } from './filter.js';
import { CountChanges, type Counted } from './sqlite-counts.js';
import { GroupCommittedStore, type OrphanBatch } from './durable-store.js';
import type { WriteBatch } from './group-commit.js';
import { listQuery } from './sqlite-list.js';
import { SqliteWorker, type ReadQuery } from './sqlite-worker.js';
import { MIGRATIONS } from './sqlite-schema.js';
import { serialiseRecord, retentionCutoff, validateFailedRetentionDays, validateRetentionDays } from './records.js';

export interface SqliteStoreOptions {
  /** The database file (created when missing). Several processes on one host may share it. */
  path: string;
  /**
   * `'NORMAL'` (default): in WAL mode a commit survives a crash or kill of the process; a power loss or OS
   * crash may lose the last commits. `'FULL'`: every commit is fsynced before it is acknowledged, at the
   * cost of one disk flush per group commit.
   */
  synchronous?: 'NORMAL' | 'FULL';
  /** Days finished records (and their idempotency keys) are kept. Default 7. */
  retentionDays?: number;
  /** Days failed and interrupted records (the dead letters) are kept; at least `retentionDays`. Default twice `retentionDays`. */
  failedRetentionDays?: number;
  /** How long a write waits for another process holding the database lock. Default 5 000 ms. */
  busyTimeoutMs?: number;
}

export const SQLITE_SCHEMA_VERSION = MIGRATIONS.length;

const SQLITE_STORE_OPTIONS = new Set(['path', 'synchronous', 'retentionDays', 'failedRetentionDays', 'busyTimeoutMs']);

/** Retention runs at open and then this often (more often when records are kept less than twice as long). */
const CLEANUP_EVERY_MS = 60_000;
/** Retention deletes this many records per transaction. */
const EXPIRE_BATCH = 200;

/**
 * A durable store in one SQLite file on the built-in `node:sqlite` (no native addon). WAL mode; the
 * writes of one event-loop turn share one transaction (group commit); records are JSON with the columns
 * that filters and recovery need beside them, indexed.
 *
 * Acceptances (the writes a response waits for) are appended to `taskflow_log`, a table with no index but
 * its rowid: a commit then writes one or two pages, where an insert into `taskflow_tasks` dirties a page of
 * the id index at a random place per record (ids are random UUIDs), each a 4 KiB WAL frame. The log is
 * folded into `taskflow_tasks` by the next lazy write (within 50 ms, by then usually with the task's end,
 * so most tasks are indexed once, as finished), and by anything that reads or claims: every transaction
 * that writes `taskflow_tasks` folds the log first, so a logged row is always newer than the indexed one.
 */
export class SqliteStore extends GroupCommittedStore implements TaskStore {
  readonly path: string;
  readonly retentionDays: number;
  readonly failedRetentionDays: number;
  /** The `synchronous` level the connection runs with, as read back from SQLite. */
  readonly synchronous: 'NORMAL' | 'FULL';
  readonly #db: DatabaseSync;
  readonly #statements = new Map<string, StatementSync>();
  // Ids of unfinished tasks whose tags are stored: tags never change, so they are written once.
  readonly #tagged = new Set<string>();
  // This process's rows in taskflow_log by task id: a lazy write of the same task deletes its logged row
  // (the record it writes is newer) instead of indexing the task twice, once pending and once ended.
  readonly #logged = new Map<string, number | bigint>();
  // What the open transaction changes in taskflow_counts, written before its commit (see sqlite-counts.ts).
  readonly #counts: CountChanges;
  #leaseRenewedAt = -Infinity;
  // Admin reads (list, metrics) and retention run there, off the app's thread; none for ':memory:'.
  readonly #worker: SqliteWorker | undefined;
  #retention: Promise<void> | undefined;
  readonly #retentionTimer: NodeJS.Timeout;

  constructor(options: SqliteStoreOptions) {
    super();
    const where = 'SqliteStore';
    if (options === null || typeof options !== 'object')
      throw new TypeError(`${where}: options must be an object with a "path"`);
    checkKnownKeys(where, options, SQLITE_STORE_OPTIONS);
    const { path, synchronous = 'NORMAL', busyTimeoutMs = 5_000 } = options;
    if (typeof path !== 'string' || path === '') throw optionError(where, 'path', 'a non-empty file path', path);
    if (synchronous !== 'NORMAL' && synchronous !== 'FULL')
      throw optionError(where, 'synchronous', '"NORMAL" or "FULL"', synchronous);
    if (!Number.isInteger(busyTimeoutMs) || busyTimeoutMs < 0)
      throw numberError(where, 'busyTimeoutMs', 'an integer >= 0', busyTimeoutMs);
    this.retentionDays = validateRetentionDays(where, options.retentionDays);
    this.failedRetentionDays = validateFailedRetentionDays(where, options.failedRetentionDays, this.retentionDays);
    this.path = path;
    let db: DatabaseSync | undefined;
    try {
      db = new Database(path);
      db.exec(`PRAGMA busy_timeout = ${busyTimeoutMs}`);
      // Read first: a file the store refuses (another application's, a newer schema) is left byte for byte as
      // it was, before WAL mode (which rewrites the header and leaves -wal and -shm files beside it).
      checkSchema(db, path);
      const mode = db.prepare('PRAGMA journal_mode = WAL').get() as { journal_mode: string };
      if (mode.journal_mode !== 'wal' && path !== ':memory:')
        throw new Error(`could not switch to WAL mode (got ${mode.journal_mode})`);
      db.exec(`PRAGMA synchronous = ${synchronous}`);
      // A statement that fires a trigger (retention's deletes; every write up to schema version 3) changes
      // two tables, so SQLite keeps a statement journal to undo it alone; on a temporary file that was ~14
      // page writes (pwrite64) per task (issue 16). In memory it is a copy of each page the statement
      // changes, and the WAL still makes each commit crash-safe.
      db.exec('PRAGMA temp_store = MEMORY');
      const level = (db.prepare('PRAGMA synchronous').get() as { synchronous: number }).synchronous;
      this.synchronous = level === 2 ? 'FULL' : 'NORMAL';
      migrate(db, path);
      const bounds = db.prepare('SELECT le FROM taskflow_buckets ORDER BY le').all() as { le: number }[];
      this.#counts = new CountChanges(bounds.map((row) => row.le));
    } catch (error) {
      try {
        db?.close();
      } catch {
        // already unusable; the open error below is the one worth reporting
      }
      throw openError(path, error);
    }
    this.#db = db;
    this.#worker = path === ':memory:' ? undefined : new SqliteWorker(path, busyTimeoutMs);
    this.#expireSoon();
    const every = Math.max(250, Math.min(CLEANUP_EVERY_MS, (this.retentionDays * 86_400_000) / 2));
    this.#retentionTimer = setInterval(() => this.#expireSoon(), every).unref();
  }

  protected async read(id: string): Promise<TaskRecord | undefined> {
    this.#foldLogIfAny();
    // An id that lost an idempotency claim follows the task holding the key.
    const row = this.#read(
      () =>
        (this.#statement('SELECT id, record FROM taskflow_tasks WHERE id = ?').get(id) ??
          this.#statement(
            'SELECT t.id, t.record FROM taskflow_aliases a JOIN taskflow_tasks t ON t.id = a.task_id WHERE a.id = ?',
          ).get(id)) as Row | undefined,
    );
    return row && this.getRecord(row.id, row.record);
  }

  /** Read on the worker thread, through the index that serves the filter's shape (see sqlite-list.ts). */
  async list(filter?: TaskFilter): Promise<TaskRecord[]> {
    const f = compileFilter(filter);
    if (f.limit === 0) return [];
    // This process's status changes land first: a list shows what get() answers (see GroupCommittedStore.get).
    await this.commit.flushChanges();
    this.#foldLogIfAny();
    const out: TaskRecord[] = [];
    if (f.limit === Infinity) {
      await this.#rows(listQuery(f, -1, 0), (rows) => void this.#readRows(rows, out));
      return out;
    }
    // A record that cannot be read is skipped: the rows after the page take its place.
    for (let offset = 0; out.length < f.limit;) {
      const wanted = f.limit - out.length;
      let read = 0;
      await this.#rows(listQuery(f, wanted, offset), (rows) => {
        read += rows.length;
        this.#readRows(rows, out);
      });
      if (read < wanted) break;
      offset += read;
    }
    return out;
  }

  /** Appends the records of `rows` to `out`, but those that cannot be read (skipped and reported). */
  #readRows(rows: Row[], out: TaskRecord[], keepUnreadableArgs = false): TaskRecord[] {
    for (const row of rows) {
      const record = this.readRecord(row.id, row.record, keepUnreadableArgs);
      if (record !== undefined) out.push(record);
    }
    return out;
  }

  /**
   * From the counts and duration histograms the triggers keep beside the records (see sqlite-schema.ts): a
   * few rows per task name, however long the history. They count by the columns stored beside each record,
   * so a record whose JSON is damaged still counts by its status and name.
   */
  async metrics(): Promise<StoreMetrics> {
    await this.commit.flushChanges();
    this.#foldLogIfAny();
    const [rows] = await this.#all([
      { sql: 'SELECT name, status, le, count, sum_ms AS sumMs FROM taskflow_counts WHERE count > 0', params: [] },
    ]);
    const counts: StatusCount[] = [];
    const buckets: DurationBucket[] = [];
    for (const row of rows as (StatusCount & DurationBucket)[]) {
      counts.push(row);
      if (row.le !== 0) buckets.push(row);
    }
    return metricsFromBuckets(counts, buckets);
  }

  /** Admin reads: on the worker thread, else (':memory:') here. */
  async #all(queries: ReadQuery[]): Promise<unknown[][]> {
    if (this.#worker === undefined)
      return this.#read(() => queries.map((q) => this.#statement(q.sql).all(...q.params)));
    try {
      return await this.#worker.all(queries);
    } catch (error) {
      throw this.#workerError(error);
    }
  }

  async #rows(query: ReadQuery, onRows: (rows: Row[]) => void): Promise<void> {
    if (this.#worker === undefined)
      return onRows(this.#read(() => this.#statement(query.sql).all(...query.params) as unknown as Row[]));
    try {
      await this.#worker.rows(query, (rows) => onRows(rows as Row[]));
    } catch (error) {
      throw this.#workerError(error);
    }
  }

  /**
   * What a read on the worker thread failed with, as a TaskflowError: an SQLite error as on this thread; a
   * read that close() stopped, or whose thread died, is an unavailable store.
   */
  #workerError(error: unknown): TaskflowError {
    if (error instanceof TaskflowError) return error;
    if (this.closed !== undefined)
      return new TaskStoreUnavailableError('SqliteStore: the store is closed', { cause: error });
    const mapped = runtimeError(this.path, error);
    if (mapped instanceof TaskflowError) return mapped;
    return new TaskStoreUnavailableError(`SqliteStore: "${this.path}": ${messageOf(error)}`, { cause: error });
  }

  async claimKey(key: string, id: string): Promise<string | undefined> {
    return this.#transaction(() => {
      this.#foldLog();
      return this.#claimKeyIn(key, id);
    });
  }

  async claimOrphans(ownerId: string, leaseMs: number): Promise<TaskRecord[]> {
    await this.commit.flush();
    return this.claimInBatches((limit) => Promise.resolve(this.#claimOrphanBatch(ownerId, leaseMs, limit)));
  }

  /** One transaction: at most `limit` orphans (one synchronous statement of 100 000 held the app's thread). */
  #claimOrphanBatch(ownerId: string, leaseMs: number, limit: number): OrphanBatch {
    const now = Date.now();
    const rows = this.#transaction(() => {
      // Acceptances of a process that died before its log was folded are found like any other orphan.
      this.#foldLog();
      this.#renew(ownerId, now + leaseMs);
      this.#statement('DELETE FROM taskflow_owners WHERE lease_until < ?').run(now);
      // Served by the status index: only unfinished rows are visited, however many finished ones are kept.
      return this.#statement(
        `UPDATE taskflow_tasks SET owner = ?
           WHERE id IN (SELECT id FROM taskflow_tasks
             WHERE status IN ('pending', 'running') AND (owner IS NULL OR owner NOT IN (SELECT id FROM taskflow_owners))
             LIMIT ?)
           RETURNING id, record, cancel_reason AS cancel`,
      ).all(ownerId, limit) as unknown as (Row & { cancel: string | null })[];
    });
    if (ownerId === this.ownerId) this.#leaseRenewedAt = now;
    // A record that cannot be read stays claimed by this owner, untouched: it is reported once and not
    // looked at again until this owner is gone.
    const records = this.#readRows(rows, [], true);
    const cancels = new Map(rows.filter((row) => row.cancel !== null).map((row) => [row.id, row.cancel!]));
    if (cancels.size > 0) for (const record of records) record.cancelRequested = cancels.get(record.id);
    return { records, taken: rows.length };
  }

  /** Renews the lease and, in the same transaction, reads the cancel requests on this owner's unfinished tasks. */
  async renewLease(): Promise<CancelRequest[] | undefined> {
    if (this.ownerId === '' || this.closed !== undefined) return undefined;
    const now = Date.now();
    const requests = this.#read(() => {
      this.#renew(this.ownerId, now + this.leaseMs);
      return this.#statement(
        `SELECT id, cancel_reason AS reason FROM taskflow_tasks
           WHERE owner = ? AND cancel_reason IS NOT NULL AND status IN ('pending', 'running')`,
      ).all(this.ownerId) as unknown as CancelRequest[];
    });
    // node:sqlite rows have a null prototype: plain objects for the caller.
    this.#leaseRenewedAt = now;
    return requests.map(({ id, reason }) => ({ id, reason }));
  }

  /** One UPDATE, only while the task is unfinished; the holder reads it with its next lease renewal. */
  async requestCancel(id: string, reason: string): Promise<boolean> {
    await this.commit.flush();
    return this.#transaction(() => {
      // A task accepted moments ago may still be in the log: folded first, so the request finds its row.
      this.#foldLog();
      const { changes } = this.#statement(
        `UPDATE taskflow_tasks SET cancel_reason = coalesce(cancel_reason, ?)
           WHERE id = ? AND status IN ('pending', 'running')`,
      ).run(reason, id);
      return Number(changes) > 0;
    });
  }

  /** Writes what is queued, gives up this process's lease (its unfinished tasks become claimable at once), closes the file. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      clearInterval(this.#retentionTimer);
      // A retention pass under way stops with the worker (its open batch rolls back); the next one resumes.
      let failure: { error: unknown } | undefined;
      try {
        await this.#worker?.close();
        await this.#retention;
        await this.commit.flush();
        this.#foldLogIfAny();
        // When this write fails (a full disk), the row stays behind as a crashed process's does: the lease
        // expires and recovery in another instance or the next start claims this process's unfinished tasks.
        if (this.ownerId !== '')
          this.#read(() => this.#statement('DELETE FROM taskflow_owners WHERE id = ?').run(this.ownerId));
      } catch (error) {
        failure = { error };
      }
      // The file is closed whatever failed above; close() then rejects with the TaskflowError saying why.
      this.#statements.clear();
      try {
        this.#db.close();
      } catch (error) {
        failure ??= { error: runtimeError(this.path, error) };
      }
      if (failure !== undefined) throw failure.error;
    })();
    return this.closed;
  }

  protected write({ records, released, lazy }: WriteBatch): SaveResult {
    // An idempotency claim looks up its holder in taskflow_tasks: a batch with keys is indexed at once.
    if (!lazy && !records.some((r) => r.idempotencyKey !== undefined)) return this.#append(records, released);
    let duplicates: Map<string, string> | undefined;
    const now = Date.now();
    const insertTag = this.#statement(
      'INSERT OR IGNORE INTO taskflow_tags (task_id, key, value, created_at) VALUES (?, ?, ?, ?)',
    );
    const exists = this.#statement('SELECT 1 AS found FROM taskflow_tasks WHERE id = ?');
    const insertAlias = this.#statement(
      'INSERT OR REPLACE INTO taskflow_aliases (id, task_id, created_at) VALUES (?, ?, ?)',
    );
    this.#transaction(() => {
      this.#renewWithWrite(now);
      if (this.#logged.size > 0) {
        // The id too: another process folding the log empties it, and seq numbers then start again.
        const unlog = this.#statement('DELETE FROM taskflow_log WHERE seq = ? AND id = ?');
        for (const record of records) {
          const seq = this.#logged.get(record.id);
          if (seq !== undefined) unlog.run(seq, record.id);
        }
      }
      this.#foldLog();
      for (const record of records) {
        const key = record.idempotencyKey;
        if (key !== undefined && exists.get(record.id) === undefined) {
          const holder = this.#claimKeyIn(key, record.id);
          if (holder !== undefined) {
            insertAlias.run(record.id, holder, now);
            (duplicates ??= new Map()).set(record.id, holder);
            continue;
          }
        }
        const unfinished = record.status === 'pending' || record.status === 'running';
        const owner = unfinished && !released.has(record.id) ? this.ownerId || null : null;
        this.#putRow({
          id: record.id,
          name: record.name,
          status: record.status,
          created_at: record.createdAt,
          ended_at: record.endedAt ?? null,
          owner,
          idempotency_key: key ?? null,
          record: serialiseRecord(record, this.argsCipher),
          duration_ms: durationOf(record),
        });
        if (!this.#tagged.has(record.id)) {
          for (const tag in record.tags) insertTag.run(record.id, tag, record.tags[tag], record.createdAt);
          if (unfinished) this.#tagged.add(record.id);
        } else if (!unfinished) {
          this.#tagged.delete(record.id);
        }
      }
    });
    return duplicates;
  }

  /** Acceptances: appended to the log in one transaction (see the class comment). */
  #append(records: TaskRecord[], released: ReadonlySet<string>): SaveResult {
    const now = Date.now();
    const append = this.#statement(
      'INSERT INTO taskflow_log (id, name, status, created_at, ended_at, owner, record, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
    );
    this.#transaction(() => {
      this.#renewWithWrite(now);
      for (const record of records) {
        const unfinished = record.status === 'pending' || record.status === 'running';
        const owner = unfinished && !released.has(record.id) ? this.ownerId || null : null;
        const { lastInsertRowid } = append.run(
          record.id,
          record.name,
          record.status,
          record.createdAt,
          record.endedAt ?? null,
          owner,
          serialiseRecord(record, this.argsCipher),
          durationOf(record),
        );
        this.#logged.set(record.id, lastInsertRowid);
      }
    });
    return undefined;
  }

  /**
   * Inside a transaction: move every logged row (any process's) into taskflow_tasks, in the order they were
   * written, with their tags.
   */
  #foldLog(): void {
    const logged = this.#statement(
      `SELECT id, name, status, created_at, ended_at, owner, NULL AS idempotency_key, record, duration_ms
         FROM taskflow_log ORDER BY seq`,
    ).iterate() as Iterable<TaskRow>;
    for (const row of logged) this.#putRow(row);
    // json_each fails on text that is not JSON: a damaged row must not stop the fold (it is skipped when read).
    this.#statement(
      `INSERT OR IGNORE INTO taskflow_tags (task_id, key, value, created_at)
         SELECT l.id, t.key, t.value, l.created_at
           FROM taskflow_log l, json_each(CASE WHEN json_valid(l.record) THEN l.record ELSE '{}' END, '$.tags') t`,
    ).run();
    this.#statement('DELETE FROM taskflow_log').run();
    this.#logged.clear();
  }

  /**
   * Inside a transaction: `row` inserted into taskflow_tasks, or the row of its id rewritten (its status, end,
   * owner, record and duration: a task's name, creation and key never change), and counted. One table per
   * statement, so SQLite keeps no statement journal (see sqlite-schema.ts, version 4).
   */
  #putRow(row: TaskRow): void {
    const { changes } = this.#statement(
      `INSERT INTO taskflow_tasks (id, name, status, created_at, ended_at, owner, idempotency_key, record, duration_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
    ).run(
      row.id,
      row.name,
      row.status,
      row.created_at,
      row.ended_at,
      row.owner,
      row.idempotency_key,
      row.record,
      row.duration_ms,
    );
    if (Number(changes) > 0)
      return this.#counts.add({ name: row.name, status: row.status, durationMs: row.duration_ms }, 1);
    const before = this.#statement(
      'SELECT name, status, duration_ms AS durationMs FROM taskflow_tasks WHERE id = ?',
    ).get(row.id) as unknown as Counted;
    this.#statement(
      'UPDATE taskflow_tasks SET status = ?, ended_at = ?, owner = ?, record = ?, duration_ms = ? WHERE id = ?',
    ).run(row.status, row.ended_at, row.owner, row.record, row.duration_ms, row.id);
    this.#counts.replace(before, row.status, row.duration_ms);
  }

  /** Readers fold first (a write, so only when there is something to fold): they see what was acknowledged. */
  #foldLogIfAny(): void {
    if (this.#read(() => this.#statement('SELECT 1 AS found FROM taskflow_log LIMIT 1').get()) !== undefined)
      this.#transaction(() => this.#foldLog());
  }

  /** Inside a transaction: the owner's lease travels with its writes, so tasks are covered from their first write on. */
  #renewWithWrite(now: number): void {
    if (this.ownerId !== '' && now - this.#leaseRenewedAt >= this.leaseMs / 3) {
      this.#renew(this.ownerId, now + this.leaseMs);
      this.#leaseRenewedAt = now;
    }
  }

  /** Inside a transaction: the holder's id if `key` is held by another task that has not failed, else take it. */
  #claimKeyIn(key: string, id: string): string | undefined {
    const row = this.#statement(
      'SELECT k.task_id AS holder, t.status AS status FROM taskflow_keys k LEFT JOIN taskflow_tasks t ON t.id = k.task_id WHERE k.key = ?',
    ).get(key) as { holder: string; status: string | null } | undefined;
    if (row !== undefined && row.holder !== id && row.status !== null && row.status !== 'failed') return row.holder;
    this.#statement(
      'INSERT INTO taskflow_keys (key, task_id) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET task_id = excluded.task_id',
    ).run(key, id);
    return undefined;
  }

  #renew(ownerId: string, until: number): void {
    this.#statement(
      'INSERT INTO taskflow_owners (id, lease_until) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until',
    ).run(ownerId, until);
  }

  /** Starts a retention pass unless one is under way. */
  #expireSoon(): void {
    if (this.#retention !== undefined || this.closed !== undefined) return;
    this.#retention = this.#expire(Date.now())
      .catch(() => {
        // Tried again at the next interval (a lock held by another process, a full disk): nothing is lost.
      })
      .finally(() => (this.#retention = undefined));
  }

  /**
   * Deletes expired records EXPIRE_BATCH at a time, one short transaction each, until none is left: a pass
   * keeps up with any rate of writes. On the worker thread (on this one, the event loop running between
   * two batches, for ':memory:'). The triggers take their tags, idempotency keys and counts with them.
   */
  async #expire(now: number): Promise<void> {
    const cutoff = retentionCutoff(now, this.retentionDays);
    const failedCutoff = retentionCutoff(now, this.failedRetentionDays);
    // A task ends after it is created: the created_at condition lets the status index find the candidates
    // of one status in order (one index fewer to maintain on every write than an index on ended_at).
    const expire = `DELETE FROM taskflow_tasks WHERE rowid IN
      (SELECT rowid FROM taskflow_tasks WHERE status = ?1 AND created_at < ?2 AND ended_at < ?2 LIMIT ${EXPIRE_BATCH})`;
    const statements: ReadQuery[] = [...this.#expiry(cutoff, failedCutoff)].map(([status, before]) => ({
      sql: expire,
      params: [status, before],
    }));
    statements.push({
      sql: `DELETE FROM taskflow_aliases WHERE id IN (SELECT id FROM taskflow_aliases WHERE created_at < ? LIMIT ${EXPIRE_BATCH})`,
      params: [cutoff],
    });
    if (this.#worker !== undefined) {
      await this.#worker.expire(statements, EXPIRE_BATCH);
      return;
    }
    for (const { sql, params } of statements) {
      for (;;) {
        if (this.closed !== undefined) return;
        const deleted = this.#transaction(() => this.#statement(sql).run(...params).changes);
        if (Number(deleted) < EXPIRE_BATCH) break;
        await new Promise((resolve) => setImmediate(resolve));
      }
    }
  }

  /** The final statuses and when their records expire: dead letters (failed, interrupted) at the older cutoff. */
  *#expiry(cutoff: number, failedCutoff: number): Iterable<[TaskStatus, number]> {
    for (const status of FINAL_STATUSES) yield [status, DEAD_LETTER_STATUSES.has(status) ? failedCutoff : cutoff];
  }

  #transaction<T>(body: () => T): T {
    return this.#read(() => {
      // IMMEDIATE takes the write lock up front: two processes never both read, then both try to upgrade.
      this.#db.exec('BEGIN IMMEDIATE');
      try {
        const result = body();
        this.#counts.apply(() =>
          this.#statement(
            `INSERT INTO taskflow_counts (name, status, le, count, sum_ms) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (name, status, le) DO UPDATE SET count = count + excluded.count, sum_ms = sum_ms + excluded.sum_ms`,
          ),
        );
        this.#db.exec('COMMIT');
        return result;
      } catch (error) {
        this.#counts.clear();
        try {
          if (this.#db.isTransaction) this.#db.exec('ROLLBACK');
        } catch {
          // SQLite rolls back by itself when it cannot (a full disk, an I/O error); the first error says why
        }
        throw error;
      }
    });
  }

  /** Runs `body`; an SQLite error comes out as the TaskflowError saying what is wrong with the file (see `runtimeError`). */
  #read<T>(body: () => T): T {
    try {
      return body();
    } catch (error) {
      // A call after close() meets node:sqlite's "database is not open": a closed store is unavailable, as
      // its save() says and RedisStore's calls do (docs/errors.md), not an error of the file.
      if (!this.#db.isOpen) throw new TaskStoreUnavailableError('SqliteStore: the store is closed', { cause: error });
      throw runtimeError(this.path, error);
    }
  }

  #statement(sql: string): StatementSync {
    let statement = this.#statements.get(sql);
    if (statement === undefined) {
      statement = this.#read(() => this.#db.prepare(sql));
      // Filters build a few shapes of SQL; a bound keeps a misuse from growing the cache forever.
      if (this.#statements.size < 256) this.#statements.set(sql, statement);
    }
    return statement;
  }
}

interface Row {
  id: string;
  record: unknown;
}

// SQLite's primary result codes (https://sqlite.org/rescode.html) that say what is wrong with a file.
const SQLITE_PERM = 3;
const SQLITE_BUSY = 5;
const SQLITE_LOCKED = 6;
const SQLITE_NOMEM = 7;
const SQLITE_READONLY = 8;
const SQLITE_IOERR = 10;
const SQLITE_CORRUPT = 11;
const SQLITE_FULL = 13;
const SQLITE_CANTOPEN = 14;
const SQLITE_NOTADB = 26;

function sqliteCode(error: unknown): number | undefined {
  const code = (error as { errcode?: unknown } | null)?.errcode;
  return typeof code === 'number' ? code & 0xff : undefined;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * An error opening the file, as the TaskStoreError that says what is wrong (codes in docs/errors.md):
 * damaged or not a database, read-only, not our schema, a newer schema. The file is never modified.
 */
function openError(path: string, error: unknown): TaskflowError {
  if (error instanceof TaskflowError) return error;
  const at = `SqliteStore: cannot open "${path}" as a task database`;
  const code = sqliteCode(error);
  if (code === SQLITE_READONLY || code === SQLITE_CANTOPEN || code === SQLITE_PERM) {
    const denied = path === ':memory:' ? undefined : writeDenied(path);
    if (denied !== undefined) {
      return new TaskStoreError(
        `${at}: ${denied}. The store writes the file and, beside it, its "-wal" and "-shm" files: choose a ` +
          `"path" in a directory this process can write to`,
        denied.includes('does not exist') ? 'ERR_STORE_UNREADABLE' : 'ERR_STORE_READ_ONLY',
        { cause: error },
      );
    }
  }
  if (
    code === SQLITE_BUSY ||
    code === SQLITE_LOCKED ||
    code === SQLITE_FULL ||
    code === SQLITE_IOERR ||
    code === SQLITE_NOMEM
  ) {
    return new TaskStoreUnavailableError(
      `${at}: ${messageOf(error)}; it was not modified, try again once that is resolved`,
      { cause: error },
    );
  }
  return new TaskStoreError(
    `${at}: ${messageOf(error)}. If the file is damaged or is not a koa-taskflow database, move it away (it ` +
      `was not modified) or choose another "path"`,
    'ERR_STORE_UNREADABLE',
    { cause: error },
  );
}

/** Why this process cannot write `path` (or create the files SQLite keeps beside it), if it cannot. */
function writeDenied(path: string): string | undefined {
  const directory = dirname(resolve(path));
  for (const [target, what] of [
    [path, 'the file'],
    [directory, 'its directory'],
  ] as const) {
    try {
      accessSync(target, constants.W_OK);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' && target === path) continue;
      if (code === 'ENOENT') return `${what} "${target}" does not exist`;
      if (code === 'EROFS') return `${what} "${target}" is on a read-only filesystem`;
      return `${what} "${target}" is not writable by this process (${code})`;
    }
  }
  return undefined;
}

/**
 * An SQLite error after the file was opened: a write that failed for a reason outside the store (a full
 * disk, an I/O error, a lock held too long, the file made read-only) is a TaskStoreUnavailableError (the
 * request gets a 503, the runner retries status writes), as is any other SQLite error; damage and an altered
 * schema are a TaskStoreError. What is not an SQLite error (a bug) is passed on as it is.
 */
function runtimeError(path: string, error: unknown): unknown {
  if (error instanceof TaskflowError) return error;
  const code = sqliteCode(error);
  const message = messageOf(error);
  switch (code) {
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_NOMEM:
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
      return new TaskStoreUnavailableError(`SqliteStore: "${path}": ${message}`, { cause: error });
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return new TaskStoreError(
        `SqliteStore: "${path}" is damaged (${message}); restore it from a backup or move it away`,
        'ERR_STORE_UNREADABLE',
        { cause: error },
      );
  }
  if (/no such (table|column|index)/.test(message)) {
    return new TaskStoreError(
      `SqliteStore: "${path}" no longer has the koa-taskflow schema (${message}); it was changed while in use`,
      'ERR_STORE_SCHEMA',
      { cause: error },
    );
  }
  // Any other SQLite error (a constraint of a schema altered by hand, a record too big for SQLite…): the
  // store cannot take this call now, and the original is its cause.
  if (code !== undefined) return new TaskStoreUnavailableError(`SqliteStore: "${path}": ${message}`, { cause: error });
  return error;
}

function migrate(db: DatabaseSync, path: string): void {
  // Checked again inside the write transaction: two processes opening a new file at once do not both
  // create the schema.
  db.exec('BEGIN IMMEDIATE');
  try {
    const version = checkSchema(db, path);
    for (let v = version; v < MIGRATIONS.length; v++) db.exec(MIGRATIONS[v]);
    if (version < MIGRATIONS.length) db.exec(`PRAGMA user_version = ${MIGRATIONS.length}`);
    db.exec('COMMIT');
  } catch (error) {
    if (db.isTransaction) db.exec('ROLLBACK');
    throw error;
  }
}

/**
 * The file's koa-taskflow schema version, read without writing anything; throws if the store must not use
 * the file. A new or empty file (version 0, nothing in it) is adopted. Version 0 with anything in it is
 * another application's database (the first migration sets the version in the transaction that creates our
 * tables). A version above 0 must have every table, column and index of that version (see missingSchema).
 */
function checkSchema(db: DatabaseSync, path: string): number {
  const { user_version: version } = db.prepare('PRAGMA user_version').get() as { user_version: number };
  if (version > MIGRATIONS.length) {
    throw new TaskStoreError(
      `SqliteStore: cannot open "${path}": its schema version ${version} is newer than this ` +
        `koa-taskflow's (${MIGRATIONS.length}); upgrade koa-taskflow (the file was not modified)`,
      'ERR_STORE_NEWER_SCHEMA',
    );
  }
  if (version === 0) {
    // A table of ours is named first: it says more than whatever else is there.
    const other = db
      .prepare(
        "SELECT type, name FROM sqlite_master ORDER BY name NOT LIKE 'taskflow\\_%' ESCAPE '\\', type <> 'table', name LIMIT 1",
      )
      .get() as { type: string; name: string } | undefined;
    if (other?.name.startsWith('taskflow_'))
      throw schemaError(path, `it has a ${other.type} "${other.name}" but no koa-taskflow schema version`);
    if (other !== undefined)
      throw schemaError(path, `it has a ${other.type} "${other.name}": it is another application's database`);
  } else {
    const missing = missingSchema(db, version);
    if (missing !== undefined)
      throw schemaError(
        path,
        `its koa-taskflow schema (version ${version}) has no ${missing}: it is damaged or is not a koa-taskflow database`,
      );
  }
  return version;
}

function schemaError(path: string, why: string): TaskStoreError {
  return new TaskStoreError(
    `SqliteStore: cannot open "${path}" as a task database: ${why}. Move it away (it was not modified) or choose another "path"`,
    'ERR_STORE_SCHEMA',
  );
}

const SCHEMA_OBJECTS = `SELECT m.type AS type, m.name AS name, p.name AS column FROM sqlite_master m LEFT JOIN pragma_table_info(m.name) p
  WHERE m.name LIKE 'taskflow\\_%' ESCAPE '\\' AND m.type IN ('table', 'index')`;
// By schema version: a file is checked against what its own version has, before it is migrated.
const expectedSchemas = new Map<number, string[]>();

function schemaOf(db: DatabaseSync): string[] {
  return (db.prepare(SCHEMA_OBJECTS).all() as { type: string; name: string; column: string | null }[]).map((o) =>
    o.type === 'table' ? `column "${o.column}" in table "${o.name}"` : `index "${o.name}"`,
  );
}

/**
 * The first table, column or index of the schema at version `user_version` (as the migrations build it)
 * that the file lacks: a dropped table would otherwise surface later as "no such table" in the
 * middle of a request. Tables or indexes added by someone else are left alone.
 */
function missingSchema(db: DatabaseSync, version: number): string | undefined {
  let expected = expectedSchemas.get(version);
  if (expected === undefined) {
    const fresh = new Database(':memory:');
    try {
      for (const migration of MIGRATIONS.slice(0, version)) fresh.exec(migration);
      expected = schemaOf(fresh);
      expectedSchemas.set(version, expected);
    } finally {
      fresh.close();
    }
  }
  const present = new Set(schemaOf(db));
  return expected.find((object) => !present.has(object));
}

/** A row of taskflow_tasks as written (the columns beside the record that filters, recovery and counts read). */
interface TaskRow {
  id: string;
  name: string;
  status: string;
  created_at: number;
  ended_at: number | null;
  owner: string | null;
  idempotency_key: string | null;
  record: string;
  duration_ms: number | null;
}

/** The duration kept beside a record for the histogram (successful ones are counted by it). */
function durationOf(record: TaskRecord): number | null {
  return typeof record.durationMs === 'number' && Number.isFinite(record.durationMs) ? record.durationMs : null;
}
