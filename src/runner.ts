import { AsyncResource } from 'node:async_hooks';
import type { ObserverChain } from './observers/chain.js';
import type { ThreadPool } from './isolate.js';
import type { TaskTelemetry } from './otel.js';
import type { Redactor } from './redact.js';
import { TaskInterruptedError } from './errors.js';
import { Limiter } from './limits.js';
import { MAX_TIMER_MS } from './options.js';
import type { RunHost, RunSequence, TaskRun } from './task-run.js';
import { kSaveSoon, type TaskRecord, type TaskStore } from './types.js';

const RUNNER_SCOPE = 'koa-taskflow.runner';

/** Unset priority ranks in the middle, so 1–4 means "after ordinary work" and 6–10 "before it". */
export const DEFAULT_PRIORITY = 5;

/** FIFO per priority level; higher levels first. O(1) push and shift. */
class PriorityQueue<T> {
  #levels: T[][] = Array.from({ length: 11 }, () => []);
  readonly #heads = new Array<number>(11).fill(0);
  size = 0;

  push(item: T, priority: number): void {
    this.#levels[priority].push(item);
    this.size++;
  }

  shift(): T | undefined {
    for (let p = 10; p >= 0; p--) {
      const level = this.#levels[p];
      const head = this.#heads[p];
      if (head === level.length) continue;
      const item = level[head];
      // A queue that never quite drains must not keep what it handed out reachable (see MemoryStore#trim).
      level[head] = undefined as unknown as T;
      this.size--;
      if (head + 1 === level.length) {
        level.length = 0;
        this.#heads[p] = 0;
      } else {
        this.#heads[p] = head + 1;
      }
      return item;
    }
    return undefined;
  }

  /** Keep only the items `keep` accepts, in their order. */
  filter(keep: (item: T) => boolean): void {
    this.size = 0;
    for (let p = 0; p <= 10; p++) {
      const level = this.#levels[p].slice(this.#heads[p]).filter(keep);
      this.#levels[p] = level;
      this.#heads[p] = 0;
      this.size += level.length;
    }
  }
}

export interface RunnerDeps {
  concurrency: number;
  telemetry: TaskTelemetry;
  chain: ObserverChain;
  store: TaskStore;
  /** The store keeps the live record objects (MemoryStore): status changes need no write. */
  storeHoldsLiveRecords: boolean;
  /** Told when a task has ended, so a bounded in-memory store can drop old records. */
  onTaskEnded?(record: TaskRecord): void;
  redact: Redactor;
  threads: ThreadPool;
  report(stage: string, error: unknown): void;
  /** An engine (BullMQ) runs the tasks: each is handed to it when it would be queued here. */
  dispatch?(run: TaskRun): void;
}

/**
 * The process-wide executor: one priority queue, a concurrency cap, retry timers, and the set of every
 * accepted task that has not ended (what `drain()` and `shutdown()` wait for).
 */
export class Runner implements RunHost {
  readonly telemetry: TaskTelemetry;
  readonly chain: ObserverChain;
  readonly redact: Redactor;
  readonly threads: ThreadPool;
  readonly #deps: RunnerDeps;
  readonly #queue = new PriorityQueue<TaskRun>();
  /**
   * Runs in `#queue` that ended there (cancelled while waiting for a slot): dropped when reached, and the queue
   * is compacted once they are half of it, so that adding and cancelling tasks behind busy slots cannot grow it
   * without bound (only unfinished tasks count towards `maxQueued`).
   */
  #dropped = 0;
  /** Tasks over their `limit` wait there, off the queue, and come back through #offer when their key allows. */
  readonly #limiter = new Limiter((run) => this.#scopeOf(run).runInAsyncScope(this.#offer, this, run));
  /**
   * Shutdown is handing back or cancelling waiting tasks: one that its key admits meanwhile (another of the key
   * ended) is queued rather than started, so that the same pass hands it back or cancels it too.
   */
  #holdStarts = false;
  /** Attempts holding a slot. A count, not a set: a run knows whether it holds one (`inSlot`). */
  #running = 0;
  // Every unfinished run in the order accepted, as a doubly linked list through the runs themselves: joining
  // and leaving it are a few pointer writes, where a Set hashes each run and grows a table that the garbage
  // collector walks. Looking a run up by id (an idempotency hit asking for a handle, recovery) walks it.
  #liveHead: TaskRun | undefined;
  #liveTail: TaskRun | undefined;
  #liveCount = 0;
  #idleWaiters: (() => void)[] = [];
  /** Set once shutdown stops waiting: no more retries, nothing new starts but shielded tasks. */
  stopping = false;

