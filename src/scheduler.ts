import { AsyncResource } from 'node:async_hooks';
import type { ServerResponse } from 'node:http';
import type { Acceptance, AcceptingRequest, TaskPhase } from './acceptance.js';
import type { TaskQueueFullError } from './errors.js';
import type { TaskHandle } from './handles.js';
import { validateTaskOptions, mergeOptions, type TaskOptions } from './options.js';
import type { Runner } from './runner.js';
import type { RunSequence, TaskRun } from './task-run.js';

export type { TaskHandle, TaskPhase };

const RESPONSE_SCOPE = 'koa-taskflow.response';

/**
 * A request's after-response tasks, run one after another in the order added, starting once the
 * response has been sent or the client has gone.
 */
class ResponseSequence implements RunSequence {
  // Most requests add one task: it is held alone, and an array is made for a second (a push onto `[]`
  // reserves 17 slots, 150 bytes allocated per request for one task).
  #first: TaskRun | undefined;
  #more: TaskRun[] | undefined;
  #cursor = 0;
  #started = false;
  #inFlight: TaskRun | undefined;

  /** The request's async context, from its response's `close`: where its tasks start, whenever a slot frees. */
  scope: AsyncResource | undefined;

  constructor(
    readonly runner: Runner,
    res: ServerResponse,
  ) {
    if (res.writableFinished || res.destroyed) {
      this.#started = true;
      return;
    }
    // One listener: a response emits `close` right after `finish` (next tick), and also when the client
    // went away before it finished, where the tasks must still run. They start at the end of this turn
    // of the event loop, with those of every other response that closed in it (see Runner.responseClosed).
    res.on('close', () => {
      this.scope = new AsyncResource(RESPONSE_SCOPE);
      this.runner.responseClosed(this);
    });
  }

