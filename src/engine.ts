import type { Reporter } from './report.js';
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
  /** `manager.shutdown()`: stop taking work, wait for running tasks up to `timeoutMs`, close connections. */
  close(timeoutMs: number): Promise<void>;
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
