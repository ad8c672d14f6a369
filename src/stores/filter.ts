import type { TaskFilter, TaskRecord, TaskStatus } from '../types.js';

/** A filter checked once, in the shape stores match records against. */
export interface CompiledFilter {
  statuses: ReadonlySet<TaskStatus> | undefined;
  name: string | undefined;
  tags: [string, string][];
  since: number | undefined;
  limit: number;
}

export function compileFilter(filter: TaskFilter | undefined, where = 'list'): CompiledFilter {
  const f = filter ?? {};
  if (typeof f !== 'object') throw new TypeError(`${where}: filter must be an object`);
  const statuses = f.status === undefined ? undefined : new Set(Array.isArray(f.status) ? f.status : [f.status]);
  if (f.limit !== undefined && (!Number.isInteger(f.limit) || f.limit < 0)) {
    throw new RangeError(`${where}: option "limit" must be a non-negative integer, got ${JSON.stringify(f.limit)}`);
  }
  let since: number | undefined;
  if (f.since !== undefined) {
    since = f.since instanceof Date ? f.since.getTime() : f.since;
    if (typeof since !== 'number' || Number.isNaN(since)) throw new TypeError(`${where}: option "since" must be a Date or epoch milliseconds`);
  }
  return { statuses, name: f.name, tags: Object.entries(f.tags ?? {}), since, limit: f.limit ?? Infinity };
}

export function matchesFilter(record: TaskRecord, f: CompiledFilter): boolean {
  if (f.statuses !== undefined && !f.statuses.has(record.status)) return false;
  if (f.name !== undefined && record.name !== f.name) return false;
  if (f.since !== undefined && record.createdAt < f.since) return false;
  for (const [key, value] of f.tags) if (record.tags[key] !== value) return false;
  return true;
}
