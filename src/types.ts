import type { Span } from '@opentelemetry/api';
import type { TaskStoreError } from './errors.js';

/** Where a task is in its life. `pending` also covers "waiting for the next retry". */
export type TaskStatus = 'pending' | 'running' | 'success' | 'failed' | 'interrupted' | 'cancelled';

export const TASK_STATUSES: readonly TaskStatus[] = [
  'pending',
  'running',
  'success',
  'failed',
  'interrupted',
  'cancelled',
];

/** Final statuses: a task in one of these never runs again (a retry creates a new task). */
export const FINAL_STATUSES: ReadonlySet<TaskStatus> = new Set(['success', 'failed', 'interrupted', 'cancelled']);

/**
 * The dead letters: final statuses kept apart from successes (and cancellations) because someone has to
 * look at them. Stores evict or expire them last; the admin's failed view lists them.
 */
export const DEAD_LETTER_STATUSES: ReadonlySet<TaskStatus> = new Set(['failed', 'interrupted']);

/**
 * @internal FINAL_STATUSES.has() and DEAD_LETTER_STATUSES.has() by comparison, for hot paths (MemoryStore
 * checks every task that ends three times; no hash probe).
 */
export const isDeadLetterStatus = (status: TaskStatus): boolean => status === 'failed' || status === 'interrupted';
/** @internal */
export const isFinalStatus = (status: TaskStatus): boolean =>
  status === 'success' || status === 'cancelled' || isDeadLetterStatus(status);

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal';

export const LOG_LEVELS: readonly LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'];

export type Tags = Readonly<Record<string, string>>;

/** Any function a task can run: sync or async, any parameters. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type TaskFunction<A extends unknown[] = any[], R = unknown> = (...args: A) => R;

export interface TaskErrorInfo {
  type: string;
  message: string;
  stack?: string;
}

export interface LogEntry {
  /** Epoch milliseconds. */
  time: number;
  level: LogLevel;
  message: string;
  attempt: number;
  fields?: Record<string, unknown>;
}

/**
 * The stored state of one task. Times are epoch milliseconds, like pino's `time`.
 */
export interface TaskRecord {
  id: string;
  name: string;
  status: TaskStatus;
  args: unknown[];
  tags: Record<string, string>;
  /** Attempts started so far (a stalled or handed-back attempt included). */
  attempts: number;
  /** `retries + 1`, plus one per attempt that stalled or was handed back at shutdown (those use up no retry). */
  maxAttempts: number;
  priority?: number;
  idempotencyKey?: string;
  createdAt: number;
  startedAt?: number;
  endedAt?: number;
  durationMs?: number;
  error?: TaskErrorInfo;
  /**
   * Why a task ended `cancelled` or `interrupted`: `request_failed`, `shutdown`, `aborted`, or the `reason`
   * given to `manager.cancel(id, { reason })` (default `cancelled`).
   */
  reason?: string;
  logs: LogEntry[];
  /** Trace of the latest attempt's span. */
  traceId?: string;
  spanId?: string;
  /** The span that was active when the task was added (usually the request's server span). */
  requestTraceId?: string;
  requestSpanId?: string;
  /**
   * That span's trace flags (bit 1: sampled). The request's sampling decision travels with the task: a
   * retry minutes later, or another process recovering it, records its attempts iff the request was sampled.
   */
  requestTraceFlags?: number;
  /**
   * Durable stores: how many times the process running this task died while an attempt ran (each recovery
   * counts one; past `maxStalls` the task fails with TaskStalledError). Absent until the first stall.
   */
  stalls?: number;
  /**
   * The latest `taskProgress()` value (0…1) of the task, absent until it reports one. Kept in memory on every
   * call; a durable store writes it with the task's next status change (its end at the latest).
   */
  progress?: number;
  /**
   * Durable stores: `manager.cancel(id)` was called for this unfinished task (on any instance), with this
   * reason; the instance holding it ends it `cancelled`. Set on records returned by `claimOrphans()`.
   */
  cancelRequested?: string;
  /** For a task created by `retry(id)`: the id it retries. */
  retryOf?: string;
  /**
   * While `pending`: the earliest time (epoch ms) of the next attempt: a delayed first attempt (`startAfter`/`runAt`)
   * or a retry wait. Stored, so both survive restarts.
   */
  runAt?: number;
  /**
   * Durable stores: the options given through `with()` that a restarted process needs to run the task the
   * same way (timeouts, retry waits, `requeueOnInterrupt`…). Functions (`onError`) are not kept.
   */
  options?: PersistedTaskOptions;
}

