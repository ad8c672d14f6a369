export { TaskManager, type TaskManagerOptions } from './manager.js';
export type { AdminOptions, AdminAuth, AdminMiddleware } from './admin/index.js';
export { TaskScheduler, PhaseScheduler, TaskAdder, type TaskHandle, type TaskPhase } from './scheduler.js';
export { getTaskContext, taskLog, taskProgress } from './context.js';
export type { TaskOptions, ResolvedTaskOptions, TaskLimit, TraceMode, IsolateMode } from './options.js';
export type { ThreadPoolOptions } from './isolate.js';
export type { RepeatSchedule, Repeating } from './repeat.js';
export type { CancelOptions } from './cancellation.js';
export { MemoryStore, type MemoryStoreOptions } from './stores/memory.js';
export { InMemoryObserver } from './observers/memory.js';
export { filterObserver, type ObserverFilter } from './observers/filter.js';
export { pinoObserver } from './observers/pino.js';
export { spanEventObserver } from './observers/span-events.js';
export {
  TaskflowError,
  TaskTimeoutError,
  TaskInterruptedError,
  TaskCancelledError,
  TaskManagerClosedError,
  TaskNotFoundError,
  TaskArgsDecryptionError,
  TaskStalledError,
  TaskQueueFullError,
  TaskStoreUnavailableError,
  TaskStoreError,
} from './errors.js';
export { REDACTED } from './redact.js';
export { taskSampler, type TaskSamplerDelegate, type TaskSamplingResult } from './sampling.js';
export * as semconv from './otel-names.js';
export type {
  TaskStatus,
  LogLevel,
  Tags,
  TaskFunction,
  TaskErrorInfo,
  LogEntry,
  TaskRecord,
  TaskFilter,
  TaskMetrics,
  StoreMetrics,
  ObserverMetrics,
  NameMetrics,
  AttemptEventBase,
  LogEvent,
  LifecycleEvent,
  ProgressEvent,
  TaskEvent,
  TaskObserver,
  TaskContext,
  TaskStore,
  SaveResult,
  StoreCapabilities,
  StoreLease,
  CancelRequest,
  ArgsCipher,
  PersistedTaskOptions,
  TaskLogger,
} from './types.js';
export type { TaskEngine } from './engine.js';
