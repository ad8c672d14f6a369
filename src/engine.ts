import type { TaskOptions } from './options.js';
import type { Repeating, RepeatSchedule } from './repeat.js';
import type { Reporter } from './report.js';
import type { StoreMetrics, TaskFilter, TaskObserver, TaskRecord } from './types.js';
import type { TaskRegistry } from './registry.js';
import type { RunHost, TaskRun } from './task-run.js';

/** @internal The engine's hook on an engine object: symbol-keyed, not an interface for users. */
export const kEngine = Symbol('koa-taskflow.engine');

/**
 * @internal What the TaskManager gives its engine: the registered tasks (a worker finds a job's function by
 * name), the parts an attempt runs with (telemetry, observers, redaction), and where failures are reported.
 */
export interface EngineHost {
  readonly registry: TaskRegistry;
  readonly runHost: Pick<RunHost, 'telemetry' | 'chain' | 'redact' | 'report' | 'snapshot'>;
  readonly reporter: Reporter;
}

/**
 * @internal An engine runs accepted tasks somewhere other than this process's runner: the runner hands it
 * every task whose phase has come (`dispatch`), and the task ends in this process, handed off.
 */
export interface EngineHooks {
  bind(host: EngineHost): void;
  /** The task's phase has come: hand it to the engine (in the order of the calls). */
  dispatch(run: TaskRun): void;
  /** Resolves once every task handed over so far is in the engine (`manager.drain()`). */
  settled(): Promise<void>;
  /** `manager.start()`. */
  start(): Promise<void>;
  /** `manager.work()`: this process runs tasks from the engine too. */
  work(): Promise<void>;
  /**
   * `manager.repeat()`, checked by the manager: the engine runs the schedule (`name` is the registered task's,
   * `options` the repeat's own, its `repeat` tag included). `stop()` ends it for every process; this
   * process's `shutdown()` leaves it. Without it, a repeat runs in-process as without an engine.
   */
  repeat?(name: string, schedule: RepeatSchedule, options: TaskOptions): Repeating;
  /** `manager.shutdown()`: stop taking work, wait for running tasks up to `timeoutMs`, close connections. */
  close(timeoutMs: number): Promise<void>;
  /**
   * `manager.cancel(id)` of a task this process no longer holds (handed to the engine): true once the engine
   * has cancelled it (or asked the worker running it to), false for an unknown or finished task.
   */
  cancel?(id: string, reason: string): Promise<boolean>;
  /**
   * Where the engine keeps task records itself (BullMQ's jobs): the manager's reads and the admin's actions go
   * here instead of this process's store, so every process sees what the workers did.
   */
  readonly records?: EngineRecords;
}

/**
 * @internal The engine's records, read and acted on as a store's would be: the same filters (checked by the
 * manager first), the same record shapes, newest first.
 */
export interface EngineRecords {
  get(id: string): Promise<TaskRecord | undefined>;
  list(filter: TaskFilter | undefined): Promise<TaskRecord[]>;
  metrics(): Promise<StoreMetrics>;
  /** Run a failed task again; answers the id it runs under (the same one when the engine retries in place). */
  retry(id: string): Promise<string>;
  /** A retry runs the same task again under its id (no new record, no `retryOf`). */
  readonly retriesInPlace: boolean;
  /** Lifecycle and progress events of every process (the admin's event stream); returns the unsubscribe. */
  subscribe(observer: TaskObserver): () => void;
}

/**
 * Where accepted tasks run instead of this process (`TaskManagerOptions.engine`): `bullmqEngine()` from
 * `koa-taskflow/bullmq`. Opaque: made by an engine's own entry point, not implemented by users.
 */
export interface TaskEngine {
  /** What runs the tasks, e.g. `'bullmq'`. */
  readonly kind: string;
  /** @internal */
  readonly [kEngine]: EngineHooks;
}
