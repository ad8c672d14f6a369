/**
 * Live events of the whole fleet: BullMQ's QueueEvents (its queue's event stream, written by every worker)
 * turned into our lifecycle and progress events, for the admin's event stream in any process.
 */
import { INVALID_SPANID, INVALID_TRACEID } from '@opentelemetry/api';
import type { ConnectionOptions, Queue, QueueEvents } from 'bullmq';
import type { Redactor } from '../redact.js';
import type { LifecycleEvent, ProgressEvent, TaskObserver } from '../types.js';
import type { JobData, SpanIds } from './job.js';
import { failureOf, redisOf, statusOfState } from './records.js';

export interface FleetEventsOptions {
  connection: ConnectionOptions;
  name: string;
  prefix: string | undefined;
  queue: () => Promise<Queue>;
  loadQueueEvents: () => Promise<typeof QueueEvents>;
  redact: () => Redactor | undefined;
  report: (stage: string, error: unknown) => void;
}

/** What an event needs of its job, read once per job. */
interface JobInfo {
  taskId: string;
  name: string;
  tags: Record<string, string>;
  link: SpanIds | undefined;
  previous: SpanIds | undefined;
}

const MAX_CACHED = 10_000;
/** The QueueEvents read as lifecycle events (their status: statusOfState). */
const STATES: ReadonlySet<string> = new Set([
  'waiting',
  'delayed',
  'prioritized',
  'waiting-children',
  'active',
  'completed',
  'failed',
]);

/**
 * One QueueEvents reader while at least one observer is subscribed (none otherwise: an idle admin costs the
 * fleet nothing). Events are delivered in the stream's order; each job is read once (its name, tags and
 * span ids), then its attempt number and times with each event.
 */
export class FleetEvents {
  readonly #options: FleetEventsOptions;
  readonly #observers = new Set<TaskObserver>();
  readonly #jobs = new Map<string, JobInfo>();
  #events: Promise<QueueEvents> | undefined;
  #delivering: Promise<void> = Promise.resolve();

  constructor(options: FleetEventsOptions) {
    this.#options = options;
  }

