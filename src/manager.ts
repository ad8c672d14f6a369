import { randomUUID } from 'node:crypto';
import type { MeterProvider, TracerProvider } from '@opentelemetry/api';
import type { Middleware } from 'koa';
import { setFallbackLogger } from './context.js';
import { TaskflowError, TaskManagerClosedError, TaskNotFoundError } from './errors.js';
import { computeMetrics } from './metrics.js';
import { ObserverChain } from './observers/chain.js';
import { pinoObserver } from './observers/pino.js';
import { spanEventObserver } from './observers/span-events.js';
import { mergeOptions, optionError, resolveOptions, validateTaskOptions, type ResolvedTaskOptions, type TaskOptions } from './options.js';
import { TaskTelemetry } from './otel.js';
import { createRedactor, type RedactOption } from './redact.js';
import { Runner } from './runner.js';
import { enqueueForId, RequestTasks, TaskScheduler, withOptions, type TaskEnqueuer, type TaskHandle, type TaskPhase } from './scheduler.js';
import { MemoryStore } from './stores/memory.js';
import { NO_LOGS, TaskRun } from './task-run.js';
import type { TaskFilter, TaskFunction, TaskLogger, TaskMetrics, TaskObserver, TaskRecord, TaskStore } from './types.js';

export interface TaskManagerOptions {
  /** A pino logger: every task log and lifecycle change is also written through it. */
  logger?: TaskLogger;
  /** Where records live. Default `new MemoryStore()`. */
  store?: TaskStore;
  /** Extra observers, after the built-in span-event and pino observers. */
  observers?: TaskObserver[];
  /** Tasks running at once in this process. Default 16. */
  concurrency?: number;
  /** Options for every task (lowest precedence). */
  defaults?: TaskOptions;
  /** Default: the global provider (a no-op until an OpenTelemetry SDK registers one). */
  tracerProvider?: TracerProvider;
  /** Default: the global provider, read again at `start()`. */
  meterProvider?: MeterProvider;
  /** How long `shutdown()` waits for running tasks. Default 10 000 ms. */
  shutdownTimeoutMs?: number;
  /** On `start()`, resume work a previous process left behind (durable stores). Default true. */
  requeuePending?: boolean;
  /** Extra key names or dotted paths to mask in args and log fields, or `false` to mask nothing. */
  redact?: RedactOption;
  /** 32-byte key for AES-256-GCM encryption of args at rest (durable stores). */
  encryptionKey?: Uint8Array;
}

export type { TaskHandle };

interface Registration {
  fn: TaskFunction;
  name: string;
  options: TaskOptions;
  resolved: ResolvedTaskOptions;
}

/** `manager.add` / `manager.with(...).add`: enqueue outside a request. */
export class TaskAdder {
  constructor(
    private readonly manager: TaskManager,
    private readonly overrides: TaskOptions | undefined,
  ) {}

  /** Start `fn(...args)` as soon as a slot is free; returns the task id. */
  add<A extends unknown[]>(fn: (...args: A) => unknown, ...args: NoInfer<A>): string {
    return enqueueForId(this.manager, 'manager.add', fn, args, this.overrides, 'now', undefined);
  }

  with(options: TaskOptions): TaskAdder {
    return new TaskAdder(this.manager, withOptions('manager.with', this.overrides, options));
  }
}

const MANAGER_OPTIONS = new Set([
  'logger', 'store', 'observers', 'concurrency', 'defaults', 'tracerProvider', 'meterProvider', 'shutdownTimeoutMs',
  'requeuePending', 'redact', 'encryptionKey',
]);

