/** Base class of the errors koa-taskflow throws itself. */
export class TaskflowError extends Error {
  override name = 'TaskflowError';
}

/** An attempt ran longer than its `timeout`; its `signal` was aborted with this error. */
export class TaskTimeoutError extends TaskflowError {
  override name = 'TaskTimeoutError';
  constructor(readonly timeoutMs: number) {
    super(`task attempt exceeded its timeout of ${timeoutMs} ms; raise the "timeout" option or make the task honour its AbortSignal sooner`);
  }
}

/** A running task was aborted because `shutdown()` stopped waiting for it. */
export class TaskInterruptedError extends TaskflowError {
  override name = 'TaskInterruptedError';
  constructor(reason = 'shutdown') {
    super(`task interrupted (${reason}); mark it "shield: true" to let shutdown wait for it, or "requeueOnInterrupt: true" with a durable store to run it again on the next start`);
  }
}

/** A task that never started because its request failed or the manager shut down. */
export class TaskCancelledError extends TaskflowError {
  override name = 'TaskCancelledError';
  constructor(readonly reason: string) {
    super(`task cancelled before it started (${reason})`);
  }
}

/** The manager is shutting down or shut down and takes no new work. */
export class TaskManagerClosedError extends TaskflowError {
  override name = 'TaskManagerClosedError';
  /** Koa answers a request that hits this with 503 Service Unavailable. */
  readonly status = 503;
  readonly expose = true;
  constructor() {
    super('the TaskManager is shutting down and accepts no new tasks; add tasks before calling shutdown()');
  }
}

/** No task has this id. */
export class TaskNotFoundError extends TaskflowError {
  override name = 'TaskNotFoundError';
  constructor(readonly id: string) {
    super(`no task with id ${JSON.stringify(id)}`);
  }
}

/**
 * A stored record's args could not be decrypted: no `encryptionKey`, another key, an altered ciphertext,
 * or an unknown format. The record is not returned (get/list) or not run (recovery); its args stay stored.
 */
export class TaskArgsDecryptionError extends TaskflowError {
  override name = 'TaskArgsDecryptionError';
  constructor(
    readonly taskId: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(`the args of task ${taskId} ${message}`, options);
  }
}

export function toErrorInfo(error: unknown): { type: string; message: string; stack?: string } {
  if (error instanceof Error) {
    return { type: error.name || error.constructor?.name || 'Error', message: error.message, stack: error.stack };
  }
  return { type: typeof error, message: String(error) };
}
