import type { Middleware } from 'koa';
import type { Acceptance } from './acceptance.js';
import { TaskQueueFullError } from './errors.js';
import type { Reporter } from './report.js';
import { RequestTasks, TaskScheduler } from './scheduler.js';

/** The Koa middleware behind `manager.middleware()`: a `TaskScheduler` on `ctx.tasks` and `ctx.state.tasks`. */
export function taskMiddleware(acceptance: Acceptance, reporter: Reporter): Middleware {
  return async function taskflow(ctx, next) {
    const request = new RequestTasks(acceptance, ctx.res);
    const tasks = new TaskScheduler(request, undefined);
    ctx.tasks = tasks;
    ctx.state.tasks = tasks;
    try {
      await next();
    } catch (error) {
      await requestFailed(ctx, request, error, reporter);
      throw error;
    }
    // The handler caught a TaskQueueFullError and answered anyway: the request still fails, so the client
    // is not told its work was accepted when part of it was refused.
    const queueFull = request.queueFull;
    if (queueFull !== undefined) {
      await requestFailed(ctx, request, queueFull, reporter);
      throw queueFull;
    }
    request.routeDone();
    const written = request.flush();
    if (written === undefined) return;
    try {
      await written;
    } catch (error) {
      reporter.report('store write before the response', error);
      ctx.throw(503, 'the task store is unavailable; the request was not acknowledged');
    }
  };
}

/**
 * The request failed (or hit `maxQueued`): its tasks waiting for the route or the response end
 * `cancelled` (reason `request_failed`) unless `runOnError`, and their records are written.
 */
async function requestFailed(
  ctx: { set(field: string, value: string): void },
  request: RequestTasks,
  error: unknown,
  reporter: Reporter,
): Promise<void> {
  request.routeFailed();
  await request.flush()?.catch((e: unknown) => reporter.report('store write of a failed request', e));
  // Set here as well as on the error: an error-handling middleware of the app's may not copy err.headers.
  const full = request.queueFull ?? (error instanceof TaskQueueFullError ? error : undefined);
  if (full !== undefined) ctx.set('Retry-After', full.headers['Retry-After']);
}

declare module 'koa' {
  interface DefaultContext {
    /** The per-request task scheduler installed by `manager.middleware()`. */
    tasks: TaskScheduler;
  }
}
