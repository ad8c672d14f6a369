import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { randomUUID } from 'node:crypto';
import { BroadcastChannel, type ResourceLimits } from 'node:worker_threads';
import type { SpanStatus, TimeInput, Attributes } from '@opentelemetry/api';
import type { Attempt } from './attempt.js';
import { kLog, kProgress } from './context.js';
import { describedAs, errorFromInfo, readOr, TaskflowError, toErrorInfo, type ErrorInfo } from './errors.js';
import { checkKnownKeys, numberError, optionError } from './options.js';
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
// worker_threads ignores a key it does not know: a misspelt limit would silently be no limit.
const RESOURCE_LIMITS = new Set([
  'maxYoungGenerationSizeMb',
  'maxOldGenerationSizeMb',
  'codeRangeSizeMb',
  'stackSizeMb',
]);

/** The TaskManager's `threads` option: known keys, thread counts that are integers (maxThreads >= 1). */
export function checkThreadPoolOptions(where: string, value: unknown): void {
  if (value === undefined) return;
  if (value === null || typeof value !== 'object' || Array.isArray(value))
    throw optionError(where, 'threads', 'an object { maxThreads?, minThreads?, resourceLimits? }', value);
  const options = value as Record<string, unknown>;
  checkKnownKeys(where, options, POOL_OPTIONS, 'threads.');
  for (const [key, min, max] of [
    ['maxThreads', 1, Infinity],
    ['minThreads', 0, Infinity],
    ['nice', 0, 19],
  ] as const) {
    const count = options[key];
    if (count !== undefined && (!Number.isInteger(count) || (count as number) < min || (count as number) > max))
      throw numberError(
        where,
        `threads.${key}`,
        max === Infinity ? `an integer >= ${min}` : `an integer from ${min} to ${max}`,
        count,
      );
  }
  const limits = options.resourceLimits;
  if (limits !== undefined && (limits === null || typeof limits !== 'object'))
    throw optionError(where, 'threads.resourceLimits', 'an object (worker_threads ResourceLimits)', limits);
  if (limits !== undefined) checkKnownKeys(where, limits, RESOURCE_LIMITS, 'threads.resourceLimits.');
}

/** What the pool gives each of its threads once (piscina's `workerData`). */
export interface ThreadData {
  /** One Int32 per attempt in flight, at the attempt's `slot`: QUEUED, RUNNING or DROPPED (see ThreadPool). */
  states: SharedArrayBuffer;
  /** The BroadcastChannel on which the main thread sends aborts of running attempts. */
  aborts: string;
  /** The threads' nice value (Linux). */
  nice: number;
}

export const QUEUED = 0;
export const RUNNING = 1;
export const DROPPED = 2;

