import type { AsyncResource } from 'node:async_hooks';
import { INVALID_TRACEID, type Attributes, type Span, type SpanContext } from '@opentelemetry/api';
import { Attempt, type AttemptOwner } from './attempt.js';
import { TaskCancelledError, TaskInterruptedError, TaskStalledError, toErrorInfo } from './errors.js';
import { retryDelay, type ResolvedTaskOptions } from './options.js';
import {
  ATTR_LOG_LEVEL,
  ATTR_LOG_MESSAGE,
  ATTR_TASK_PROGRESS,
  EVENT_TASK_LOG,
  EVENT_TASK_PROGRESS,
  type AttemptSpanInput,
  type TaskTelemetry,
} from './otel.js';
import type { ObserverChain } from './observers/chain.js';
import type { ThreadPool } from './isolate.js';
import type { Redactor } from './redact.js';
import { fieldsToAttributes } from './observers/span-events.js';
import type {
  AttemptEventBase,
  LifecycleEvent,
  LogEntry,
  LogLevel,
  PersistedTaskOptions,
  ProgressEvent,
  TaskRecord,
  TaskStatus,
  TaskFunction,
} from './types.js';

/** Log entries kept on a record; older ones are dropped first (events and pino lines still get them all). */
export const MAX_LOGS_PER_RECORD = 100;

/** The `logs` of every record that has none yet: shared, frozen, replaced by a real array on the first log. */
export const NO_LOGS: LogEntry[] = Object.freeze([]) as unknown as LogEntry[];

/**
 * A new `pending` record. Only the fields every record has are made here, in one order (records built here
 * share one hidden class); an optional one is added when it has a value, so a queued task does not carry a
 * dozen empty slots (8 bytes each, for every record in memory). The ones a run sets later (startedAt,
 * endedAt, durationMs) are then added in that order.
 */
export function pendingRecord(
  id: string,
  options: ResolvedTaskOptions,
  args: unknown[],
  createdAt: number,
  request: SpanContext | undefined,
  retryOf: string | undefined,
  runAt: number | undefined,
  persisted: PersistedTaskOptions | undefined,
): TaskRecord {
  const record: TaskRecord = {
    id,
    name: options.name,
    status: 'pending',
    args,
    tags: options.tags,
    attempts: 0,
    maxAttempts: options.retries + 1,
    createdAt,
    logs: NO_LOGS,
  };
  if (options.priority !== undefined) record.priority = options.priority;
  if (options.idempotencyKey !== undefined) record.idempotencyKey = options.idempotencyKey;
  if (request !== undefined) {
    record.requestTraceId = request.traceId;
    record.requestSpanId = request.spanId;
    record.requestTraceFlags = request.traceFlags;
  }
  if (retryOf !== undefined) record.retryOf = retryOf;
  if (runAt !== undefined) record.runAt = runAt;
  if (persisted !== undefined) record.options = persisted;
  return record;
}

/** At most one progress report per task per this many ms leaves for spans, observers and the event stream. */
export const PROGRESS_INTERVAL_MS = 100;

/** The latest `taskProgress()` of an attempt not emitted yet, and the timer that emits it. */
interface PendingProgress {
  attempt: Attempt;
  value: number;
  fields: Record<string, unknown> | undefined;
  time: number;
  timer: NodeJS.Timeout | undefined;
}

/** Resolvers of a TaskHandle's promises, made only when someone asked for a handle. */
interface HandleSignals {
  started: Promise<void>;
  done: Promise<TaskRecord>;
  resolveStarted(): void;
  rejectStarted(error: unknown): void;
  resolveDone(record: TaskRecord): void;
}

/**
 * What a TaskRun needs from the runner that holds it (the Runner implements it; declared here so the
 * dependency runs one way, runner → task-run).
 */
