import type { Queue, RedisClient } from 'bullmq';
import type { TaskLimit } from '../options.js';
import type { TaskRun } from '../task-run.js';

/**
 * Redis's clock, in ms, inside a script: workers' clocks differ. (Before Redis 7 a script must ask for effects
 * replication to write after reading the clock; from 7 on that is how every script replicates.)
 */
const NOW = `
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`;

/**
 * Takes a key's slot and rate window atomically. KEYS: the key's running set (job id → when its hold
 * expires), its window of starts, the job's hash. Answers 0 when the job may start (it is counted), -1 when
 * the key's concurrency is full (the job parks), else the ms until the rate window opens. A job sent back
 * gives back the start BullMQ counted when it took it (`ats`), so that its attempt number and retries are as
 * if it had waited in the queue.
 */
const ACQUIRE = `${NOW}
local id = ARGV[1]
local concurrency = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local interval = tonumber(ARGV[4])
local holdMs = tonumber(ARGV[5])
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if not redis.call('ZSCORE', KEYS[1], id) and redis.call('ZCARD', KEYS[1]) >= concurrency then
    redis.call('HINCRBY', KEYS[3], 'ats', -1)
    return -1
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

/**
 * Gives a free slot of the key to its longest parked job: answers that job's id (to promote), or false.
 * KEYS: the running set, the parked set; ARGV[2] the key's concurrency.
 */
const WAKE = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  local next = redis.call('ZPOPMIN', KEYS[2])
  if next[1] then return next[1] end
end
return false
`;

/** A job parks (after it has gone back delayed): it is woken at once if the slot freed meanwhile. ARGV[3]: hold ms. */
const PARK = `${NOW}
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) * 2)
${WAKE}`;

/** A job's attempt has ended (ARGV[1], or '' to only wake): its slot goes to the next parked job. */
const RELEASE = `${NOW}
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[1]) end
${WAKE}`;

/** Extends a running job's hold on its key (its worker is alive). */
const RENEW = `${NOW}
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 0
`;

const COMMANDS = {
  taskflowLimitAcquire: { numberOfKeys: 3, lua: ACQUIRE },
  taskflowLimitPark: { numberOfKeys: 2, lua: PARK },
  taskflowLimitRelease: { numberOfKeys: 2, lua: RELEASE },
  taskflowLimitRenew: { numberOfKeys: 1, lua: RENEW },
};

/** A job over its key's concurrency: ACQUIRE's answer. */
export const LIMIT_PARK = -1;

interface Hold {
  keys: [running: string, parked: string];
  concurrency: number;
  timer: NodeJS.Timeout;
}

/**
 * The `limit` task option across a worker fleet. A key's running jobs are a Redis sorted set of job ids whose
 * holds expire (`holdMs`, renewed while the job runs: a SIGKILLed worker's holds lapse), its rate a sliding
 * window of start times. A job over the concurrency goes back to BullMQ delayed and parks: the attempt that
 * frees a slot promotes the longest parked job (no polling); one whose waker died looks again after `holdMs`.
 * A job over the rate goes back delayed until the window opens. Neither uses up a retry.
 */
export class FleetLimits {
  readonly #base: string;
  /** How long a hold lasts without renewal, and a parked job waits at most: BullMQ's lock duration. */
  readonly parkMs: number;
  readonly #holds = new Map<TaskRun, Hold>();
  readonly #report: (stage: string, error: unknown) => void;
  #client: Promise<RedisClient> | undefined;

  /** `base`: the queue's key prefix (`bull:tasks`); `holdMs`: BullMQ's lock duration. */
  constructor(base: string, holdMs: number, report: (stage: string, error: unknown) => void) {
    this.#base = base;
    this.parkMs = holdMs;
    this.#report = report;
  }

