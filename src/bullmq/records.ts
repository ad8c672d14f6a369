/**
 * The manager's reads and the admin's actions over BullMQ's own data: a job is read back as a TaskRecord
 * (state, attempts, times, error, logs, progress, trace ids), and lists come from our index of jobs by
 * creation time, by name and by tag, kept beside BullMQ's keys under the queue's prefix.
 */
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { EngineRecords } from '../engine.js';
import { TaskflowError, TaskNotFoundError } from '../errors.js';
import { metricsFrom, type StatusCount, type SuccessDuration } from '../metrics.js';
import { compileFilter, matchesFilter, type CompiledFilter } from '../stores/filter.js';
import type { TaskRun } from '../task-run.js';
import {
  LOG_LEVELS,
  type LogEntry,
  type LogLevel,
  type StoreMetrics,
  type TaskErrorInfo,
  type TaskFilter,
  type TaskObserver,
  type TaskRecord,
  type TaskStatus,
} from '../types.js';
import { jobIdOfKey, type JobData } from './job.js';

/** A job's hash as BullMQ writes it (`HGETALL <prefix>:<queue>:<jobId>`). */
export type JobHash = Record<string, string | undefined>;

const TYPED = /^([A-Za-z_$][\w$]*): ([\s\S]*)$/;
// BullMQ's own reason for a job failed by its stalled-job check (past maxStalledCount).
const BULLMQ_STALLED = 'job stalled more than allowable limit';
const LEVELS: ReadonlySet<string> = new Set(LOG_LEVELS);
/** An index entry whose job is missing is dropped when read, once it is older than this (its add may be under way). */
const GRACE_MS = 60_000;
/** How often one process trims one index key by age. */
const TRIM_EVERY_MS = 60_000;
const BATCH = 200;
/**
 * metrics(): name, processedOn, finishedOn and the head of failedReason (its type) of up to 1 000 jobs
 * (KEYS[1] the queue's key prefix, ARGV their ids) in one call, flat, '' for what is missing: one command
 * instead of one per job (10 000 jobs: ~45 ms of CPU here instead of ~120).
 */
const READ_FIELDS = `
local out = {}
for i = 1, #ARGV do
  local v = redis.call('HMGET', KEYS[1] .. ARGV[i], 'name', 'processedOn', 'finishedOn', 'failedReason')
  local n = (i - 1) * 4
  out[n + 1] = v[1] or ''
  out[n + 2] = v[2] or ''
  out[n + 3] = v[3] or ''
  out[n + 4] = v[4] and string.sub(v[4], 1, 64) or ''
end
return out`;
/** How long one read of every job's state answers `metrics()`. */
const METRICS_TTL_MS = 1_000;
/**
 * The index entries of a batch of unkeyed jobs (KEYS[1] the index's key prefix, `<prefix>:<queue>:tf:`), from
 * one packed ARGV[1]: a line per job, `<createdAt> <jobId> <set> <set>…` (sets as `name:<name>`,
 * `tag:<key>=<value>`, URI-encoded, so no spaces), each added to `all` too. NX: an entry is written once.
 */
const WRITE_INDEX = `
local prefix = KEYS[1]
for score, member, sets in string.gmatch(ARGV[1], '(%d+) (%S+) ([^\\n]*)\\n') do
  redis.call('ZADD', prefix .. 'all', 'NX', score, member)
  for set in string.gmatch(sets, '%S+') do
    redis.call('ZADD', prefix .. set, 'NX', score, member)
  end
end
return 0`;
/** How long index entries of added jobs are gathered before they are written together. */
const INDEX_WINDOW_MS = 20;

/**
 * The error a worker gives BullMQ for a failed attempt. BullMQ keeps only its message (`failedReason`) and
 * stack (`stacktrace`): the type leads the message (`TaskTimeoutError: …`, as Node prints errors), and the
 * stack is the task's own, so both BullMQ's tools and our records show what failed.
 */
export function jobFailure(error: TaskErrorInfo | undefined, Base: new (message: string) => Error = Error): Error {
  const type = error?.type ?? 'Error';
  const message = `${type}: ${error?.message ?? 'task failed'}`;
  return Object.assign(new Base(message), { stack: error?.stack ?? message });
}

/** A failedReason read back: our `Type: message`, or BullMQ's own reason. */
export function failureOf(reason: string, stack: string | undefined): TaskErrorInfo {
  const typed = TYPED.exec(reason);
  const error: TaskErrorInfo =
    typed !== null
      ? { type: typed[1], message: typed[2] }
      : { type: reason === BULLMQ_STALLED ? 'TaskStalledError' : 'Error', message: reason };
  if (stack !== undefined) error.stack = stack;
  return error;
}

