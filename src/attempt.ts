import { AsyncResource } from 'node:async_hooks';
import { context, ROOT_CONTEXT, trace, type Context, type Span } from '@opentelemetry/api';
import { ATTEMPT_KEY, attemptStorage, kLog, kProgress, kSeq, type ActiveAttempt } from './context.js';
import { TaskTimeoutError } from './errors.js';
import { hasSpanIds } from './otel.js';
import { tickOf } from './repeat.js';
import type { LogLevel, Tags } from './types.js';

/** What an attempt reports back to its task while it runs. */
export interface AttemptOwner {
  readonly id: string;
  readonly name: string;
  readonly tags: Tags;
  readonly maxAttempts: number;
  readonly idempotencyKey: string | undefined;
  log(attempt: Attempt, level: LogLevel, message: string, fields: Record<string, unknown> | undefined): void;
  progress(attempt: Attempt, value: number, fields: Record<string, unknown> | undefined): void;
  /** Called when the attempt is aborted while nothing races its promise (no timeout). */
  abandon(attempt: Attempt, reason: unknown): void;
}

// The API keeps a context's span under this key (its createContextKey is Symbol.for); verified at load below.
const SPAN_KEY = Symbol.for('OpenTelemetry Context Key SPAN');

/**
 * The OpenTelemetry context an attempt runs in: its span and the attempt, nothing else. One small object
 * instead of the two copied maps `trace.setSpan(ROOT_CONTEXT, span).setValue(...)` builds; a context derived
 * from it (a child span's, baggage) is an ordinary one.
 */
class AttemptContext implements Context {
  constructor(readonly attempt: Pick<Attempt, 'span'>) {}

  getValue(key: symbol): unknown {
    if (key === SPAN_KEY) return this.attempt.span;
    if (key === ATTEMPT_KEY) return this.attempt;
    return undefined;
  }

  setValue(key: symbol, value: unknown): Context {
    return this.#expanded().setValue(key, value);
  }

  deleteValue(key: symbol): Context {
    return this.#expanded().deleteValue(key);
  }

  #expanded(): Context {
    return expandedContext(this.attempt);
  }
}

/** The attempt's context built the API's way: two copied maps, what AttemptContext stands in for. */
function expandedContext(attempt: Pick<Attempt, 'span'>): Context {
  return trace.setSpan(ROOT_CONTEXT, attempt.span).setValue(ATTEMPT_KEY, attempt);
}

const probe = trace.wrapSpanContext({ traceId: '1'.repeat(32), spanId: '1'.repeat(16), traceFlags: 1 });
/** False if an API version keys spans differently: attempts then build their context the API's way. */
const attemptContextWorks = trace.getSpan(new AttemptContext({ span: probe })) === probe;

/**
 * Runs `fn` inside `attemptContext`, or in our own storage when no context manager holds it (no SDK's). The
 * attempt comes as an argument, not as `this`: the context manager binds a `thisArg` (a new function per call).
 */
function runIn(
  attempt: Attempt,
  attemptContext: Context,
  fn: (...args: unknown[]) => unknown,
  args: readonly unknown[],
): unknown {
  return context.active() === attemptContext ? fn(...args) : attemptStorage.run(attempt, fn, ...args);
}

/** Makes `attempt` the store of our AsyncLocalStorage and calls the task: inside an AsyncResource's scope. */
function enterAndCall(attempt: Attempt, fn: (...args: unknown[]) => unknown, args: readonly unknown[]): unknown {
  attemptStorage.enterWith(attempt);
  return fn(...args);
}

/**
 * One try of a task: its context (what `getTaskContext()` returns), its span, its timeout and its abort.
 * The AbortController is made only when the task reads `signal`, since most tasks never do.
 */
let attemptsStarted = 0;

export class Attempt implements ActiveAttempt {
  readonly [kSeq] = ++attemptsStarted;
  readonly id: string;
  readonly name: string;
  readonly tags: Tags;
  readonly maxAttempts: number;
  #controller: AbortController | undefined;
  #abortReason: unknown;
  #rejectRunning: ((reason: unknown) => void) | undefined;

