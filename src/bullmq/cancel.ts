import type { Job, Queue, RedisClient } from 'bullmq';
import type { EngineHost } from '../engine.js';
import type { JobData } from './job.js';
import { idKey } from './records.js';

/** A cancel of a job running nowhere here yet (a worker has just taken it) is kept this long for it. */
const EARLY_CANCEL_MS = 60_000;
/** Marks older than this (a marked job that BullMQ dropped since) are forgotten: BullMQ's default retention. */
const MARK_MS = 7 * 24 * 3600 * 1000;

/**
 * Marks a job cancelled unless it is running or has ended, atomically: a job marked here is not being run, so
 * the worker that takes it next sees the mark first. KEYS: the job's hash, the queue's active list, the marks.
 * ARGV: the job id, the mark (JSON).
 */
const MARK = `
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'finishedOn') == 1 then return 0 end
if redis.call('LPOS', KEYS[2], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return 1
`;
const MARK_COMMAND = 'taskflowCancelMark';

/** ioredis commands beyond BullMQ's client interface (its ioredis client passes them through). */
interface PubSub {
  publish(channel: string, message: string): Promise<number>;
  subscribe(channel: string): Promise<unknown>;
  hgetall(key: string): Promise<Record<string, string>>;
}

/** What goes over the channel: a cancel (of a task id, with its job's id when marked), or a mark consumed. */
interface CancelMessage {
  id?: string;
  jobId?: string;
  reason?: string;
  /** The job's mark is set: a worker that takes the job ends it cancelled. */
  marked?: boolean;
  /** The job's mark was consumed by the worker that took it. */
  unmarked?: boolean;
}

interface Mark {
  reason: string;
  at: number;
}

/**
 * `manager.cancel(id)` through BullMQ, from any process. BullMQ has no cancelled state and no way to fail a
 * job that is not running, so a job not running is **marked** (a hash under the queue's prefix, mirrored in
 * every worker's memory over a pub/sub channel: no round trip per job) and brought forward; the worker that
 * takes it ends the task `cancelled` without running it, failing the job with a TaskCancelledError (what the
 * admin reads back as `cancelled`). A running job is aborted by whichever worker runs it, told over the same
 * channel.
 */
export class CancelChannel {
  readonly #channel: string;
  readonly #marksKey: string;
  /** The queue's keys (`bull:tasks`). */
  readonly #base: string;
  readonly #host: EngineHost;
  #defined = false;
  #subscriber: (RedisClient & PubSub) | undefined;
  /** The marks, by job id, as a worker knows them (loaded when it subscribes, then kept by the channel). */
  readonly #marks = new Map<string, Mark>();
  /** Cancels of task ids not running here: a worker that takes the task within EARLY_CANCEL_MS cancels it. */
  readonly #early = new Map<string, Mark>();

  constructor(base: string, host: EngineHost) {
    this.#base = base;
    this.#channel = `${base}:taskflow:cancel`;
    this.#marksKey = `${base}:taskflow:cancelled`;
    this.#host = host;
  }

  /**
   * True when the task had not ended (a waiting job is marked, a running one's worker is told); false when
   * BullMQ has no such task or it has ended. A repeat's next tick is not cancelled (stop the repeat): false.
   */
  async cancel(queue: Queue, id: string, reason: string): Promise<boolean> {
    const client = (await queue.backend.client) as RedisClient & PubSub;
    let job = (await queue.getJob(id)) as Job<JobData> | undefined;
    if (job === undefined) {
      // A task with an idempotencyKey: its job's id is the key's, found through the admin's index.
      const jobId = await client.get(idKey(queue, id));
      if (jobId !== null) job = (await queue.getJob(jobId)) as Job<JobData> | undefined;
    }
    if (job === undefined || (job.data.id !== '' && job.data.id !== id)) return false;
    const jobId = job.id!;
    // A job that a worker takes between the state read and the mark is not marked: the next read says active.
    for (let tries = 0; tries < 3; tries++) {
      const state = await job.getState();
      if (state === 'completed' || state === 'failed' || state === 'unknown') return false;
      if (state === 'active') {
        await this.#publish(client, { id, reason });
        return true;
      }
      if (job.repeatJobKey !== undefined) return false;
      if (await this.#mark(client, jobId, reason)) {
        await this.#publish(client, { id, jobId, reason, marked: true });
        // Brought forward, so that it ends now rather than in its turn: a delayed job is due now, a waiting
        // one goes to the head of the queue. One waiting for a request's step before it (waiting-children)
        // keeps its place: it ends when its turn comes, and the next step then runs, in order.
        if (state === 'delayed') await job.promote().catch(() => undefined);
        else if (state === 'waiting' || state === 'prioritized')
          await job.changePriority({ priority: 0, lifo: true }).catch(() => undefined);
        return true;
      }
    }
    return false;
  }

