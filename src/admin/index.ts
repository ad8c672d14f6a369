import { randomBytes } from 'node:crypto';
import type { Context, Middleware } from 'koa';
import { TaskQueueFullError, TaskStoreError } from '../errors.js';
import type { AdminHost } from './host.js';
import { checkKnownKeys, numberError, optionError } from '../options.js';
import { createAuthenticator, type AdminAuth } from './auth.js';
import { dashboardHtml } from './dashboard.js';
import { EventHub, type EventSource } from './events.js';
import {
  AdminHttpError,
  cancelTask,
  listPage,
  parseEventQuery,
  parseListQuery,
  Retrier,
  sendJson,
  taskId,
  toHttpError,
  type ListLimits,
} from './routes.js';

export type { AdminAuth } from './auth.js';

export interface AdminOptions {
  /** Where the endpoints live: `GET {prefix}`, `GET {prefix}/:id`, … Default `'/tasks'`. */
  prefix?: string;
  /** Required: `{ token }`, `{ users: { name: password } }`, a function `(ctx) => boolean`, or `'none'`. */
  auth: AdminAuth;
  /**
   * The dashboard's link to a task's trace, `{traceId}` (and `{spanId}`) replaced, e.g.
   * `'http://localhost:16686/trace/{traceId}'` (Jaeger) or a Grafana Explore URL. No link without it.
   */
  traceUrl?: string;
  /** Event-stream clients at once; one more is answered 503. Default 32. */
  maxSseClients?: number;
  /**
   * How often an idle event stream gets a heartbeat comment. Default 15 000 ms. A client that is behind and
   * whose backlog does not shrink for two heartbeats has stopped reading and is dropped.
   */
  heartbeatMs?: number;
  /** Page size of `GET {prefix}` without `limit`. Default 50. */
  defaultLimit?: number;
  /** Largest `limit` accepted (and most tasks one `retry-failed` call retries). Default 500. */
  maxLimit?: number;
}

/** The admin middleware, with a handle on its open event streams. */
export interface AdminMiddleware extends Middleware {
  /** Event-stream clients connected now. */
  readonly sseClients: number;
  /**
   * End every open event stream. Call it before `server.close()` at shutdown: an open stream is an
   * active response, so the server would otherwise wait for the browser to go away.
   */
  close(): void;
}

const ADMIN_OPTIONS = new Set([
  'prefix',
  'auth',
  'traceUrl',
  'maxSseClients',
  'heartbeatMs',
  'defaultLimit',
  'maxLimit',
]);
const WHERE = 'admin()';

function integerOption(
  options: AdminOptions,
  key: 'maxSseClients' | 'heartbeatMs' | 'defaultLimit' | 'maxLimit',
  min: number,
  max: number,
  fallback: number,
): number {
  const value = options[key];
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < min || value > max) {
    throw numberError(WHERE, key, `an integer from ${min} to ${max}`, value);
  }
  return value;
}

function checkPrefix(prefix: unknown): string {
  if (typeof prefix !== 'string' || !/^(\/[A-Za-z0-9._~-]+)+$/.test(prefix)) {
    throw optionError(WHERE, 'prefix', 'a path like "/tasks" or "/admin/tasks" (no trailing slash, not "/")', prefix);
  }
  return prefix;
}

function checkTraceUrl(template: unknown): string | undefined {
  if (template === undefined) return undefined;
  let ok = false;
  if (typeof template === 'string' && template.includes('{traceId}')) {
    try {
      // Only http(s): the link is put in the page, and a javascript: URL would run in the admin's session.
      const url = new URL(template.replaceAll('{traceId}', '0').replaceAll('{spanId}', '0'));
      ok = url.protocol === 'http:' || url.protocol === 'https:';
    } catch {
      ok = false;
    }
  }
  if (!ok)
    throw optionError(
      WHERE,
      'traceUrl',
      'an http(s) URL template containing {traceId}, e.g. "http://localhost:16686/trace/{traceId}"',
      template,
    );
  return template as string;
}

