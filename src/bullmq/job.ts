import type { SpanContext } from '@opentelemetry/api';
import type { JobsOptions } from 'bullmq';
import { persistedOptions } from '../durable.js';
import type { ResolvedTaskOptions, TaskOptions } from '../options.js';
import type { TaskRun } from '../task-run.js';

/** The backoff type of our jobs: the worker computes the wait with the task's own delay/backoff/maxDelay/jitter. */
export const BACKOFF_TYPE = 'koa-taskflow';

/** A span context in a job: `[traceId, spanId, traceFlags]`. */
export type SpanIds = [string, string, number];

/** What a job carries from the process that added the task to the worker that runs it. */
export interface JobData {
  /** The task's id; empty in the jobs of a repeat's scheduler, whose task id is the job's id. */
  id: string;
  args: unknown[];
  /**
   * The options the task was added with, resolved there: a `with()` on the web side holds in the worker.
   * Absent when it was added with its registration's own options (the worker resolves those from its own
   * registration), or only the tags and priority then, which the admin reads back without a registration.
   */
  options?: TaskOptions;
  createdAt: number;
  /** The span active when the task was added (the request's), with its sampling decision. */
  link?: SpanIds;
  /** The span of the latest attempt that started, written by the worker as it starts: the next one links to it. */
  previous?: SpanIds;
}

export function toIds(context: SpanContext | undefined): SpanIds | undefined {
  return context === undefined ? undefined : [context.traceId, context.spanId, context.traceFlags];
}

export function fromIds(ids: SpanIds | undefined): SpanContext | undefined {
  return ids === undefined ? undefined : { traceId: ids[0], spanId: ids[1], traceFlags: ids[2], isRemote: true };
}

/**
 * BullMQ rejects custom ids holding `:` (its key separator) or reading as integers: an idempotency key is
 * escaped into one that is neither, one to one, so equal keys still meet on one job.
 */
export function jobIdOfKey(key: string): string {
  return `key=${key.replaceAll('%', '%25').replaceAll(':', '%3A')}`;
}

/**
 * What a job carries of a task's resolved options: what a restarted process would read back from a durable
 * store, and what a record carries besides (functions such as onError stay with the worker's registration).
 */
export function jobTaskOptions(resolved: ResolvedTaskOptions): TaskOptions {
  const options: TaskOptions = { ...persistedOptions(resolved), tags: resolved.tags, retries: resolved.retries };
  if (resolved.priority !== undefined) options.priority = resolved.priority;
  if (resolved.idempotencyKey !== undefined) options.idempotencyKey = resolved.idempotencyKey;
  return options;
}

/** BullMQ's options for what BullMQ does itself of a task's options: attempts, backoff, priority, retention. */
export function jobRunOptions(
  resolved: ResolvedTaskOptions,
  keep: Pick<JobsOptions, 'removeOnComplete' | 'removeOnFail'>,
): JobsOptions {
  const opts: JobsOptions = { attempts: resolved.retries + 1, ...keep };
  if (resolved.retries > 0) opts.backoff = { type: BACKOFF_TYPE };
  // Ours: 1–10, higher first. BullMQ's: 1 first, larger later.
  if (resolved.priority !== undefined) opts.priority = 11 - resolved.priority;
  return opts;
}

/** What every job added with one set of resolved options carries besides the task's own id, args and link. */
export interface JobShape {
  options: TaskOptions | undefined;
  opts: JobsOptions;
}

/**
 * The shape of a task added with `resolved` options. A task added with its registration's own options
 * (`registered`: no `with()`, no per-add override) carries only what the admin reads back without the
 * registration; the web process builds that shape once per registration, not once per add.
 */
export function jobShape(
  resolved: ResolvedTaskOptions,
  registered: boolean,
  keep: Pick<JobsOptions, 'removeOnComplete' | 'removeOnFail'>,
): JobShape {
  const opts = jobRunOptions(resolved, keep);
  if (!registered) return { options: jobTaskOptions(resolved), opts };
  let options: TaskOptions | undefined = Object.keys(resolved.tags).length > 0 ? { tags: resolved.tags } : undefined;
  if (resolved.priority !== undefined) (options ??= {}).priority = resolved.priority;
  return { options, opts };
}

/** The job of an accepted task: its data, and BullMQ's options for what BullMQ does itself. */
export function jobOf(run: TaskRun, shape: JobShape): { data: JobData; opts: JobsOptions } {
  const resolved = run.options;
  const record = run.record;
  const data: JobData =
    shape.options === undefined
      ? { id: run.id, args: record.args, createdAt: record.createdAt }
      : { id: run.id, args: record.args, options: shape.options, createdAt: record.createdAt };
  const link = toIds(run.requestLink);
  if (link !== undefined) data.link = link;
  const opts: JobsOptions = {
    ...shape.opts,
    jobId: resolved.idempotencyKey === undefined ? run.id : jobIdOfKey(resolved.idempotencyKey),
  };
  if (record.runAt !== undefined) opts.delay = Math.max(0, record.runAt - Date.now());
  return { data, opts };
}
