import type { Queue, RedisClient } from 'bullmq';
import type { TaskLimit } from '../options.js';
import type { TaskRun } from '../task-run.js';

/**
 * Takes a key's slot and rate window atomically, on Redis's clock (workers' clocks differ). KEYS: the key's
 * running set (job id → when its hold expires), its window of starts, the job's hash. Answers 0 when the job
 * may start (it is counted), else how many ms to wait. A job sent back to wait gives back the start BullMQ
 * counted when it took it (`ats`), so that its attempt number and retries are as if it had waited in the queue.
 */
const ACQUIRE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local concurrency = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local interval = tonumber(ARGV[4])
local holdMs = tonumber(ARGV[5])
local busyMs = tonumber(ARGV[6])
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if not redis.call('ZSCORE', KEYS[1], id) and redis.call('ZCARD', KEYS[1]) >= concurrency then
    redis.call('HINCRBY', KEYS[3], 'ats', -1)
    return busyMs
  end
end
if max > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - interval)
  if redis.call('ZCARD', KEYS[2]) >= max then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    redis.call('HINCRBY', KEYS[3], 'ats', -1)
    return math.max(1, tonumber(oldest[2]) + interval - now)
  end
  redis.call('ZADD', KEYS[2], now, id .. '@' .. now)
  redis.call('PEXPIRE', KEYS[2], interval)
end
if concurrency > 0 then
  redis.call('ZADD', KEYS[1], now + holdMs, id)
  redis.call('PEXPIRE', KEYS[1], holdMs)
end
return 0
`;

/** Extends a running job's hold on its key (its worker is alive). */
const RENEW = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1]) >= 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`;

const ACQUIRE_COMMAND = 'taskflowLimitAcquire';
const RENEW_COMMAND = 'taskflowLimitRenew';

/** How long a job over a key's concurrency waits before it asks again: about this, jittered ±50 %. */
export const LIMIT_BUSY_RETRY_MS = 200;

/** ioredis's ZREM, beyond BullMQ's client interface (its ioredis client passes it through). */
interface Zrem {
  zrem(key: string, member: string): Promise<number>;
}

interface Hold {
  running: string;
  timer: NodeJS.Timeout;
}

/**
 * The `limit` task option across a worker fleet: a key's running jobs are a Redis sorted set of job ids whose
 * holds expire (`holdMs`, renewed while the job runs: a SIGKILLed worker's holds lapse), its rate a sliding
 * window of start times. A job over the limit goes back to BullMQ delayed, using up no retry.
 */
export class FleetLimits {
  readonly #base: string;
  readonly #holdMs: number;
  readonly #holds = new Map<TaskRun, Hold>();
  readonly #report: (stage: string, error: unknown) => void;
  #client: Promise<RedisClient & Zrem> | undefined;

  /** `base`: the queue's key prefix (`bull:tasks`); `holdMs`: BullMQ's lock duration. */
  constructor(base: string, holdMs: number, report: (stage: string, error: unknown) => void) {
    this.#base = base;
    this.#holdMs = holdMs;
    this.#report = report;
  }

  #commands(queue: Queue): Promise<RedisClient & Zrem> {
    return (this.#client ??= queue.backend.client.then((client) => {
      client.defineCommand(ACQUIRE_COMMAND, { numberOfKeys: 3, lua: ACQUIRE });
      client.defineCommand(RENEW_COMMAND, { numberOfKeys: 1, lua: RENEW });
      return client as RedisClient & Zrem;
    }));
  }

  /** 0: the run holds its key now (release it when its attempt ends); else the ms to wait before asking again. */
  async acquire(queue: Queue, run: TaskRun, jobId: string, limit: TaskLimit): Promise<number> {
    const key = `${this.#base}:taskflow:limit:${limitKeyOf(run, limit)}`;
    const running = `${key}:running`;
    const client = await this.#commands(queue);
    const busyMs = Math.round(LIMIT_BUSY_RETRY_MS * (0.5 + Math.random()));
    const wait = (await client.runCommand(ACQUIRE_COMMAND, [
      running,
      `${key}:starts`,
      `${this.#base}:${jobId}`,
      jobId,
      limit.concurrency ?? 0,
      limit.rate?.max ?? 0,
      limit.rate?.intervalMs ?? 0,
      this.#holdMs,
      busyMs,
    ])) as number;
    if (wait > 0 || limit.concurrency === undefined) return wait;
    const timer = setInterval(
      () => {
        (client.runCommand(RENEW_COMMAND, [running, jobId, this.#holdMs]) as Promise<unknown>).catch((error: unknown) =>
          this.#report(`limit hold of task ${run.id}`, error),
        );
      },
      Math.max(1, Math.floor(this.#holdMs / 2)),
    );
    timer.unref();
    this.#holds.set(run, { running, timer });
    return 0;
  }

  /** The run's attempt has ended: its key's slot frees at once (not when its hold would expire). */
  async release(run: TaskRun, jobId: string): Promise<void> {
    const hold = this.#holds.get(run);
    if (hold === undefined) return;
    this.#holds.delete(run);
    clearInterval(hold.timer);
    const client = await this.#client!;
    await client.zrem(hold.running, jobId);
  }
}

/** The key a run is limited under in Redis: its name, or its name and the value of tag `by` (as in-process). */
function limitKeyOf(run: TaskRun, limit: TaskLimit): string {
  if (limit.by === undefined) return encodeURIComponent(run.name);
  const value = run.tags[limit.by];
  const by = encodeURIComponent(limit.by);
  return `${encodeURIComponent(run.name)}:${value === undefined ? `${by}!` : `${by}=${encodeURIComponent(value)}`}`;
}