export interface RunHost {
  readonly telemetry: TaskTelemetry;
  readonly chain: ObserverChain;
  readonly redact: Redactor;
  /** Where `isolate: 'thread'` attempts run; without one (a BullMQ worker's host) they run in process. */
  readonly threads?: ThreadPool;
  /** Set once shutdown stops waiting: a failed attempt is not retried. */
  readonly stopping: boolean;
  report(stage: string, error: unknown): void;
  snapshot(record: TaskRecord): TaskRecord;
  /** `awaited`: the task waits for this write before it runs, so it is not left to the lazy batch. */
  recordChanged(record: TaskRecord, awaited?: boolean): Promise<unknown> | undefined;
  retryLater(run: TaskRun, waitMs: number): void;
  attemptEnded(run: TaskRun): void;
  taskEnded(run: TaskRun): void;
  release(run: TaskRun): void;
}

/** The after-response tasks of one request, in order (the scheduler's ResponseSequence). */
export interface RunSequence {
  /** The request's async context, held from its response's `close`: where its tasks start, whenever a slot frees. */
  readonly scope: AsyncResource | undefined;
  /** One of its tasks has ended: the next may start. */
  ended(run: TaskRun): void;
  /** The turn of the event loop its response closed in has ended: its tasks start. */
  resume(): void;
}

/** What few runs need (a retry's timer, a handle, progress reports, a previous attempt): one object, made on first use. */
interface RunExtras {
  retryTimer: NodeJS.Timeout | undefined;
  previousAttempt: SpanContext | undefined;
  signals: HandleSignals | undefined;
  progress: PendingProgress | undefined;
}

// The run's yes/no state, packed into one small integer: a queued task is kept for every request waiting,
// and six boolean fields would cost it 48 bytes where this costs 8.
const RECOVERABLE = 1;
const AWAITING_WRITE = 2;
const SUBMIT_AFTER_WRITE = 4;
const IN_SLOT = 8;
const NOT_STORED = 16;
const FINAL = 32;
const IN_QUEUE = 64;

/**
 * One accepted task, from `pending` to a final status, across its attempts. The runner decides when it
 * runs; this decides what an attempt's outcome means (retry, fail, interrupt).
 */
export class TaskRun implements AttemptOwner, AttemptSpanInput {
  // The runner's bookkeeping, written by the Runner alone: the request sequence told when this task has
  // ended (after-response tasks), its list of unfinished runs, and (through the accessors below) the retry
  // timer, whether an attempt of this run holds a slot, and the write-ahead wait.
  sequence: RunSequence | undefined;
  livePrev: TaskRun | undefined;
  liveNext: TaskRun | undefined;
  // The run's own state, written by this class alone.
  current: Attempt | undefined;
  #flags: number;
  #extras: RunExtras | undefined;

  constructor(
    readonly runner: RunHost,
    readonly record: TaskRecord,
    readonly fn: TaskFunction,
    readonly options: ResolvedTaskOptions,
    readonly requestLink: SpanContext | undefined,
    /** Its record is in a durable store and it is registered: shutdown may hand it back, another process resume it. */
    recoverable = false,
    awaitingWrite = false,
  ) {
    this.#flags = (recoverable ? RECOVERABLE : 0) | (awaitingWrite ? AWAITING_WRITE : 0);
  }

  #flag(flag: number): boolean {
    return (this.#flags & flag) !== 0;
  }

