import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { MessageChannel, type MessagePort, type ResourceLimits } from 'node:worker_threads';
import type { SpanStatus, TimeInput, Attributes } from '@opentelemetry/api';
import type { Attempt } from './attempt.js';
import { kLog, kProgress } from './context.js';
import { TaskflowError } from './errors.js';
import { optionError } from './options.js';
import type { LogLevel } from './types.js';

/** The `threads` option of the TaskManager: the pool that runs `isolate: 'thread'` tasks. */
export interface ThreadPoolOptions {
  /** Threads at most. Default: the machine's cores − 1, at least 1. */
  maxThreads?: number;
  /** Threads kept alive when idle, started with the pool (at the first isolated attempt). Default 1. */
  minThreads?: number;
  /** Heap limits of each thread (a thread past them dies: that attempt fails, the app goes on). */
  resourceLimits?: ResourceLimits;
  /**
   * Linux: the threads' nice value, 0 (the app's priority) to 19 (the lowest). Default 10: when the CPU is
   * short, the event loop serving requests runs first and tasks wait. Ignored on other systems.
   */
  nice?: number;
}

const POOL_OPTIONS = new Set(['maxThreads', 'minThreads', 'resourceLimits', 'nice']);

/** The TaskManager's `threads` option: known keys, thread counts that are integers (maxThreads >= 1). */
export function checkThreadPoolOptions(where: string, value: unknown): void {
  if (value === undefined) return;
  if (value === null || typeof value !== 'object' || Array.isArray(value))
    throw optionError(where, 'threads', 'an object { maxThreads?, minThreads?, resourceLimits? }', value);
  const options = value as Record<string, unknown>;
  for (const key of Object.keys(options)) {
    if (!POOL_OPTIONS.has(key))
      throw new TypeError(`${where}: unknown option "threads.${key}"; known are ${[...POOL_OPTIONS].join(', ')}`);
  }
  for (const [key, min, max] of [
    ['maxThreads', 1, Infinity],
    ['minThreads', 0, Infinity],
    ['nice', 0, 19],
  ] as const) {
    const count = options[key];
    if (count !== undefined && (!Number.isInteger(count) || (count as number) < min || (count as number) > max))
      throw optionError(
        where,
        `threads.${key}`,
        max === Infinity ? `an integer >= ${min}` : `an integer from ${min} to ${max}`,
        count,
        typeof count === 'number' ? RangeError : TypeError,
      );
  }
  const limits = options.resourceLimits;
  if (limits !== undefined && (limits === null || typeof limits !== 'object'))
    throw optionError(where, 'threads.resourceLimits', 'an object (worker_threads ResourceLimits)', limits);
}

/** What an isolated attempt sends to its thread. */
export interface ThreadTask {
  module: string;
  exportName: string;
  args: readonly unknown[];
  /** The thread's nice value (Linux), set once by its first task. */
  nice: number;
  port: MessagePort;
  context: {
    id: string;
    name: string;
    attempt: number;
    maxAttempts: number;
    tags: Readonly<Record<string, string>>;
    tickAt: number | undefined;
    traceId: string;
    spanId: string;
    traceFlags: number;
    recording: boolean;
  };
}

/** An error as it crosses the port: enough to rebuild one with the same name, message, code and stack. */
export interface CrossedError {
  name: string;
  message: string;
  stack?: string;
  code?: string;
}

/** The thread → main thread messages of one attempt, in the order the thread sent them. */
export type ThreadMessage =
  | { type: 'started' }
  | { type: 'log'; level: LogLevel; message: string; fields: Record<string, unknown> | undefined }
  | { type: 'progress'; value: number; fields: Record<string, unknown> | undefined }
  | { type: 'event'; name: string; attributes: Attributes | undefined; time: TimeInput | undefined }
  | { type: 'attributes'; attributes: Attributes }
  | { type: 'status'; status: SpanStatus }
  | { type: 'result'; value: unknown }
  | { type: 'error'; error: CrossedError };

/** Main thread → thread: the attempt was aborted (timeout, cancel, shutdown). */
export interface AbortMessage {
  type: 'abort';
  reason: CrossedError;
}

// The part of Piscina used here, so that neither its types nor its module are needed unless a task is isolated.
interface Pool {
  run(task: ThreadTask, options: { transferList: MessagePort[]; signal: AbortSignal }): Promise<unknown>;
  destroy(): Promise<void>;
}
type PoolClass = new (options: Record<string, unknown>) => Pool;

const DEFAULT_NICE = 10;

const WORKER_URL = new URL('./isolate-worker.js', import.meta.url).href;

let piscinaFound: boolean | undefined;

/**
 * Throws what an isolated task cannot run without: its module (functions cannot be sent to a thread) and
 * the optional peer dependency piscina. Checked where the task is registered or added, not when it runs.
 */
export function checkThreadTask(where: string, name: string, module: string | undefined): void {
  if (module === undefined) {
    throw new TypeError(
      `${where}: option "isolate: 'thread'" needs the module of task "${name}": register it with ` +
        `manager.task(fn, { isolate: 'thread', module: new URL('./file.js', import.meta.url) })`,
    );
  }
  if (piscinaFound === undefined) {
    try {
      createRequire(import.meta.url).resolve('piscina');
      piscinaFound = true;
    } catch {
      piscinaFound = false;
    }
  }
  if (!piscinaFound) {
    throw new TaskflowError(
      `${where}: option "isolate: 'thread'" runs tasks in a piscina thread pool, and the package "piscina" is not installed: npm install piscina`,
      { code: 'ERR_PISCINA_NOT_INSTALLED' },
    );
  }
}

