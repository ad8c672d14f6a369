// The thread side of `isolate: 'thread'`: piscina loads this file in each worker thread and calls its default
// export once per attempt (the channels it uses are described at ThreadPool in isolate.ts). The task's module
// imports koa-taskflow, which resolves to this same build, so `getTaskContext()`, `taskLog()` and
// `taskProgress()` find the attempt entered below.
import { setPriority } from 'node:os';
import { BroadcastChannel, parentPort, workerData } from 'node:worker_threads';
import {
  context,
  ROOT_CONTEXT,
  trace,
  type Attributes,
  type AttributeValue,
  type Exception,
  type Span,
  type SpanContext,
  type SpanStatus,
  type TimeInput,
} from '@opentelemetry/api';
import { attemptStorage, kLog, kProgress, kSeq, type ActiveAttempt } from './context.js';
import { TaskCancelledError, TaskflowError, TaskInterruptedError, TaskTimeoutError } from './errors.js';
import {
  alwaysClones,
  crossedError,
  DROPPED,
  QUEUED,
  rebuiltError,
  RUNNING,
  type AbortMessage,
  type CrossedError,
  type ThreadData,
  type ThreadMessage,
  type ThreadReply,
  type ThreadTask,
} from './isolate.js';
import type { LogLevel, Tags } from './types.js';

/** Sends one message; a value that cannot be cloned is replaced by its string form rather than lost. */
function send(message: ThreadMessage): void {
  try {
    parentPort!.postMessage(message);
  } catch {
    parentPort!.postMessage(
      JSON.parse(JSON.stringify(message, (_key, value: unknown) => cloneSafe(value))) as ThreadMessage,
    );
  }
}

function cloneSafe(value: unknown): unknown {
  return typeof value === 'function' || typeof value === 'symbol' || typeof value === 'bigint' ? String(value) : value;
}

/**
 * The attempt's span as the thread sees it: its span context (parent of any span an SDK in this thread
 * makes), and events, attributes and status sent to the main thread, which writes them on the real span.
 */
class PortSpan implements Span {
  readonly #context: SpanContext;
  readonly #recording: boolean;

  constructor(
    readonly attempt: ThreadAttempt,
    task: ThreadTask['context'],
  ) {
    this.#context = { traceId: task.traceId, spanId: task.spanId, traceFlags: task.traceFlags, isRemote: true };
    this.#recording = task.recording;
  }

  spanContext(): SpanContext {
    return this.#context;
  }

  isRecording(): boolean {
    return this.#recording;
  }

  setAttribute(key: string, value: AttributeValue): this {
    return this.setAttributes({ [key]: value });
  }