  #set(flag: number, on: boolean): void {
    this.#flags = on ? this.#flags | flag : this.#flags & ~flag;
  }

  // Read and written in place (`this.#extras?.signals`), not through private accessors: V8 calls into its
  // runtime for every `get #x()`, three times per attempt here.
  #more(): RunExtras {
    return (this.#extras ??= {
      retryTimer: undefined,
      previousAttempt: undefined,
      signals: undefined,
      progress: undefined,
    });
  }

  /** The arguments it runs with: the record's own array (read through, not kept twice). */
  get args(): readonly unknown[] {
    return this.record.args;
  }

  /** Its record is in a durable store and it is registered: shutdown may hand it back, another process resume it. */
  get recoverable(): boolean {
    return this.#flag(RECOVERABLE);
  }

  /**
   * Its record is being written to a durable store: the runner holds it until the write is committed (a
   * durable task never runs before it is stored, and its idempotency key is claimed by that write).
   */
  get awaitingWrite(): boolean {
    return this.#flag(AWAITING_WRITE);
  }

  set awaitingWrite(on: boolean) {
    this.#set(AWAITING_WRITE, on);
  }

  get submitAfterWrite(): boolean {
    return this.#flag(SUBMIT_AFTER_WRITE);
  }

  set submitAfterWrite(on: boolean) {
    this.#set(SUBMIT_AFTER_WRITE, on);
  }

  /** An attempt of this run holds a slot of the runner's concurrency. */
  get inSlot(): boolean {
    return this.#flag(IN_SLOT);
  }

  set inSlot(on: boolean) {
    this.#set(IN_SLOT, on);
  }

  /** The run is in the runner's queue, waiting for a slot (it stays there, dropped when reached, if it ends). */
  get inQueue(): boolean {
    return this.#flag(IN_QUEUE);
  }

  set inQueue(on: boolean) {
    this.#set(IN_QUEUE, on);
  }

  /** Status changes are written to the store (false once the store refused the task or gave its key to another). */
  get stored(): boolean {
    return !this.#flag(NOT_STORED);
  }

  set stored(on: boolean) {
    this.#set(NOT_STORED, !on);
  }

  get retryTimer(): NodeJS.Timeout | undefined {
    return this.#extras?.retryTimer;
  }

  set retryTimer(timer: NodeJS.Timeout | undefined) {
    if (timer !== undefined || this.#extras !== undefined) this.#more().retryTimer = timer;
  }

  /** The span context of the latest recorded attempt: the next attempt links to it. */
  get previousAttempt(): SpanContext | undefined {
    return this.#extras?.previousAttempt;
  }

  set previousAttempt(spanContext: SpanContext | undefined) {
    if (spanContext !== undefined || this.#extras !== undefined) this.#more().previousAttempt = spanContext;
  }

  // Read through from the record rather than copied: a queued task should cost as little memory as possible.
  get id(): string {
    return this.record.id;
  }

  get name(): string {
    return this.record.name;
  }

  get tags(): Readonly<Record<string, string>> {
    return this.record.tags;
  }

  /** The tags as they leave the task (events, logs, spans): values of secret-looking tag names masked. */
  get safeTags(): Readonly<Record<string, string>> {
    return this.runner.redact.tags(this.record.tags);
  }

  get maxAttempts(): number {
    return this.record.maxAttempts;
  }

  /**
   * True for a task resumed from a durable store (ResumedTaskRun): each attempt starts only once its `running`
   * is committed. A task whose attempt takes the process down (an exit, an OOM) is then seen by the next
   * recovery as having died while it ran, a stall that `maxStalls` caps, never as a task that had not started:
   * it cannot loop. (A getter, not a field: a queued task carries no slot for it.)
   */
  get confirmsStart(): boolean {
    return false;
  }

  get isFinal(): boolean {
    return this.#flag(FINAL);
  }

  get priority(): number | undefined {
    return this.record.priority;
  }

  get idempotencyKey(): string | undefined {
    return this.record.idempotencyKey;
  }

  get traceMode(): 'link' | 'child' {
    return this.options.trace;
  }

  /** Promises for a TaskHandle; created on first request. */
  signals(): HandleSignals {
    const made = this.#extras?.signals;
    if (made !== undefined) return made;
    let resolveStarted!: () => void;
    let rejectStarted!: (error: unknown) => void;
    let resolveDone!: (record: TaskRecord) => void;
    const started = new Promise<void>((resolve, reject) => {
      resolveStarted = resolve;
      rejectStarted = reject;
    });
    // A handle's `started` rejects for a task that never starts; nobody has to listen to it.
    started.catch(() => {});
    const done = new Promise<TaskRecord>((resolve) => (resolveDone = resolve));
    const signals: HandleSignals = { started, done, resolveStarted, rejectStarted, resolveDone };
    this.#more().signals = signals;
    if (this.record.attempts > 0) resolveStarted();
    if (this.isFinal) resolveDone(this.runner.snapshot(this.record));
    return signals;
  }

  /**
   * Run one attempt, then tell the runner its slot is free. Never rejects: every outcome is recorded.
   * (The runner does not chain on the returned promise: one reaction less per attempt.)
   */
  async runAttempt(): Promise<void> {
    const record = this.record;
    const attemptNo = ++record.attempts;
    const startedAt = Date.now();
    if (record.runAt !== undefined) record.runAt = undefined;
    record.startedAt ??= startedAt;
    const span = this.runner.telemetry.startAttempt(this, attemptNo);
    const spanContext = span.spanContext();
    if (spanContext.traceFlags !== 0 || span.isRecording()) {
      record.traceId = spanContext.traceId;
      record.spanId = spanContext.spanId;
      this.previousAttempt = spanContext;
    } else if (spanContext.traceId !== INVALID_TRACEID) {
      // A dropped attempt under an SDK: the next one still links to it, so that taskSampler keeps the first
      // attempt's decision for a task that has no request to follow.
      this.previousAttempt = spanContext;
    }
    const attempt = new Attempt(this, attemptNo, span);
    this.current = attempt;
    let error: unknown;
    let failed = false;
    try {
      const confirms = this.confirmsStart || (attemptNo > 1 && this.recoverable);
      const written = this.#transition('running', undefined, confirms);
      this.#extras?.signals?.resolveStarted();
      // A retry of a durable task waits for its `running` too: were it lost with the process, the next
      // recovery would run that attempt again without counting a stall (only a first start is left to the
      // lazy write, where waiting would cost every durable task a commit's latency).
      if (confirms && written !== undefined) await written;
      // Shutdown may have given up on the attempt while its start was being written.
      if (this.current === attempt) await attempt.execute(this.#body(attempt), this.args, this.options.timeout);
    } catch (caught) {
      failed = true;
      // Anything may be thrown; `undefined` would read as success below, so a nullish value becomes an Error.
      error = caught ?? new Error(`the task threw ${String(caught)}`);
    }
    // Abandoned by shutdown while it ran: already recorded, its slot already released.
    if (this.current !== attempt) return;
    this.current = undefined;
    try {
      this.#recordOutcome(attempt, span, startedAt, failed, error);
    } catch (unexpected) {
      this.runner.report(`task ${this.name}`, unexpected);
      // Whatever went wrong here, the task ends: a run left unfinished holds drain() and shutdown() for ever,
      // and a durable record would stay `running` under this process's renewed lease.
      if (!this.isFinal && this.retryTimer === undefined) {
        try {
          this.#end('failed', unexpected, undefined, undefined);
        } catch (again) {
          this.runner.report(`task ${this.name}`, again);
        }
      }
    }
    this.runner.attemptEnded(this);
  }

  /** What an attempt calls: the task's function, or for `isolate: 'thread'` its run in a thread of the pool. */
  #body(attempt: Attempt): (...args: unknown[]) => unknown {
    const { isolate, module } = this.options;
    const threads = this.runner.threads;
    if (isolate !== 'thread' || module === undefined || threads === undefined)
      return this.fn as (...args: unknown[]) => unknown;
    return (...args) => threads.run(attempt, module, this.fn.name, args);
  }

  /**
   * Shutdown gave up on a running attempt that has no timeout race to cut it short: record it
   * `interrupted` now and free its slot; whatever the task still does later is ignored.
   */
  abandon(attempt: Attempt, reason: unknown): void {
    if (this.current !== attempt || this.isFinal) return;
    this.#flushProgress();
    this.current = undefined;
    const durationMs = Date.now() - (this.record.startedAt ?? Date.now());
    this.runner.telemetry.endAttempt(attempt.span, this.name, durationMs, reason);
    if (reason instanceof TaskCancelledError) this.#end('cancelled', reason, reason.reason, durationMs);
    else if (this.#requeuesInterrupted(reason)) this.release();
    else this.#end('interrupted', reason, 'shutdown', durationMs);
    this.runner.attemptEnded(this);
  }

  /**
   * `manager.cancel(id)`: a task not running ends `cancelled` now; a running attempt's signal aborts with a
   * TaskCancelledError and the task ends `cancelled` at once, without a retry, whether or not the task
   * honours the signal (as on a timeout: what it does later is ignored). False once the task has ended.
   */
  cancelRequested(reason: string): boolean {
    if (this.isFinal) return false;
    const attempt = this.current;
    if (attempt === undefined) this.cancel('cancelled', reason);
    else attempt.abort(new TaskCancelledError(reason, true));
    return true;
  }

  #recordOutcome(attempt: Attempt, span: Span, startedAt: number, failed: boolean, error: unknown): void {
    const record = this.record;
    // One clock reading for the attempt's duration and, when it ends the task, the record's endedAt.
    const now = Date.now();
    const durationMs = now - startedAt;
    // The attempt's last progress goes out before its span ends.
    this.#flushProgress();
    // Cancelled while it ran: whatever the task threw on seeing its signal (or its result, had it finished
    // meanwhile), the outcome is the cancellation.
    const reason = attempt.abortReason;
    const cancelled = reason instanceof TaskCancelledError ? reason : undefined;
    this.runner.telemetry.endAttempt(span, this.name, durationMs, cancelled ?? (failed ? error : undefined));
    if (cancelled !== undefined) return this.#end('cancelled', cancelled, cancelled.reason, durationMs);
    if (!failed) return this.#end('success', undefined, undefined, durationMs, now);
    if (attempt.aborted && attempt.abortReason instanceof TaskInterruptedError) {
      if (this.#requeuesInterrupted(error)) return this.release();
      return this.#end('interrupted', error, 'shutdown', durationMs);
    }
    if (attempt.attempt < this.maxAttempts && !this.runner.stopping) {
      const wait = retryDelay(this.options, attempt.attempt);
      record.error = toErrorInfo(error);
      // Stored with the record, so a restarted process keeps the retry's schedule.
      record.runAt = Date.now() + wait;
      // Not awaited: recordChanged() handles a failed write (it is retried until it lands).
      void this.#transition('pending', durationMs);
      this.runner.retryLater(this, wait);
      return;
    }
    this.#fail(error, durationMs);
  }

  /** The task has finally failed: record it, then call its `onError`. */
  #fail(error: unknown, durationMs: number | undefined): void {
    this.#end('failed', error, undefined, durationMs);
    const onError = this.options.onError;
    if (onError !== undefined) {
      try {
        Promise.resolve(onError(error, this.runner.snapshot(this.record))).catch((e: unknown) =>
          this.runner.report(`onError of task ${this.name}`, e),
        );
      } catch (e) {
        this.runner.report(`onError of task ${this.name}`, e);
      }
    }
  }

  /**
   * `requeueOnInterrupt` with a durable store: the attempt cut short by shutdown is handed back to run again
   * as the next attempt (linked to this one's span); it keeps its number but uses up no retry.
   */
  #requeuesInterrupted(reason: unknown): boolean {
    if (!this.recoverable || !this.options.requeueOnInterrupt) return false;
    this.record.maxAttempts++;
    this.record.error = toErrorInfo(reason);
    return true;
  }

  /**
   * Recovery found this task `running` under an owner that is gone: its process died during attempt
   * `attempts`. That counts one stall. Within `maxStalls` the task goes on (call before the run is accepted,
   * so its `pending` event says why) as the next attempt, which uses up no retry; past it the answer is the
   * TaskStalledError to end it with (`failStalled`).
   */
  countStall(): TaskStalledError | undefined {
    const record = this.record;
    const stalls = (record.stalls ?? 0) + 1;
    const maxStalls = this.options.maxStalls;
    record.stalls = stalls;
    if (stalls > maxStalls) return new TaskStalledError(stalls, maxStalls);
    record.maxAttempts++;
    record.error = {
      type: 'TaskStalledError',
      message:
        `the process running attempt ${record.attempts} died; the task runs again (stall ${stalls} ` +
        `of the ${maxStalls} that "maxStalls" allows)`,
    };
    return undefined;
  }

  /** Recovery: end a task whose process died under it more often than `maxStalls` allows; `onError` is called. */
  failStalled(error: TaskStalledError): void {
    if (!this.isFinal) this.#fail(error, undefined);
  }

  /**
   * Hand the task back to the durable store as unowned `pending` work (shutdown): the next start, here or
   * in another process, runs it. It ends in this process; a handle's `done` gets the pending record.
   */
  release(why = 'released to the store at shutdown'): void {
    if (this.isFinal) return;
    this.#set(FINAL, true);
    const record = this.record;
    const previous = record.status;
    record.status = 'pending';
    if (previous !== 'pending') this.#emit('pending', previous, undefined);
    this.runner.release(this);
    if (record.attempts === 0) this.#extras?.signals?.rejectStarted(new TaskCancelledError(why));
    this.#extras?.signals?.resolveDone(this.runner.snapshot(record));
  }

  /**
   * The shared store gave this task's idempotency key to task `holder` (another request or instance got
   * there first): this one never runs. It ends `cancelled` (reason `duplicate`) here; a handle taken
   * before this was known follows the holder instead (`follow` resolves with its final record).
   */
  duplicateOf(holder: string, follow: () => Promise<TaskRecord>): void {
    if (this.isFinal) return;
    this.stored = false;
    const signals = this.#extras?.signals;
    if (signals !== undefined) this.#more().signals = undefined;
    this.#end('cancelled', new TaskCancelledError(`duplicate of ${holder}`), 'duplicate', undefined);
    if (signals !== undefined) {
      // follow() never rejects: it polls through store errors until the holder ends or the manager closes.
      void follow().then((record) => {
        if (record.attempts > 0) signals.resolveStarted();
        else signals.rejectStarted(new TaskCancelledError(record.reason ?? 'duplicate'));
        signals.resolveDone(record);
      });
    }
  }

  /**
   * The write of this task's record failed and its request is answered 503: it was never accepted and does
   * not run. `saved`: the record was written (only its key claim failed), so it is stored as cancelled.
   */
  refuse(saved: boolean): void {
    this.stored = saved;
    this.cancel('cancelled', 'store_unavailable');
  }

  /** End a task that never got to run (or is waiting for a retry) without running it. */
  cancel(status: 'cancelled' | 'interrupted', reason: string, cause?: Error): void {
    if (this.isFinal) return;
    const error = cause ?? (status === 'cancelled' ? new TaskCancelledError(reason) : new TaskInterruptedError(reason));
    this.#end(status, error, reason, undefined);
    this.#extras?.signals?.rejectStarted(error);
  }

  log(attempt: Attempt, level: LogLevel, message: string, fields: Record<string, unknown> | undefined): void {
    const runner = this.runner;
    const safeFields = fields === undefined ? undefined : runner.redact(fields);
    const time = Date.now();
    // Whole literals: a field added afterwards would give every kept entry a separate property store.
    const entry: LogEntry =
      safeFields === undefined
        ? { time, level, message, attempt: attempt.attempt }
        : { time, level, message, attempt: attempt.attempt, fields: safeFields };
    const logs = this.record.logs;
    // The first entry makes an array of exactly one (a push onto `[]` reserves 17 slots, kept by every
    // finished record in the history); later pushes grow it as usual.
    if (logs === NO_LOGS) {
      this.record.logs = [entry];
    } else {
      if (logs.length >= MAX_LOGS_PER_RECORD) logs.shift();
      logs.push(entry);
    }
    // The span event first, straight onto the attempt's span (no event object, no context lookup); the
    // LogEvent only when an observer or the logger will read it: most tasks run with neither.
    const span = attempt.span;
    if (span.isRecording()) {
      const attributes: Attributes = { [ATTR_LOG_MESSAGE]: message, [ATTR_LOG_LEVEL]: level };
      span.addEvent(
        EVENT_TASK_LOG,
        safeFields === undefined ? attributes : fieldsToAttributes(safeFields, attributes),
        time,
      );
    }
    const chain = runner.chain;
    if (!chain.hasLog || !chain.wantsLog(level)) return;
    const spanContext = span.spanContext();
    const record = this.record;
    // The manager's logger alone: its line is written from these parts, no LogEvent made for it.
    if (chain.writesLogDirectly)
      return chain.writeLog(level, message, safeFields, record, attempt.attempt, this.safeTags, spanContext);
    // One literal: every field in place at once, where adding ten to a smaller object grows its property
    // store step by step (this runs for every log line of every task).
    chain.emitLog({
      type: 'log',
      level,
      message,
      fields: safeFields ?? {},
      taskId: record.id,
      name: record.name,
      attempt: attempt.attempt,
      tags: this.safeTags,
      time,
      traceId: spanContext.traceId,
      spanId: spanContext.spanId,
      traceFlags: spanContext.traceFlags,
      requestTraceId: record.requestTraceId,
      requestSpanId: record.requestSpanId,
    });
  }

  /** `own` (a progress event's type and fields) completed with what every event of an attempt carries. */
  #attemptEvent(attempt: Attempt, time: number, own: Omit<ProgressEvent, keyof AttemptEventBase>): ProgressEvent {
    const spanContext = attempt.span.spanContext();
    const event = own as ProgressEvent;
    event.taskId = this.id;
    event.name = this.name;
    event.attempt = attempt.attempt;
    event.tags = this.safeTags;
    event.time = time;
    event.traceId = spanContext.traceId;
    event.spanId = spanContext.spanId;
    event.traceFlags = spanContext.traceFlags;
    event.requestTraceId = this.record.requestTraceId;
    event.requestSpanId = this.record.requestSpanId;
    return event;
  }

  /**
   * taskProgress(): the record holds the value at once; the rest is throttled. The first call of a window
   * starts a PROGRESS_INTERVAL_MS timer, later calls only replace the pending value (no allocation, no
   * timer), and the timer (or the attempt's end) emits the latest one.
   */
  progress(attempt: Attempt, value: number, fields: Record<string, unknown> | undefined): void {
    if (this.current !== attempt) return;
    this.record.progress = value;
    let pending = this.#extras?.progress;
    if (pending === undefined) pending = this.#more().progress = { attempt, value, fields, time: 0, timer: undefined };
    pending.attempt = attempt;
    pending.value = value;
    pending.fields = fields;
    pending.time = Date.now();
    if (pending.timer === undefined) {
      pending.timer = setTimeout(() => this.#flushProgress(), PROGRESS_INTERVAL_MS);
      pending.timer.unref();
    }
  }

  /** Emit the pending progress report, if any: a span event on its attempt, then the observers. */
  #flushProgress(): void {
    const pending = this.#extras?.progress;
    if (pending === undefined || pending.timer === undefined) return;
    clearTimeout(pending.timer);
    pending.timer = undefined;
    const { attempt, value, time } = pending;
    const runner = this.runner;
    const fields = pending.fields === undefined ? undefined : runner.redact(pending.fields);
    pending.fields = undefined;
    const span = attempt.span;
    if (span.isRecording())
      span.addEvent(EVENT_TASK_PROGRESS, fieldsToAttributes(fields ?? {}, { [ATTR_TASK_PROGRESS]: value }), time);
    this.progressEmitted(value, fields);
    if (!runner.chain.hasProgress) return;
    runner.chain.emitProgress(this.#attemptEvent(attempt, time, { type: 'progress', value, fields: fields ?? {} }));
  }

  /** A throttled progress report has left for the span and observers: an engine's run sends it on (BullMQ's job). */
  protected progressEmitted(_value: number, _fields: Record<string, unknown> | undefined): void {}

  #end(
    status: TaskStatus,
    error: unknown,
    reason: string | undefined,
    lastAttemptMs: number | undefined,
    endedAt = Date.now(),
  ): void {
    const record = this.record;
    this.#set(FINAL, true);
    record.endedAt = endedAt;
    if (record.startedAt !== undefined) record.durationMs = endedAt - record.startedAt;
    // Assigned, never deleted (a deleted property turns a V8 object into a slow dictionary); not added when
    // there is none, as a success has none.
    if (error !== undefined) record.error = toErrorInfo(error);
    else if (record.error !== undefined) record.error = undefined;
    if (reason !== undefined) record.reason = reason;
    void this.#transition(status, record.durationMs ?? lastAttemptMs); // a failed write is retried (recordChanged)
    this.#extras?.signals?.resolveDone(this.runner.snapshot(record));
    this.runner.taskEnded(this);
  }

  /** The first lifecycle event: the task was accepted as `pending`. */
  announce(): void {
    this.#emit('pending', undefined, undefined);
  }

  /** Answers the status write when there is one (see `confirmsStart`). */
  #transition(status: TaskStatus, durationMs: number | undefined, awaited = false): Promise<unknown> | undefined {
    const record = this.record;
    const previousStatus = record.status;
    record.status = status;
    const written = this.stored ? this.runner.recordChanged(record, awaited) : undefined;
    this.#emit(status, previousStatus, durationMs);
    return written;
  }

  #emit(status: TaskStatus, previousStatus: TaskStatus | undefined, durationMs: number | undefined): void {
    const record = this.record;
    if (
      !this.runner.chain.hasLifecycle ||
      !this.runner.chain.wantsLifecycle(status, status === 'pending' && record.error !== undefined)
    )
      return;
    const event: LifecycleEvent = {
      type: 'lifecycle',
      taskId: this.id,
      name: this.name,
      attempt: record.attempts,
      status,
      tags: this.safeTags,
      time: Date.now(),
    };
    if (previousStatus !== undefined) event.previousStatus = previousStatus;
    if (durationMs !== undefined) event.durationMs = durationMs;
    if (record.error !== undefined && status !== 'running' && status !== 'success') event.error = record.error;
    if (record.reason !== undefined) event.reason = record.reason;
    if (record.traceId !== undefined) {
      event.traceId = record.traceId;
      event.spanId = record.spanId;
      // A task resumed from a store, before its first attempt here: taken as sampled (an attempt's ids are
      // stored only when it was recorded).
      if (this.previousAttempt !== undefined) event.traceFlags = this.previousAttempt.traceFlags;
    }
    if (record.requestTraceId !== undefined) {
      event.requestTraceId = record.requestTraceId;
      event.requestSpanId = record.requestSpanId;
    }
    this.runner.chain.emitLifecycle(event);
  }
}

/** A task taken over from a durable store by recovery (see `confirmsStart`). */
export class ResumedTaskRun extends TaskRun {
  constructor(
    runner: RunHost,
    record: TaskRecord,
    fn: TaskFunction,
    options: ResolvedTaskOptions,
    requestLink: SpanContext | undefined,
    recoverable: boolean,
    previousAttempt: SpanContext | undefined,
  ) {
    super(runner, record, fn, options, requestLink, recoverable, false);
    this.previousAttempt = previousAttempt;
  }

  override get confirmsStart(): boolean {
    return true;
  }
}