function validateManagerOptions(options: TaskManagerOptions): void {
  const where = 'new TaskManager';
  if (options === null || typeof options !== 'object') throw new TypeError(`${where}: options must be an object`);
  for (const key of Object.keys(options)) {
    if (!MANAGER_OPTIONS.has(key)) throw new TypeError(`${where}: unknown option "${key}"; known options are ${[...MANAGER_OPTIONS].join(', ')}`);
  }
  const { concurrency, shutdownTimeoutMs, logger, store, observers, encryptionKey } = options;
  if (concurrency !== undefined && (!Number.isInteger(concurrency) || concurrency < 1)) {
    throw optionError(where, 'concurrency', 'an integer >= 1', concurrency, typeof concurrency === 'number' ? RangeError : TypeError);
  }
  if (shutdownTimeoutMs !== undefined && (typeof shutdownTimeoutMs !== 'number' || !(shutdownTimeoutMs >= 0) || !Number.isFinite(shutdownTimeoutMs))) {
    throw optionError(where, 'shutdownTimeoutMs', 'a number >= 0', shutdownTimeoutMs, typeof shutdownTimeoutMs === 'number' ? RangeError : TypeError);
  }
  if (logger !== undefined && (logger === null || typeof logger !== 'object' || typeof logger.info !== 'function' || typeof logger.error !== 'function')) {
    throw optionError(where, 'logger', 'a pino logger', logger);
  }
  if (store !== undefined && (store === null || typeof store !== 'object' || typeof store.save !== 'function' || typeof store.get !== 'function')) {
    throw optionError(where, 'store', 'a TaskStore (MemoryStore, SqliteStore, RedisStore…)', store);
  }
  if (observers !== undefined && (!Array.isArray(observers) || observers.some((o) => o === null || typeof o !== 'object'))) {
    throw optionError(where, 'observers', 'an array of observer objects', observers);
  }
  if (encryptionKey !== undefined) {
    if (!(encryptionKey instanceof Uint8Array) || encryptionKey.length !== 32) {
      throw optionError(where, 'encryptionKey', 'a 32-byte Buffer/Uint8Array', encryptionKey instanceof Uint8Array ? `${encryptionKey.length} bytes` : encryptionKey, RangeError);
    }
    if (!store?.durable) throw new TypeError(`${where}: option "encryptionKey" protects args at rest and needs a durable store (SqliteStore or RedisStore)`);
  }
  validateTaskOptions(`${where}: defaults`, options.defaults);
}

/**
 * Owns the task registry, the runner, the observer chain, telemetry and the store. One per process
 * (or per app); mount `middleware()` on the Koa app.
 */
export class TaskManager implements TaskEnqueuer {
  readonly runner: Runner;
  readonly store: TaskStore;
  readonly logger: TaskLogger | undefined;
  readonly #defaults: TaskOptions;
  readonly #defaultResolved = new Map<string, ResolvedTaskOptions>();
  readonly #registry = new Map<string, Registration>();
  readonly #byFunction = new WeakMap<TaskFunction, Registration>();
  readonly #chain: ObserverChain;
  readonly #telemetry: TaskTelemetry;
  readonly #memoryStore: MemoryStore | undefined;
  readonly #shutdownTimeoutMs: number;
  #started: Promise<void> | undefined;
  #shutdown: Promise<void> | undefined;
  #closing = false;

