import type { Context } from 'koa';
import { TaskflowError } from '../errors.js';
import type { AdminHost } from './host.js';
import { FINAL_STATUSES, TASK_STATUSES, type TaskFilter, type TaskRecord, type TaskStatus } from '../types.js';
import type { EventFilter } from './events.js';
import { safeJson } from './events.js';

/** An error whose message is safe to show the client as `{ error }` with this HTTP status. */
export class AdminHttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly extra?: Record<string, unknown>,
  ) {
    super(message);
  }
}

export interface ListLimits {
  defaultLimit: number;
  maxLimit: number;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const STATUSES = new Set<string>(TASK_STATUSES);
// Filters are matched by the store (SQLite builds one expression per tag): a query cannot make it
// arbitrarily large. Generous for a human or a script; a query past them is a 400 naming the parameter.
const MAX_TAG_FILTERS = 20;
const MAX_FILTER_LENGTH = 1_024;

export function sendJson(ctx: Context, status: number, value: unknown): void {
  ctx.status = status;
  ctx.type = 'application/json; charset=utf-8';
  // Task records are live data, and may hold what the app considers private: never cached on the way.
  ctx.set('Cache-Control', 'no-store');
  ctx.set('X-Content-Type-Options', 'nosniff');
  ctx.body = safeJson(value);
}

export function taskId(raw: string): string {
  if (!UUID.test(raw))
    throw new AdminHttpError(400, `malformed task id ${JSON.stringify(raw.slice(0, 80))}: expected a UUID`);
  return raw.toLowerCase();
}

type Query = Record<string, string | string[] | undefined>;

function single(query: Query, key: string): string | undefined {
  const value = query[key];
  if (Array.isArray(value)) throw new AdminHttpError(400, `query parameter "${key}" given more than once`);
  return value;
}

/** `name` and `tag.<key>=<value>`: the part of a filter the list, retry-failed and the event stream share. */
function parseSelection(query: Query, allowed: ReadonlySet<string>): EventFilter {
  const tags: [string, string][] = [];
  for (const key of Object.keys(query)) {
    if (key.startsWith('tag.')) {
      const tag = key.slice(4);
      if (tag === '')
        throw new AdminHttpError(400, 'query parameter "tag.": the tag name is missing (use tag.<key>=<value>)');
      if (tags.length === MAX_TAG_FILTERS)
        throw new AdminHttpError(
          400,
          `query parameters "tag.<key>": at most ${MAX_TAG_FILTERS} tag filters in one query`,
        );
      tags.push([checkLength(key, tag, 'tag name'), checkLength(key, single(query, key) ?? '', 'value')]);
    } else if (!allowed.has(key)) {
      throw new AdminHttpError(
        400,
        `unknown query parameter "${key.slice(0, 80)}"; known: ${[...allowed, 'tag.<key>'].join(', ')}`,
      );
    }
  }
  const name = single(query, 'name');
  if (name === '') throw new AdminHttpError(400, 'query parameter "name" is empty');
  return { name: name === undefined ? undefined : checkLength('name', name, 'value'), tags };
}

function checkLength(parameter: string, value: string, what: string): string {
  if (value.length > MAX_FILTER_LENGTH) {
    throw new AdminHttpError(
      400,
      `query parameter "${parameter.slice(0, 80)}": the ${what} is longer than ${MAX_FILTER_LENGTH} characters`,
    );
  }
  return value;
}

function parseLimit(raw: string | undefined, limits: ListLimits): number {
  if (raw === undefined) return limits.defaultLimit;
  const limit = /^\d{1,9}$/.test(raw) ? Number(raw) : NaN;
  if (!(limit >= 1 && limit <= limits.maxLimit)) {
    throw new AdminHttpError(
      400,
      `query parameter "limit" must be an integer from 1 to ${limits.maxLimit}, got ${JSON.stringify(raw.slice(0, 40))}`,
    );
  }
  return limit;
}

const EVENT_KEYS = new Set(['name']);
export function parseEventQuery(query: Query): EventFilter {
  return parseSelection(query, EVENT_KEYS);
}

/** Where the previous page ended: its last record's creation time and id. */
interface Cursor {
  createdAt: number;
  id: string;
}

function encodeCursor(record: TaskRecord): string {
  return Buffer.from(JSON.stringify([record.createdAt, record.id])).toString('base64url');
}

// A cursor we made is ~70 characters; anything much longer was not.
const MAX_CURSOR_LENGTH = 200;

function decodeCursor(raw: string): Cursor {
  // Strict base64url (Buffer.from skips what it does not understand) and exactly the values we write: a
  // safe-integer time and a task id (and, from cursors of earlier versions, a safe-integer offset, no
  // longer needed). Anything else is a 400, not a query.
  if (raw.length <= MAX_CURSOR_LENGTH && /^[A-Za-z0-9_-]+$/.test(raw)) {
    try {
      const value: unknown = JSON.parse(Buffer.from(raw, 'base64url').toString('utf8'));
      if (Array.isArray(value) && (value.length === 2 || value.length === 3)) {
        const [createdAt, id, offset = 0] = value as unknown[];
        if (
          Number.isSafeInteger(createdAt) &&
          typeof id === 'string' &&
          UUID.test(id) &&
          Number.isSafeInteger(offset) &&
          (offset as number) >= 0
        ) {
          return { createdAt: createdAt as number, id };
        }
      }
    } catch {
      // fall through: a cursor we did not make
    }
  }
  throw new AdminHttpError(
    400,
    'query parameter "cursor" is not a cursor from a previous page (use "nextCursor" as it was returned)',
  );
}

const LIST_KEYS = new Set(['status', 'name', 'limit', 'cursor', 'since']);

export interface ListQuery {
  filter: TaskFilter;
  limit: number;
  cursor: Cursor | undefined;
}

export function parseListQuery(query: Query, limits: ListLimits): ListQuery {
  const { name, tags } = parseSelection(query, LIST_KEYS);
  const filter: TaskFilter = {};
  if (name !== undefined) filter.name = name;
  if (tags.length > 0) filter.tags = Object.fromEntries(tags);
  // `status=failed,interrupted` or `status=failed&status=interrupted`.
  const rawStatus = query.status;
  if (rawStatus !== undefined) {
    const statuses = new Set((Array.isArray(rawStatus) ? rawStatus : [rawStatus]).flatMap((s) => s.split(',')));
    for (const status of statuses) {
      if (!STATUSES.has(status))
        throw new AdminHttpError(
          400,
          `query parameter "status": unknown status ${JSON.stringify(status.slice(0, 40))}; one of ${TASK_STATUSES.join(', ')}`,
        );
    }
    filter.status = [...statuses] as TaskStatus[];
  }
  const since = single(query, 'since');
  if (since !== undefined) {
    const time = /^\d{1,16}$/.test(since) ? Number(since) : Date.parse(since);
    if (Number.isNaN(time))
      throw new AdminHttpError(400, 'query parameter "since" must be epoch milliseconds or an ISO 8601 date');
    filter.since = time;
  }
  const cursor = single(query, 'cursor');
  return {
    filter,
    limit: parseLimit(single(query, 'limit'), limits),
    cursor: cursor === undefined ? undefined : decodeCursor(cursor),
  };
}

/**
 * One page of `list`, newest first. The store starts the page after the cursor's record (`before`), from
 * its index: a page deep in the history costs what the first one does, and records added since the
 * previous page do not shift it (pages neither repeat nor skip records).
 */
export async function listPage(
  manager: AdminHost,
  query: ListQuery,
): Promise<{ tasks: TaskRecord[]; nextCursor: string | null }> {
  const { filter, limit, cursor } = query;
  let rows = await manager.list({ ...filter, before: cursor, limit: limit + 1 });
  if (cursor !== undefined && rows.some((r) => r.id === cursor.id || r.createdAt > cursor.createdAt))
    rows = await pageByWindow(manager, filter, limit, cursor);
  const tasks = rows.slice(0, limit);
  return { tasks, nextCursor: rows.length > limit ? encodeCursor(tasks[tasks.length - 1]) : null };
}

const MAX_WINDOW = 10_000;

/**
 * A custom store that ignores `before` gave its first page again: the page is then found in a window read
 * from the newest record (the cursor's record by id, or what is older than it), at most MAX_WINDOW deep.
 */
async function pageByWindow(
  manager: AdminHost,
  filter: TaskFilter,
  limit: number,
  cursor: Cursor,
): Promise<TaskRecord[]> {
  for (let window = 2 * (limit + 1); ; window *= 2) {
    const rows = await manager.list({ ...filter, limit: window });
    const at = rows.findIndex((r) => r.id === cursor.id);
    const start = at >= 0 ? at + 1 : rows.findIndex((r) => r.createdAt < cursor.createdAt);
    const exhausted = rows.length < window || window >= MAX_WINDOW;
    if (start >= 0 && (exhausted || rows.length > start + limit)) return rows.slice(start, start + limit + 1);
    if (exhausted) return [];
  }
}

/** A cancel `reason` given in the query is stored on the record: short, printable text. */
const MAX_CANCEL_REASON = 200;

/**
 * `POST {prefix}/:id/cancel[?reason=…]`: 202 once the task is cancelled (or, held by another instance
 * sharing the store, once the request is recorded there), 404 for an unknown id, 409 for a finished task
 * (its status in the body).
 */
export async function cancelTask(
  manager: AdminHost,
  id: string,
  query: Query,
): Promise<{ id: string; status: string }> {
  const reason = single(query, 'reason');
  // eslint-disable-next-line no-control-regex
  if (reason !== undefined && (reason === '' || reason.length > MAX_CANCEL_REASON || /[\u0000-\u001f]/.test(reason)))
    throw new AdminHttpError(400, `query parameter "reason" must be 1 to ${MAX_CANCEL_REASON} printable characters`);
  const record = await manager.get(id);
  if (record === undefined) throw new AdminHttpError(404, `no task with id ${id}`);
  const finished = (status: string) =>
    new AdminHttpError(
      409,
      `task ${id} has already ended (${status}); only pending and running tasks can be cancelled`,
      {
        status,
      },
    );
  if (FINAL_STATUSES.has(record.status)) throw finished(record.status);
  try {
    if (await manager.cancel(id, reason === undefined ? undefined : { reason })) {
      const now = await manager.get(id);
      return { id, status: now?.status ?? record.status };
    }
  } catch (error) {
    throw httpError(error);
  }
  const now = (await manager.get(id))?.status ?? record.status;
  if (FINAL_STATUSES.has(now)) throw finished(now);
  // Unfinished, yet not cancelled: where it is (an engine without a cancel of the jobs it holds) cannot be reached.
  throw new AdminHttpError(409, `task ${id} is ${now} where this process cannot cancel it`, { status: now });
}

/**
 * Retries go through here so a double-click or two admins at once do not create two retries of one task:
 * a failed task that already has a retry is refused with 409, naming the retry.
 */
export class Retrier {
  readonly #inFlight = new Set<string>();