  /** The turn its response closed in has ended: its tasks start, in the request's async context. */
  resume(): void {
    if (this.#started) return;
    this.#started = true;
    this.scope!.runInAsyncScope(this.#pump, this);
  }

  push(run: TaskRun): void {
    this.runner.sequenced(run, this);
    if (this.#first === undefined) this.#first = run;
    else (this.#more ??= []).push(run);
    if (this.#started) this.#pump();
  }

  ended(run: TaskRun): void {
    if (run === this.#inFlight) this.#inFlight = undefined;
    if (this.#started) this.#pump();
  }

  /** The `i`th run added, if any. */
  #at(i: number): TaskRun | undefined {
    return i === 0 ? this.#first : this.#more?.[i - 1];
  }

  #pump(): void {
    if (this.#inFlight !== undefined) return;
    for (let run = this.#at(this.#cursor); run !== undefined; run = this.#at(this.#cursor)) {
      if (run.isFinal) {
        this.#cursor++;
        continue;
      }
      // A delayed task (its runAt set when added) starts when due without holding the later ones back.
      if (run.record.runAt !== undefined) {
        this.#cursor++;
        this.runner.submit(run);
        continue;
      }
      this.#inFlight = run;
      this.runner.submit(run);
      return;
    }
  }

  cancelUnlessRunOnError(reason: string): void {
    for (let i = 0, run = this.#first; run !== undefined; run = this.#at(++i))
      if (!run.options.runOnError) run.cancel('cancelled', reason);
  }
}

/** The tasks of one request: its after-route list, its after-response sequence and its unsaved records. */
export class RequestTasks implements AcceptingRequest {
  #afterRoute: TaskRun[] | undefined;
  #sequence: ResponseSequence | undefined;
  #routeDone = false;
  #unsaved: TaskRun[] | undefined;
  // Batches written before the response was ready (see writeNow); the final flush waits for them too.
  #written: Promise<void>[] | undefined;
  /** Set when an add of this request was refused by `maxQueued`: the request answers 503 whatever its handler does. */
  queueFull: TaskQueueFullError | undefined = undefined;

  constructor(
    readonly acceptance: Acceptance,
    readonly res: ServerResponse,
  ) {}

  add(run: TaskRun, phase: TaskPhase): void {
    if (phase === 'afterResponse') {
      (this.#sequence ??= new ResponseSequence(this.acceptance.runner, this.res)).push(run);
    } else if (phase === 'afterRoute' && !this.#routeDone) {
      (this.#afterRoute ??= []).push(run);
    } else {
      this.acceptance.runner.submit(run);
    }
  }

  /** Records to write in the request's single batch before the response goes out. */
  unsaved(run: TaskRun): void {
    (this.#unsaved ??= []).push(run);
  }

  /** The downstream middleware returned: after-route tasks start, fire-and-forget. */
  routeDone(): void {
    this.#routeDone = true;
    const runs = this.#afterRoute;
    this.#afterRoute = undefined;
    if (runs !== undefined) for (const run of runs) this.acceptance.runner.submit(run);
  }

  /** The downstream middleware threw: tasks waiting for the route or the response are cancelled unless `runOnError`. */
  routeFailed(): void {
    const runs = this.#afterRoute;
    this.#afterRoute = undefined;
    this.#routeDone = true;
    if (runs !== undefined) {
      for (const run of runs) {
        if (run.options.runOnError) this.acceptance.runner.submit(run);
        else run.cancel('cancelled', 'request_failed');
      }
    }
    this.#sequence?.cancelUnlessRunOnError('request_failed');
  }

  /**
   * Write the records added so far now instead of with the response: a task that starts before the
   * response (idempotency key, `schedule()`) waits for its key to be claimed, which happens in this write.
   */
  writeNow(): void {
    const runs = this.#unsaved;
    if (runs === undefined) return;
    this.#unsaved = undefined;
    const written = this.acceptance.persist(runs);
    // Awaited by flush(); until then a failure must not count as unhandled.
    written.catch(() => {});
    (this.#written ??= []).push(written);
  }

  /**
   * Write this request's new records in one batch (and wait for any written early). `undefined` when there
   * is nothing to write, the common case: the middleware then awaits nothing (no promise, no extra tick).
   */
  flush(): Promise<void> | undefined {
    if (this.#written === undefined) {
      const runs = this.#unsaved;
      if (runs === undefined) return undefined;
      this.#unsaved = undefined;
      return this.acceptance.persist(runs);
    }
    this.writeNow();
    const written = this.#written;
    this.#written = undefined;
    return Promise.all(written).then(() => undefined);
  }
}

/** The phase-bound scheduler behind `ctx.tasks.afterRoute` and `ctx.tasks.afterResponse`. */
export class PhaseScheduler {
  readonly #request: RequestTasks;
  readonly #phase: TaskPhase;
  readonly #overrides: TaskOptions | undefined;

  constructor(request: RequestTasks, phase: TaskPhase, overrides: TaskOptions | undefined) {
    this.#request = request;
    this.#phase = phase;
    this.#overrides = overrides;
  }

  /** Add `fn(...args)` to run in this phase; returns its handle. */
  schedule<A extends unknown[]>(fn: (...args: A) => unknown, ...args: NoInfer<A>): TaskHandle<A> {
    return scheduleIn(
      this.#request,
      `ctx.tasks.${this.#phase}.schedule`,
      fn,
      args,
      this.#overrides,
      this.#phase,
    ) as TaskHandle<A>;
  }

  /** The same phase with `options` merged over this one's. */
  with(options: TaskOptions): PhaseScheduler {
    return new PhaseScheduler(
      this.#request,
      this.#phase,
      withOptions(`ctx.tasks.${this.#phase}.with`, this.#overrides, options),
    );
  }
}

/** Validate `options` given to a `with()` and merge them over the current overrides. */
export function withOptions(where: string, current: TaskOptions | undefined, options: TaskOptions): TaskOptions {
  validateTaskOptions(where, options);
  if (options === undefined) throw new TypeError(`${where}: options must be an object, got undefined`);
  // A copy: the caller's object (reused in a loop, changed after) is not what later adds read.
  return mergeOptions(current ?? {}, options);
}

/** Enqueue and answer with the id: the task's own, or the holder's on an idempotency-key hit. */
export function enqueueForId(
  acceptance: Acceptance,
  where: string,
  fn: unknown,
  args: unknown[],
  overrides: TaskOptions | undefined,
  phase: TaskPhase,
  request: RequestTasks | undefined,
): string {
  const result = acceptance.accept(where, fn, args, overrides, phase, request);
  return typeof result === 'string' ? result : result.id;
}

function scheduleIn(
  request: RequestTasks,
  where: string,
  fn: unknown,
  args: unknown[],
  overrides: TaskOptions | undefined,
  phase: TaskPhase,
): TaskHandle {
  const result = request.acceptance.accept(where, fn, args, overrides, phase, request);
  return request.acceptance.handle(result, args);
}

/**
 * `ctx.tasks`: the per-request scheduler. Costs one small object per request; nothing else happens
 * until a task is added.
 */
export class TaskScheduler {
  constructor(
    private readonly request: RequestTasks,
    private readonly overrides: TaskOptions | undefined,
  ) {}

  /**
   * Run `fn(...args)` after the response has been sent, after this request's earlier after-response tasks
   * (FastAPI's `add_task`). With `eager: true` it starts now. Returns the task id.
   */
  addTask<A extends unknown[]>(fn: (...args: A) => unknown, ...args: NoInfer<A>): string {
    return enqueueForId(
      this.request.acceptance,
      'ctx.tasks.addTask',
      fn,
      args,
      this.overrides,
      'afterResponse',
      this.request,
    );
  }

  /** Run `fn(...args)` now, concurrently with the handler. */
  schedule<A extends unknown[]>(fn: (...args: A) => unknown, ...args: NoInfer<A>): TaskHandle<A> {
    return scheduleIn(this.request, 'ctx.tasks.schedule', fn, args, this.overrides, 'now') as TaskHandle<A>;
  }

  /** Tasks that start when the downstream middleware has returned, before the response is written. */
  get afterRoute(): PhaseScheduler {
    return new PhaseScheduler(this.request, 'afterRoute', this.overrides);
  }

  /** Tasks that start once the response has been sent, one after another in the order added. */
  get afterResponse(): PhaseScheduler {
    return new PhaseScheduler(this.request, 'afterResponse', this.overrides);
  }

  /** A scheduler with `options` merged over this one's (`tags` merge key by key). */
  with(options: TaskOptions): TaskScheduler {
    return new TaskScheduler(this.request, withOptions('ctx.tasks.with', this.overrides, options));
  }
}

/** `manager.add` / `manager.with(...).add`: enqueue outside a request. */
export class TaskAdder {
  constructor(
    private readonly acceptance: Acceptance,
    private readonly overrides: TaskOptions | undefined,
  ) {}

  /** Start `fn(...args)` as soon as a slot is free; returns the task id. */
  add<A extends unknown[]>(fn: (...args: A) => unknown, ...args: NoInfer<A>): string {
    return enqueueForId(this.acceptance, 'manager.add', fn, args, this.overrides, 'now', undefined);
  }

  with(options: TaskOptions): TaskAdder {
    return new TaskAdder(this.acceptance, withOptions('manager.with', this.overrides, options));
  }
}