/** What an isolated attempt sends to its thread. */
export interface ThreadTask {
  /** Names the attempt in the messages of both ways: unique in its pool, never reused. */
  key: number;
  /** Its state's index in `ThreadData.states`, reused once the thread is done with it. */
  slot: number;
  module: string;
  exportName: string;
  args: readonly unknown[];
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

/**
 * What a task threw (or an abort's reason), as it crosses to the other thread. It is described where it was
 * thrown, as `toErrorInfo` describes it there: the value's getters, `toString` and Proxy traps run in that
 * thread, and a function or a symbol cannot be copied. The other side's record, span and log lines read that
 * description, so a thrown string reads `{ type: 'string', … }` in a thread as in process.
 */
export interface CrossedError {
  info: ErrorInfo;
  /** A thrown value that is not an Error, when structured clone copies it (a primitive, a plain object). */
  copy?: { value: unknown };
  /** An Error's string `code`, kept on the Error rebuilt from it. */
  code?: string;
}

/** The thread → main thread messages of one attempt (on the thread's parentPort), in the order it sent them. */
export type ThreadMessage = { key: number } & (
  | { type: 'log'; level: LogLevel; message: string; fields: Record<string, unknown> | undefined }
  | { type: 'progress'; value: number; fields: Record<string, unknown> | undefined }
  | { type: 'event'; name: string; attributes: Attributes | undefined; time: TimeInput | undefined }
  | { type: 'attributes'; attributes: Attributes }
  | { type: 'status'; status: SpanStatus }
  | { type: 'result'; value: unknown }
);

/**
 * What the thread's task answers to piscina: how many messages it sent before, and its outcome unless that was
 * the last of those messages (a `result` that is an object: sending it is what tells whether it can be cloned).
 */
export type ThreadReply =
  | { sent: number; outcome: 'value'; value: unknown }
  | { sent: number; outcome: 'error'; error: CrossedError }
  | { sent: number; outcome: 'sent' | 'dropped' };

/** Main thread → threads (BroadcastChannel): the attempt `key` was aborted (timeout, cancel, shutdown). */
export interface AbortMessage {
  key: number;
  reason: CrossedError;
}

// The part of Piscina used here, so that neither its types nor its module are needed unless a task is isolated.
interface Pool {
  run(task: ThreadTask, options: { signal: AbortSignal }): Promise<ThreadReply>;
  on(event: 'message', listener: (message: ThreadMessage) => void): void;
  destroy(): Promise<void>;
}
type PoolClass = new (options: Record<string, unknown>) => Pool;

// ES2024's growable SharedArrayBuffer (Node ≥ 20), not in this project's lib yet.
type GrowableSharedArrayBuffer = SharedArrayBuffer & { grow(byteLength: number): void; maxByteLength: number };
const GrowableSharedArrayBuffer = SharedArrayBuffer as unknown as new (
  byteLength: number,
  options: { maxByteLength: number },
) => GrowableSharedArrayBuffer;

/** Attempts in flight in one pool at most (queued in piscina or running): 4 MiB of address space reserved. */
const MAX_SLOTS = 1 << 20;

const DEFAULT_NICE = 10;

/** Threads above `minThreads` stay this long once idle, rather than piscina's 0 (a new thread per burst). */
const IDLE_TIMEOUT_MS = 30_000;
/**
 * How long a running attempt has, once its signal aborted (a timeout, a cancel), to return before its thread is
 * stopped: a task that ignores its signal (a CPU-bound loop) would otherwise keep the thread, and every task
 * queued for it, for ever. Piscina starts another thread in its place.
 */
const THREAD_STOP_GRACE_MS = 1_000;

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

/** A primitive other than a symbol: structured clone always copies it, so no copy is made to find out. */
export function alwaysClones(value: unknown): boolean {
  return value === null || (typeof value !== 'object' && typeof value !== 'function' && typeof value !== 'symbol');
}

/** Args of an isolated task are copied to the thread by structured clone: one that cannot be is refused at the add. */
export function checkCloneable(where: string, name: string, args: readonly unknown[]): void {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    // Most args are ids and numbers.
    if (alwaysClones(arg)) continue;
    try {
      structuredClone(arg);
    } catch (error) {
      throw new TypeError(
        `${where}: argument ${i + 1} of task "${name}" cannot be sent to a thread (option "isolate: 'thread'" copies args by structured clone): ${(error as Error).message}`,
        { cause: error },
      );
    }
  }
}

/** Never throws: `error` is anything a task threw, read without trusting it. */
export function crossedError(error: unknown): CrossedError {
  const info = toErrorInfo(error);
  // A primitive crosses as itself (`undefined` then fails the attempt as on the main thread).
  if (alwaysClones(error)) return { info, copy: { value: error } };
  // A Proxy whose getPrototypeOf trap throws is not an Error, and is not copied either.
  if (!readOr(() => error instanceof Error, false)) {
    const copy = readOr(() => ({ value: structuredClone(error) }), undefined);
    return copy === undefined ? { info } : { info, copy };
  }
  // A code getter that throws: no code.
  const code = readOr(() => (error as { code?: unknown }).code, undefined);
  return typeof code === 'string' ? { info, code } : { info };
}

/**
 * What was thrown, on this side of the port: its copy, or an Error with the thrower's name, message, stack
 * and code standing for it; `toErrorInfo` reads either as it was described where it was thrown.
 */
export function rebuiltError(crossed: CrossedError): unknown {
  if (crossed.copy !== undefined) return describedAs(crossed.copy.value, crossed.info);
  // A stand-in for a function or a symbol has no stack: given a one-line one, not this side's rebuilding.
  const error = errorFromInfo(crossed.info);
  if (crossed.code !== undefined) (error as Error & { code: string }).code = crossed.code;
  return describedAs(error, crossed.info);
}

/** One attempt in flight, from its dispatch to its outcome. */
interface InFlight {
  readonly attempt: Attempt;
  readonly signal: AbortSignal;
  readonly slot: number;
  readonly resolve: (value: unknown) => void;
  readonly reject: (reason: unknown) => void;
  readonly onAbort: () => void;
  /** Messages of the attempt received so far. */
  received: number;
  /** Piscina's answer when it came before all the messages it counts (another port: no order between them). */
  reply: ThreadReply | undefined;
  /** Aborted to stop the attempt's thread (piscina's signal: it ends the thread running the task). */
  readonly stop: AbortController;
  /** Armed once the attempt's signal aborted while it ran: stops its thread if it has not returned by then. */
  stopTimer: NodeJS.Timeout | undefined;
}