/** The `limit` task option. At least one of `concurrency` and `rate`. */
export interface TaskLimit {
  /** Limit per value of this tag (a task without the tag shares one key with the others lacking it). Default: per task name. */
  by?: string;
  /** At most this many attempts of the key running at once. */
  concurrency?: number;
  /** At most `max` attempts of the key started in any `intervalMs` window (a sliding window). */
  rate?: { max: number; intervalMs: number };
}

/** The per-task options a durable store keeps with a record (everything else is on the record or the registration). */
export interface PersistedTaskOptions {
  delay?: number;
  backoff?: number;
  maxDelay?: number;
  jitter?: boolean;
  timeout?: number;
  shield?: boolean;
  persist?: boolean;
  requeueOnInterrupt?: boolean;
  maxStalls?: number;
  trace?: 'link' | 'child';
  limit?: TaskLimit;
  isolate?: 'none' | 'thread';
}

export interface TaskFilter {
  status?: TaskStatus | TaskStatus[];
  name?: string;
  /** Every given tag must match. */
  tags?: Record<string, string>;
  /** At most this many records, newest first. */
  limit?: number;
  /** Only records created at or after this time (Date or epoch ms). */
  since?: Date | number;
  /**
   * The next page: only records that come after this one in the list's order (newest first), e.g. the last
   * record of the previous page. Read from the index where the page starts, however deep (no offset). A
   * record deleted since (retention) still works: the page then starts with those created before it.
   */
  before?: Pick<TaskRecord, 'createdAt' | 'id'>;
}

export interface NameMetrics {
  total: number;
  byStatus: Record<TaskStatus, number>;
  /** success / (success + failed + interrupted); `null` when none has finished. */
  successRate: number | null;
  avgDurationMs: number | null;
  p95DurationMs: number | null;
}

/** What a store counts for `metrics()`: the records it holds, by status and by name. */
export interface StoreMetrics extends NameMetrics {
  byName: Record<string, NameMetrics>;
}

/** Events the observer chain did not deliver, since the manager was made (see `observerMaxInFlight`, `observerTimeoutMs`). */
export interface ObserverMetrics {
  /** Events not handed to an observer that had `observerMaxInFlight` calls unsettled, plus calls unsettled after `observerTimeoutMs`. */
  dropped: number;
  /** The same per observer, by its `name` (else its class name, else `anonymous`); only observers that dropped some. */
  byObserver: Record<string, number>;
}

export interface TaskMetrics extends StoreMetrics {
  observers: ObserverMetrics;
}

/** What log and progress events tell of the attempt they come from. */
export interface AttemptEventBase {
  taskId: string;
  name: string;
  attempt: number;
  tags: Tags;
  time: number;
  /** All zeros when no OpenTelemetry SDK is registered. */
  traceId: string;
  spanId: string;
  traceFlags?: number;
  /** The span that was active where the task was added (the request's), when there was one. */
  requestTraceId?: string;
  requestSpanId?: string;
}

/** Emitted for every `taskLog()` call inside a task. */
export interface LogEvent extends AttemptEventBase {
  type: 'log';
  level: LogLevel;
  message: string;
  fields: Record<string, unknown>;
}

/** Emitted for every status change of a task. */
export interface LifecycleEvent {
  type: 'lifecycle';
  taskId: string;
  name: string;
  attempt: number;
  status: TaskStatus;
  previousStatus?: TaskStatus;
  tags: Tags;
  time: number;
  durationMs?: number;
  error?: TaskErrorInfo;
  reason?: string;
  /** Of the task's latest attempt span, when there was one. */
  traceId?: string;
  spanId?: string;
  traceFlags?: number;
  /** The span that was active where the task was added (the request's), when there was one. */
  requestTraceId?: string;
  requestSpanId?: string;
}