/** A failed job's status: a task cancelled or interrupted for good fails its job, told apart by the error's type. */
export function failedStatusOf(error: TaskErrorInfo | undefined): TaskStatus {
  if (error?.type === 'TaskCancelledError') return 'cancelled';
  if (error?.type === 'TaskInterruptedError') return 'interrupted';
  return 'failed';
}

/**
 * Our status of a job in a BullMQ state (the name of its list or set, or of its event): waiting, paused,
 * prioritized, delayed and waiting-children are `pending`; a failed one's `error` tells its status.
 */
export function statusOfState(state: string, error: TaskErrorInfo | undefined): TaskStatus {
  if (state === 'active') return 'running';
  if (state === 'completed') return 'success';
  if (state === 'failed') return failedStatusOf(error);
  return 'pending';
}

/** Our status of a job: from its hash (finished or not) and whether it is in the active list. */
function statusOf(hash: JobHash, active: boolean, error: TaskErrorInfo | undefined): TaskStatus {
  // BullMQ writes `returnvalue` only when the job completes (a job that failed, then succeeded, has both).
  if (hash.finishedOn !== undefined) return hash.returnvalue !== undefined ? 'success' : failedStatusOf(error);
  return active ? 'running' : 'pending';
}

function parse<T>(text: string | undefined): T | undefined {
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as T;
  } catch {
    return undefined;
  }
}

function int(text: string | undefined): number | undefined {
  const n = text === undefined ? NaN : Number(text);
  return Number.isFinite(n) ? n : undefined;
}

/** A job log line written by JobRun.log: `[level] message {fields}`. */
function logEntry(line: string, time: number, attempt: number): LogEntry {
  const levelled = /^\[(\w+)\] ([\s\S]*)$/.exec(line);
  const level = levelled !== null && LEVELS.has(levelled[1]) ? (levelled[1] as LogLevel) : 'info';
  let message = levelled !== null && LEVELS.has(levelled[1]) ? levelled[2] : line;
  let fields: Record<string, unknown> | undefined;
  const brace = message.indexOf(' {');
  if (brace >= 0 && message.endsWith('}')) {
    const parsed = parse<unknown>(message.slice(brace + 1));
    if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) {
      fields = parsed as Record<string, unknown>;
      message = message.slice(0, brace);
    }
  }
  const entry: LogEntry = { time, level, message, attempt };
  if (fields !== undefined) entry.fields = fields;
  return entry;
}

/**
 * The TaskRecord of a job of ours (undefined for a job that is gone or not ours). BullMQ keeps lines in a
 * job's log, not times: each log entry carries the latest attempt's start and number.
 */
export function recordOfJob(hash: JobHash, active: boolean, logs: readonly string[]): TaskRecord | undefined {
  const data = parse<JobData>(hash.data);
  if (data === undefined || typeof data.id !== 'string' || hash.name === undefined) return undefined;
  const options = data.options ?? {};
  const failedReason = hash.failedReason;
  const error =
    failedReason === undefined || failedReason === ''
      ? undefined
      : failureOf(failedReason, parse<string[]>(hash.stacktrace)?.at(-1));
  const status = statusOf(hash, active, error);
  const started = int(hash.ats) ?? int(hash.atm) ?? 0;
  const made = int(hash.atm) ?? 0;
  const attempts = parse<{ attempts?: number }>(hash.opts)?.attempts ?? (options.retries ?? 0) + 1;
  const record: TaskRecord = {
    id: data.id,
    name: hash.name,
    status,
    args: Array.isArray(data.args) ? data.args : [],
    tags: { ...options.tags },
    attempts: started,
    // Starts that failed nothing (a stall, a hand-back at shutdown) use up no retry, as in the worker.
    maxAttempts: attempts + Math.max(0, started - made - (status === 'running' ? 1 : 0)),
    createdAt: data.createdAt,
    logs: [],
  };
  if (options.priority !== undefined) record.priority = options.priority;
  if (options.idempotencyKey !== undefined) record.idempotencyKey = options.idempotencyKey;
  const startedAt = int(hash.processedOn);
  const endedAt = int(hash.finishedOn);
  if (startedAt !== undefined) record.startedAt = startedAt;
  if (endedAt !== undefined) {
    record.endedAt = endedAt;
    if (startedAt !== undefined) record.durationMs = Math.max(0, endedAt - startedAt);
  }
  if (error !== undefined && status !== 'success') record.error = error;
  if (status === 'cancelled' || status === 'interrupted')
    record.reason = /\(([^)]*)\)/.exec(error?.message ?? '')?.[1] ?? status;
  const delay = int(hash.delay);
  if (status === 'pending' && delay !== undefined && delay > 0 && started === 0)
    record.runAt = (int(hash.timestamp) ?? data.createdAt) + delay;
  const progress = parse<unknown>(hash.progress);
  const value = typeof progress === 'number' ? progress : (progress as { value?: unknown } | undefined | null)?.value;
  if (typeof value === 'number' && value >= 0 && value <= 1) record.progress = value;
  if (data.previous !== undefined) [record.traceId, record.spanId] = data.previous;
  if (data.link !== undefined) [record.requestTraceId, record.requestSpanId, record.requestTraceFlags] = data.link;
  const logTime = startedAt ?? data.createdAt;
  record.logs = logs.map((line) => logEntry(line, logTime, started));
  return record;
}