/** Args of an isolated task are copied to the thread by structured clone: one that cannot be is refused at the add. */
export function checkCloneable(where: string, name: string, args: readonly unknown[]): void {
  for (let i = 0; i < args.length; i++) {
    try {
      structuredClone(args[i]);
    } catch (error) {
      throw new TypeError(
        `${where}: argument ${i + 1} of task "${name}" cannot be sent to a thread (option "isolate: 'thread'" copies args by structured clone): ${(error as Error).message}`,
        { cause: error },
      );
    }
  }
}

export function crossedError(error: unknown): CrossedError {
  if (error instanceof Error) {
    const crossed: CrossedError = { name: error.name, message: error.message, stack: error.stack };
    const code = (error as { code?: unknown }).code;
    if (typeof code === 'string') crossed.code = code;
    return crossed;
  }
  return { name: 'Error', message: `the task threw ${String(error)}` };
}

/** An error rebuilt on this side of the port: an Error whose name, message, code and stack are the thrower's. */
export function rebuiltError(crossed: CrossedError): Error {
  const error = new Error(crossed.message);
  error.name = crossed.name;
  if (crossed.stack !== undefined) error.stack = crossed.stack;
  if (crossed.code !== undefined) (error as Error & { code: string }).code = crossed.code;
  return error;
}

/**
 * The manager's pool of worker threads for `isolate: 'thread'` tasks (piscina), made at the first isolated
 * attempt and destroyed by `shutdown()`. Each attempt gets its own MessageChannel: the thread's logs,
 * progress, span events and result come back over it in order, and an abort goes the other way.
 */
export class ThreadPool {
  readonly #options: ThreadPoolOptions;
  #pool: Promise<Pool> | undefined;
  #closed = false;

  constructor(options: ThreadPoolOptions | undefined) {
    this.#options = options ?? {};
  }

  #get(): Promise<Pool> {
    this.#pool ??= import('piscina').then(({ Piscina }) => {
      const maxThreads = this.#options.maxThreads ?? Math.max(1, availableParallelism() - 1);
      return new (Piscina as unknown as PoolClass)({
        filename: WORKER_URL,
        maxThreads,
        minThreads: Math.min(this.#options.minThreads ?? 1, maxThreads),
        resourceLimits: this.#options.resourceLimits,
      });
    });
    return this.#pool;
  }

  /** Run `attempt` of the task exported as `exportName` by `module` in a thread; settles with its result. */
  async run(attempt: Attempt, module: string, exportName: string, args: readonly unknown[]): Promise<unknown> {
    if (this.#closed) throw new TaskflowError('the thread pool is closed', { code: 'ERR_MANAGER_CLOSED' });
    const pool = await this.#get();
    const { port1, port2 } = new MessageChannel();
    const span = attempt.span;
    const spanContext = span.spanContext();
    // Piscina's signal only takes back a task still queued for a thread (on a running one it would kill the
    // thread); once the thread has it, an abort goes over the port to the task's own signal.
    const queued = new AbortController();
    let started = false;
    const signal = attempt.signal;
    return new Promise<unknown>((resolve, reject) => {
      const onAbort = (): void => {
        if (!started) queued.abort(signal.reason);
        else port1.postMessage({ type: 'abort', reason: crossedError(signal.reason) } satisfies AbortMessage);
      };
      const settle = (): void => {
        signal.removeEventListener('abort', onAbort);
        port1.close();
      };
      port1.on('message', (message: ThreadMessage) => {
        switch (message.type) {
          case 'started':
            started = true;
            return;
          case 'log':
            return attempt[kLog](message.level, message.message, message.fields);
          case 'progress':
            return attempt[kProgress](message.value, message.fields);
          case 'event':
            span.addEvent(message.name, message.attributes, message.time);
            return;
          case 'attributes':
            span.setAttributes(message.attributes);
            return;
          case 'status':
            span.setStatus(message.status);
            return;
          case 'result':
            settle();
            return resolve(message.value);
          case 'error':
            settle();
            return reject(rebuiltError(message.error));
        }
      });
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
      const task: ThreadTask = {
        module,
        exportName,
        args,
        nice: this.#options.nice ?? DEFAULT_NICE,
        port: port2,
        context: {
          id: attempt.id,
          name: attempt.name,
          attempt: attempt.attempt,
          maxAttempts: attempt.maxAttempts,
          tags: attempt.tags,
          tickAt: attempt.tickAt?.getTime(),
          traceId: spanContext.traceId,
          spanId: spanContext.spanId,
          traceFlags: spanContext.traceFlags,
          recording: span.isRecording(),
        },
      };
      // The thread's answer comes over the port (after everything it sent before it); piscina's own promise
      // only tells a thread that died (exit, out of memory, terminated) or a task taken back from the queue.
      pool.run(task, { transferList: [port2], signal: queued.signal }).then(
        () => undefined,
        (error: unknown) => {
          settle();
          if (queued.signal.aborted) return reject(queued.signal.reason);
          reject(
            new TaskflowError(
              `the thread running task "${attempt.name}" died (${(error as Error)?.message}); the attempt failed, the app goes on`,
              { code: 'ERR_TASK_THREAD_DIED', cause: error },
            ),
          );
        },
      );
    });
  }

  /** Stop every thread (shutdown, once running attempts have ended or been given up). */
  async close(): Promise<void> {
    this.#closed = true;
    const pool = this.#pool;
    this.#pool = undefined;
    if (pool !== undefined) await (await pool).destroy();
  }
}