  setAttributes(attributes: Attributes): this {
    if (this.#recording) this.attempt.send({ key: this.attempt.key, type: 'attributes', attributes });
    return this;
  }

  addEvent(name: string, attributesOrTime?: Attributes | TimeInput, time?: TimeInput): this {
    if (!this.#recording) return this;
    const isTime =
      typeof attributesOrTime === 'number' || attributesOrTime instanceof Date || Array.isArray(attributesOrTime);
    this.attempt.send({
      key: this.attempt.key,
      type: 'event',
      name,
      attributes: isTime ? undefined : attributesOrTime,
      time: isTime ? attributesOrTime : time,
    });
    return this;
  }

  addLink(): this {
    return this;
  }

  addLinks(): this {
    return this;
  }

  setStatus(status: SpanStatus): this {
    if (this.#recording) this.attempt.send({ key: this.attempt.key, type: 'status', status });
    return this;
  }

  updateName(): this {
    return this;
  }

  /** The attempt's span is ended by the main thread, when the attempt's outcome is known. */
  end(): void {}

  recordException(exception: Exception, time?: TimeInput): void {
    const error = typeof exception === 'string' ? { name: 'Error', message: exception } : exception;
    const attributes: Attributes = {};
    if (error.name !== undefined) attributes['exception.type'] = error.name;
    if (error.message !== undefined) attributes['exception.message'] = error.message;
    if (error.stack !== undefined) attributes['exception.stacktrace'] = error.stack;
    this.addEvent('exception', attributes, time);
  }
}

let attemptsStarted = 0;

/** What `getTaskContext()` answers in the thread; logs and progress go to the main thread, tagged with its key. */
class ThreadAttempt implements ActiveAttempt {
  readonly [kSeq] = ++attemptsStarted;
  readonly key: number;
  readonly id: string;
  readonly name: string;
  readonly attempt: number;
  readonly maxAttempts: number;
  readonly tags: Tags;
  readonly tickAt: Date | undefined;
  readonly span: PortSpan;
  /** Messages sent so far: piscina's answer carries the count (the main thread waits for them all). */
  sent = 0;

  constructor(
    task: ThreadTask,
    readonly signal: AbortSignal,
  ) {
    const { context: c } = task;
    this.key = task.key;
    this.id = c.id;
    this.name = c.name;
    this.attempt = c.attempt;
    this.maxAttempts = c.maxAttempts;
    this.tags = c.tags;
    this.tickAt = c.tickAt === undefined ? undefined : new Date(c.tickAt);
    this.span = new PortSpan(this, c);
  }

  send(message: ThreadMessage): void {
    send(message);
    this.sent++;
  }

  [kLog](level: LogLevel, message: string, fields: Record<string, unknown> | undefined): void {
    this.send({ key: this.key, type: 'log', level, message, fields });
  }

  [kProgress](value: number, fields: Record<string, unknown> | undefined): void {
    this.send({ key: this.key, type: 'progress', value, fields });
  }
}

const ABORT_REASONS: Record<string, { prototype: Error }> = {
  TaskTimeoutError,
  TaskInterruptedError,
  TaskCancelledError,
  TaskflowError,
};

/** The main thread's abort reason, of the same class where it is ours: `signal.reason instanceof TaskTimeoutError`. */
function abortReason(crossed: CrossedError): Error {
  // Always an Error: the main thread aborts with its own errors.
  const error = rebuiltError(crossed) as Error;
  const known = ABORT_REASONS[crossed.info.type];
  if (known !== undefined) Object.setPrototypeOf(error, known.prototype);
  return error;
}

/**
 * Linux schedules threads one by one, and `setPriority(0, n)` there lowers the calling thread alone: a task
 * thread that yields the CPU to the app's event loop whenever both want it. (Elsewhere pid 0 is the whole
 * process, so nothing is changed.)
 */
function lowerPriority(nice: number): void {
  if (process.platform !== 'linux' || nice === 0) return;
  try {
    setPriority(0, nice);
  } catch {
    // Not allowed here (a container's policy): the thread keeps the app's priority.
  }
}

const data = workerData as ThreadData;
const states = new Int32Array(data.states);
lowerPriority(data.nice);

/** The aborts of this thread's attempts, by key, from the start of the task to its answer. */
const aborts = new Map<number, (reason: CrossedError) => void>();
const abortChannel = new BroadcastChannel(data.aborts);
// The thread ends when piscina says so, not when this channel is quiet.
abortChannel.unref();
abortChannel.onmessage = (event) => {
  const { key, reason } = (event as { data: AbortMessage }).data;
  aborts.get(key)?.(reason);
};

/** The tasks' functions by module and export: an import() per attempt, even of a loaded module, costs an await. */
const functions = new Map<string, (...args: unknown[]) => unknown>();

async function load(task: ThreadTask, key: string): Promise<(...args: unknown[]) => unknown> {
  const exports = (await import(task.module)) as Record<string, unknown>;
  const named = exports[task.exportName];
  const fn = typeof named === 'function' ? named : exports.default;
  if (typeof fn !== 'function')
    throw new TypeError(
      `the module ${task.module} of task "${task.context.name}" exports no function "${task.exportName}" and no default function`,
    );
  functions.set(key, fn as (...args: unknown[]) => unknown);
  return fn as (...args: unknown[]) => unknown;
}

/** Runs one attempt; its logs go to the main thread as they happen, its outcome in piscina's answer. */
export default async function runInThread(task: ThreadTask): Promise<ThreadReply> {
  // Aborted while it waited for a thread: the main thread has failed it already.
  if (Atomics.compareExchange(states, task.slot, QUEUED, RUNNING) === DROPPED) return { sent: 0, outcome: 'dropped' };
  const controller = new AbortController();
  let attempt: ThreadAttempt | undefined;
  aborts.set(task.key, (crossed) => {
    const reason = abortReason(crossed);
    // The signal's listeners run inside the task (a taskLog there is the task's), as on the main thread.
    if (attempt === undefined) controller.abort(reason);
    else attemptStorage.run(attempt, () => controller.abort(reason));
  });
  try {
    const fnKey = `${task.module}#${task.exportName}`;
    const fn = functions.get(fnKey) ?? (await load(task, fnKey));
    attempt = new ThreadAttempt(task, controller.signal);
    // Our storage carries the attempt for getTaskContext(); the OpenTelemetry context carries its span for
    // the spans the task makes, when an SDK (a context manager) is registered in this thread.
    const spanContext = trace.setSpan(ROOT_CONTEXT, attempt.span);
    const value: unknown = await attemptStorage.run(attempt, (): unknown =>
      context.with(spanContext, fn, undefined, ...task.args),
    );
    // A primitive rides in piscina's answer; an object is sent here, where a failure to clone is this attempt's
    // error (in piscina's answer it would take the thread down).
    if (alwaysClones(value)) return { sent: attempt.sent, outcome: 'value', value };
    try {
      parentPort!.postMessage({ key: task.key, type: 'result', value } satisfies ThreadMessage);
    } catch (error) {
      throw new TypeError(
        `the result of task "${task.context.name}" cannot be sent back from its thread (structured clone): ${(error as Error).message}`,
        { cause: error },
      );
    }
    return { sent: attempt.sent + 1, outcome: 'sent' };
  } catch (error) {
    return { sent: attempt?.sent ?? 0, outcome: 'error', error: crossedError(error) };
  } finally {
    aborts.delete(task.key);
  }
}