/** The raw Redis client of a Queue (BullMQ 6 behind its backend, BullMQ 5 on the queue). */
export function redisOf(queue: Queue): Promise<Redis> {
  const q = queue as unknown as { getBackend?: () => { client: Promise<Redis> }; client?: Promise<Redis> };
  return typeof q.getBackend === 'function' ? q.getBackend().client : q.client!;
}

export interface RecordsOptions {
  queue: () => Promise<Queue>;
  /** How long index entries are kept (the longer of BullMQ's removeOnComplete/removeOnFail ages). */
  retentionMs: number;
  report: (stage: string, error: unknown) => void;
  subscribe: (observer: TaskObserver) => () => void;
}

type Scored = [member: string, createdAt: number];

/**
 * Lists read our index: `tf:all`, `tf:name:<name>` and `tf:tag:<key>=<value>` sorted sets (score: the task's
 * creation time, member: its job id) under the queue's prefix, written by the web process as it adds the
 * job. A tag filter reads its tag's set, so it loads only the jobs holding the tag; entries of jobs BullMQ
 * has removed since (removeOnComplete/removeOnFail) are dropped as they are read, and old ones trimmed by age.
 */
export class BullmqRecords implements EngineRecords {
  readonly retriesInPlace = true;
  readonly #options: RecordsOptions;
  readonly #trimmed = new Map<string, number>();
  readonly #unindexed: TaskRun[] = [];
  readonly #nameSets = new Map<string, string>();
  readonly #writing = new Set<Promise<void>>();
  #flushTimer: NodeJS.Timeout | undefined;
  #metrics: { at: number; counted: Promise<StoreMetrics> } | undefined;

  constructor(options: RecordsOptions) {
    this.#options = options;
  }

  subscribe(observer: TaskObserver): () => void {
    return this.#options.subscribe(observer);
  }

  /**
   * Index the job of `run` as it is added. The adds of INDEX_WINDOW_MS are written together (see
   * #writeIndex): a round trip of its own per add would cost the web process about as much CPU as the add.
   */
  index(run: TaskRun): void {
    this.#unindexed.push(run);
    this.#flushTimer ??= setTimeout(() => this.#flush(), INDEX_WINDOW_MS).unref();
  }

  #flush(): void {
    clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    if (this.#unindexed.length > 0) this.#track(this.#writeIndex(this.#unindexed.splice(0)));
  }