  constructor(
    readonly owner: AttemptOwner,
    readonly attempt: number,
    readonly span: Span,
  ) {
    this.id = owner.id;
    this.name = owner.name;
    this.tags = owner.tags;
    this.maxAttempts = owner.maxAttempts;
  }

  get signal(): AbortSignal {
    if (this.#controller === undefined) {
      this.#controller = new AbortController();
      if (this.#abortReason !== undefined) this.#controller.abort(this.#abortReason);
    }
    return this.#controller.signal;
  }

  /** Read from the run's idempotency key when asked: most tasks never ask, and a resumed tick knows it too. */
  get tickAt(): Date | undefined {
    return tickOf(this.owner.idempotencyKey);
  }

  get aborted(): boolean {
    return this.#abortReason !== undefined;
  }

  get abortReason(): unknown {
    return this.#abortReason;
  }

  /** Abort the signal and fail the attempt now with `reason`, whether or not the task honours the signal. */
  abort(reason: unknown): void {
    if (this.#abortReason !== undefined) return;
    this.#abortReason = reason;
    this.#controller?.abort(reason);
    if (this.#rejectRunning !== undefined) this.#rejectRunning(reason);
    else this.owner.abandon(this, reason);
  }

  [kLog](level: LogLevel, message: string, fields: Record<string, unknown> | undefined): void {
    this.owner.log(this, level, message, fields);
  }

  [kProgress](value: number, fields: Record<string, unknown> | undefined): void {
    this.owner.progress(this, value, fields);
  }

  /**
   * Run `fn(...args)` as this attempt: inside our context, with the span active when tracing is on. Answers
   * the task's own result (a value, or its promise, which the caller awaits) or throws what it threw.
   */
  execute(fn: (...args: unknown[]) => unknown, args: readonly unknown[], timeoutMs: number | undefined): unknown {
    // Only a timeout races the task's promise; shutdown abandons an attempt instead (see abort()), so the
    // common case adds no promise of its own.
    if (timeoutMs === undefined) return this.#call(fn, args);
    return this.#executeWithTimeout(fn, args, timeoutMs);
  }

  async #executeWithTimeout(
    fn: (...args: unknown[]) => unknown,
    args: readonly unknown[],
    timeoutMs: number,
  ): Promise<unknown> {
    const timer = setTimeout(() => this.abort(new TaskTimeoutError(timeoutMs)), timeoutMs);
    try {
      const result = this.#call(fn, args);
      if (result === null || typeof result !== 'object' || typeof (result as PromiseLike<unknown>).then !== 'function')
        return result;
      if (this.aborted) throw this.#abortReason;
      return await new Promise((resolve, reject) => {
        this.#rejectRunning = reject;
        (result as PromiseLike<unknown>).then(resolve, reject);
      });
    } finally {
      clearTimeout(timer);
      this.#rejectRunning = undefined;
    }
  }

  #call(fn: (...args: unknown[]) => unknown, args: readonly unknown[]): unknown {
    // Only a real span context needs the OpenTelemetry context: with no SDK the extra ALS entry is skipped.
    // The base is ROOT_CONTEXT, not the context that happened to start the attempt (the request's, a
    // response `finish` listener's, a retry timer's): the task sees the same fresh context with only its
    // attempt span in it, whatever the phase, and nothing of the request (its span, baggage,
    // instrumentation state) leaks into work that outlives it.
    if (hasSpanIds(this.span.spanContext())) {
      const attemptContext = attemptContextWorks ? new AttemptContext(this) : expandedContext(this);
      // With a working context manager (the SDK's) the OpenTelemetry context alone carries the attempt; a
      // no-op manager does not even hold it for this call, so our own storage takes over.
      return context.with(attemptContext, runIn, undefined, this, attemptContext, fn, args);
    }
    // AsyncLocalStorage.run() copies the async context frame (a map of every store) twice on Node 24: once to
    // enter, once to restore the caller's. An AsyncResource holds the caller's frame and puts it back as it
    // was, so only the entering copy is made.
    return new AsyncResource(RESOURCE_TYPE).runInAsyncScope(enterAndCall, undefined, this, fn, args);
  }
}

const RESOURCE_TYPE = 'koa-taskflow.attempt';
