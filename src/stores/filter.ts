import { checkKnownKeys, checkTags, numberError, optionError } from '../options.js';
import { TASK_STATUSES, type TaskFilter, type TaskRecord, type TaskStatus } from '../types.js';

/** A filter checked once, in the shape stores match records against. */
export interface CompiledFilter {
  statuses: ReadonlySet<TaskStatus> | undefined;
  name: string | undefined;
  tags: [string, string][];
  since: number | undefined;
  /** Where the page starts: after this record (see TaskFilter.before). */
  before: { createdAt: number; id: string } | undefined;
  limit: number;
}

const STATUSES: ReadonlySet<unknown> = new Set(TASK_STATUSES);
const FILTER_KEYS = new Set(['status', 'name', 'tags', 'limit', 'since', 'before']);

/** Checks every field (a TypeError/RangeError naming it), so a bad filter fails the same way in every store. */
export function compileFilter(filter: TaskFilter | undefined, where = 'list'): CompiledFilter {
  const f = filter ?? {};
  if (typeof f !== 'object' || Array.isArray(f))
    throw new TypeError(`${where}: filter must be an object, got ${Array.isArray(f) ? 'an array' : typeof f}`);
  checkKnownKeys(where, f, FILTER_KEYS);
  let statuses: Set<TaskStatus> | undefined;
  if (f.status !== undefined) {
    const given: unknown[] = Array.isArray(f.status) ? f.status : [f.status];
    const bad = given.findIndex((s) => !STATUSES.has(s));
    if (bad !== -1) {
      throw optionError(
        where,
        'status',
        `one of ${TASK_STATUSES.join(', ')} or an array of them`,
        given[bad],
        typeof given[bad] === 'string' ? RangeError : TypeError,
      );
    }
    statuses = new Set(given as TaskStatus[]);
  }
  if (f.name !== undefined && typeof f.name !== 'string') throw optionError(where, 'name', 'a string', f.name);
  checkTags(where, f.tags);
  if (f.limit !== undefined && (!Number.isInteger(f.limit) || f.limit < 0)) {
    throw numberError(where, 'limit', 'a non-negative integer', f.limit);
  }
  let since: number | undefined;
  if (f.since !== undefined) {
    since = f.since instanceof Date ? f.since.getTime() : f.since;
    if (typeof since !== 'number') throw optionError(where, 'since', 'a Date or epoch milliseconds', f.since);
    if (Number.isNaN(since))
      throw optionError(where, 'since', 'a valid Date or epoch milliseconds', f.since, RangeError);
  }
  let before: CompiledFilter['before'];
  if (f.before !== undefined) {
    const { createdAt, id } = (f.before ?? {}) as Partial<Record<'createdAt' | 'id', unknown>>;
    if (f.before === null || typeof f.before !== 'object' || !Number.isFinite(createdAt) || typeof id !== 'string')
      throw optionError(where, 'before', 'a record (an object with a numeric createdAt and a string id)', f.before);
    before = { createdAt: createdAt as number, id };
  }
  return { statuses, name: f.name, tags: Object.entries(f.tags ?? {}), since, before, limit: f.limit ?? Infinity };
}

export function matchesFilter(record: TaskRecord, f: CompiledFilter): boolean {
  if (f.statuses !== undefined && !f.statuses.has(record.status)) return false;
  if (f.name !== undefined && record.name !== f.name) return false;
  if (f.since !== undefined && record.createdAt < f.since) return false;
  for (const [key, value] of f.tags) if (record.tags[key] !== value) return false;
  return true;
}
