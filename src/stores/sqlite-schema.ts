import { DURATION_BUCKETS } from '../otel.js';

// The upper bounds (ms) of the `task.duration` histogram's buckets: metrics() estimates percentiles from
// the same buckets as the metric. A database keeps the bounds it was migrated with (in its triggers and in
// the `le` column), so changing DURATION_BUCKETS later does not mix two sets of buckets.
const BOUNDS_MS = DURATION_BUCKETS.map((seconds) => Math.round(seconds * 1000));

/** The bucket (its upper bound in ms; 9e999 is SQLite's Infinity) of a duration in ms. */
function bucketOf(ms: string): string {
  return `CASE ${BOUNDS_MS.map((bound) => `WHEN ${ms} <= ${bound} THEN ${bound}`).join(' ')} ELSE 9e999 END`;
}

/**
 * The row of taskflow_counts that counts `row` (NEW, OLD, or the table's own columns): its name, status and
 * duration bucket (0 when it is not a success with a duration), and what it adds to that bucket's sum.
 */
function countedAs(row: string): { le: string; ms: string } {
  const timed = `${row}status = 'success' AND ${row}duration_ms IS NOT NULL`;
  return {
    le: `CASE WHEN ${timed} THEN ${bucketOf(`${row}duration_ms`)} ELSE 0 END`,
    ms: `CASE WHEN ${timed} THEN ${row}duration_ms ELSE 0 END`,
  };
}

function countIn(row: 'NEW'): string {
  const { le, ms } = countedAs(`${row}.`);
  return `INSERT INTO taskflow_counts (name, status, le, count, sum_ms) VALUES (${row}.name, ${row}.status, ${le}, 1, ${ms})
       ON CONFLICT (name, status, le) DO UPDATE SET count = count + 1, sum_ms = sum_ms + excluded.sum_ms;`;
}

function countOut(row: 'OLD'): string {
  const { le, ms } = countedAs(`${row}.`);
  return `UPDATE taskflow_counts SET count = count - 1, sum_ms = sum_ms - ${ms} WHERE name = ${row}.name AND status = ${row}.status AND le = ${le};`;
}

/**
 * Each entry migrates the schema from version `index` to `index + 1` (PRAGMA user_version). Append, never
 * edit once released: a database opened by a newer version is refused instead of being misread.
 */