  /** Resolves once the jobs added so far are indexed (the engine's `settled()`: `manager.drain()`, shutdown). */
  async settled(): Promise<void> {
    this.#flush();
    while (this.#writing.size > 0) await Promise.all(this.#writing);
  }

  #track(writing: Promise<void>): void {
    this.#writing.add(writing);
    void writing.then(() => this.#writing.delete(writing));
  }

  /**
   * One EVAL per batch writes the entries of unkeyed jobs server-side from one packed argument (a line per
   * job: its creation time, its id, then the suffixes of its name and tag sets): the web process encodes one
   * string instead of a score and a member per set per job. A keyed job's id can hold any character, so its
   * entries go as plain ZADDs beside it (keyed adds are the rare ones). Commands, not a pipeline: ioredis
   * copies every script BullMQ defines into each new pipeline, which cost more than the writes (the profile
   * of a web process under load); commands sent in one turn go out together all the same.
   */
  async #writeIndex(runs: readonly TaskRun[]): Promise<void> {
    try {
      const queue = await this.#options.queue();
      const redis = await redisOf(queue);
      const now = Date.now();
      const writes: Promise<unknown>[] = [];
      const touched = new Set<string>();
      let packed = '';
      for (const run of runs) {
        const key = run.options.idempotencyKey;
        const createdAt = run.record.createdAt;
        let sets = this.#nameSet(run.name);
        touched.add(sets);
        for (const tag in run.record.tags) {
          const set = tagSet(tag, run.record.tags[tag]);
          touched.add(set);
          sets += ` ${set}`;
        }
        if (key === undefined) {
          packed += `${createdAt} ${run.id} ${sets}\n`;
          continue;
        }
        // NX: a second add of a keyed job (BullMQ drops it) leaves the job where its first add put it.
        const member = jobIdOfKey(key);
        for (const set of ['all', ...sets.split(' ')])
          writes.push(redis.zadd(queue.toKey(`tf:${set}`), 'NX', createdAt, member));
        // A keyed task's job has the key as its id: its task id finds it through this (expiring with the index).
        writes.push(redis.set(idKey(queue, run.id), member, 'PX', this.#options.retentionMs));
      }
      if (packed !== '') writes.push(redis.eval(WRITE_INDEX, 1, queue.toKey('tf:'), packed));
      this.#trim(redis, writes, queue.toKey('tf:all'), now);
      for (const set of touched) this.#trim(redis, writes, queue.toKey(`tf:${set}`), now);
      await Promise.all(writes);
    } catch (error) {
      this.#options.report('BullMQ task index write', error);
    }
  }

  /** nameSet(name), encoded once per name. */
  #nameSet(name: string): string {
    let set = this.#nameSets.get(name);
    if (set === undefined) {
      if (this.#nameSets.size >= 10_000) this.#nameSets.clear();
      this.#nameSets.set(name, (set = nameSet(name)));
    }
    return set;
  }

  #trim(redis: Redis, writes: Promise<unknown>[], key: string, now: number): void {
    const last = this.#trimmed.get(key);
    if (last !== undefined && now - last < TRIM_EVERY_MS) return;
    if (this.#trimmed.size >= 10_000) this.#trimmed.clear();
    this.#trimmed.set(key, now);
    writes.push(redis.zremrangebyscore(key, '-inf', `(${now - this.#options.retentionMs}`));
  }

  async get(id: string): Promise<TaskRecord | undefined> {
    const queue = await this.#options.queue();
    const redis = await redisOf(queue);
    let found = await this.#read(queue, redis, id, true);
    if (found === undefined) {
      const jobId = await redis.get(idKey(queue, id));
      if (jobId !== null) found = await this.#read(queue, redis, jobId, true);
    }
    return found?.id === id ? found : undefined;
  }

  /** One job as a record: its hash, whether it is active, and (for `get`) its log, in one round trip. */
  async #read(queue: Queue, redis: Redis, jobId: string, withLogs: boolean): Promise<TaskRecord | undefined> {
    const pipeline = redis.pipeline().hgetall(queue.toKey(jobId)).lpos(queue.toKey('active'), jobId);
    if (withLogs) pipeline.lrange(queue.toKey(`${jobId}:logs`), 0, -1);
    const [[, hash], [, at], logs] = (await pipeline.exec()) as [unknown, unknown][];
    return recordOfJob(hash as JobHash, at !== null, withLogs ? ((logs[1] as string[] | undefined) ?? []) : []);
  }

  async list(filter: TaskFilter | undefined): Promise<TaskRecord[]> {
    const f = compileFilter(filter);
    if (f.limit === 0) return [];
    const queue = await this.#options.queue();
    const redis = await redisOf(queue);
    const source =
      f.tags.length > 0
        ? tagKey(queue, f.tags[0])
        : f.name !== undefined
          ? nameKey(queue, f.name)
          : queue.toKey('tf:all');
    // Running and dead tasks are few beside the rest: read them from BullMQ's active list and failed set
    // when those are smaller than the index. Without a tag or name they are always read there: BullMQ's own
    // lists are current, while the index of the newest adds is written up to 20 ms later.
    const dead = f.statuses !== undefined && [...f.statuses].every((s) => s !== 'pending' && s !== 'success');
    if (dead && f.tags.length === 0 && f.name === undefined) return this.#listByState(queue, redis, f);
    if (dead) {
      const [[, indexed], [, active], [, failed]] = (await redis
        .pipeline()
        .zcard(source)
        .llen(queue.toKey('active'))
        .zcard(queue.toKey('failed'))
        .exec()) as [unknown, number][];
      if (active + failed < indexed) return this.#listByState(queue, redis, f);
    }
    return this.#listByIndex(queue, redis, source, f);
  }

  /** Newest first from an index set, a batch at a time, until `limit` records match. */
  async #listByIndex(queue: Queue, redis: Redis, source: string, f: CompiledFilter): Promise<TaskRecord[]> {
    const out: TaskRecord[] = [];
    const max = f.before === undefined ? '+inf' : String(f.before.createdAt);
    const min = f.since === undefined ? '-inf' : String(f.since);
    for (let offset = 0; out.length < f.limit;) {
      const flat = await redis.zrevrangebyscore(source, max, min, 'WITHSCORES', 'LIMIT', offset, BATCH);
      const batch: Scored[] = [];
      for (let i = 0; i < flat.length; i += 2) batch.push([flat[i], Number(flat[i + 1])]);
      // Entries dropped from the set shift the ones after them down.
      offset += BATCH - (await this.#take(queue, redis, source, afterCursor(batch, f), f, out));
      if (batch.length < BATCH) break;
    }
    return out;
  }

  /** Running and failed jobs by BullMQ's own sets, ordered by their creation time from the index. */
  async #listByState(queue: Queue, redis: Redis, f: CompiledFilter): Promise<TaskRecord[]> {
    const ids = [
      ...(f.statuses!.has('running') ? await redis.lrange(queue.toKey('active'), 0, -1) : []),
      ...([...f.statuses!].some((s) => s !== 'running') ? await redis.zrange(queue.toKey('failed'), '0', '-1') : []),
    ];
    if (ids.length === 0) return [];
    // The ids as one array argument, not spread: the failed set can hold more than a call takes arguments.
    const scores = await redis.zmscore(queue.toKey('tf:all'), ids);
    // A job not in the index yet is one of the newest adds (the index is written up to 20 ms after them).
    const now = Date.now();
    const scored: Scored[] = ids.map((id, i) => [id, scores[i] === null ? now : Number(scores[i])]);
    scored.sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? 1 : a[0] > b[0] ? -1 : 0));
    const candidates = afterCursor(scored, f).filter(([, t]) => f.since === undefined || t >= f.since);
    const out: TaskRecord[] = [];
    for (let i = 0; i < candidates.length && out.length < f.limit; i += BATCH)
      await this.#take(queue, redis, undefined, candidates.slice(i, i + BATCH), f, out);
    return out;
  }

  /**
   * Load a batch of jobs in one pipeline, keep those matching, drop index entries of jobs gone for good;
   * answers how many entries it dropped.
   */
  async #take(
    queue: Queue,
    redis: Redis,
    source: string | undefined,
    batch: readonly Scored[],
    f: CompiledFilter,
    out: TaskRecord[],
  ): Promise<number> {
    if (batch.length === 0) return 0;
    const pipeline = redis.pipeline().lrange(queue.toKey('active'), 0, -1);
    for (const [member] of batch) pipeline.hgetall(queue.toKey(member));
    const replies = (await pipeline.exec()) as [unknown, unknown][];
    const active = new Set(replies[0][1] as string[]);
    const gone: string[] = [];
    const now = Date.now();
    for (let i = 0; i < batch.length && out.length < f.limit; i++) {
      const [member, createdAt] = batch[i];
      const record = recordOfJob(replies[i + 1][1] as JobHash, active.has(member), []);
      if (record === undefined) {
        if (now - createdAt > GRACE_MS) gone.push(member);
        continue;
      }
      if (matchesFilter(record, f)) out.push(record);
    }
    if (source === undefined || gone.length === 0) return 0;
    return redis.zrem(source, ...gone).catch((error: unknown) => {
      this.#options.report('BullMQ index cleanup', error);
      return 0;
    });
  }

  /**
   * Fleet-wide counts by status and name, and durations of successes, from every job BullMQ keeps (so as
   * many as removeOnComplete/removeOnFail keep): its state lists and sets give the status, one HMGET per job
   * its name and times. That read is shared: calls within METRICS_TTL_MS of it (a dashboard refreshing on
   * every burst of events, several tabs) answer its result.
   */
  metrics(): Promise<StoreMetrics> {
    const now = Date.now();
    const cached = this.#metrics;
    if (cached !== undefined && now - cached.at < METRICS_TTL_MS) return cached.counted;
    const counted = this.#count();
    this.#metrics = { at: now, counted };
    counted.catch(() => {
      if (this.#metrics?.counted === counted) this.#metrics = undefined;
    });
    return counted;
  }

  async #count(): Promise<StoreMetrics> {
    const queue = await this.#options.queue();
    const redis = await redisOf(queue);
    const lists = ['wait', 'paused', 'active'];
    const sets = ['prioritized', 'delayed', 'waiting-children', 'completed', 'failed'];
    const pipeline = redis.pipeline();
    for (const list of lists) pipeline.lrange(queue.toKey(list), 0, -1);
    for (const set of sets) pipeline.zrange(queue.toKey(set), '0', '-1');
    const replies = (await pipeline.exec()) as [unknown, string[]][];
    const states = [...lists, ...sets];
    const jobs: [id: string, state: string][] = [];
    replies.forEach(([, ids], i) => {
      for (const id of ids) jobs.push([id, states[i]]);
    });
    const counts = new Map<string, StatusCount>();
    const durations: SuccessDuration[] = [];
    for (let i = 0; i < jobs.length; i += 1_000) {
      const chunk = jobs.slice(i, i + 1_000);
      const fields = (await redis.eval(READ_FIELDS, 1, queue.toKey(''), ...chunk.map(([id]) => id))) as string[];
      chunk.forEach(([, state], j) => {
        const [name, processedOn, finishedOn, failedReason] = fields.slice(4 * j, 4 * j + 4);
        if (name === '') return;
        const status = statusOfState(state, state === 'failed' ? failureOf(failedReason, undefined) : undefined);
        const key = `${status}\u0000${name}`;
        const known = counts.get(key);
        if (known === undefined) counts.set(key, { name, status, count: 1 });
        else known.count++;
        if (status === 'success' && processedOn !== '' && finishedOn !== '')
          durations.push({ name, duration: Math.max(0, Number(finishedOn) - Number(processedOn)) });
      });
    }
    return metricsFrom(counts.values(), durations);
  }

  /**
   * A failed (or interrupted) task runs again as BullMQ retries a job: the same job, under the same id, back
   * in the queue with its attempts counted from 1 again; its first attempt links to the last one that failed.
   */
  async retry(id: string): Promise<string> {
    const record = typeof id === 'string' ? await this.get(id) : undefined;
    if (record === undefined) throw new TaskNotFoundError(String(id));
    const notRetryable = () =>
      new TaskflowError(`retry: task ${id} is ${record.status}; only failed or interrupted tasks can be retried`, {
        code: 'ERR_TASK_NOT_RETRYABLE',
      });
    if (record.status !== 'failed' && record.status !== 'interrupted') throw notRetryable();
    const queue = await this.#options.queue();
    const job = await queue.getJob(record.idempotencyKey === undefined ? id : jobIdOfKey(record.idempotencyKey));
    if (job === undefined) throw new TaskNotFoundError(id);
    try {
      await job.retry('failed', { resetAttemptsMade: true, resetAttemptsStarted: true });
    } catch (error) {
      // Another admin retried it first: it is no longer failed.
      if (await job.isFailed().catch(() => true)) throw error;
      throw notRetryable();
    }
    return id;
  }
}

/** Entries after the page cursor (`before`): ties on the creation time are ordered by member, descending. */
function afterCursor(batch: readonly Scored[], f: CompiledFilter): Scored[] {
  const before = f.before;
  if (before === undefined) return batch.slice();
  return batch.filter(([member, t]) => t < before.createdAt || (t === before.createdAt && member < before.id));
}

/** The index set of a task name, under `tf:` (as written in WRITE_INDEX's packed lines). */
function nameSet(name: string): string {
  return `name:${encodeURIComponent(name)}`;
}

function nameKey(queue: Queue, name: string): string {
  return queue.toKey(`tf:${nameSet(name)}`);
}

/** Where a keyed task's job id is found by its task id (the job's id is its key's, see jobIdOfKey). */
export function idKey(queue: Queue, taskId: string): string {
  return queue.toKey(`tf:id:${taskId}`);
}

function tagSet(key: string, value: string): string {
  return `tag:${encodeURIComponent(key)}=${encodeURIComponent(value)}`;
}

function tagKey(queue: Queue, [key, value]: readonly [string, string]): string {
  return queue.toKey(`tf:${tagSet(key, value)}`);
}
