import { Acceptance } from './acceptance.js';
import { Cancellation } from './cancellation.js';
import { DEFAULT_LEASE_MS } from './durable.js';
import { kEngine, type EngineHooks } from './engine.js';
import { ThreadPool } from './isolate.js';
import { DEFAULT_MAX_QUEUED, type TaskManagerOptions } from './manager-options.js';
import { builtInChain } from './observers/built-in.js';
import { DEFAULT_OBSERVER_TIMEOUT_MS, type ObserverChain } from './observers/chain.js';
import { TaskTelemetry } from './otel.js';
import { Recovery } from './recovery.js';
import { createRedactor, type Redactor } from './redact.js';
import { TaskRegistry } from './registry.js';
import { Reporter } from './report.js';
import { Runner } from './runner.js';
import { MemoryStore } from './stores/memory.js';
import { kLiveRecords, type TaskRecord, type TaskStore } from './types.js';

/** The parts a TaskManager composes, each owning one job; wired once, from the manager's options. */
export interface ManagerParts {
  readonly store: TaskStore;
  /** True when the store holds this process's live records itself (MemoryStore): reads need no overlay. */
  readonly storeHoldsLiveRecords: boolean;
  readonly reporter: Reporter;
  readonly redact: Redactor;
  readonly chain: ObserverChain;
  readonly telemetry: TaskTelemetry;
  readonly threads: ThreadPool;
  readonly runner: Runner;
  readonly registry: TaskRegistry;
  readonly acceptance: Acceptance;
  readonly cancellation: Cancellation;
  readonly recovery: Recovery | undefined;
  readonly engine: EngineHooks | undefined;
  readonly shutdownTimeoutMs: number;
  readonly observerTimeoutMs: number;
}

/**
 * Wires the parts in the direction data flows: acceptance hands tasks to the runner, the runner to attempts,
 * telemetry and observers, and the store; recovery feeds acceptance and the runner. `get` is the manager's
 * own read (a live record first), which following an idempotency key's holder uses.
 */
export function composeParts(
  options: TaskManagerOptions,
  ownerId: string,
  get: (id: string) => Promise<TaskRecord | undefined>,
): ManagerParts {
  const store = options.store ?? new MemoryStore();
  const live = store[kLiveRecords];
  const observerTimeoutMs = options.observerTimeoutMs ?? DEFAULT_OBSERVER_TIMEOUT_MS;
  const reporter = new Reporter(options.logger);
  const leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
  const redact = createRedactor(options.redact);
  const engine = options.engine?.[kEngine];
  const chain = builtInChain(options, observerTimeoutMs, reporter);
  // The gauge and the end-of-task hook read parts built below; both only run once tasks exist.
  const late: { runner?: Runner; acceptance?: Acceptance } = {};
  const telemetry = new TaskTelemetry(
    options.tracerProvider,
    options.meterProvider,
    () => late.runner?.queued ?? 0,
    (message) => reporter.warn({}, `koa-taskflow: ${message}`),
  );
  const threads = new ThreadPool(options.threads);
  const runner = (late.runner = new Runner({
    threads,
    concurrency: options.concurrency ?? 16,
    telemetry,
    chain,
    store,
    storeHoldsLiveRecords: live !== undefined,
    onTaskEnded: live
      ? (record) => live.ended(record)
      : (record) => late.acceptance?.forgetKey(record.idempotencyKey, record.id),
    redact,
    report: (stage, error) => reporter.report(stage, error),
    dispatch: engine && ((run) => engine.dispatch(run)),
  }));
  const registry = new TaskRegistry(options.defaults);
  const acceptance = (late.acceptance = new Acceptance({
    registry,
    runner,
    telemetry,
    store,
    maxQueued: options.maxQueued ?? DEFAULT_MAX_QUEUED,
    reporter,
    engine: engine !== undefined,
    get,
  }));
  const cancellation = new Cancellation(runner, store, engine?.cancel && ((id, reason) => engine.cancel!(id, reason)));
  engine?.bind({ registry, runHost: runner, reporter });
  const recovery =
    store.durable === true
      ? new Recovery({
          ownerId,
          store,
          registry,
          acceptance,
          runner,
          reporter,
          requeuePending: options.requeuePending ?? true,
          leaseMs,
          orphanCheckMs: options.orphanCheckMs ?? Math.round(leaseMs / 2),
          encryptionKey: options.encryptionKey,
          cancelRequested: (requests) => cancellation.apply(requests),
        })
      : undefined;
  return {
    store,
    storeHoldsLiveRecords: live !== undefined,
    reporter,
    redact,
    chain,
    telemetry,
    threads,
    runner,
    registry,
    acceptance,
    cancellation,
    recovery,
    engine,
    shutdownTimeoutMs: options.shutdownTimeoutMs ?? 10_000,
    observerTimeoutMs,
  };
}
