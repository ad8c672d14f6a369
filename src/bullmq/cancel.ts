import type { Job, Queue, RedisClient } from 'bullmq';
import type { EngineHost } from '../engine.js';
import type { LifecycleEvent } from '../types.js';
import type { JobData } from './job.js';

/** A cancel that reached a worker before the job's run did (it was just taken) is kept this long for it. */
const EARLY_CANCEL_MS = 60_000;

/** How long a cancel of a request's step waiting for the one before is kept for it (BullMQ's default retention). */
const MARK_MS = 7 * 24 * 3600 * 1000;

/**
 * Marks a job cancelled if it still waits for its children (atomically: once marked, it cannot have been
 * taken by a worker before the mark). KEYS: the queue's waiting-children set, the mark.
 */
const MARK = `
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
`;
const MARK_COMMAND = 'taskflowCancelMark';

/** ioredis commands beyond BullMQ's client interface (its ioredis client passes them through). */
interface PubSub {
  publish(channel: string, message: string): Promise<number>;
  subscribe(channel: string): Promise<unknown>;
}

interface CancelMessage {
  id: string;
  reason: string;
}

/**
 * `manager.cancel(id)` through BullMQ, from any process. A job not running is removed (BullMQ refuses to
 * remove a locked one, so a job that has just started is not removed under its worker); a running one is
 * aborted by whichever worker runs it, told over a Redis pub/sub channel under the queue's prefix that every
 * worker subscribes to.
 */
export class CancelChannel {
  readonly #channel: string;
  /** The queue's keys (`bull:tasks`). */
  readonly #base: string;
  readonly #host: EngineHost;
  #defined = false;
  #subscriber: RedisClient | undefined;
  /** Cancels of jobs not running here (yet): a worker that takes the job within EARLY_CANCEL_MS cancels it. */
  readonly #early = new Map<string, { reason: string; at: number }>();

  constructor(base: string, host: EngineHost) {
    this.#base = base;
    this.#channel = `${base}:taskflow:cancel`;
    this.#host = host;
  }

  /**
   * True when the job was waiting (removed now) or running (its worker is told); false when BullMQ has no such
   * job or it has ended. A repeat's next tick is not cancelled (stop the repeat): false. `announce`: a
   * removed job's task ends `cancelled` in this process's observers (false: it already has here).
   */
  async cancel(queue: Queue, id: string, reason: string, announce = true): Promise<boolean> {
    const job = (await queue.getJob(id)) as Job<JobData> | undefined;
    if (job === undefined) return false;
    // A job that starts between the state read and the removal is locked: removal fails, the next read says active.
    for (let tries = 0; tries < 3; tries++) {
      const state = await job.getState();
      if (state === 'completed' || state === 'failed' || state === 'unknown') return false;
      if (state === 'active') {
        const message: CancelMessage = { id, reason };
        const client = (await queue.backend.client) as RedisClient & PubSub;
        await client.publish(this.#channel, JSON.stringify(message));
        return true;
      }
      if (job.repeatJobKey !== undefined) return false;
      // A step of a request waiting for the one before, with a next step waiting for it: removing it would
      // start the next step at once, beside the one still running. It is marked instead, and ends cancelled
      // without running when its turn comes (a cancelled step does not hold the next one back).
      if (state === 'waiting-children' && job.parentKey !== undefined) {
        if (await this.#mark(queue, id, reason)) return true;
        continue;
      }
      try {
        // A later task of the same request's chain is the parent of this one: it stays (and runs next).
        await job.remove({ removeChildren: false });
        if (announce) this.#removed(job, reason);
        return true;
      } catch {
        // Locked by a worker that has just taken it: read its state again.
      }
    }
    return false;
  }

  async #mark(queue: Queue, id: string, reason: string): Promise<boolean> {
    const client = await queue.backend.client;
    if (!this.#defined) {
      client.defineCommand(MARK_COMMAND, { numberOfKeys: 2, lua: MARK });
      this.#defined = true;
    }
    const keys = [`${this.#base}:waiting-children`, this.#markKey(id)];
    return (await client.runCommand(MARK_COMMAND, [...keys, id, reason, MARK_MS])) === 1;
  }

  #markKey(id: string): string {
    return `${this.#base}:taskflow:cancelled:${id}`;
  }

  /**
   * The reason of a cancel waiting for job `id`: one that reached this worker just before the job (taken: it
   * applies once), or the mark of a request's step cancelled while it waited for the one before.
   */
  async pending(queue: Queue, job: Job<JobData>): Promise<string | undefined> {
    const early = this.#take(job.id!);
    if (early !== undefined || job.parentKey === undefined) return early;
    // Read, then deleted: only this worker holds the job's lock, so nobody else reads the mark meanwhile.
    const client = await queue.backend.client;
    const mark = this.#markKey(job.id!);
    const reason = await client.get(mark);
    if (reason === null) return undefined;
    await client.del(mark);
    return reason;
  }

  /** The removed job's task ends `cancelled` in the observers (pino, admin events) of the process that cancelled it. */
  #removed(job: Job<JobData>, reason: string): void {
    const chain = this.#host.runHost.chain;
    if (!chain.hasLifecycle || !chain.wantsLifecycle('cancelled', false)) return;
    const tags = job.data.options.tags ?? {};
    const event: LifecycleEvent = {
      type: 'lifecycle',
      taskId: job.data.id === '' ? job.id! : job.data.id,
      name: job.name,
      attempt: job.attemptsStarted,
      status: 'cancelled',
      previousStatus: 'pending',
      tags: this.#host.runHost.redact.tags(tags),
      time: Date.now(),
      reason,
    };
    chain.emitLifecycle(event);
  }

  /** A worker listens: `abort(id, reason)` cancels the run of job `id` here and answers whether it had one. */
  async subscribe(queue: Queue, abort: (id: string, reason: string) => boolean): Promise<void> {
    const subscriber = (this.#subscriber = (await queue.backend.client).duplicate() as RedisClient & PubSub);
    subscriber.on('error', (error: unknown) => this.#host.reporter.report('BullMQ cancel channel', error));
    subscriber.on('message', (channel: string, text: string) => {
      if (channel !== this.#channel) return;
      let message: CancelMessage;
      try {
        message = JSON.parse(text) as CancelMessage;
      } catch {
        return;
      }
      if (typeof message?.id !== 'string' || typeof message.reason !== 'string') return;
      if (abort(message.id, message.reason)) return;
      const now = Date.now();
      for (const [id, early] of this.#early) if (early.at < now - EARLY_CANCEL_MS) this.#early.delete(id);
      this.#early.set(message.id, { reason: message.reason, at: now });
    });
    await subscriber.subscribe(this.#channel);
  }

  #take(id: string): string | undefined {
    if (this.#early.size === 0) return undefined;
    const early = this.#early.get(id);
    if (early === undefined) return undefined;
    this.#early.delete(id);
    return early.at >= Date.now() - EARLY_CANCEL_MS ? early.reason : undefined;
  }

  async close(): Promise<void> {
    const subscriber = this.#subscriber;
    this.#subscriber = undefined;
    await subscriber?.quit().catch(() => subscriber.disconnect());
  }
}
