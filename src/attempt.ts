import { context, isSpanContextValid, ROOT_CONTEXT, trace, type Span } from '@opentelemetry/api';
import { ATTEMPT_KEY, attemptStorage, kLog, kSeq, type ActiveAttempt } from './context.js';
import { TaskTimeoutError } from './errors.js';
import type { LogLevel, Tags } from './types.js';

/** What an attempt reports back to its task while it runs. */
export interface AttemptOwner {
  readonly id: string;
  readonly name: string;
  readonly tags: Tags;
  readonly maxAttempts: number;
  log(attempt: Attempt, level: LogLevel, message: string, fields: Record<string, unknown> | undefined): void;
  /** Called when the attempt is aborted while nothing races its promise (no timeout). */
  abandon(attempt: Attempt, reason: unknown): void;
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

  /**
   * Run `fn(...args)` as this attempt: inside our context, with the span active when tracing is on.
   */
  async execute(fn: (...args: unknown[]) => unknown, args: readonly unknown[], timeoutMs: number | undefined): Promise<unknown> {
    let timer: NodeJS.Timeout | undefined;
    if (timeoutMs !== undefined) timer = setTimeout(() => this.abort(new TaskTimeoutError(timeoutMs)), timeoutMs);
    try {
      const result = this.#call(fn, args);
      if (result === null || typeof result !== 'object' || typeof (result as PromiseLike<unknown>).then !== 'function') return result;
      // Only a timeout races the task's promise; shutdown abandons an attempt instead (see abort()), so
      // the common case allocates no extra promise.
      if (timeoutMs === undefined) return await result;
      if (this.#abortReason !== undefined) throw this.#abortReason;
      return await new Promise((resolve, reject) => {
        this.#rejectRunning = reject;
        (result as PromiseLike<unknown>).then(resolve, reject);
      });
    } finally {
      if (timer !== undefined) clearTimeout(timer);
      this.#rejectRunning = undefined;
    }
  }

  #call(fn: (...args: unknown[]) => unknown, args: readonly unknown[]): unknown {
    // Only a real span context needs the OpenTelemetry context: with no SDK the extra ALS entry is skipped.
    // The base is ROOT_CONTEXT, not the context that happened to start the attempt (the request's, a
    // response `finish` listener's, a retry timer's): the task sees the same fresh context with only its
    // attempt span in it, whatever the phase, and nothing of the request (its span, baggage,
    // instrumentation state) leaks into work that outlives it.
    if (isSpanContextValid(this.span.spanContext())) {
      const attemptContext = trace.setSpan(ROOT_CONTEXT, this.span).setValue(ATTEMPT_KEY, this);
      // With a working context manager (the SDK's) the OpenTelemetry context alone carries the attempt; a
      // no-op manager does not even hold it for this call, so our own storage takes over.
      return context.with(attemptContext, () => (context.active() === attemptContext ? fn(...args) : attemptStorage.run(this, fn, ...args)));
    }
    return attemptStorage.run(this, fn, ...args);
  }
}