/**
 * The manager's pool of worker threads for `isolate: 'thread'` tasks (piscina), made at the first isolated
 * attempt and destroyed by `shutdown()`.
 *
 * A dispatch is one piscina task and nothing else; what else crosses between the threads is shared by all
 * attempts and set up once, each message tagged with its attempt's `key` and dispatched through `#inFlight`:
 * - thread → main: each thread's own parentPort (piscina re-emits its messages as the pool's 'message' event),
 *   carrying logs, progress and span writes in the order the task made them. The outcome rides on piscina's
 *   answer, which says how many messages came before it; as the two ports keep no order between them, an
 *   answer that overtook its messages waits for them. (A MessageChannel per attempt, a transferred port, a
 *   'started' message and a close, as before, took the main thread about twice the CPU per attempt of
 *   piscina's own run(): bench/isolate-dispatch.ts. A MessageChannel per thread, handed over once, was the
 *   other candidate; an abort would then need to know the thread of an attempt, which piscina does not tell.)
 * - queued or running: a shared Int32 per attempt (its `slot`), which the thread moves QUEUED → RUNNING as it
 *   starts the attempt; an abort moves it QUEUED → DROPPED instead, and the thread then skips the task. This
 *   replaces a 'started' message, and piscina's own signal (which on a task already handed to a thread kills
 *   the thread).
 * - main → threads: a BroadcastChannel named for this pool, for aborts of running attempts (rare): each
 *   thread looks the key up among its own running attempts. Keys are never reused, so a late abort cannot
 *   reach another attempt; the threads never post on it, so no instance accumulates unread messages.
 */
export class ThreadPool {
  readonly #options: ThreadPoolOptions;
  #pool: Promise<Pool> | undefined;
  #ready: Pool | undefined;
  #closed = false;
  #aborts: BroadcastChannel | undefined;
  readonly #inFlight = new Map<number, InFlight>();
  #lastKey = 0;
  #states: GrowableSharedArrayBuffer | undefined;
  #slots: Int32Array | undefined;
  readonly #freeSlots: number[] = [];
  #slotsUsed = 0;

  constructor(options: ThreadPoolOptions | undefined) {
    this.#options = options ?? {};
  }

