import { randomUUID } from 'node:crypto';
import type { MeterProvider, TracerProvider } from '@opentelemetry/api';
import type { Middleware } from 'koa';
import { setFallbackLogger } from './context.js';
import {
  TaskCancelledError,
  TaskflowError,
  TaskManagerClosedError,
  TaskNotFoundError,
  TaskQueueFullError,
  TaskStoreError,
  TaskStoreUnavailableError,
  toSafeError,
} from './errors.js';
import { computeMetrics } from './metrics.js';
import { DEFAULT_OBSERVER_TIMEOUT_MS, ObserverChain } from './observers/chain.js';
import { pinoObserver } from './observers/pino.js';
import { spanEventObserver } from './observers/span-events.js';
import {
  dueTime,
  MAX_TIMER_MS,
  mergeOptions,
  optionError,
  resolveOptions,
  validateTaskOptions,
  type ResolvedTaskOptions,
  type TaskOptions,
} from './options.js';
import { TaskTelemetry } from './otel.js';
import { assertPersistable, DEFAULT_LEASE_MS, persistedOptions } from './durable.js';
import { createAdmin, type AdminMiddleware, type AdminOptions } from './admin/index.js';
import { createRedactor, type RedactOption } from './redact.js';
import { startRepeat, type Repeating, type RepeatSchedule } from './repeat.js';
import { Runner } from './runner.js';
import {
  enqueueForId,
  RequestTasks,
  TaskScheduler,
  withOptions,
  type TaskEnqueuer,
  type TaskHandle,
  type TaskPhase,
} from './scheduler.js';
import { AesGcmArgsCipher } from './stores/args-cipher.js';
import { compileFilter } from './stores/filter.js';
import { GroupCommittedStore } from './stores/durable-store.js';
import { MemoryStore } from './stores/memory.js';
import { unreadableArgs } from './stores/records.js';
import { NO_LOGS, ResumedTaskRun, TaskRun } from './task-run.js';
import {
  FINAL_STATUSES,
  type SaveResult,
  type TaskFilter,
  type TaskFunction,
  type TaskLogger,
  type TaskMetrics,
  type TaskObserver,
  type TaskRecord,
  type TaskStore,
} from './types.js';
import { TraceFlags, type SpanContext } from '@opentelemetry/api';
import { newTaskId } from './ids.js';

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
  /** On `start()` and periodically, resume work a previous process left behind (durable stores). Default true. */
  requeuePending?: boolean;
  /**
   * Durable stores: how long this process's claim on its unfinished tasks lasts without a renewal
   * (renewed every `leaseMs / 3`). After a crash, its tasks are taken over once the lease has expired.
   * Default 30 000 ms.
   */
  leaseMs?: number;
  /** Durable stores: how often to look for tasks whose owner's lease has expired. Default 15 000 ms. */
  orphanCheckMs?: number;
  /** Extra key names or dotted paths to mask in args and log fields, or `false` to mask nothing. */
  redact?: RedactOption;
  /** 32-byte key for AES-256-GCM encryption of args at rest (durable stores). */
  encryptionKey?: Uint8Array;
  /**
   * How many accepted tasks this process may hold without running them (waiting for a slot, for their
   * request's response, for their store write, for a retry: `manager.queued`). Past it, adding a task throws
   * `TaskQueueFullError` and a request answers 503 with `Retry-After`. Default 10 000; `Infinity` for no bound.
   */
  maxQueued?: number;
  /**
   * An observer call that returned a promise and has not settled after this long counts as dropped (and
   * shutdown waits at most this long for observers' `close()`). Default 5 000 ms.
   */
  observerTimeoutMs?: number;
  /** Calls of one observer whose promises have not settled; past it, events for that observer are dropped. Default 1 000. */
  observerMaxInFlight?: number;
}

/** Default `maxQueued`: ~6 MB of queued tasks in the SDK itself (~570 B each, see the README's Backpressure). */
export const DEFAULT_MAX_QUEUED = 10_000;

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

/** The options a record carries: what it was added with, as far as a record (or another process) can tell. */
function recordedOptions(record: TaskRecord): TaskOptions {
  return {
    ...record.options,
    tags: record.tags,
    priority: record.priority,
    idempotencyKey: record.idempotencyKey,
    retries: Math.max(0, record.maxAttempts - 1),
  };
}