  #commands(queue: Queue): Promise<RedisClient> {
    return (this.#client ??= queue.backend.client.then((client) => {
      for (const [name, definition] of Object.entries(COMMANDS)) client.defineCommand(name, definition);
      return client;
    }));
  }

  #keys(run: TaskRun, limit: TaskLimit): [running: string, parked: string] {
    const key = `${this.#base}:taskflow:limit:${limitKeyOf(run, limit)}`;
    return [`${key}:running`, `${key}:parked`];
  }

  /**
   * 0: the run holds its key now (release it when its attempt ends); LIMIT_PARK: the key's concurrency is full
   * (move the job to delayed for `parkMs`, then `park` it); else the ms until the rate lets it start.
   */
  async acquire(queue: Queue, run: TaskRun, jobId: string, limit: TaskLimit): Promise<number> {
    const keys = this.#keys(run, limit);
    const client = await this.#commands(queue);
    const answer = (await client.runCommand('taskflowLimitAcquire', [
      keys[0],
      `${keys[0].slice(0, -':running'.length)}:starts`,
      `${this.#base}:${jobId}`,
      jobId,
      limit.concurrency ?? 0,
      limit.rate?.max ?? 0,
      limit.rate?.intervalMs ?? 0,
      this.parkMs,
    ])) as number;
    if (answer !== 0 || limit.concurrency === undefined) return answer;
    const timer = setInterval(
      () => {
        (client.runCommand('taskflowLimitRenew', [keys[0], jobId, this.parkMs]) as Promise<unknown>).catch(
          (error: unknown) => this.#report(`limit hold of task ${run.id}`, error),
        );
      },
      Math.max(1, Math.floor(this.parkMs / 2)),
    );
    timer.unref();
    this.#holds.set(run, { keys, concurrency: limit.concurrency, timer });
    return 0;
  }

  /** The job (now delayed) waits for its key's next free slot; if one freed meanwhile, it is woken at once. */
  async park(queue: Queue, run: TaskRun, jobId: string, limit: TaskLimit): Promise<void> {
    const keys = this.#keys(run, limit);
    const client = await this.#commands(queue);
    const next = (await client.runCommand('taskflowLimitPark', [...keys, jobId, limit.concurrency!, this.parkMs])) as
      string | null;
    await this.#wake(queue, client, keys, limit.concurrency!, next);
  }

  /** The run's attempt has ended: its key's slot frees at once, for the longest parked job. */
  async release(queue: Queue, run: TaskRun, jobId: string): Promise<void> {
    const hold = this.#holds.get(run);
    if (hold === undefined) return;
    this.#holds.delete(run);
    clearInterval(hold.timer);
    const client = await this.#commands(queue);
    const next = (await client.runCommand('taskflowLimitRelease', [...hold.keys, jobId, hold.concurrency])) as
      string | null;
    await this.#wake(queue, client, hold.keys, hold.concurrency, next);
  }

  /** Promote the woken job; one that is gone (cancelled, or not delayed any more) passes the slot on. */
  async #wake(
    queue: Queue,
    client: RedisClient,
    keys: [string, string],
    concurrency: number,
    next: string | null,
  ): Promise<void> {
    for (let tries = 0; next !== null && tries < 5; tries++) {
      const job = await queue.getJob(next);
      if (
        job !== undefined &&
        (await job.promote().then(
          () => true,
          () => false,
        ))
      )
        return;
      next = (await client.runCommand('taskflowLimitRelease', [...keys, '', concurrency])) as string | null;
    }
  }
}

/** The key a run is limited under in Redis: its name, or its name and the value of tag `by` (as in-process). */
function limitKeyOf(run: TaskRun, limit: TaskLimit): string {
  if (limit.by === undefined) return encodeURIComponent(run.name);
  const value = run.tags[limit.by];
  const by = encodeURIComponent(limit.by);
  return `${encodeURIComponent(run.name)}:${value === undefined ? `${by}!` : `${by}=${encodeURIComponent(value)}`}`;
}