  /** The async context the manager was made in: where a task that waited starts, unless its request's is known. */
  readonly #scope = new AsyncResource(RUNNER_SCOPE);

  constructor(deps: RunnerDeps) {
    this.#deps = deps;
    this.telemetry = deps.telemetry;
    this.chain = deps.chain;
    this.redact = deps.redact;
    this.threads = deps.threads;
  }

  /** Tasks waiting for a slot, or over their `limit`. */
  get queued(): number {
    return this.#queue.size - this.#dropped + this.#limiter.waiting;
  }

  get running(): number {
    return this.#running;
  }

  /** Accepted tasks that have not ended, wherever they wait. */
  get unfinished(): number {
    return this.#liveCount;
  }

  /**
   * Accepted tasks not running now: waiting for a slot, for their request's route or response, for their
   * store write, or for a retry. What `maxQueued` bounds: each holds its record and arguments in memory.
   */
  get waiting(): number {
    return this.#liveCount - this.#running;
  }

  /** The unfinished task with this id, if it lives in this process. */
  live(id: string): TaskRun | undefined {
    for (let run = this.#liveHead; run !== undefined; run = run.liveNext) if (run.id === id) return run;
    return undefined;
  }

  /** The unfinished runs, oldest first (a copy: ending one while iterating is safe). */
  #liveRuns(): TaskRun[] {
    const runs: TaskRun[] = [];
    for (let run = this.#liveHead; run !== undefined; run = run.liveNext) runs.push(run);
    return runs;
  }

  report(stage: string, error: unknown): void {
    this.#deps.report(stage, error);
  }

  /** A task was accepted: it counts until it ends. */
  accept(run: TaskRun): void {
    if (this.#isLive(run)) return;
    run.livePrev = this.#liveTail;
    if (this.#liveTail === undefined) this.#liveHead = run;
    else this.#liveTail.liveNext = run;
    this.#liveTail = run;
    this.#liveCount++;
    run.announce();
  }

  /** Queue a task for its next attempt; it starts as soon as a slot is free and nothing ranks before it. */
  submit(run: TaskRun): void {
    if (run.isFinal) return;
    // Its record is still being written (and its idempotency key claimed): it starts, or is dropped as a
    // duplicate or an unacknowledged task, once the write has settled.
    if (run.awaitingWrite) {
      run.submitAfterWrite = true;
      return;
    }
    if (this.#deps.dispatch !== undefined) return this.#deps.dispatch(run);
    // A delayed first attempt (startAfter/runAt) waits here, off the queue, until due: checked again when the
    // timer fires, as a timer armed late in a busy turn may fire before the clock reaches runAt.
    const { runAt } = run.record;
    if (runAt !== undefined && run.record.attempts === 0 && runAt > Date.now()) {
      this.retryLater(run, runAt - Date.now());
      return;
    }
    const { limit } = run.options;
    if (limit !== undefined && !this.#limiter.enter(run, limit, run.options.priority ?? DEFAULT_PRIORITY)) return;
    this.#offer(run);
  }

  /** A task free to start (within its limit, if any): it starts when a slot is free and nothing ranks before it. */
  #offer(run: TaskRun): void {
    if (this.#running < this.#deps.concurrency && this.#queue.size === 0 && !this.#holdStarts) this.#start(run);
    else {
      this.#queue.push(run, run.options.priority ?? DEFAULT_PRIORITY);
      run.inQueue = true;
    }
  }

  retryLater(run: TaskRun, waitMs: number): void {
    // Past MAX_TIMER_MS Node would fire after 1 ms (a stored runAt can be that far): wait the longest it keeps, then look again.
    if (waitMs > MAX_TIMER_MS) {
      run.retryTimer = setTimeout(() => this.retryLater(run, waitMs - MAX_TIMER_MS), MAX_TIMER_MS);
      return;
    }
    run.retryTimer = setTimeout(() => {
      run.retryTimer = undefined;
      this.submit(run);
    }, waitMs);
  }

  /** The task has ended (a final status, or handed back to the store): it no longer counts. */
  taskEnded(run: TaskRun): void {
    if (run.retryTimer !== undefined) {
      clearTimeout(run.retryTimer);
      run.retryTimer = undefined;
    }
    this.#leave(run);
    if (run.inQueue && ++this.#dropped > 64 && this.#dropped * 2 > this.#queue.size) {
      this.#queue.filter((queued) => !queued.isFinal);
      this.#dropped = 0;
    }
    // A task that ended while running (cancelled) holds its key until its attempt settles, as it holds its slot.
    if (run.options.limit !== undefined && !run.inSlot) this.#limiter.release(run);
    this.#deps.onTaskEnded?.(run.record);
    run.sequence?.ended(run);
    if (this.#liveCount === 0 && this.#idleWaiters.length > 0) {
      const waiters = this.#idleWaiters;
      this.#idleWaiters = [];
      this.#limiter.keepAlive(false);
      for (const resolve of waiters) resolve();
    }
  }

  /**
   * The write of a run's record has settled. False when it was not waiting for one; else it no longer waits,
   * and with `proceed` it is submitted if it was meanwhile.
   */
  writeSettled(run: TaskRun, proceed: boolean): boolean {
    if (!run.awaitingWrite) return false;
    run.awaitingWrite = false;
    if (proceed && run.submitAfterWrite) this.submit(run);
    return true;
  }

  // Requests whose response closed during this turn of the event loop: their tasks start together at its end
  // (setImmediate), not each between two responses. The HTTP part of bench/ measures ~20% less CPU per
  // request for a traced task so; the likely cause is that the HTTP code and the task code each stay warm.
  #closed: RunSequence[] = [];

  /** A request's response has closed: its after-response tasks start at the end of this turn of the event loop. */
  responseClosed(sequence: RunSequence): void {
    if (this.#closed.push(sequence) === 1) setImmediate(this.#resumeClosed);
  }

  readonly #resumeClosed = (): void => {
    const closed = this.#closed;
    this.#closed = [];
    for (const sequence of closed) {
      try {
        sequence.resume();
      } catch (error) {
        // Nothing in starting a task is expected to throw; one that did must not keep the others waiting.
        this.report('start of after-response tasks', error);
      }
    }
  };

  /** An after-response task joins its request's sequence, which is told when it has ended. */
  sequenced(run: TaskRun, sequence: RunSequence): void {
    run.sequence = sequence;
  }

  #isLive(run: TaskRun): boolean {
    return run.livePrev !== undefined || this.#liveHead === run;
  }

  #leave(run: TaskRun): void {
    if (!this.#isLive(run)) return;
    const { livePrev, liveNext } = run;
    if (livePrev === undefined) this.#liveHead = liveNext;
    else livePrev.liveNext = liveNext;
    if (liveNext === undefined) this.#liveTail = livePrev;
    else liveNext.livePrev = livePrev;
    run.livePrev = run.liveNext = undefined;
    this.#liveCount--;
  }

  /** Write a status change; resolves once it is committed (or, failing that, queued to be written again). */
  recordChanged(record: TaskRecord, awaited = false): Promise<unknown> | undefined {
    if (this.#deps.storeHoldsLiveRecords) return undefined;
    const store = this.#deps.store;
    // A write the task waits for before it runs goes out at the end of this turn, not in the next lazy batch.
    const written = awaited && store[kSaveSoon] !== undefined ? store[kSaveSoon]([record]) : store.save([record]);
    return written.catch((error: unknown) => this.#writeFailed([record], error));
  }

  // Status writes that failed (store down) are retried until they land: a record left `running` under
  // an owner that is alive and renewing its lease would otherwise never end, nor be taken over.
  readonly #unsynced = new Set<TaskRecord>();
  #resyncTimer: NodeJS.Timeout | undefined;

  #writeFailed(records: TaskRecord[], error: unknown): void {
    // Reported once per outage, not once per record.
    if (this.#unsynced.size === 0 && this.#resyncTimer === undefined)
      this.report(`store write of task ${records[0].id} (retried every second until it succeeds)`, error);
    for (const record of records) this.#unsynced.add(record);
    this.#resyncTimer ??= setTimeout(() => void this.resync(), 1_000).unref();
  }

  /** Write the records whose last write failed, in one batch; `last` at shutdown: no more retries. */
  async resync(last = false): Promise<void> {
    clearTimeout(this.#resyncTimer);
    this.#resyncTimer = undefined;
    if (this.#unsynced.size === 0) return;
    const records = [...this.#unsynced];
    this.#unsynced.clear();
    try {
      await this.#deps.store.save(records);
    } catch (error) {
      for (const record of records) this.#unsynced.add(record);
      if (!last) this.#resyncTimer ??= setTimeout(() => void this.resync(), 1_000).unref();
      else this.report(`store write of ${records.length} task record(s) at shutdown`, error);
    }
  }

  /** Hand an unstarted (or interrupted) durable task back to the store for the next start; it ends here. */
  release(run: TaskRun): void {
    const store = this.#deps.store;
    if (store.release !== undefined) {
      store
        .release([run.record])
        .catch((error: unknown) =>
          this.report(`store release of task ${run.id} (it is resumed once its lease expires)`, error),
        );
    }
    this.taskEnded(run);
  }

  /** A copy safe to hand out: args and secret-looking tags redacted, arrays not shared with the live record. */
  snapshot(record: TaskRecord): TaskRecord {
    const args = this.redact(record.args);
    return {
      ...record,
      args: args === record.args ? args.slice() : args,
      tags: { ...this.redact.tags(record.tags) },
      logs: record.logs.slice(),
    };
  }

  /** Resolves when no accepted task is left unfinished. */
  whenIdle(): Promise<void> {
    if (this.#liveCount === 0) return Promise.resolve();
    this.#limiter.keepAlive(true);
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /**
   * Wait for everything up to `timeoutMs`; then abort running unshielded attempts, end every unshielded
   * task still waiting, and wait for the shielded ones to finish.
   */
  async stop(timeoutMs: number): Promise<void> {
    // Durable tasks that are not running go back to the store at once instead of running in the
    // shutdown window: the next start (or another instance) resumes them without waiting for a lease.
    // A delayed task in memory that is not due before the timeout cannot run now: it is cancelled at once
    // rather than holding shutdown for the whole timeout.
    const deadline = Date.now() + timeoutMs;
    this.#holdStarts = true;
    for (const run of this.#liveRuns()) {
      if (run.current !== undefined) continue;
      if (run.recoverable) run.release();
      else if (run.record.attempts === 0 && (run.record.runAt ?? 0) > deadline) run.cancel('cancelled', 'shutdown');
    }
    this.#holdStarts = false;
    this.#fillSlots();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      this.whenIdle().then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(resolve, timeoutMs, true))),
    ]);
    clearTimeout(timer);
    if (!timedOut) return;
    this.stopping = true;
    // Waiting tasks first, so a slot freed by an abort below cannot start one of them.
    const unshielded = this.#liveRuns().filter((run) => !run.options.shield);
    this.#holdStarts = true;
    for (const run of unshielded) {
      if (run.current === undefined) run.cancel(run.record.attempts === 0 ? 'cancelled' : 'interrupted', 'shutdown');
    }
    this.#holdStarts = false;
    this.#fillSlots();
    for (const run of unshielded) run.current?.abort(new TaskInterruptedError('shutdown'));
    await this.whenIdle();
    this.#limiter.clear();
  }

  #start(run: TaskRun): void {
    this.#running++;
    run.inSlot = true;
    if (run.options.limit !== undefined) this.#limiter.started(run);
    void run.runAttempt();
  }

  /** An attempt has ended (or was abandoned): its slot goes to the next queued task. */
  attemptEnded(run: TaskRun): void {
    if (run.inSlot) {
      run.inSlot = false;
      this.#running--;
      // Its key's next task (if any) joins the queue before the freed slot is handed out, by priority.
      if (run.options.limit !== undefined) this.#limiter.release(run);
    }
    this.#fillSlots();
  }

  /** Start queued tasks while slots are free. */
  #fillSlots(): void {
    while (this.#running < this.#deps.concurrency && this.#queue.size > 0) {
      const next = this.#queue.shift()!;
      next.inQueue = false;
      if (next.isFinal) this.#dropped--;
      else this.#scopeOf(next).runInAsyncScope(this.#start, this, next);
    }
  }

  /**
   * Where a task that waited (for a slot, or for its `limit`) starts: its request's async context for an
   * after-response task, else the one the manager was made in. Never that of the code that happens to free the
   * slot, which is the end of another task, often another request's: the app's AsyncLocalStorage stores (a
   * request id a logger reads) would be that request's.
   */
  #scopeOf(run: TaskRun): AsyncResource {
    return run.sequence?.scope ?? this.#scope;
  }
}
