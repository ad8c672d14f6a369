// The floor of the SQLite goal: the least a durable task store on SQLite does, written by hand against the
// public `TaskStore` interface (docs/api.md, "Writing a store"), so the manager's durable path is the same as
// SqliteStore's and only the store differs. What is left out is what SqliteStore keeps for the admin reads,
// other processes and crashes: no index but the task id, no counts, no tags, no idempotency keys, no leases,
// no retention, no list. What it keeps is what any durable store must do:
// - an accepted task is on disk before the response: the acceptances of one event-loop turn are appended to a
//   log table (rowid order, no index) in one transaction;
// - a record is found by its id: status changes are written in batches (200 records, or after 50 ms, as
//   SqliteStore's lazy writes) into a table keyed by the id, a UUIDv4, which puts each record at a random
//   place of that key's B-tree (about one 4 KiB page written per task once the table is larger than a batch).
// With `{ indexed: true }` (variant `sqlite-least-indexed`) it also keeps what issue 16's admin reads need to
// stay fast as the history grows, the least way: the three indexes a list walks newest first (by creation
// time; by status; by name and status) and a count per name and status, changed in the batch's transaction
// (an update reads the row's old status first, as any store keeping counts must). Still no tags, duration
// histogram, idempotency keys, leases or retention.
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import type { SaveResult, TaskRecord, TaskStore } from 'koa-taskflow';

const BATCH = 200;
const LAZY_MS = 50;

export class LeastSqliteStore implements TaskStore {
  readonly durable = true;
  readonly #db: DatabaseSync;
  readonly #append: StatementSync;
  readonly #upsert: StatementSync;
  readonly #unlog: StatementSync;
  readonly #counted: { status: StatementSync; count: StatementSync; update: StatementSync } | undefined;
  readonly #logged = new Map<string, number | bigint>();
  #accepted: TaskRecord[] = [];
  #acceptedWritten: Promise<SaveResult> | undefined;
  #changed = new Map<string, TaskRecord>();
  #timer: NodeJS.Timeout | undefined;

  constructor(path: string, { indexed = false }: { indexed?: boolean } = {}) {
    this.#db = new DatabaseSync(path);
    this.#db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL');
    this.#db.exec(`CREATE TABLE log (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, record TEXT NOT NULL);
      CREATE TABLE tasks (id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL,
        record TEXT NOT NULL)`);
    this.#append = this.#db.prepare('INSERT INTO log (id, record) VALUES (?, ?)');
    this.#upsert = this.#db.prepare(
      'INSERT INTO tasks (id, name, status, created_at, record) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record',
    );
    this.#unlog = this.#db.prepare('DELETE FROM log WHERE seq = ?');
    if (indexed) {
      this.#db.exec(`CREATE INDEX tasks_created ON tasks (created_at);
        CREATE INDEX tasks_status ON tasks (status, created_at);
        CREATE INDEX tasks_name ON tasks (name, status, created_at);
        CREATE TABLE counts (name TEXT NOT NULL, status TEXT NOT NULL, count INTEGER NOT NULL,
          PRIMARY KEY (name, status)) WITHOUT ROWID`);
      this.#counted = {
        status: this.#db.prepare('SELECT status FROM tasks WHERE id = ?'),
        count: this.#db.prepare(
          'INSERT INTO counts (name, status, count) VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET count = count + excluded.count',
        ),
        update: this.#db.prepare('UPDATE tasks SET status = ?, record = ? WHERE id = ?'),
      };
    }
  }

  save(records: TaskRecord[]): Promise<SaveResult> {
    if (records.some((r) => r.status === 'pending' && r.attempts === 0)) {
      this.#accepted.push(...records);
      return (this.#acceptedWritten ??= new Promise((resolve) => setImmediate(() => resolve(this.#writeAccepted()))));
    }
    for (const record of records) this.#changed.set(record.id, record);
    if (this.#changed.size >= BATCH) this.#writeChanged();
    else this.#timer ??= setTimeout(() => this.#writeChanged(), LAZY_MS);
    return Promise.resolve(undefined);
  }

  #writeAccepted(): undefined {
    const records = this.#accepted;
    this.#accepted = [];
    this.#acceptedWritten = undefined;
    this.#transaction(() => {
      for (const r of records) this.#logged.set(r.id, this.#append.run(r.id, JSON.stringify(r)).lastInsertRowid);
    });
    return undefined;
  }

  #writeChanged(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const records = [...this.#changed.values()];
    this.#changed = new Map();
    this.#transaction(() => {
      const counts = new Map<string, number>();
      const count = (name: string, status: string, change: number) => {
        const key = `${name}\0${status}`;
        counts.set(key, (counts.get(key) ?? 0) + change);
      };
      for (const r of records) {
        const seq = this.#logged.get(r.id);
        if (seq !== undefined) {
          this.#unlog.run(seq);
          this.#logged.delete(r.id);
        }
        if (this.#counted === undefined) {
          this.#upsert.run(r.id, r.name, r.status, r.createdAt, JSON.stringify(r));
          continue;
        }
        const old = this.#counted.status.get(r.id) as { status: string } | undefined;
        if (old === undefined) this.#upsert.run(r.id, r.name, r.status, r.createdAt, JSON.stringify(r));
        else {
          this.#counted.update.run(r.status, JSON.stringify(r), r.id);
          count(r.name, old.status, -1);
        }
        count(r.name, r.status, 1);
      }
      for (const [key, change] of counts) {
        const [name, status] = key.split('\0');
        if (change !== 0) this.#counted!.count.run(name, status, change);
      }
    });
  }

  #transaction(body: () => void): void {
    this.#db.exec('BEGIN IMMEDIATE');
    body();
    this.#db.exec('COMMIT');
  }

  get(id: string): Promise<TaskRecord | undefined> {
    const row = (this.#db.prepare('SELECT record FROM tasks WHERE id = ?').get(id) ??
      this.#db.prepare('SELECT record FROM log WHERE id = ? ORDER BY seq DESC').get(id)) as
      { record: string } | undefined;
    return Promise.resolve(row && (JSON.parse(row.record) as TaskRecord));
  }

  list(): Promise<TaskRecord[]> {
    return Promise.resolve([]);
  }

  claimKey(): Promise<string | undefined> {
    return Promise.resolve(undefined);
  }

  claimOrphans(): Promise<TaskRecord[]> {
    return Promise.resolve([]);
  }

  close(): Promise<void> {
    if (this.#accepted.length > 0) this.#writeAccepted();
    if (this.#changed.size > 0) this.#writeChanged();
    this.#db.close();
    return Promise.resolve();
  }
}