const MANAGER_OPTIONS = new Set([
  'logger',
  'store',
  'observers',
  'concurrency',
  'defaults',
  'tracerProvider',
  'meterProvider',
  'shutdownTimeoutMs',
  'requeuePending',
  'redact',
  'encryptionKey',
  'leaseMs',
  'orphanCheckMs',
  'maxQueued',
  'observerTimeoutMs',
  'observerMaxInFlight',
]);

/** A duration option in ms: from `min` to the longest wait a Node timer keeps; an integer where a timer repeats it. */
function checkMs(where: string, key: string, value: unknown, min: number, integer: boolean): void {
  if (
    value === undefined ||
    (typeof value === 'number' && value >= min && value <= MAX_TIMER_MS && (!integer || Number.isInteger(value)))
  )
    return;
  throw optionError(
    where,
    key,
    `${integer ? 'an integer' : 'a number'} from ${min} to ${MAX_TIMER_MS} (milliseconds)`,
    value,
    typeof value === 'number' ? RangeError : TypeError,
  );
}

/** A count option: a positive integer, or `Infinity` for no bound. */
function checkBound(where: string, key: string, value: unknown): void {
  if (value === undefined || value === Infinity || (Number.isInteger(value) && (value as number) >= 1)) return;
  throw optionError(
    where,
    key,
    'a positive integer or Infinity',
    value,
    typeof value === 'number' ? RangeError : TypeError,
  );
}