/**
 * POSTs change state, and a browser holding Basic credentials or a session cookie would send them along
 * with a form posted from any site: so a POST must come from this origin, or from no browser at all
 * (curl and scripts send neither header). The origin compared is scheme, host and port, the request's
 * own as Koa sees it (`ctx.protocol`/`ctx.host`, which follow X-Forwarded-* when `app.proxy` is set):
 * a page on `http://host` is another origin than `https://host`.
 */
function assertSameOrigin(ctx: Context): void {
  const site = ctx.get('sec-fetch-site');
  if (site !== '' && site !== 'same-origin')
    throw new AdminHttpError(403, `cross-site request refused (Sec-Fetch-Site: ${site.slice(0, 40)})`);
  const origin = ctx.get('origin');
  const [header, claimed] = origin !== '' ? ['Origin', origin] : ['Referer', ctx.get('referer')];
  if (claimed === '') return;
  // Not ctx.origin: since Koa 3 that is the Origin header itself.
  const own = originOf(`${ctx.protocol}://${ctx.host}`);
  if (own === undefined || originOf(claimed) !== own)
    throw new AdminHttpError(403, `cross-site request refused (${header} is not this origin)`);
}

/** scheme://host:port as URL serialises it (lower case, default port dropped); undefined for "null" or garbage. */
function originOf(url: string): string | undefined {
  try {
    const { origin } = new URL(url);
    return origin === 'null' ? undefined : origin;
  } catch {
    return undefined;
  }
}

function allow(ctx: Context, ...methods: string[]): void {
  if (methods.includes(ctx.method)) return;
  ctx.set('Allow', methods.join(', '));
  throw new AdminHttpError(405, `${ctx.method} is not allowed here; use ${methods.join(' or ')}`);
}

/**
 * Where an engine keeps the records (BullMQ): its event stream stands for the manager's observer chain, and
 * whether its retries run the same task again under its id.
 */
export interface EngineAdmin {
  events: EventSource;
  retriesInPlace: boolean;
}