  constructor(options: TaskManagerOptions = {}) {
    validateManagerOptions(options);
    this.logger = options.logger;
    this.store = options.store ?? new MemoryStore();
    this.#memoryStore = this.store instanceof MemoryStore ? this.store : undefined;
    this.#defaults = options.defaults ?? {};
    this.#shutdownTimeoutMs = options.shutdownTimeoutMs ?? 10_000;
    const redact = createRedactor(options.redact);
    const builtIn: TaskObserver[] = [spanEventObserver()];
    if (options.logger !== undefined) builtIn.push(pinoObserver(options.logger));
    this.#chain = new ObserverChain([...builtIn, ...(options.observers ?? [])], (observer, stage, error) =>
      this.#report(`observer ${observer.constructor?.name ?? 'Object'}.${stage} failed (reported once per observer)`, error),
    );
    this.#telemetry = new TaskTelemetry(options.tracerProvider, options.meterProvider, () => this.runner.queued);
    this.runner = new Runner({
      concurrency: options.concurrency ?? 16,
      telemetry: this.#telemetry,
      chain: this.#chain,
      store: this.store,
      storeHoldsLiveRecords: this.#memoryStore !== undefined,
      onTaskEnded: this.#memoryStore && ((record) => this.#memoryStore!.ended(record)),
      redact,
      report: (stage, error) => this.#report(stage, error),
    });
    if (options.logger !== undefined) setFallbackLogger(options.logger);
  }

  /**
   * Register `fn` under `options.name ?? fn.name` with its options (retries, timeout…). Returns `fn` itself,
   * still callable directly. A registered task can be retried by id and recovered after a restart.
   */
  task<F extends TaskFunction>(fn: F, options: TaskOptions = {}): F {
    if (typeof fn !== 'function') throw new TypeError(`task(): argument "fn" must be a function, got ${typeof fn}`);
    validateTaskOptions('task()', options);
    const name = options.name ?? fn.name;
    if (!name) throw new TypeError('task(): a task needs a name: pass a named function or option "name"');
    const existing = this.#registry.get(name);
    if (existing !== undefined && existing.fn !== fn) {
      throw new TaskflowError(`task(): the name "${name}" is already registered to another function; pass a distinct option "name"`);
    }
    const merged = mergeOptions(this.#defaults, options);
    const registration: Registration = { fn, name, options: merged, resolved: resolveOptions('task()', merged, name) };
    this.#registry.set(name, registration);
    this.#byFunction.set(fn, registration);
    return fn;
  }

  /** Koa middleware putting a `TaskScheduler` on `ctx.tasks` and `ctx.state.tasks`. */
  middleware(): Middleware {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const manager = this;
    return async function taskflow(ctx, next) {
      const request = new RequestTasks(manager, ctx.res);
      const tasks = new TaskScheduler(request, undefined);
      ctx.tasks = tasks;
      ctx.state.tasks = tasks;
      try {
        await next();
      } catch (error) {
        request.routeFailed();
        await request.flush().catch((e: unknown) => manager.#report('store write of a failed request', e));
        throw error;
      }
      request.routeDone();
      try {
        await request.flush();
      } catch (error) {
        manager.#report('store write before the response', error);
        ctx.throw(503, 'the task store is unavailable; the request was not acknowledged');
      }
    };
  }

  /** Enqueue outside a request (startup hooks, scripts): starts as soon as a slot is free. */
  add<A extends unknown[]>(fn: (...args: A) => unknown, ...args: NoInfer<A>): string {
    return new TaskAdder(this, undefined).add(fn, ...args);
  }

  /** `add` with extra options: `manager.with({ tags }).add(fn, ...args)`. */
  with(options: TaskOptions): TaskAdder {
    return new TaskAdder(this, undefined).with(options);
  }

  /**
   * Add an observer after construction (appended to the chain, same isolation rules); returns a function
   * that removes it. `startup`/`close` of an observer added this way are not called.
   */
  subscribe(observer: TaskObserver): () => void {
    if (observer === null || typeof observer !== 'object') throw new TypeError('subscribe: argument "observer" must be an observer object');
    return this.#chain.subscribe(observer);
  }

  /** Start observers and the store. Idempotent. */
  start(): Promise<void> {
    this.#started ??= (async () => {
      this.#telemetry.bindMeter();
      await this.#chain.startup(this.#shutdownTimeoutMs);
    })();
    return this.#started;
  }

  /** Resolves when no accepted task is queued, waiting or running. */
  drain(): Promise<void> {
    return this.runner.whenIdle();
  }

  /**
   * Stop taking work; wait for running tasks up to `timeoutMs`; then abort unshielded ones (ending
   * `interrupted`), cancel what never started, wait for shielded ones; close observers and the store.
   * Safe to call more than once: later calls return the first call's promise.
   */
  shutdown(options: { timeoutMs?: number } = {}): Promise<void> {
    const timeoutMs = options.timeoutMs ?? this.#shutdownTimeoutMs;
    if (typeof timeoutMs !== 'number' || !(timeoutMs >= 0)) throw optionError('shutdown', 'timeoutMs', 'a number >= 0', timeoutMs, RangeError);
    this.#shutdown ??= (async () => {
      this.#closing = true;
      await this.runner.stop(timeoutMs);
      this.#telemetry.close();
      await this.#chain.close(Math.min(timeoutMs, 5_000) || 1);
      await this.store.close();
    })();
    return this.#shutdown;
  }

  async get(id: string): Promise<TaskRecord | undefined> {
    if (typeof id !== 'string') throw new TypeError(`get: "id" must be a string, got ${typeof id}`);
    const record = await this.store.get(id);
    return record && this.runner.snapshot(record);
  }

  async list(filter?: TaskFilter): Promise<TaskRecord[]> {
    const records = await this.store.list(filter);
    return records.map((r) => this.runner.snapshot(r));
  }

  /** Run a failed or interrupted registered task again as a new task; returns the new id. */
  async retry(id: string): Promise<string> {
    const record = typeof id === 'string' ? await this.store.get(id) : undefined;
    if (record === undefined) throw new TaskNotFoundError(String(id));
    if (record.status !== 'failed' && record.status !== 'interrupted') {
      throw new TaskflowError(`retry: task ${id} is ${record.status}; only failed or interrupted tasks can be retried`);
    }
    const registration = this.#registry.get(record.name);
    if (registration === undefined) {
      throw new TaskflowError(`retry: no task is registered under "${record.name}" in this process; register it with manager.task()`);
    }
    const overrides: TaskOptions = { tags: record.tags, priority: record.priority, idempotencyKey: record.idempotencyKey };
    const result = this.enqueue('retry', registration.fn, record.args, overrides, 'now', undefined, id);
    return typeof result === 'string' ? result : result.id;
  }

  async metrics(): Promise<TaskMetrics> {
    return computeMetrics(await this.store.list());
  }

  /** @internal Accept a task: the one path every add goes through. Returns the run, or the id holding its idempotency key. */
  enqueue(where: string, fn: unknown, args: unknown[], overrides: TaskOptions | undefined, phase: TaskPhase, request: RequestTasks | undefined, retryOf?: string): TaskRun | string {
    if (this.#closing) throw new TaskManagerClosedError();
    if (typeof fn !== 'function') throw new TypeError(`${where}: argument "fn" must be a function, got ${fn === null ? 'null' : typeof fn}`);
    const options = this.#optionsFor(where, fn as TaskFunction, overrides);
    const id = randomUUID();
    if (options.idempotencyKey !== undefined && this.#memoryStore !== undefined) {
      const holder = this.#memoryStore.claimKeyNow(options.idempotencyKey, id);
      if (holder !== undefined) return holder;
    }
    const requestLink = this.#telemetry.enqueuedFrom(id, options.name);
    // Every field is declared up front, so all records share one hidden class (cheaper to keep thousands).
    const record: TaskRecord = {
      id,
      name: options.name,
      status: 'pending',
      args,
      tags: options.tags,
      attempts: 0,
      maxAttempts: options.retries + 1,
      priority: options.priority,
      idempotencyKey: options.idempotencyKey,
      createdAt: Date.now(),
      startedAt: undefined,
      endedAt: undefined,
      durationMs: undefined,
      error: undefined,
      reason: undefined,
      logs: NO_LOGS,
      traceId: undefined,
      spanId: undefined,
      requestTraceId: requestLink?.traceId,
      requestSpanId: requestLink?.spanId,
      retryOf,
    };
    const run = new TaskRun(this.runner, record, fn as TaskFunction, args, options, requestLink);
    if (this.#memoryStore !== undefined) this.#memoryStore.saveOne(record);
    else if (request !== undefined) request.unsaved(record);
    else this.persist([record]).catch((error: unknown) => this.#report(`store write of task ${id}`, error));
    this.runner.accept(run);
    const effectivePhase = options.eager ? 'now' : phase;
    if (request !== undefined) request.add(run, effectivePhase);
    else this.runner.submit(run);
    return run;
  }

  /** @internal */
  handle(runOrId: TaskRun | string, args: unknown[]): TaskHandle {
    if (typeof runOrId !== 'string') {
      const { started, done } = runOrId.signals();
      return { id: runOrId.id, name: runOrId.name, options: runOrId.options, args, started, done };
    }
    // An idempotency-key hit: the handle follows the task that holds the key.
    const live = this.runner.live(runOrId);
    if (live !== undefined) return this.handle(live, args);
    const done = this.get(runOrId).then((record) => record!);
    return { id: runOrId, name: '', options: resolveOptions('handle', {}, ''), args, started: Promise.resolve(), done };
  }

  /** @internal */
  persist(records: TaskRecord[]): Promise<void> {
    return this.store.save(records);
  }

  #optionsFor(where: string, fn: TaskFunction, overrides: TaskOptions | undefined): ResolvedTaskOptions {
    const registration = this.#byFunction.get(fn);
    if (registration !== undefined) {
      if (overrides === undefined) return registration.resolved;
      return resolveOptions(where, mergeOptions(registration.options, overrides), registration.name);
    }
    const fallbackName = fn.name || 'anonymous';
    if (overrides === undefined) {
      // Unregistered functions with no overrides share one resolved object per name.
      let resolved = this.#defaultResolved.get(fallbackName);
      if (resolved === undefined) {
        resolved = resolveOptions(where, this.#defaults, fallbackName);
        if (this.#defaultResolved.size < 1_000) this.#defaultResolved.set(fallbackName, resolved);
      }
      return resolved;
    }
    return resolveOptions(where, mergeOptions(this.#defaults, overrides), fallbackName);
  }

  #report(stage: string, error: unknown): void {
    if (this.logger !== undefined) this.logger.error({ err: error }, `koa-taskflow: ${stage}`);
    else console.error(`koa-taskflow: ${stage}:`, error);
  }
}

declare module 'koa' {
  interface DefaultContext {
    /** The per-request task scheduler installed by `manager.middleware()`. */
    tasks: TaskScheduler;
  }
}