function validateManagerOptions(options: TaskManagerOptions): void {
  const where = 'new TaskManager';
  if (options === null || typeof options !== 'object') throw new TypeError(`${where}: options must be an object`);
  for (const key of Object.keys(options)) {
    if (!MANAGER_OPTIONS.has(key))
      throw new TypeError(`${where}: unknown option "${key}"; known options are ${[...MANAGER_OPTIONS].join(', ')}`);
  }
  const { concurrency, shutdownTimeoutMs, logger, store, observers, encryptionKey } = options;
  checkMs(where, 'leaseMs', options.leaseMs, 10, true);
  checkMs(where, 'orphanCheckMs', options.orphanCheckMs, 10, true);
  checkMs(where, 'observerTimeoutMs', options.observerTimeoutMs, 1, true);
  checkMs(where, 'shutdownTimeoutMs', shutdownTimeoutMs, 0, false);
  checkBound(where, 'maxQueued', options.maxQueued);
  checkBound(where, 'observerMaxInFlight', options.observerMaxInFlight);
  if (options.requeuePending !== undefined && typeof options.requeuePending !== 'boolean')
    throw optionError(where, 'requeuePending', 'a boolean', options.requeuePending);
  if (concurrency !== undefined && (!Number.isInteger(concurrency) || concurrency < 1)) {
    throw optionError(
      where,
      'concurrency',
      'an integer >= 1',
      concurrency,
      typeof concurrency === 'number' ? RangeError : TypeError,
    );
  }
  if (
    logger !== undefined &&
    (logger === null ||
      typeof logger !== 'object' ||
      typeof logger.info !== 'function' ||
      typeof logger.error !== 'function')
  ) {
    throw optionError(where, 'logger', 'a pino logger', logger);
  }
  if (
    store !== undefined &&
    (store === null || typeof store !== 'object' || typeof store.save !== 'function' || typeof store.get !== 'function')
  ) {
    throw optionError(where, 'store', 'a TaskStore (MemoryStore, SqliteStore, RedisStore…)', store);
  }
  if (
    observers !== undefined &&
    (!Array.isArray(observers) || observers.some((o) => o === null || typeof o !== 'object'))
  ) {
    throw optionError(where, 'observers', 'an array of observer objects', observers);
  }
  // Checked here: a non-provider would otherwise fail later, inside getTracer/getMeter, with no option named.
  const { tracerProvider, meterProvider } = options;
  if (
    tracerProvider !== undefined &&
    (tracerProvider === null || typeof tracerProvider !== 'object' || typeof tracerProvider.getTracer !== 'function')
  ) {
    throw optionError(
      where,
      'tracerProvider',
      'an OpenTelemetry TracerProvider (an object with getTracer())',
      tracerProvider,
    );
  }
  if (
    meterProvider !== undefined &&
    (meterProvider === null || typeof meterProvider !== 'object' || typeof meterProvider.getMeter !== 'function')
  ) {
    throw optionError(
      where,
      'meterProvider',
      'an OpenTelemetry MeterProvider (an object with getMeter())',
      meterProvider,
    );
  }
  if (encryptionKey !== undefined) {
    if (!(encryptionKey instanceof Uint8Array) || encryptionKey.length !== 32) {
      throw optionError(
        where,
        'encryptionKey',
        'a 32-byte Buffer/Uint8Array',
        encryptionKey instanceof Uint8Array ? `${encryptionKey.length} bytes` : encryptionKey,
        RangeError,
      );
    }
    if (!store?.durable)
      throw new TypeError(
        `${where}: option "encryptionKey" protects args at rest and needs a durable store (SqliteStore or RedisStore)`,
      );
    if (store.encryptsArgs !== true || typeof store.attach !== 'function') {
      throw new TypeError(
        `${where}: option "encryptionKey" needs a store that encrypts args (SqliteStore, RedisStore, or a store with "encryptsArgs = true" honouring attach({ argsCipher }))`,
      );
    }
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
  readonly #maxQueued: number;
  readonly #observerTimeoutMs: number;
  #started: Promise<void> | undefined;
  #shutdown: Promise<void> | undefined;
  #closing = false;
  /** This process's identity as the owner of durable tasks (leases, orphan claims). */
  readonly instanceId = randomUUID();
  readonly #durable: boolean;
  readonly #requeuePending: boolean;
  readonly #leaseMs: number;
  readonly #orphanCheckMs: number;
  #recovering: Promise<void> | undefined;
  #leaseTimer: NodeJS.Timeout | undefined;
  #maintenanceFailed = false;
  // Durable stores: idempotency keys held by live tasks of this process, answered without a store round trip.
  readonly #localKeys = new Map<string, string>();
  // Ids of stored records the store could not read, each reported once (bounded: see #unreadable).
  readonly #unreadableIds = new Set<string>();
  readonly #repeats = new Set<Repeating>();

  constructor(options: TaskManagerOptions = {}) {
    validateManagerOptions(options);
    this.logger = options.logger;
    this.store = options.store ?? new MemoryStore();
    this.#memoryStore = this.store instanceof MemoryStore ? this.store : undefined;
    this.#defaults = options.defaults ?? {};
    this.#shutdownTimeoutMs = options.shutdownTimeoutMs ?? 10_000;
    this.#maxQueued = options.maxQueued ?? DEFAULT_MAX_QUEUED;
    this.#observerTimeoutMs = options.observerTimeoutMs ?? DEFAULT_OBSERVER_TIMEOUT_MS;
    this.#durable = this.store.durable === true;
    this.#requeuePending = options.requeuePending ?? true;
    this.#leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
    this.#orphanCheckMs = options.orphanCheckMs ?? Math.round(this.#leaseMs / 2);
    if (this.#durable) {
      const argsCipher = options.encryptionKey === undefined ? undefined : new AesGcmArgsCipher(options.encryptionKey);
      this.store.attach?.({
        ownerId: this.instanceId,
        leaseMs: this.#leaseMs,
        argsCipher,
        reportUnreadable: (id, error) => this.#unreadable(id, error),
      });
    }
    const redact = createRedactor(options.redact);
    const builtIn: TaskObserver[] = [spanEventObserver()];
    if (options.logger !== undefined) builtIn.push(pinoObserver(options.logger));
    this.#chain = new ObserverChain(
      [...builtIn, ...(options.observers ?? [])],
      (observer, stage, error) =>
        this.#report(
          `observer ${observer.constructor?.name ?? 'Object'}.${stage} failed (reported once per observer)`,
          error,
        ),
      (label, why) =>
        this.#warn(
          { observer: label },
          `koa-taskflow: observer ${label} is dropping events: ${why}; counted in metrics().observers (reported once per observer)`,
        ),
      { timeoutMs: this.#observerTimeoutMs, maxInFlight: options.observerMaxInFlight },
    );
    this.#telemetry = new TaskTelemetry(
      options.tracerProvider,
      options.meterProvider,
      () => this.runner.queued,
      (message) => this.#warn({}, `koa-taskflow: ${message}`),
    );
    this.runner = new Runner({
      concurrency: options.concurrency ?? 16,
      telemetry: this.#telemetry,
      chain: this.#chain,
      store: this.store,
      storeHoldsLiveRecords: this.#memoryStore !== undefined,
      onTaskEnded: this.#memoryStore
        ? (record) => this.#memoryStore!.ended(record)
        : (record) => this.#forgetKey(record.idempotencyKey, record.id),
      redact,
      report: (stage, error) => this.#report(stage, error),
    });
    setFallbackLogger(options.logger, redact);
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
      throw new TaskflowError(
        `task(): the name "${name}" is already registered to another function; pass a distinct option "name"`,
        { code: 'ERR_TASK_NAME_TAKEN' },
      );
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
        await manager.#requestFailed(ctx, request, error);
        throw error;
      }
      // The handler caught a TaskQueueFullError and answered anyway: the request still fails, so the client
      // is not told its work was accepted when part of it was refused.
      const queueFull = request.queueFull;
      if (queueFull !== undefined) {
        await manager.#requestFailed(ctx, request, queueFull);
        throw queueFull;
      }
      request.routeDone();
      const written = request.flush();
      if (written === undefined) return;
      try {
        await written;
      } catch (error) {
        manager.#report('store write before the response', error);
        ctx.throw(503, 'the task store is unavailable; the request was not acknowledged');
      }
    };
  }

  /**
   * The request failed (or hit `maxQueued`): its tasks waiting for the route or the response end
   * `cancelled` (reason `request_failed`) unless `runOnError`, and their records are written.
   */
  async #requestFailed(
    ctx: { set(field: string, value: string): void },
    request: RequestTasks,
    error: unknown,
  ): Promise<void> {
    request.routeFailed();
    await request.flush()?.catch((e: unknown) => this.#report('store write of a failed request', e));
    // Set here as well as on the error: an error-handling middleware of the app's may not copy err.headers.
    const full = request.queueFull ?? (error instanceof TaskQueueFullError ? error : undefined);
    if (full !== undefined) ctx.set('Retry-After', full.headers['Retry-After']);
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
   * Run `task` on a schedule (`every` ms, or a `cron` pattern in time zone `tz`): each tick is one ordinary
   * run, once per tick across the instances sharing a durable store; see docs/api.md's Repeating tasks.
   */
  repeat(task: () => unknown, schedule: RepeatSchedule, options?: TaskOptions): Repeating {
    if (this.#closing) throw new TaskManagerClosedError();
    const repeat = startRepeat(
      {
        store: this.store,
        durable: this.#durable,
        check: (where, fn, overrides) => {
          const resolved = this.#optionsFor(where, fn, overrides);
          if (this.#durable) this.#checkPersist(where, fn, resolved, []);
          return resolved.name;
        },
        add: (where, fn, overrides) => void this.enqueue(where, fn, [], overrides, 'now', undefined),
        report: (stage, error) => this.#report(stage, error),
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
    return this.#chain.subscribe(observer);
  }

  /**
   * Start observers and, with a durable store, recovery: tasks left by a process that is gone are claimed
   * and resumed now and every `orphanCheckMs`, and this process's lease is kept alive. Idempotent; when the
   * store is unreachable it rejects with a TaskflowError and may be called again.
   */
  start(): Promise<void> {
    this.#started ??= (async () => {
      this.#telemetry.bindMeter();
      await this.#chain.startup(this.#shutdownTimeoutMs);
    })();
    if (!this.#durable) return this.#started;
    this.#recovering ??= this.#started
      .then(() => this.#startRecovery())
      .catch((error: unknown) => {
        this.#recovering = undefined;
        throw error;
      });
    return this.#recovering;
  }

  async #startRecovery(): Promise<void> {
    try {
      if (this.#requeuePending) await this.#claimOrphans();
      else await this.store.renewLease?.();
    } catch (error) {
      // The store says what is wrong with its data (damaged, not our schema): that is the error to show.
      if (error instanceof TaskStoreError) throw error;
      const message = error instanceof Error ? error.message : String(error);
      throw new TaskStoreUnavailableError(
        `start: the task store is unreachable (${message}); nothing was resumed. Requests that add persisted tasks are answered 503 until it is back; call start() again to resume left-behind work`,
        { cause: error },
      );
    }
    if (this.#closing || this.#leaseTimer !== undefined) return;
    // One timer: the lease is renewed every leaseMs/3; orphans are looked for every orphanCheckMs.
    const tick = Math.min(Math.round(this.#leaseMs / 3), this.#orphanCheckMs);
    let sinceCheck = 0;
    this.#leaseTimer = setInterval(() => {
      sinceCheck += tick;
      const check = this.#requeuePending && sinceCheck >= this.#orphanCheckMs;
      if (check) sinceCheck = 0;
      void this.#maintain(check);
    }, tick).unref();
  }

  async #maintain(checkOrphans: boolean): Promise<void> {
    try {
      if (checkOrphans) await this.#claimOrphans();
      else await this.store.renewLease?.();
      this.#maintenanceFailed = false;
    } catch (error) {
      if (this.#closing) return;
      // Once per outage: the timer keeps trying.
      if (!this.#maintenanceFailed) this.#report('store lease renewal / orphan check (retrying)', error);
      this.#maintenanceFailed = true;
    }
  }

  async #claimOrphans(): Promise<void> {
    const records = await this.store.claimOrphans(this.instanceId, this.#leaseMs);
    for (const record of records) {
      if (this.#closing) break;
      // Our own lease ran out while we were alive (a long stall): the task still lives here.
      if (this.runner.live(record.id) !== undefined) continue;
      try {
        this.#resume(record);
      } catch (error) {
        this.#report(`resuming task ${record.id}`, error);
      }
    }
  }

  /**
   * Take over a task from the store: run it again from its stored state (attempts, next retry time). One
   * left `running` died with its process: it runs again as its next attempt, linked to the one that died,
   * unless that is one stall more than its `maxStalls` (it ends `failed`, TaskStalledError) or it is not
   * `requeueOnInterrupt` (it ends `interrupted`, reason `crash`). It also ends `interrupted` when nothing
   * in this process is registered under its name, or when its args cannot be decrypted here.
   */
  #resume(record: TaskRecord): void {
    const registration = this.#registry.get(record.name);
    let options: ResolvedTaskOptions;
    let fn: TaskFunction;
    let reason: string | undefined;
    // Args this process cannot decrypt (no or another encryptionKey, altered ciphertext): the task cannot
    // run here; it ends interrupted with that error, its sealed args kept, and retry(id) runs it once the key is right.
    const unreadable = unreadableArgs(record);
    let died = false;
    if (registration === undefined) {
      options = resolveOptions('recovery', { tags: record.tags }, record.name);
      fn = () => {};
      reason = 'unregistered';
    } else {
      options = resolveOptions(
        'recovery',
        mergeOptions(registration.options, recordedOptions(record)),
        registration.name,
      );
      fn = registration.fn;
      if (record.status === 'running' && unreadable === undefined) {
        if (options.requeueOnInterrupt) died = true;
        else reason = 'crash';
      }
    }
    if (unreadable !== undefined) {
      reason = 'encryption_key';
      this.#report(
        `recovering task ${record.id} (ended interrupted; retry(id) once "encryptionKey" is right)`,
        unreadable,
      );
    }
    record.status = 'pending';
    if (record.logs.length === 0) record.logs = NO_LOGS;
    const link: SpanContext | undefined =
      record.requestTraceId !== undefined && record.requestSpanId !== undefined
        ? {
            traceId: record.requestTraceId,
            spanId: record.requestSpanId,
            traceFlags: record.requestTraceFlags ?? TraceFlags.SAMPLED,
            isRemote: true,
          }
        : undefined;
    const run = new ResumedTaskRun(this.runner, record, fn, record.args, options, link);
    run.recoverable = registration !== undefined;
    // The next attempt links to the latest one, wherever it ran (its span context is stored as it starts).
    if (record.traceId !== undefined && record.spanId !== undefined) {
      run.previousAttempt = {
        traceId: record.traceId,
        spanId: record.spanId,
        traceFlags: TraceFlags.SAMPLED,
        isRemote: true,
      };
    }
    const stalledOut = died ? run.countStall() : undefined;
    this.runner.accept(run);
    if (reason !== undefined) return run.cancel('interrupted', reason, unreadable);
    if (stalledOut !== undefined) return run.failStalled(stalledOut);
    if (record.idempotencyKey !== undefined) this.#localKeys.set(record.idempotencyKey, record.id);
    this.runner.recordChanged(record);
    const wait = (record.runAt ?? 0) - Date.now();
    if (wait > 0) this.runner.retryLater(run, wait);
    else this.runner.submit(run);
  }

  /** Resolves when no accepted task is queued, waiting or running (and, with a durable store, their records are written). */
  drain(): Promise<void> {
    if (!this.#durable) return this.runner.whenIdle();
    // An empty save joins the pending group commit: it resolves once the last status writes are committed.
    return this.runner.whenIdle().then(() =>
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
    const timeoutMs = options.timeoutMs ?? this.#shutdownTimeoutMs;
    checkMs('shutdown', 'timeoutMs', timeoutMs, 0, false);
    this.#shutdown ??= (async () => {
      this.#closing = true;
      clearInterval(this.#leaseTimer);
      for (const repeat of this.#repeats) repeat.stop();
      await this.runner.stop(timeoutMs);
      // Status writes that failed while the store was away get one last chance before it closes.
      await this.runner.resync(true);
      this.#telemetry.close();
      await this.#chain.close(Math.min(timeoutMs, this.#observerTimeoutMs) || 1);
      await this.store.close();
    })();
    return this.#shutdown;
  }

  async get(id: string): Promise<TaskRecord | undefined> {
    if (typeof id !== 'string') throw new TypeError(`get: "id" must be a string, got ${typeof id}`);
    // A durable store lags the live record by up to one group commit: a task of this process answers first.
    const record =
      (this.#memoryStore === undefined ? this.runner.live(id)?.record : undefined) ?? (await this.store.get(id));
    return record && this.runner.snapshot(record);
  }

  async list(filter?: TaskFilter): Promise<TaskRecord[]> {
    // Checked here too, so a bad filter names its option whatever the store (a custom one may not check).
    compileFilter(filter);
    const records = await this.store.list(filter);
    return records.map((r) => this.runner.snapshot(r));
  }

  /** Run a failed or interrupted registered task again as a new task; returns the new id. */
  async retry(id: string): Promise<string> {
    const record = typeof id === 'string' ? await this.store.get(id) : undefined;
    if (record === undefined) throw new TaskNotFoundError(String(id));
    if (record.status !== 'failed' && record.status !== 'interrupted') {
      throw new TaskflowError(
        `retry: task ${id} is ${record.status}; only failed or interrupted tasks can be retried`,
        { code: 'ERR_TASK_NOT_RETRYABLE' },
      );
    }
    const registration = this.#registry.get(record.name);
    if (registration === undefined) {
      throw new TaskflowError(
        `retry: no task is registered under "${record.name}" in this process; register it with manager.task()`,
        { code: 'ERR_TASK_NOT_REGISTERED' },
      );
    }
    const overrides: TaskOptions = {
      tags: record.tags,
      priority: record.priority,
      idempotencyKey: record.idempotencyKey,
    };
    const result = this.enqueue('retry', registration.fn, record.args, overrides, 'now', undefined, id);
    return typeof result === 'string' ? result : result.id;
  }

  async metrics(): Promise<TaskMetrics> {
    const counted =
      typeof this.store.metrics === 'function' ? await this.store.metrics() : computeMetrics(await this.store.list());
    return { ...counted, observers: this.#chain.metrics() };
  }

  /**
   * Tasks accepted and not running in this process: waiting for a slot, for their request's route or
   * response, for their store write, or for a retry. What `maxQueued` bounds.
   */
  get queued(): number {
    return this.runner.waiting;
  }

  /** Attempts running now in this process (at most `concurrency`, plus shielded ones during shutdown). */
  get running(): number {
    return this.runner.running;
  }

  /**
   * Koa middleware serving the admin API, the live event stream and the dashboard under `prefix`
   * (default `/tasks`). `auth` is required (see `AdminAuth`); the README's Admin section has the endpoints.
   */
  admin(options: AdminOptions): AdminMiddleware {
    return createAdmin(this, options);
  }

  /** @internal Accept a task: the one path every add goes through. Returns the run, or the id holding its idempotency key. */
  enqueue(
    where: string,
    fn: unknown,
    args: unknown[],
    overrides: TaskOptions | undefined,
    phase: TaskPhase,
    request: RequestTasks | undefined,
    retryOf?: string,
  ): TaskRun | string {
    if (this.#closing) throw new TaskManagerClosedError();
    if (typeof fn !== 'function')
      throw new TypeError(`${where}: argument "fn" must be a function, got ${fn === null ? 'null' : typeof fn}`);
    const options = this.#optionsFor(where, fn as TaskFunction, overrides);
    const recoverable = this.#durable && this.#checkPersist(where, fn as TaskFunction, options, args);
    // Checked before anything is recorded or claimed: a refused task leaves no trace. (So a duplicate
    // idempotency key is refused too while the queue is full.)
    if (this.runner.waiting >= this.#maxQueued) {
      const error = new TaskQueueFullError(this.#maxQueued);
      if (request !== undefined) request.queueFull = error;
      throw error;
    }
    const id = newTaskId();
    const key = options.idempotencyKey;
    if (key !== undefined) {
      if (this.#memoryStore !== undefined) {
        const holder = this.#memoryStore.claimKeyNow(key, id);
        if (holder !== undefined) return holder;
      } else {
        const holder = this.#localKeys.get(key);
        if (holder !== undefined) return holder;
      }
    }
    const requestLink = this.#telemetry.enqueuedFrom(id, options.name);
    const createdAt = Date.now();
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
      createdAt,
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
      requestTraceFlags: requestLink?.traceFlags,
      retryOf,
      // A delayed first attempt (startAfter/runAt), due from the add; `retry(id)` runs at once.
      runAt: retryOf === undefined ? dueTime(options, createdAt) : undefined,
      options: recoverable ? persistedOptions(overrides) : undefined,
    };
    const run = new TaskRun(this.runner, record, fn as TaskFunction, args, options, requestLink);
    const effectivePhase = options.eager ? 'now' : phase;
    if (this.#memoryStore !== undefined) {
      this.#memoryStore.saveOne(record);
    } else {
      run.recoverable = recoverable;
      // Write-ahead: a durable task starts only once its record is committed, so a task whose write failed
      // (503) never runs, and its idempotency key, claimed by that same write, is known before it runs.
      if (recoverable || (key !== undefined && this.#durable)) run.awaitingWrite = true;
      // Later adds with this key in this process get this id without asking the store.
      if (key !== undefined) this.#localKeys.set(key, id);
      if (request !== undefined && (recoverable || !this.#durable)) {
        // Acknowledged with the request: written in its batch before the response (a 503 if that fails).
        // A task that starts before the response cannot wait for the batch: its write goes out now.
        request.unsaved(run);
        if (run.awaitingWrite && effectivePhase === 'now') request.writeNow();
      } else {
        this.#persistRuns([run], false).catch((error: unknown) => this.#report(`store write of task ${id}`, error));
      }
    }
    this.runner.accept(run);
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
    const id = runOrId;
    const live = this.runner.live(id);
    if (live !== undefined) return this.handle(live, args);
    // The holder ended here, or lives in another process sharing the store: its record answers. Stores answer
    // asynchronously, so `name` and `options` are the holder's once its record is read (before that: '' and defaults).
    let name = '';
    let options = resolveOptions('handle', {}, '');
    const first = this.get(id).then(
      (record) => {
        if (record === undefined) return undefined;
        name = record.name;
        options = resolveOptions('handle', recordedOptions(record), record.name);
        return record;
      },
      () => undefined,
    );
    // The record is gone (evicted, past retention, store unreachable): `done` still gets a final record, never undefined.
    const gone = (): TaskRecord => {
      const now = Date.now();
      const message = `duplicate of task ${id}, whose record is no longer in the store`;
      return {
        id,
        name,
        status: 'cancelled',
        args,
        tags: {},
        attempts: 0,
        maxAttempts: 1,
        createdAt: now,
        endedAt: now,
        error: { type: 'TaskCancelledError', message },
        reason: 'duplicate',
        logs: NO_LOGS,
      };
    };
    const done = first.then((record) => (record === undefined ? gone() : this.#follow(id, record)));
    // Resolves once the holder is known to have started; rejects like any handle's when it never did.
    const started = first.then(async (record) => {
      if (record !== undefined && record.attempts > 0) return;
      const final = await done;
      if (final.attempts === 0) throw new TaskCancelledError(final.reason ?? 'duplicate');
    });
    started.catch(() => {});
    return {
      id,
      args,
      started,
      done,
      get name() {
        return name;
      },
      get options() {
        return options;
      },
    };
  }

  /** @internal A request's batch: when the write fails, its tasks are not acknowledged and do not run. */
  persist(runs: TaskRun[]): Promise<void> {
    return this.#persistRuns(runs, true);
  }

  async #persistRuns(runs: TaskRun[], acknowledged: boolean): Promise<void> {
    let result: SaveResult;
    let saved = false;
    let claimedHere = false;
    try {
      result = await this.store.save(runs.length === 1 ? [runs[0].record] : runs.map((run) => run.record));
      saved = true;
      // SqliteStore and RedisStore claim keys inside save(). A store that answers nothing may not (API.md's
      // save() returns void): its keys are claimed now, after the write (a claim weighs the holder by its
      // stored record), before the runs may start.
      if (result === undefined && !(this.store instanceof GroupCommittedStore)) {
        claimedHere = true;
        result = await this.#claimKeys(runs);
      }
    } catch (error) {
      for (const run of runs) {
        if (!run.awaitingWrite) continue;
        run.awaitingWrite = false;
        if (acknowledged) {
          // The client gets a 503: the task was never accepted, so it must not run. Not written later,
          // unless the write went through and only the key claim failed: then it is stored cancelled.
          run.stored = saved;
          run.cancel('cancelled', 'store_unavailable');
        } else if (run.submitAfterWrite) {
          // Added outside a request: nobody can be told, so it still runs here (without the store's dedupe).
          this.runner.submit(run);
        }
      }
      throw error;
    }
    let losers: TaskRecord[] | undefined;
    for (const run of runs) {
      if (!run.awaitingWrite) continue;
      run.awaitingWrite = false;
      const holder = result?.get(run.id);
      if (holder !== undefined) {
        this.#forgetKey(run.record.idempotencyKey, run.id);
        run.duplicateOf(holder, () => this.#follow(holder, run.record));
        if (claimedHere) (losers ??= []).push(run.record);
      } else if (run.submitAfterWrite) {
        this.runner.submit(run);
      }
    }
    // Stored pending before the claim, a loser is stored again as a cancelled duplicate: never resumed.
    if (losers !== undefined)
      await this.store.save(losers).catch((error: unknown) => this.#report('store write of duplicate tasks', error));
  }

  /** Claims the idempotency keys of the runs waiting for their write; answers the ones that lost → the holder's id. */
  async #claimKeys(runs: TaskRun[]): Promise<Map<string, string> | undefined> {
    let lost: Map<string, string> | undefined;
    const claims: Promise<void>[] = [];
    for (const run of runs) {
      const key = run.record.idempotencyKey;
      if (!run.awaitingWrite || key === undefined) continue;
      claims.push(
        this.store.claimKey(key, run.id).then((holder) => {
          if (holder !== undefined && holder !== run.id) (lost ??= new Map()).set(run.id, holder);
        }),
      );
    }
    await Promise.all(claims);
    return lost;
  }

  /** The final record of task `id`, wherever it runs: live here, or polled from the shared store. */
  async #follow(id: string, fallback: TaskRecord): Promise<TaskRecord> {
    const live = this.runner.live(id);
    if (live !== undefined) return live.signals().done;
    let last: TaskRecord | undefined;
    for (let wait = 25; ; wait = Math.min(wait * 2, 1_000)) {
      last = (await this.store.get(id).catch(() => undefined)) ?? last;
      if (last !== undefined && FINAL_STATUSES.has(last.status)) return this.runner.snapshot(last);
      if (this.#closing) return this.runner.snapshot(last ?? fallback);
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }

  #forgetKey(key: string | undefined, id: string): void {
    if (key !== undefined && this.#localKeys.get(key) === id) this.#localKeys.delete(key);
  }

  /**
   * `persist` (default true with a durable store) needs what a restarted process needs: a task it can find
   * again by name and args it can read back. Returns whether the task is persisted.
   */
  #checkPersist(where: string, fn: TaskFunction, options: ResolvedTaskOptions, args: unknown[]): boolean {
    if (options.persist === false) return false;
    const registration = this.#byFunction.get(fn);
    if (registration === undefined) {
      throw new TypeError(
        `${where}: option "persist" (on by default with a durable store) needs a registered task, and "${options.name}" is not registered: ` +
          'register it with manager.task(fn) so a restarted process can find it by name, or pass option "persist: false"',
      );
    }
    if (options.name !== registration.name) {
      throw new TypeError(
        `${where}: option "name" cannot rename persisted task "${registration.name}": a restarted process finds it by its registered name`,
      );
    }
    assertPersistable(where, options.name, args);
    return true;
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

  /** A stored record the store skipped because it cannot read it: logged once per id, however often it is met. */
  #unreadable(id: string, error: TaskStoreError): void {
    if (this.#unreadableIds.has(id)) return;
    // Past the bound (a store full of damage) the first ones are forgotten and may be reported again.
    if (this.#unreadableIds.size >= 10_000) this.#unreadableIds.clear();
    this.#unreadableIds.add(id);
    this.#report(`skipped task ${id}: its stored record cannot be read (reported once)`, error);
  }

  #report(stage: string, error: unknown): void {
    try {
      this.#write(stage, error);
    } catch {
      // What a task or an onError threw may not survive a logger (a Proxy, a throwing getter): its safe
      // description is written instead, and a report never throws.
      try {
        this.#write(stage, toSafeError(error));
      } catch {
        // The logger itself fails: nothing is left to report through.
      }
    }
  }

  #write(stage: string, error: unknown): void {
    if (this.logger !== undefined) this.logger.error({ err: error }, `koa-taskflow: ${stage}`);
    else console.error(`koa-taskflow: ${stage}:`, error);
  }

  #warn(fields: object, message: string): void {
    if (this.logger !== undefined) this.logger.warn(fields, message);
    else console.warn(message, fields);
  }
}

declare module 'koa' {
  interface DefaultContext {
    /** The per-request task scheduler installed by `manager.middleware()`. */
    tasks: TaskScheduler;
  }
}
