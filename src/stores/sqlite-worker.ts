import { Worker } from 'node:worker_threads';
import type { SQLInputValue } from 'node:sqlite';

/** One query for the reader: SQL and its parameters. */
export interface ReadQuery {
  sql: string;
  params: SQLInputValue[];
}

/** Rows come back at most this many per message: the main thread handles one slice per event-loop turn. */
const SLICE = 200;

// Two connections of their own, in a worker thread: `node:sqlite` is synchronous, so a read of a large
// history, or a retention pass, on the app's thread would stall every request meanwhile. WAL lets `db`
// read while the store's connection writes; `writer` deletes expired records in short transactions, and
// the WAL checkpoints their commits start (a disk flush) happen here too. Kept as source text (run with
// `eval`) so that it needs no file of its own beside the compiled module, wherever that is loaded from.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { DatabaseSync } = require('node:sqlite');
// Background work: on a busy machine this thread gives the CPU to the app's thread first (Linux: a
// thread's nice value is its own; elsewhere this is skipped).
try {
  const thread = require('node:fs').readlinkSync('/proc/thread-self').split('/').pop();
  require('node:os').setPriority(Number(thread), 19);
} catch {}
const db = new DatabaseSync(workerData.path);
db.exec('PRAGMA busy_timeout = ' + workerData.busyTimeoutMs);
db.exec('PRAGMA query_only = 1');
let writer;
const statements = new Map();
const open = new Map();
function prepare(sql) {
  let statement = statements.get(sql);
  if (statement === undefined) {
    statement = db.prepare(sql);
    if (statements.size < 256) statements.set(sql, statement);
  }
  return statement;
}
function errorOf(error) {
  return {
    message: String(error && error.message || error),
    code: error && error.code,
    errcode: error && error.errcode,
    errstr: error && error.errstr,
  };
}
function slice(id, iterator) {
  const rows = [];
  for (let next; rows.length < ${SLICE} && !(next = iterator.next()).done; ) rows.push(next.value);
  const done = rows.length < ${SLICE};
  if (done) open.delete(id);
  parentPort.postMessage({ id, rows, done });
}
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// Each statement deletes at most message.batch rows; it is run in its own transaction until it deletes
// fewer. Between two, a pause as long as the batch took: the app's writes get the lock half the time.
async function expire({ id, statements, batch }) {
  if (writer === undefined) {
    writer = new DatabaseSync(workerData.path);
    writer.exec('PRAGMA busy_timeout = ' + workerData.busyTimeoutMs);
    // Retention's deletes fire a trigger: their statement journals in memory, as the store's writer (sqlite.ts).
    writer.exec('PRAGMA temp_store = MEMORY');
  }
  let deleted = 0;
  try {
    for (const { sql, params } of statements) {
      const statement = writer.prepare(sql);
      for (;;) {
        const started = performance.now();
        writer.exec('BEGIN IMMEDIATE');
        let changes;
        try {
          changes = Number(statement.run(...params).changes);
          writer.exec('COMMIT');
        } catch (error) {
          if (writer.isTransaction) writer.exec('ROLLBACK');
          throw error;
        }
        deleted += changes;
        if (changes < batch) break;
        await pause(Math.max(2, performance.now() - started));
      }
    }
    parentPort.postMessage({ id, deleted });
  } catch (error) {
    parentPort.postMessage({ id, error: errorOf(error) });
  }
}
parentPort.on('message', (message) => {
  const { id } = message;
  if (message.type === 'expire') return void expire(message);
  try {
    if (message.type === 'all') {
      // One snapshot for several queries (counts and durations of one metrics() agree); an open
      // iteration already holds one.
      const wrap = open.size === 0;
      if (wrap) db.exec('BEGIN');
      try {
        parentPort.postMessage({ id, results: message.queries.map((q) => prepare(q.sql).all(...q.params)) });
      } finally {
        if (wrap) db.exec('COMMIT');
      }
    } else if (message.type === 'rows') {
      // A statement of its own: another iteration of the same SQL may be open.
      const iterator = db.prepare(message.sql).iterate(...message.params);
      open.set(id, iterator);
      slice(id, iterator);
    } else if (message.type === 'next') {
      slice(id, open.get(id));
    } else if (message.type === 'cancel') {
      open.get(id)?.return?.();
      open.delete(id);
    }
  } catch (error) {
    open.delete(id);
    parentPort.postMessage({ id, error: errorOf(error) });
  }
});
`;

interface Pending {
  resolve(message: ReaderMessage): void;
  reject(error: unknown): void;
}

interface ReaderMessage {
  id: number;
  results?: unknown[][];
  deleted?: number;
  rows?: unknown[];
  done?: boolean;
  error?: { message: string; code?: string; errcode?: number; errstr?: string };
}

/**
 * Admin reads (list, metrics) and retention passes, on connections of a worker thread. Started on the
 * first; holds the process open only while one is under way; replaced if its thread dies.
 */
export class SqliteWorker {
  readonly #path: string;
  readonly #busyTimeoutMs: number;
  #worker: Worker | undefined;
  #nextId = 1;
  readonly #pending = new Map<number, Pending>();
  #closed = false;

  constructor(path: string, busyTimeoutMs: number) {
    this.#path = path;
    this.#busyTimeoutMs = busyTimeoutMs;
  }

  /** Every row of each query, read in one snapshot (for small results: counts, a page). */
  async all(queries: ReadQuery[]): Promise<unknown[][]> {
    const answer = await this.#ask({ type: 'all', queries });
    return answer.results ?? [];
  }

  /**
   * The rows of one query, handed to `onRows` a slice at a time: the next slice is asked for only after
   * `onRows` returned, so a large result never stalls the app's thread for longer than one slice.
   */
  async rows(query: ReadQuery, onRows: (rows: unknown[]) => boolean | void): Promise<void> {
    let answer = await this.#ask({ type: 'rows', sql: query.sql, params: query.params });
    for (;;) {
      let more: boolean | void;
      try {
        more = onRows(answer.rows ?? []);
      } catch (error) {
        more = false;
        throw error;
      } finally {
        // An iteration left open would hold its snapshot, and keep checkpoints from emptying the WAL.
        if (more === false && !answer.done) this.#worker?.postMessage({ type: 'cancel', id: answer.id });
      }
      if (answer.done || more === false) return;
      answer = await this.#ask({ type: 'next' }, answer.id);
    }
  }

  /**
   * Runs each DELETE statement (one batch of `batch` rows at most) in its own transaction until it deletes
   * fewer, pausing between two; the number of rows deleted.
   */
  async expire(statements: ReadQuery[], batch: number): Promise<number> {
    const answer = await this.#ask({ type: 'expire', statements, batch });
    return answer.deleted ?? 0;
  }

  async close(): Promise<void> {
    this.#closed = true;
    const worker = this.#worker;
    this.#worker = undefined;
    if (worker !== undefined) await worker.terminate();
  }

  #ask(message: Record<string, unknown>, id = this.#nextId++): Promise<ReaderMessage> {
    if (this.#closed) return Promise.reject(new Error('the store is closed'));
    const worker = this.#start();
    return new Promise<ReaderMessage>((resolve, reject) => {
      if (this.#pending.size === 0) worker.ref();
      this.#pending.set(id, { resolve, reject });
      worker.postMessage({ ...message, id });
    });
  }

  #start(): Worker {
    if (this.#worker !== undefined) return this.#worker;
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { path: this.#path, busyTimeoutMs: this.#busyTimeoutMs },
    });
    worker.unref();
    worker.on('message', (message: ReaderMessage) => {
      const pending = this.#pending.get(message.id);
      if (pending === undefined) return;
      this.#pending.delete(message.id);
      if (this.#pending.size === 0) worker.unref();
      if (message.error === undefined) pending.resolve(message);
      else pending.reject(Object.assign(new Error(message.error.message), message.error));
    });
    const fail = (error: unknown) => {
      if (this.#worker === worker) this.#worker = undefined;
      const pending = [...this.#pending.values()];
      this.#pending.clear();
      for (const p of pending) p.reject(error);
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`the SQLite reader thread exited (code ${code})`)));
    this.#worker = worker;
    return worker;
  }
}