  async #mark(client: RedisClient, jobId: string, reason: string): Promise<boolean> {
    if (!this.#defined) {
      client.defineCommand(MARK_COMMAND, { numberOfKeys: 3, lua: MARK });
      this.#defined = true;
    }
    const mark: Mark = { reason, at: Date.now() };
    const keys = [`${this.#base}:${jobId}`, `${this.#base}:active`, this.#marksKey];
    return (await client.runCommand(MARK_COMMAND, [...keys, jobId, JSON.stringify(mark)])) === 1;
  }

  async #publish(client: RedisClient & PubSub, message: CancelMessage): Promise<void> {
    await client.publish(this.#channel, JSON.stringify(message));
  }

  /**
   * A worker listens: `abort(id, reason)` cancels the run of task `id` here and answers whether it had one.
   * The marks are loaded once subscribed, and again whenever the connection comes back (messages sent while
   * it was away are lost).
   */
  async subscribe(queue: Queue, abort: (id: string, reason: string) => boolean): Promise<void> {
    // A subscribed connection runs no other command: the marks are read through the queue's.
    const client = (await queue.backend.client) as RedisClient & PubSub;
    const subscriber = (this.#subscriber = client.duplicate() as RedisClient & PubSub);
    const load = async () => {
      const stored = await client.hgetall(this.#marksKey);
      this.#marks.clear();
      const now = Date.now();
      const stale: string[] = [];
      for (const [jobId, text] of Object.entries(stored)) {
        const mark = parseMark(text);
        if (mark !== undefined && mark.at > now - MARK_MS) this.#marks.set(jobId, mark);
        else stale.push(jobId);
      }
      // Marks of jobs BullMQ removed before any worker took them (or unreadable ones): dropped, so the hash
      // does not grow with every such cancel.
      for (let i = 0; i < stale.length; i += 1000) await client.hdel(this.#marksKey, ...stale.slice(i, i + 1000));
    };
    subscriber.on('error', (error: unknown) => this.#host.reporter.report('BullMQ cancel channel', error));
    subscriber.on('message', (channel: string, text: string) => {
      if (channel === this.#channel) this.#received(text, abort);
    });
    await subscriber.subscribe(this.#channel);
    subscriber.on('ready', () => {
      load().catch((error: unknown) => this.#host.reporter.report('BullMQ cancel marks', error));
    });
    await load();
  }

  #received(text: string, abort: (id: string, reason: string) => boolean): void {
    let message: CancelMessage;
    try {
      message = JSON.parse(text) as CancelMessage;
    } catch {
      return;
    }
    const now = Date.now();
    if (typeof message.jobId === 'string') {
      if (message.unmarked === true) this.#marks.delete(message.jobId);
      else if (message.marked === true && typeof message.reason === 'string')
        this.#marks.set(message.jobId, { reason: message.reason, at: now });
    }
    if (typeof message.id !== 'string' || typeof message.reason !== 'string') return;
    // Running here (or taken here a moment before the mark was set): cancelled now.
    if (abort(message.id, message.reason) || message.marked === true) return;
    for (const [id, early] of this.#early) if (early.at < now - EARLY_CANCEL_MS) this.#early.delete(id);
    this.#early.set(message.id, { reason: message.reason, at: now });
  }

  /**
   * The reason of a cancel waiting for this job, taken (it applies once): its mark, or a cancel that reached
   * this worker just before it took the job. No round trip: both are in memory.
   */
  pending(queue: Queue, job: Job<JobData>, taskId: string): string | undefined {
    const jobId = job.id!;
    const mark = this.#marks.get(jobId);
    if (mark !== undefined) {
      this.#marks.delete(jobId);
      void this.#unmark(queue, jobId);
      return mark.reason;
    }
    if (this.#early.size === 0) return undefined;
    const early = this.#early.get(taskId);
    if (early === undefined) return undefined;
    this.#early.delete(taskId);
    return early.at >= Date.now() - EARLY_CANCEL_MS ? early.reason : undefined;
  }

  async #unmark(queue: Queue, jobId: string): Promise<void> {
    try {
      const client = (await queue.backend.client) as RedisClient & PubSub;
      await client.hdel(this.#marksKey, jobId);
      await this.#publish(client, { jobId, unmarked: true });
    } catch (error) {
      this.#host.reporter.report(`BullMQ cancel mark of job ${jobId}`, error);
    }
  }

  async close(): Promise<void> {
    const subscriber = this.#subscriber;
    this.#subscriber = undefined;
    subscriber?.removeAllListeners('ready');
    await subscriber?.quit().catch(() => subscriber.disconnect());
  }
}

function parseMark(text: string): Mark | undefined {
  try {
    const mark = JSON.parse(text) as Mark;
    return typeof mark?.reason === 'string' && typeof mark.at === 'number' ? mark : undefined;
  } catch {
    return undefined;
  }
}