export const MIGRATIONS: string[] = [
  `CREATE TABLE taskflow_tasks (
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL,
     status TEXT NOT NULL,
     created_at INTEGER NOT NULL,
     ended_at INTEGER,
     owner TEXT,
     idempotency_key TEXT,
     record TEXT NOT NULL
   );
   CREATE INDEX taskflow_tasks_created ON taskflow_tasks (created_at);
   CREATE INDEX taskflow_tasks_status ON taskflow_tasks (status, created_at);
   CREATE INDEX taskflow_tasks_name ON taskflow_tasks (name, created_at);
   CREATE TABLE taskflow_tags (
     task_id TEXT NOT NULL,
     key TEXT NOT NULL,
     value TEXT NOT NULL,
     PRIMARY KEY (task_id, key)
   ) WITHOUT ROWID;
   CREATE INDEX taskflow_tags_value ON taskflow_tags (key, value);
   CREATE TABLE taskflow_keys (key TEXT PRIMARY KEY, task_id TEXT NOT NULL) WITHOUT ROWID;
   CREATE TABLE taskflow_aliases (id TEXT PRIMARY KEY, task_id TEXT NOT NULL, created_at INTEGER NOT NULL) WITHOUT ROWID;
   CREATE TABLE taskflow_owners (id TEXT PRIMARY KEY, lease_until INTEGER NOT NULL) WITHOUT ROWID;
   CREATE TABLE taskflow_log (
     seq INTEGER PRIMARY KEY,
     id TEXT NOT NULL,
     name TEXT NOT NULL,
     status TEXT NOT NULL,
     created_at INTEGER NOT NULL,
     ended_at INTEGER,
     owner TEXT,
     record TEXT NOT NULL
   );`,
  // 2: what admin reads need to stay fast as the history grows (issue 16). Counts by name, status and
  // duration bucket (a histogram of successful durations per name; one row per bucket, with their sum),
  // kept by triggers in the transaction that changes a record, so a crash, a retention delete or another
  // process's write cannot leave them behind. One table: one more row write per record written. Tags carry
  // their task's creation time so a tag filter reads its index newest first; the name index leads to a
  // status. An existing history is counted once, here.
  `ALTER TABLE taskflow_tasks ADD COLUMN duration_ms REAL;
   ALTER TABLE taskflow_log ADD COLUMN duration_ms REAL;
   UPDATE taskflow_tasks SET duration_ms = json_extract(record, '$.durationMs')
     WHERE status = 'success' AND json_valid(record) AND typeof(json_extract(record, '$.durationMs')) IN ('integer', 'real');
   UPDATE taskflow_log SET duration_ms = json_extract(record, '$.durationMs')
     WHERE status = 'success' AND json_valid(record) AND typeof(json_extract(record, '$.durationMs')) IN ('integer', 'real');
   CREATE TABLE taskflow_counts (
     name TEXT NOT NULL,
     status TEXT NOT NULL,
     le REAL NOT NULL,
     count INTEGER NOT NULL,
     sum_ms REAL NOT NULL,
     PRIMARY KEY (name, status, le)
   ) WITHOUT ROWID;
   INSERT INTO taskflow_counts (name, status, le, count, sum_ms)
     SELECT name, status, ${countedAs('').le} AS bucket, COUNT(*), SUM(${countedAs('').ms}) FROM taskflow_tasks GROUP BY name, status, bucket;
   ALTER TABLE taskflow_tags ADD COLUMN created_at INTEGER NOT NULL DEFAULT 0;
   UPDATE taskflow_tags SET created_at = coalesce((SELECT t.created_at FROM taskflow_tasks t WHERE t.id = taskflow_tags.task_id), 0);
   DROP INDEX taskflow_tags_value;
   CREATE INDEX taskflow_tags_value ON taskflow_tags (key, value, created_at);
   DROP INDEX taskflow_tasks_name;
   CREATE INDEX taskflow_tasks_name ON taskflow_tasks (name, status, created_at);
   CREATE TRIGGER taskflow_tasks_inserted AFTER INSERT ON taskflow_tasks BEGIN
     ${countIn('NEW')}
   END;
   CREATE TRIGGER taskflow_tasks_updated AFTER UPDATE OF status, duration_ms ON taskflow_tasks
     WHEN OLD.status IS NOT NEW.status OR OLD.duration_ms IS NOT NEW.duration_ms BEGIN
     ${countOut('OLD')}
     ${countIn('NEW')}
   END;
   -- Retention deletes records a batch at a time; their tags and idempotency keys go with them.
   CREATE TRIGGER taskflow_tasks_deleted AFTER DELETE ON taskflow_tasks BEGIN
     ${countOut('OLD')}
     DELETE FROM taskflow_tags WHERE task_id = OLD.id;
     DELETE FROM taskflow_keys WHERE key = OLD.idempotency_key AND task_id = OLD.id;
   END;`,
  // 3: manager.cancel(id) of a task another instance holds (issue 18). The request is a column beside the
  // record, not a field in its JSON: the holder's next write of the record must not erase it. The lease
  // renewal reads the requests on its owner's tasks through the partial index (a handful of rows at most).
  `ALTER TABLE taskflow_tasks ADD COLUMN cancel_reason TEXT;
   CREATE INDEX taskflow_tasks_cancel ON taskflow_tasks (owner) WHERE cancel_reason IS NOT NULL;`,
  // 4: the counts of inserted and rewritten records are kept by the store's own statements in the same
  // transaction (src/stores/sqlite-counts.ts), not by triggers (issue 20). A statement that fires a trigger
  // writes two tables, so SQLite keeps a statement journal for it, copying every page it changes first:
  // about 7 µs of the ~45 µs a durable task cost. Deletes keep their trigger (retention deletes 200 records
  // a statement, off the app's thread). The duration buckets are kept in the file, for the store to count
  // with the bounds this file was migrated with (those of the delete trigger).
  `DROP TRIGGER taskflow_tasks_inserted;
   DROP TRIGGER taskflow_tasks_updated;
   CREATE TABLE taskflow_buckets (le REAL PRIMARY KEY) WITHOUT ROWID;
   INSERT INTO taskflow_buckets (le) VALUES ${[...BOUNDS_MS, '9e999'].map((le) => `(${le})`).join(', ')};`,
];
