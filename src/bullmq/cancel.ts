import type { Job, Queue, RedisClient } from 'bullmq';
import type { EngineHost } from '../engine.js';
import type { LifecycleEvent } from '../types.js';
import type { JobData } from './job.js';

/** A cancel that reached a worker before the job's run did (it was just taken) is kept this long for it. */
const EARLY_CANCEL_MS = 60_000;

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
  readonly #host: EngineHost;
  #subscriber: RedisClient | undefined;
  /** Cancels of jobs not running here (yet): a worker that takes the job within EARLY_CANCEL_MS cancels it. */
  readonly #early = new Map<string, { reason: string; at: number }>();

  constructor(channel: string, host: EngineHost) {
    this.#channel = channel;
    this.#host = host;
  }

  /**
   * True when the job was waiting (removed now) or running (its worker is told); false when BullMQ has no such
   * job or it has ended. A repeat's next tick is not cancelled (stop the repeat): false.
   */
  async cancel(queue: Queue, id: string, reason: string): Promise<boolean> {
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
      try {
        // A later task of the same request's chain is the parent of this one: it stays (and runs next).
        await job.remove({ removeChildren: false });
        this.#removed(job, reason);
        return true;
      } catch {
        // Locked by a worker that has just taken it: read its state again.
      }
    }
    return false;
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

  /** The reason of a cancel of job `id` that arrived before its run here, if any (taken: it applies once). */
  take(id: string): string | undefined {
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