/**
 * Emitted for `taskProgress()` inside a task, throttled: at most one per task per 100 ms, carrying the latest
 * value and its fields (`time`: when that value was given; the last one of an attempt goes out at its end).
 */
export interface ProgressEvent extends AttemptEventBase {
  type: 'progress';
  /** From 0 to 1. */
  value: number;
  fields: Record<string, unknown>;
}

export type TaskEvent = LogEvent | LifecycleEvent | ProgressEvent;

export interface TaskObserver {
  /** How `metrics().observers` and reports name this observer. Default: its class name. */
  name?: string;
  onLog?(event: LogEvent): void | Promise<void>;
  onLifecycle?(event: LifecycleEvent): void | Promise<void>;
  /** `taskProgress()` of a running task, throttled (see ProgressEvent). */
  onProgress?(event: ProgressEvent): void | Promise<void>;
  /**
   * Optional hint: return false when `onLifecycle` would ignore an event with this status (`retrying`: a
   * failed attempt going back to `pending`). When every observer says so, the event is not even built.
   */
  wantsLifecycle?(status: TaskStatus, retrying: boolean): boolean;
  /**
   * Optional hint: return false when `onLog` would ignore a log event at this level. When every observer
   * says so, the event is not even built.
   */
  wantsLog?(level: LogLevel): boolean;
  startup?(): void | Promise<void>;
  close?(): void | Promise<void>;
}

/** What `getTaskContext()` returns inside a task. */
export interface TaskContext {
  readonly id: string;
  readonly name: string;
  /** 1-based. */
  readonly attempt: number;
  readonly maxAttempts: number;
  readonly tags: Tags;
  /** Aborts on timeout or when shutdown gives up waiting. */
  readonly signal: AbortSignal;
  /** The attempt's span (a non-recording span when no OpenTelemetry SDK is registered). */
  readonly span: Span;
  /** A run of `manager.repeat`: the time of the tick it runs for (not when it started); otherwise undefined. */
  readonly tickAt?: Date;
}

/**
 * What `save()` may answer: for records whose idempotency key was already held by a task that has not
 * failed, their id → the holder's id. Such records are not stored as tasks (a durable store keeps them as
 * aliases of the holder, so `get(id)` follows it).
 */
export type SaveResult = void | ReadonlyMap<string, string>;

/** A cancel request recorded by `requestCancel()`, answered by `renewLease()` to the task's owner. */
export interface CancelRequest {
  id: string;
  reason: string;
}

/** Who owns the unfinished records a durable store writes, and for how long without a renewal. */
export interface StoreLease {
  ownerId: string;
  leaseMs: number;
  /**
   * Set when the TaskManager has an `encryptionKey`: the store writes every record's args through
   * `seal` and reads them back through `open` (stores that do so say `encryptsArgs = true`).
   */
  argsCipher?: ArgsCipher;
  /**
   * Called by the store for a stored record it cannot read (not JSON, not a task record): `list()`,
   * `metrics()` and recovery skip that record and carry on with the others, and `get(id)` rejects with
   * `error` (a TaskStoreError, code `ERR_STORE_UNREADABLE`). The TaskManager logs each id once.
   */
  reportUnreadable?(id: string, error: TaskStoreError): void;
}

/** AES-256-GCM for a record's args, bound to its task id (see the README, "Encrypting args at rest"). */
export interface ArgsCipher {
  /** The args (as JSON) sealed into one string to store in their place: format version, key id, IV, auth tag, ciphertext. */
  seal(taskId: string, argsJson: string): string;
  /** The args JSON back; throws a TaskArgsDecryptionError (naming `encryptionKey`) when it cannot be. */
  open(taskId: string, sealed: string): string;
}

/**
 * What a store can do beyond the methods every store has, declared by the store (`store.capabilities`);
 * the TaskManager reads it, never the store's class.
 */
export interface StoreCapabilities {
  /**
   * `save()` claims the idempotency key of each record it inserts in the same atomic step, and answers the
   * records that lost (a SaveResult map; nothing when none lost). Without it the manager claims the keys
   * through `claimKey()` once `save()` has resolved.
   */
  readonly claimsKeysOnSave?: boolean;
}

