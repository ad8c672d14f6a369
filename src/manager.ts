import { randomUUID } from 'node:crypto';
import type { Middleware } from 'koa';
import type { CancelOptions } from './cancellation.js';
import { createAdmin, type AdminMiddleware, type AdminOptions } from './admin/index.js';
import { clearFallbackLogger, setFallbackLogger } from './context.js';
import { composeParts, type ManagerParts } from './composition.js';
import { TaskflowError, TaskManagerClosedError } from './errors.js';
import type { TaskHandle } from './handles.js';
import { checkMs, DEFAULT_MAX_QUEUED, validateManagerOptions, type TaskManagerOptions } from './manager-options.js';
import { computeMetrics } from './metrics.js';
import { taskMiddleware } from './middleware.js';
import { checkKnownKeys, type TaskOptions } from './options.js';
import { checkRepeat, startRepeat, type Repeating, type RepeatSchedule } from './repeat.js';
import { TaskAdder } from './scheduler.js';
import { compileFilter } from './stores/filter.js';
import {
  type TaskFilter,
  type TaskFunction,
  type TaskLogger,
  type TaskMetrics,
  type TaskObserver,
  type TaskRecord,
  type TaskStore,
} from './types.js';

export { DEFAULT_MAX_QUEUED, type TaskManagerOptions };
export type { TaskHandle };

const SHUTDOWN_OPTIONS = new Set(['timeoutMs']);

/**
 * The façade users hold: one per process (or per app); mount `middleware()` on the Koa app. It composes the
 * parts that do the work: the registry (`task()`), acceptance (every add: validation, write-ahead,
 * idempotency), the runner (queue, concurrency, retries, shutdown), recovery (leases and orphans of durable
 * stores), the observer chain and telemetry, and the store.
 */
export class TaskManager {
  readonly store: TaskStore;
  readonly logger: TaskLogger | undefined;
  /** This process's identity as the owner of durable tasks (leases, orphan claims). */
  readonly instanceId = randomUUID();
  readonly #parts: ManagerParts;
  readonly #repeats = new Set<Repeating>();
  #started: Promise<void> | undefined;
  #shutdown: Promise<void> | undefined;

  constructor(options: TaskManagerOptions = {}) {
    validateManagerOptions(options);
    this.logger = options.logger;
    this.#parts = composeParts(options, this.instanceId, (id) => this.get(id));
    this.store = this.#parts.store;
  }

  /**
   * Register `fn` under `options.name ?? fn.name` with its options (retries, timeout…). Returns `fn` itself,
   * still callable directly. A registered task can be retried by id and recovered after a restart.
   */
  task<F extends TaskFunction>(fn: F, options: TaskOptions = {}): F {
    return this.#parts.registry.register(fn, options);
  }