  #get(): Promise<Pool> {
    this.#pool ??= import('piscina').then(({ Piscina }) => {
      const maxThreads = this.#options.maxThreads ?? Math.max(1, availableParallelism() - 1);
      const name = `koa-taskflow:aborts:${randomUUID()}`;
      this.#aborts = new BroadcastChannel(name);
      this.#aborts.unref();
      this.#states = new GrowableSharedArrayBuffer(256 * 4, { maxByteLength: MAX_SLOTS * 4 });
      this.#slots = new Int32Array(this.#states);
      const workerData: ThreadData = {
        states: this.#states,
        aborts: name,
        nice: this.#options.nice ?? DEFAULT_NICE,
      };
      // piscina's other defaults stay: `atomics: 'sync'` (an idle thread waits on Atomics.wait and reads its
      // next task without an event-loop turn), one task per thread at a time.
      const pool = new (Piscina as unknown as PoolClass)({
        filename: WORKER_URL,
        maxThreads,
        minThreads: Math.min(this.#options.minThreads ?? 1, maxThreads),
        idleTimeout: IDLE_TIMEOUT_MS,
        resourceLimits: this.#options.resourceLimits,
        workerData,
      });
      pool.on('message', this.#onMessage);
      this.#ready = pool;
      return pool;
    });
    return this.#pool;
  }

  /** Run `attempt` of the task exported as `exportName` by `module` in a thread; settles with its result. */
  run(attempt: Attempt, module: string, exportName: string, args: readonly unknown[]): Promise<unknown> {
    if (this.#closed)
      return Promise.reject(new TaskflowError('the thread pool is closed', { code: 'ERR_MANAGER_CLOSED' }));
    const pool = this.#ready;
    if (pool === undefined) return this.#get().then(() => this.run(attempt, module, exportName, args));
    const signal = attempt.signal;
    if (signal.aborted) return Promise.reject(signal.reason as Error);
    const slot = this.#slot();
    if (slot === -1)
      return Promise.reject(new RangeError(`more than ${MAX_SLOTS} isolated attempts in flight in one thread pool`));
    const key = ++this.#lastKey;
    const span = attempt.span;
    const spanContext = span.spanContext();
    const task: ThreadTask = {
      key,
      slot,
      module,
      exportName,
      args,
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
    return new Promise<unknown>((resolve, reject) => {
      const entry: InFlight = {
        attempt,
        signal,
        slot,
        resolve,
        reject,
        onAbort: () => this.#abort(key, entry),
        received: 0,
        reply: undefined,
        stop: new AbortController(),
        stopTimer: undefined,
      };
      this.#inFlight.set(key, entry);
      signal.addEventListener('abort', entry.onAbort, { once: true });
      pool.run(task, { signal: entry.stop.signal }).then(
        (reply) => {
          this.#freeSlot(slot);
          if (this.#inFlight.get(key) !== entry) return;
          if (entry.received < reply.sent) entry.reply = reply;
          else this.#answer(key, entry, reply);
        },
        (error: unknown) => {
          this.#freeSlot(slot);
          if (this.#inFlight.get(key) !== entry) return;
          this.#settle(key, entry);
          const why = entry.stop.signal.aborted
            ? `was stopped: the task had not returned ${THREAD_STOP_GRACE_MS} ms after its signal aborted`
            : `died (${(error as Error)?.message})`;
          reject(
            new TaskflowError(`the thread running task "${attempt.name}" ${why}; the attempt failed, the app goes on`, {
              code: 'ERR_TASK_THREAD_DIED',
              cause: error,
            }),
          );
        },
      );
    });
  }

  readonly #onMessage = (message: ThreadMessage): void => {
    const entry = this.#inFlight.get(message.key);
    if (entry === undefined) return; // the attempt has its outcome (a write its task made after it is ignored)
    entry.received++;
    const { attempt } = entry;
    switch (message.type) {
      case 'log':
        attempt[kLog](message.level, message.message, message.fields);
        break;
      case 'progress':
        attempt[kProgress](message.value, message.fields);
        break;
      case 'event':
        attempt.span.addEvent(message.name, message.attributes, message.time);
        break;
      case 'attributes':
        attempt.span.setAttributes(message.attributes);
        break;
      case 'status':
        attempt.span.setStatus(message.status);
        break;
      case 'result':
        this.#settle(message.key, entry);
        entry.resolve(message.value);
        return;
    }
    const reply = entry.reply;
    if (reply !== undefined && entry.received >= reply.sent) this.#answer(message.key, entry, reply);
  };

  /** The attempt's outcome, once every message it sent before it was handled. */
  #answer(key: number, entry: InFlight, reply: ThreadReply): void {
    if (reply.outcome === 'value') {
      this.#settle(key, entry);
      entry.resolve(reply.value);
    } else if (reply.outcome === 'error') {
      this.#settle(key, entry);
      entry.reject(rebuiltError(reply.error));
    }
  }

  #settle(key: number, entry: InFlight): void {
    this.#inFlight.delete(key);
    entry.signal.removeEventListener('abort', entry.onAbort);
    clearTimeout(entry.stopTimer);
  }

  #abort(key: number, entry: InFlight): void {
    const reason = entry.signal.reason as unknown;
    if (Atomics.compareExchange(this.#slots!, entry.slot, QUEUED, DROPPED) === QUEUED) {
      // No thread has started it, and none will: it fails now (its slot stays taken until a thread skips it).
      this.#settle(key, entry);
      entry.reject(reason);
      return;
    }
    // Running: the task's own signal aborts in its thread (the attempt's outcome still comes from there). A task
    // that has not returned THREAD_STOP_GRACE_MS later has its thread stopped: its attempt has already ended on
    // this side (a timeout or a cancel ends it at once), and the thread is wanted by the tasks behind it.
    this.#aborts!.postMessage({ key, reason: crossedError(reason) } satisfies AbortMessage);
    entry.stopTimer = setTimeout(() => entry.stop.abort(), THREAD_STOP_GRACE_MS);
    entry.stopTimer.unref();
  }

  /** A free state slot, QUEUED; -1 when MAX_SLOTS attempts are in flight. */
  #slot(): number {
    let slot = this.#freeSlots.pop();
    if (slot === undefined) {
      if (this.#slotsUsed === MAX_SLOTS) return -1;
      slot = this.#slotsUsed++;
      const states = this.#states!;
      if (slot * 4 >= states.byteLength) states.grow(Math.min(states.byteLength * 2, MAX_SLOTS * 4));
    }
    Atomics.store(this.#slots!, slot, QUEUED);
    return slot;
  }

  #freeSlot(slot: number): void {
    this.#freeSlots.push(slot);
  }

  /** Stop every thread (shutdown, once running attempts have ended or been given up). */
  async close(): Promise<void> {
    this.#closed = true;
    const pool = this.#pool;
    this.#pool = undefined;
    this.#ready = undefined;
    if (pool !== undefined) await (await pool).destroy();
    this.#aborts?.close();
    this.#aborts = undefined;
  }
}