  /** `inPlace`: a retry runs the task again under its id (BullMQ), so a retried task is no longer failed. */
  constructor(
    private readonly manager: AdminHost,
    private readonly inPlace = false,
  ) {}

  async retry(id: string): Promise<string> {
    if (this.#inFlight.has(id)) throw new AdminHttpError(409, `task ${id} is being retried by another request`);
    this.#inFlight.add(id);
    try {
      const record = await this.manager.get(id);
      if (record === undefined) throw new AdminHttpError(404, `no task with id ${id}`);
      const existing = await this.#retriesOf([record]);
      // record.id: an alias (an id that lost its idempotency key's claim) stands for its holder.
      const retriedAs = existing.get(record.id);
      if (retriedAs !== undefined)
        throw new AdminHttpError(
          409,
          `task ${id} was already retried as ${retriedAs}; retry that one if it failed too`,
          { retriedAs },
        );
      return await this.manager.retry(id);
    } catch (error) {
      throw httpError(error);
    } finally {
      this.#inFlight.delete(id);
    }
  }

  /** Retry every failed task matching `selection` that has no retry yet (at most `limit`). */
  async retryFailed(
    query: Query,
    limits: ListLimits,
  ): Promise<{ retried: { id: string; newId: string }[]; errors: { id: string; error: string }[] }> {
    const { name, tags } = parseSelection(query, new Set(['name', 'limit']));
    const limit = parseLimit(single(query, 'limit'), { defaultLimit: limits.maxLimit, maxLimit: limits.maxLimit });
    const failed = await this.manager.list({ status: 'failed', name, tags: Object.fromEntries(tags), limit });
    const existing = await this.#retriesOf(failed);
    const retried: { id: string; newId: string }[] = [];
    const errors: { id: string; error: string }[] = [];
    // Oldest first: the retries are created in the order the failures happened.
    for (const record of failed.reverse()) {
      if (existing.has(record.id) || this.#inFlight.has(record.id)) continue;
      this.#inFlight.add(record.id);
      try {
        retried.push({ id: record.id, newId: await this.manager.retry(record.id) });
      } catch (error) {
        const http = httpError(error);
        if (http.status >= 500) throw http;
        errors.push({ id: record.id, error: http.message });
      } finally {
        this.#inFlight.delete(record.id);
      }
    }
    return { retried, errors };
  }

  /** original id → id of its retry, for the given records (a retry is always created after its original). */
  async #retriesOf(records: readonly TaskRecord[]): Promise<Map<string, string>> {
    const found = new Map<string, string>();
    // Retried in place, a task is pending again, not failed: nothing to look up (and no history to read).
    if (records.length === 0 || this.inPlace) return found;
    const wanted = new Set(records.map((r) => r.id));
    // A loop, not Math.min(...): a spread of `maxLimit` records' times could overflow the stack.
    let since = Infinity;
    for (const r of records) since = Math.min(since, r.createdAt);
    for (const r of await this.manager.list({ since })) {
      if (r.retryOf !== undefined && wanted.has(r.retryOf) && !found.has(r.retryOf)) found.set(r.retryOf, r.id);
    }
    return found;
  }
}

// Our errors by `code`: what the client asked for does not exist, conflicts with the task's state, or
// cannot be served now.
const STATUS_BY_CODE: Readonly<Record<string, number>> = {
  ERR_TASK_NOT_FOUND: 404,
  ERR_TASK_NOT_RETRYABLE: 409,
  ERR_TASK_NOT_REGISTERED: 409,
  ERR_MANAGER_CLOSED: 503,
  ERR_STORE_UNAVAILABLE: 503,
  ERR_QUEUE_FULL: 503,
};

/**
 * The HTTP answer for an error, or undefined for an unexpected one (answered as a bare 500 and reported).
 * Our own errors carry messages written for the user. A TypeError/RangeError is not mapped to 400: every
 * query is checked here before the manager sees it, so one from below is a bug (or a custom store's or
 * auth function's own error, whose message may say more than it should).
 */
export function toHttpError(error: unknown): AdminHttpError | undefined {
  if (error instanceof AdminHttpError) return error;
  if (error instanceof TaskflowError) {
    const status = STATUS_BY_CODE[error.code];
    return status === undefined ? undefined : new AdminHttpError(status, error.message);
  }
  return undefined;
}

function httpError(error: unknown): AdminHttpError {
  const http = toHttpError(error);
  if (http === undefined) throw error;
  return http;
}