  /** Koa middleware putting a `TaskScheduler` on `ctx.tasks` and `ctx.state.tasks`. */
  middleware(): Middleware {
    return taskMiddleware(this.#parts.acceptance, this.#parts.reporter);
  }

  /** Enqueue outside a request (startup hooks, scripts): starts as soon as a slot is free. */
  add<A extends unknown[]>(fn: (...args: A) => unknown, ...args: NoInfer<A>): string {
    return new TaskAdder(this.#parts.acceptance, undefined).add(fn, ...args);
  }

  /** `add` with extra options: `manager.with({ tags }).add(fn, ...args)`. */
  with(options: TaskOptions): TaskAdder {
    return new TaskAdder(this.#parts.acceptance, undefined).with(options);
  }

  /**
   * Run `task` on a schedule (`every` ms, or a `cron` pattern in time zone `tz`): each tick is one ordinary
   * run, once per tick across the instances sharing a durable store; see docs/api.md's Repeating tasks.
   */
  repeat(task: () => unknown, schedule: RepeatSchedule, options?: TaskOptions): Repeating {
    const acceptance = this.#parts.acceptance;
    if (acceptance.closing) throw new TaskManagerClosedError();
    const check = (where: string, fn: TaskFunction, overrides: TaskOptions): string =>
      acceptance.check(where, fn, overrides);
    const engine = this.#parts.engine;
    if (engine?.repeat !== undefined) {
      // The engine's schedule is the fleet's: shutting this process down leaves it running (only stop() ends it).
      const checked = checkRepeat({ check }, task, schedule, options);
      return engine.repeat(checked.name, checked.schedule, checked.options);
    }
    const repeat = startRepeat(
      {
        store: this.store,
        durable: this.store.durable === true,
        check,
        add: (where, fn, overrides) => void acceptance.accept(where, fn, [], overrides, 'now', undefined),
        report: (stage, error) => this.#parts.reporter.report(stage, error),
      },
      task,
      schedule,
      options,
      (stopped) => this.#repeats.delete(stopped),
    );
    this.#repeats.add(repeat);
    return repeat;
  }

  /**
   * Add an observer after construction (appended to the chain, same isolation rules); returns a function
   * that removes it. `startup`/`close` of an observer added this way are not called.
   */
  subscribe(observer: TaskObserver): () => void {
    if (observer === null || typeof observer !== 'object')
      throw new TypeError('subscribe: argument "observer" must be an observer object');
    return this.#parts.chain.subscribe(observer);
  }

  /**
   * Start observers and, with a durable store, recovery: tasks left by a process that is gone are claimed
   * and resumed now and every `orphanCheckMs`, and this process's lease is kept alive. Idempotent; when the
   * store is unreachable it rejects with a TaskflowError and may be called again.
   */
  start(): Promise<void> {
    this.#started ??= (async () => {
      // `taskLog()` outside a task writes through the latest started manager's logger (the console else).
      setFallbackLogger(this, this.logger, this.#parts.redact);
      this.#parts.telemetry.bindMeter();
      await this.#parts.chain.startup(this.#parts.shutdownTimeoutMs);
      await this.#parts.engine?.start();
    })();
    const recovery = this.#parts.recovery;
    if (recovery === undefined) return this.#started;
    return this.#started.then(() => recovery.start());
  }

  /**
   * With an `engine` (BullMQ): this process also runs tasks from the engine's queue, the registered ones of
   * this manager, until `shutdown()`. Starts the manager if needed. Without an engine it throws.
   */
  async work(): Promise<void> {
    const engine = this.#parts.engine;
    if (engine === undefined)
      throw new TaskflowError(
        'work(): needs option "engine" (bullmqEngine() of koa-taskflow/bullmq); without one every process runs its own tasks',
        {
          code: 'ERR_NO_ENGINE',
        },
      );
    await this.start();
    await engine.work();
  }

  /** Resolves when no accepted task is queued, waiting or running (and, with a durable store, their records are written). */
  drain(): Promise<void> {
    const engine = this.#parts.engine;
    if (engine !== undefined) return this.#parts.runner.whenIdle().then(() => engine.settled());
    if (this.store.durable !== true) return this.#parts.runner.whenIdle();
    // An empty save joins the pending group commit: it resolves once the last status writes are committed.
    return this.#parts.runner.whenIdle().then(() =>
      this.store.save([]).then(
        () => undefined,
        () => undefined,
      ),
    );
  }

  /**
   * Stop taking work; wait for running tasks up to `timeoutMs`; then abort unshielded ones (ending
   * `interrupted`), cancel what never started, wait for shielded ones; close observers and the store.
   * Safe to call more than once: later calls return the first call's promise.
   */
  shutdown(options: { timeoutMs?: number } = {}): Promise<void> {
    if (options === null || typeof options !== 'object')
      throw new TypeError(
        `shutdown: argument "options" must be an object, got ${options === null ? 'null' : typeof options}`,
      );
    checkKnownKeys('shutdown', options, SHUTDOWN_OPTIONS);
    const timeoutMs = options.timeoutMs ?? this.#parts.shutdownTimeoutMs;
    checkMs('shutdown', 'timeoutMs', timeoutMs, 0, false);
    this.#shutdown ??= (async () => {
      this.#parts.acceptance.closing = true;
      this.#parts.recovery?.stop();
      for (const repeat of this.#repeats) repeat.stop();
      await this.#parts.runner.stop(timeoutMs);
      await this.#parts.engine?.close(timeoutMs);
      // Every attempt has ended or been given up: threads still busy with a given-up one are stopped.
      await this.#parts.threads.close();
      // Status writes that failed while the store was away get one last chance before it closes.
      await this.#parts.runner.resync(true);
      this.#parts.telemetry.close();
      clearFallbackLogger(this);
      await this.#parts.chain.close(Math.min(timeoutMs, this.#parts.observerTimeoutMs) || 1);
      // A store that could not give up its lease (a full disk) is closed all the same: reported, not a
      // rejection at the SIGTERM handler that called shutdown() (docs/api.md).
      await this.store.close().catch((error: unknown) => this.#parts.reporter.report('store close at shutdown', error));
    })();
    return this.#shutdown;
  }

  async get(id: string): Promise<TaskRecord | undefined> {
    if (typeof id !== 'string') throw new TypeError(`get: "id" must be a string, got ${typeof id}`);
    // A durable store lags the live record by up to one group commit: a task of this process answers first.
    const records = this.#parts.engine?.records;
    const record =
      (this.#parts.storeHoldsLiveRecords && records === undefined ? undefined : this.#parts.runner.live(id)?.record) ??
      (await (records ?? this.store).get(id));
    return record && this.#parts.runner.snapshot(record);
  }

  async list(filter?: TaskFilter): Promise<TaskRecord[]> {
    // Checked here too, so a bad filter names its option whatever the store (a custom one may not check).
    compileFilter(filter);
    const records = await (this.#parts.engine?.records ?? this.store).list(filter);
    return records.map((r) => this.#parts.runner.snapshot(r));
  }

  /** Run a failed or interrupted registered task again as a new task; returns the new id. */
  retry(id: string): Promise<string> {
    const records = this.#parts.engine?.records;
    return records !== undefined ? records.retry(id) : this.#parts.acceptance.retry(id);
  }

  /**
   * Cancel task `id`: one not started ends `cancelled` and never starts; a running attempt's `signal` aborts
   * with a TaskCancelledError and the task ends `cancelled`, not retried. With a durable store, a task held by
   * another instance is cancelled there within one lease renewal. False for an unknown or finished task.
   */
  cancel(id: string, options?: CancelOptions): Promise<boolean> {
    return this.#parts.cancellation.cancel(id, options);
  }

  async metrics(): Promise<TaskMetrics> {
    const records = this.#parts.engine?.records;
    const counted =
      records !== undefined
        ? await records.metrics()
        : typeof this.store.metrics === 'function'
          ? await this.store.metrics()
          : computeMetrics(await this.store.list());
    return { ...counted, observers: this.#parts.chain.metrics() };
  }

  /**
   * Tasks accepted and not running in this process: waiting for a slot, for their request's route or
   * response, for their store write, or for a retry. What `maxQueued` bounds.
   */
  get queued(): number {
    return this.#parts.runner.waiting;
  }

  /** Attempts running now in this process (at most `concurrency`, plus shielded ones during shutdown). */
  get running(): number {
    return this.#parts.runner.running;
  }

  /** Tasks accepted in this process that have not ended: `queued` + `running`. What `drain()` waits for. */
  get unfinished(): number {
    return this.#parts.runner.unfinished;
  }

  /**
   * Koa middleware serving the admin API, the live event stream and the dashboard under `prefix`
   * (default `/tasks`). `auth` is required (see `AdminAuth`); the README's Admin section has the endpoints.
   */
  admin(options: AdminOptions): AdminMiddleware {
    // Over an engine's records, the event stream is the engine's (every process's), not this process's chain.
    const records = this.#parts.engine?.records;
    return createAdmin(this, options, records && { events: records, retriesInPlace: records.retriesInPlace });
  }
}