/** Builds the middleware behind `manager.admin(options)`. */
export function createAdmin(manager: AdminHost, options: AdminOptions, engine?: EngineAdmin): AdminMiddleware {
  if (options === null || typeof options !== 'object') {
    throw new TypeError(
      `${WHERE}: options are required, with at least "auth" (e.g. { auth: { token: process.env.ADMIN_TOKEN } }, or auth: 'none')`,
    );
  }
  checkKnownKeys(WHERE, options, ADMIN_OPTIONS);
  const authenticate = createAuthenticator(options.auth);
  const prefix = checkPrefix(options.prefix ?? '/tasks');
  const traceUrl = checkTraceUrl(options.traceUrl);
  const maxLimit = integerOption(options, 'maxLimit', 1, 10_000, 500);
  const limits: ListLimits = {
    maxLimit,
    defaultLimit: integerOption(options, 'defaultLimit', 1, maxLimit, Math.min(50, maxLimit)),
  };
  const hub = new EventHub(engine?.events ?? manager, {
    maxClients: integerOption(options, 'maxSseClients', 1, 10_000, 32),
    heartbeatMs: integerOption(options, 'heartbeatMs', 10, 3_600_000, 15_000),
    maxBufferedBytes: 1 << 20,
  });
  const retrier = new Retrier(manager, engine?.retriesInPlace === true);

  async function route(ctx: Context, segments: string[]): Promise<void> {
    const [first, second] = segments;
    if (segments.length === 0) {
      allow(ctx, 'GET', 'HEAD');
      return sendJson(ctx, 200, await listPage(manager, parseListQuery(ctx.query, limits)));
    }
    if (segments.length === 1 && first === 'metrics') {
      allow(ctx, 'GET', 'HEAD');
      return sendJson(ctx, 200, await manager.metrics());
    }
    if (segments.length === 1 && first === 'events') {
      allow(ctx, 'GET');
      if (!hub.open(ctx, parseEventQuery(ctx.query))) {
        ctx.set('Retry-After', '10');
        throw new AdminHttpError(
          503,
          'too many event-stream clients; close another dashboard tab or raise "maxSseClients"',
        );
      }
      return;
    }
    if (segments.length === 1 && first === 'dashboard') {
      allow(ctx, 'GET', 'HEAD');
      return serveDashboard(ctx);
    }
    if (segments.length === 1 && first === 'retry-failed') {
      allow(ctx, 'POST');
      assertSameOrigin(ctx);
      return sendJson(ctx, 200, await retrier.retryFailed(ctx.query, limits));
    }
    if (segments.length === 1) {
      allow(ctx, 'GET', 'HEAD');
      const record = await manager.get(taskId(first));
      if (record === undefined) throw new AdminHttpError(404, `no task with id ${first}`);
      return sendJson(ctx, 200, record);
    }
    if (segments.length === 2 && second === 'retry') {
      allow(ctx, 'POST');
      assertSameOrigin(ctx);
      const id = taskId(first);
      const newId = await retrier.retry(id);
      return sendJson(ctx, 202, { id: newId, retryOf: id });
    }
    if (segments.length === 2 && second === 'cancel') {
      allow(ctx, 'POST');
      assertSameOrigin(ctx);
      return sendJson(ctx, 202, await cancelTask(manager, taskId(first), ctx.query));
    }
    throw new AdminHttpError(404, `no admin endpoint at ${ctx.path.slice(0, 200)}`);
  }

  function serveDashboard(ctx: Context): void {
    const nonce = randomBytes(16).toString('base64');
    ctx.status = 200;
    ctx.type = 'text/html; charset=utf-8';
    ctx.set('Cache-Control', 'no-store');
    ctx.set('X-Content-Type-Options', 'nosniff');
    ctx.set('X-Frame-Options', 'DENY');
    ctx.set('Referrer-Policy', 'no-referrer');
    ctx.set(
      'Content-Security-Policy',
      `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'nonce-${nonce}'; connect-src 'self'; ` +
        `img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
    );
    ctx.body = dashboardHtml({ prefix, traceUrl }, nonce);
  }

  function report(error: unknown): void {
    if (manager.logger !== undefined) manager.logger.error({ err: error }, 'koa-taskflow: admin request failed');
    else console.error('koa-taskflow: admin request failed:', error);
  }

  const middleware: Middleware = async function taskflowAdmin(ctx, next) {
    const path = ctx.path;
    if (path !== prefix && !path.startsWith(`${prefix}/`)) {
      await next();
      return;
    }
    const rest = path.slice(prefix.length + 1);
    const segments = rest === '' ? [] : rest.replace(/\/$/, '').split('/');
    try {
      // Authentication comes first, for every path under the prefix: an anonymous client learns nothing,
      // not even which endpoints exist.
      const auth = await authenticate(ctx);
      if (!auth.ok) {
        ctx.set('WWW-Authenticate', auth.challenge);
        return sendJson(ctx, 401, { error: 'authentication required' });
      }
      await route(ctx, segments);
    } catch (error) {
      const http = toHttpError(error);
      if (http !== undefined) {
        // What cannot be served now (store away, queue full, shutting down) says when to come back.
        if (http.status === 503 && !ctx.response.get('Retry-After'))
          ctx.set('Retry-After', error instanceof TaskQueueFullError ? error.headers['Retry-After'] : '5');
        return sendJson(ctx, http.status, { error: http.message, ...http.extra });
      }
      report(error);
      // What is wrong with the store's data (GET /tasks/:id of a record that cannot be read): the message names
      // the task and the problem, never the record's content.
      if (error instanceof TaskStoreError) return sendJson(ctx, 500, { error: error.message, code: error.code });
      // Never the stack or the message of an unexpected error: it may describe the server's internals.
      sendJson(ctx, 500, { error: 'internal error in the task admin API (reported in the server log)' });
    }
  };
  return Object.defineProperties(middleware, {
    sseClients: { get: () => hub.size, enumerable: true },
    close: { value: () => hub.close() },
  }) as AdminMiddleware;
}
