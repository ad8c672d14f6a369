import type { SQLInputValue } from 'node:sqlite';
import { TASK_STATUSES } from '../types.js';
import type { CompiledFilter } from './filter.js';
import type { ReadQuery } from './sqlite-worker.js';

/**
 * Where a page after `filter.before` starts, as (created_at, rowid): the order of every list. The record's
 * rowid is looked up by its id; a record deleted since gives NULL, and the comparison then keeps only what
 * was created before it (SQLite: (a, b) < (c, NULL) is true when a < c, else NULL).
 */
const AFTER = '(?, (SELECT rowid FROM taskflow_tasks WHERE id = ?))';

/**
 * The SQL of `list(filter)`, newest first (ties in creation order, newest last written first). Every filter
 * shape walks an index that yields its rows already in that order, so a page reads about `limit + offset`
 * rows, not the history (test/sqlite-growth.test.ts checks each shape's plan):
 *   - tags: `taskflow_tags_value` (key, value, created_at) of the first tag; the rest is checked on its rows;
 *   - name, with or without statuses: `taskflow_tasks_name` (name, status, created_at), one range per status;
 *   - statuses: `taskflow_tasks_status` (status, created_at), one range per status;
 *   - neither: `taskflow_tasks_created`.
 * Several ranges (the dead letters are failed + interrupted) are each read to `limit + offset` rows and
 * merged. `limit` -1: all. A page after a record (`filter.before`) starts at it in the same index, a range
 * bound on (created_at, rowid), so a page deep in the history reads as few rows as the first one.
 */
export function listQuery(f: CompiledFilter, limit: number, offset: number): ReadQuery {
  const params: SQLInputValue[] = [];
  if (f.tags.length > 0) {
    const [[key, value], ...others] = f.tags;
    const where = ['g.key = ?', 'g.value = ?'];
    params.push(key, value);
    if (f.since !== undefined) {
      where.push('g.created_at >= ?');
      params.push(f.since);
    }
    if (f.before !== undefined) {
      // The rowid part is checked on the task; the index bounds the walk by time.
      where.push('g.created_at <= ?', `(g.created_at, t.rowid) < ${AFTER}`);
      params.push(f.before.createdAt, f.before.createdAt, f.before.id);
    }
    if (f.statuses !== undefined) {
      where.push(`t.status IN (${[...f.statuses].map(() => '?').join(', ')})`);
      params.push(...f.statuses);
    }
    if (f.name !== undefined) {
      where.push('t.name = ?');
      params.push(f.name);
    }
    for (const [otherKey, otherValue] of others) {
      where.push('EXISTS (SELECT 1 FROM taskflow_tags h WHERE h.task_id = t.id AND h.key = ? AND h.value = ?)');
      params.push(otherKey, otherValue);
    }
    // CROSS JOIN: the tag index drives, in its order; each task is then found by its id.
    const sql = `SELECT t.id, t.record FROM taskflow_tags g CROSS JOIN taskflow_tasks t ON t.id = g.task_id
      WHERE ${where.join(' AND ')} ORDER BY g.created_at DESC, t.rowid DESC LIMIT ? OFFSET ?`;
    return { sql, params: [...params, limit, offset] };
  }
  const statuses = f.statuses !== undefined ? [...f.statuses] : f.name !== undefined ? [...TASK_STATUSES] : [];
  const range = (status: string | undefined): string => {
    const where: string[] = [];
    if (status !== undefined) {
      where.push('status = ?');
      params.push(status);
    }
    if (f.name !== undefined) {
      where.push('name = ?');
      params.push(f.name);
    }
    if (f.since !== undefined) {
      where.push('created_at >= ?');
      params.push(f.since);
    }
    if (f.before !== undefined) {
      where.push(`(created_at, rowid) < ${AFTER}`);
      params.push(f.before.createdAt, f.before.id);
    }
    return where.length === 0 ? '' : ` WHERE ${where.join(' AND ')}`;
  };
  // rowid breaks ties between records created in the same millisecond: insertion order.
  if (statuses.length <= 1) {
    const sql = `SELECT id, record FROM taskflow_tasks${range(statuses[0])} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?`;
    return { sql, params: [...params, limit, offset] };
  }
  const window = limit === -1 ? -1 : limit + offset;
  const ranges = statuses.map((status) => {
    const part =
      `SELECT id, record, created_at, r FROM (SELECT id, record, created_at, rowid AS r FROM taskflow_tasks${range(status)}` +
      ' ORDER BY created_at DESC, rowid DESC LIMIT ?)';
    params.push(window);
    return part;
  });
  const sql = `SELECT id, record FROM (${ranges.join(' UNION ALL ')}) ORDER BY created_at DESC, r DESC LIMIT ? OFFSET ?`;
  return { sql, params: [...params, limit, offset] };
}