/**
 * @internal A store holding the very record objects it is given, in this process, reachable synchronously
 * (MemoryStore): a task is visible the moment it is added, its status changes need no write, and an
 * idempotency key is answered at the add. Symbol-keyed: an in-process optimisation, not an interface for users.
 */
export const kLiveRecords = Symbol('koa-taskflow.liveRecords');

/**
 * @internal A store that batches status changes lazily and can write one sooner when somebody waits for it
 * (`store[kSaveSoon](records)`: a resumed task confirming its start before it runs). Symbol-keyed, like
 * kLiveRecords: the built-in durable stores have it; without it `save()` is used.
 */
export const kSaveSoon = Symbol('koa-taskflow.saveSoon');

/** @internal What `store[kLiveRecords]` offers. */
export interface LiveRecords {
  /** Store this live record now. */
  add(record: TaskRecord): void;
  /** `claimKey`, answered now. */
  claimKey(key: string, id: string): string | undefined;
  /** The task of a live record has ended (the store may now evict it). */
  ended(record: TaskRecord): void;
}

export interface TaskStore {
  /**
   * Insert or replace records. One request's tasks arrive in one call. Durable stores claim the
   * idempotency key of a record they insert in the same atomic step and report the records that lost.
   */
  save(records: TaskRecord[]): Promise<SaveResult>;
  get(id: string): Promise<TaskRecord | undefined>;
  list(filter?: TaskFilter): Promise<TaskRecord[]>;
  /** Atomically claim an idempotency key; returns the id holding it if taken by a task that has not failed. */
  claimKey(key: string, id: string): Promise<string | undefined>;
  /**
   * Take ownership of tasks left pending/running by a process that is gone. A store may claim a bounded
   * batch per call, as the built-in stores do (at most 1 000): an answer of 1 000 or more records makes the
   * manager call again at once; a shorter answer is taken as all there was until the next orphan check.
   */
  claimOrphans(ownerId: string, leaseMs: number): Promise<TaskRecord[]>;
  close(): Promise<void>;
  /**
   * Optional: the numbers of `manager.metrics()` computed where the records are (SQL counts, say). Without
   * it the manager loads every record through `list()`, which a store holding days of tasks should avoid.
   */
  metrics?(): Promise<StoreMetrics>;
  /** True when records survive the process (enables `persist` and requeue on start). */
  readonly durable?: boolean;
  /** True when `attach()` honours `lease.argsCipher` (required by the TaskManager's `encryptionKey`). */
  readonly encryptsArgs?: boolean;
  /** What else the store can do (see StoreCapabilities). */
  readonly capabilities?: StoreCapabilities;
  /** @internal */
  readonly [kLiveRecords]?: LiveRecords;
  /** @internal */
  [kSaveSoon]?(records: TaskRecord[]): Promise<SaveResult>;
  /**
   * Durable stores: called once by the TaskManager when it is created. Unfinished records written from
   * then on belong to `lease.ownerId`, whose lease must be renewed (`renewLease`) within `leaseMs` or
   * another process may claim them.
   */
  attach?(lease: StoreLease): void;
  /**
   * Extend the attached owner's lease. One write, however many tasks it owns. A store with `requestCancel`
   * answers, in the same round trip, the cancel requests recorded on unfinished tasks this owner holds.
   */
  renewLease?(): Promise<void | readonly CancelRequest[]>;
  /**
   * Record a request to cancel task `id` on its record, atomically and only while it is `pending` or
   * `running`: true if it was recorded (or already was), false for an unknown or finished task. The
   * instance holding the task learns it from its next `renewLease()` (and recovery from a claimed
   * record's `cancelRequested`) and ends it `cancelled`.
   */
  requestCancel?(id: string, reason: string): Promise<boolean>;
  /** Hand records back as unowned `pending` work (clean shutdown): the next `claimOrphans` takes them at once. */
  release?(records: TaskRecord[]): Promise<void>;
}

/** Minimal shape of a pino logger we rely on (pino's `Logger` satisfies it). */
export interface TaskLogger {
  trace(obj: object, msg?: string): void;
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  fatal(obj: object, msg?: string): void;
  /** pino's: lets us skip building lines below the logger's level. */
  isLevelEnabled?(level: string): boolean;
}