  subscribe(observer: TaskObserver): () => void {
    this.#observers.add(observer);
    if (this.#events === undefined) {
      const opening = (this.#events = this.#open());
      // Not reading (bullmq missing, Redis away): reported; the next subscriber after the last one left tries again.
      opening.catch((error: unknown) => this.#options.report('BullMQ QueueEvents', error));
    }
    return () => {
      if (!this.#observers.delete(observer) || this.#observers.size > 0) return;
      const events = this.#events;
      this.#events = undefined;
      void events
        ?.then((e) => e.close())
        .catch((error: unknown) => this.#options.report('BullMQ QueueEvents close', error));
    };
  }

  /** Stop reading (the manager's shutdown). */
  async close(): Promise<void> {
    this.#observers.clear();
    const events = this.#events;
    this.#events = undefined;
    await events?.then((e) => e.close()).catch(() => undefined);
  }

  async #open(): Promise<QueueEvents> {
    const QueueEventsClass = await this.#options.loadQueueEvents();
    const { connection, prefix, name } = this.#options;
    // From the moment of the subscription, though the reader connects later: no event of the meantime is missed.
    const lastEventId = `${Date.now()}-0`;
    const events = new QueueEventsClass(name, { connection, lastEventId, ...(prefix !== undefined && { prefix }) });
    events.on('error', (error) => this.#options.report('BullMQ QueueEvents', error));
    const on = (state: string) =>
      events.on(state as 'waiting', (args: { jobId: string; prev?: string; failedReason?: string }, id: string) =>
        this.#queue(() => this.#lifecycle(state, args, id)),
      );
    for (const state of STATES) on(state);
    events.on('progress', ({ jobId, data }: { jobId: string; data: unknown }, id: string) =>
      this.#queue(() => this.#progress(jobId, data, id)),
    );
    await events.waitUntilReady();
    return events;
  }

  #queue(deliver: () => Promise<void>): void {
    this.#delivering = this.#delivering
      .then(deliver)
      .catch((error: unknown) => this.#options.report('BullMQ event delivery', error));
  }

  /** The job's info and its attempt fields now; undefined for a job gone (removed) that was never seen. */
  async #read(jobId: string): Promise<[JobInfo, (string | null)[]] | undefined> {
    const queue = await this.#options.queue();
    const redis = await redisOf(queue);
    let info = this.#jobs.get(jobId);
    const fields = ['ats', 'processedOn', 'finishedOn', 'name', ...(info === undefined ? ['data'] : [])];
    const values = await redis.hmget(queue.toKey(jobId), ...fields);
    if (info === undefined) {
      const data = values[4] === null ? undefined : (JSON.parse(values[4]) as JobData);
      if (data === undefined || values[3] === null || typeof data.id !== 'string') return undefined;
      const tags = this.#options.redact()?.tags(data.options?.tags ?? {}) ?? data.options?.tags ?? {};
      info = { taskId: data.id, name: values[3], tags: { ...tags }, link: data.link, previous: data.previous };
      if (this.#jobs.size >= MAX_CACHED) this.#jobs.delete(this.#jobs.keys().next().value!);
      this.#jobs.set(jobId, info);
    }
    return [info, values];
  }

  async #lifecycle(
    state: string,
    args: { jobId: string; prev?: string; failedReason?: string },
    streamId: string,
  ): Promise<void> {
    if (this.#observers.size === 0) return;
    const read = await this.#read(args.jobId);
    if (read === undefined) return;
    const [info, [ats, processedOn, finishedOn]] = read;
    const error = state === 'failed' ? failureOf(args.failedReason ?? '', undefined) : undefined;
    const event: LifecycleEvent = {
      type: 'lifecycle',
      taskId: info.taskId,
      name: info.name,
      attempt: Number(ats ?? 0),
      status: statusOfState(state, error),
      tags: info.tags,
      time: Number(streamId.split('-')[0]) || Date.now(),
    };
    if (args.prev !== undefined && STATES.has(args.prev)) event.previousStatus = statusOfState(args.prev, undefined);
    if (error !== undefined) event.error = error;
    if ((state === 'completed' || state === 'failed') && processedOn !== null && finishedOn !== null)
      event.durationMs = Math.max(0, Number(finishedOn) - Number(processedOn));
    if (info.link !== undefined) [event.requestTraceId, event.requestSpanId] = info.link;
    if (state === 'completed' || state === 'failed') this.#jobs.delete(args.jobId);
    this.#deliver((observer) => observer.onLifecycle?.(event));
  }

  async #progress(jobId: string, data: unknown, streamId: string): Promise<void> {
    if (this.#observers.size === 0) return;
    const value = typeof data === 'number' ? data : (data as { value?: unknown } | null)?.value;
    if (typeof value !== 'number') return;
    const read = await this.#read(jobId);
    if (read === undefined) return;
    const [info, [ats]] = read;
    const event: ProgressEvent = {
      type: 'progress',
      taskId: info.taskId,
      name: info.name,
      attempt: Number(ats ?? 0),
      tags: info.tags,
      time: Number(streamId.split('-')[0]) || Date.now(),
      traceId: info.previous?.[0] ?? INVALID_TRACEID,
      spanId: info.previous?.[1] ?? INVALID_SPANID,
      value,
      fields: {},
    };
    this.#deliver((observer) => observer.onProgress?.(event));
  }

  #deliver(call: (observer: TaskObserver) => unknown): void {
    for (const observer of this.#observers) {
      try {
        void Promise.resolve(call(observer)).catch((error: unknown) =>
          this.#options.report('admin event observer', error),
        );
      } catch (error) {
        this.#options.report('admin event observer', error);
      }
    }
  }
}
