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
  /** The options the task was added with, resolved there: a `with()` on the web side holds in the worker. */
  options: TaskOptions;
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

/** The job of an accepted task: its data, and BullMQ's options for what BullMQ does itself. */
export function jobOf(
  run: TaskRun,
  keep: Pick<JobsOptions, 'removeOnComplete' | 'removeOnFail'>,
): { data: JobData; opts: JobsOptions } {
  const resolved = run.options;
  const record = run.record;
  const data: JobData = {
    id: run.id,
    args: record.args,
    options: jobTaskOptions(resolved),
    createdAt: record.createdAt,
  };
  const link = toIds(run.requestLink);
  if (link !== undefined) data.link = link;
  const opts = jobRunOptions(resolved, keep);
  opts.jobId = resolved.idempotencyKey === undefined ? run.id : jobIdOfKey(resolved.idempotencyKey);
  if (record.runAt !== undefined) opts.delay = Math.max(0, record.runAt - Date.now());
  return { data, opts };
}
