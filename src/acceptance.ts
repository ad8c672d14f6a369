import { TaskflowError, TaskManagerClosedError, TaskNotFoundError, TaskQueueFullError } from './errors.js';
import { persistedOptions } from './durable.js';
import { followingHandle, follow, handleOf, type FollowSource, type TaskHandle } from './handles.js';
import { newTaskId } from './ids.js';
import { checkCloneable } from './isolate.js';
import { assertPersistable } from './json-check.js';
import { dueTime, type ResolvedTaskOptions, type TaskOptions } from './options.js';
import type { TaskTelemetry } from './otel.js';
import type { TaskRegistry } from './registry.js';
import type { Reporter } from './report.js';
import type { Runner } from './runner.js';
import { pendingRecord, TaskRun } from './task-run.js';
import {
  kLiveRecords,
  type LiveRecords,
  type SaveResult,
  type TaskFunction,
  type TaskRecord,
  type TaskStore,
} from './types.js';

/** claimKey() calls in flight at once, when the store does not claim keys in save(). */
const CLAIMS_IN_FLIGHT = 100;

/** When a task added through `ctx.tasks` runs. */
export type TaskPhase = 'now' | 'afterRoute' | 'afterResponse';

/** The request a task is added in (the scheduler's): it holds the task until its phase, and writes its batch. */
export interface AcceptingRequest {
  /** Set when an add of this request was refused by `maxQueued`: the request answers 503 whatever its handler does. */
  queueFull: TaskQueueFullError | undefined;
  /** A record to write in the request's single batch before the response goes out. */
  unsaved(run: TaskRun): void;
  /** Write the batch so far now: a task that starts before the response waits for its write. */
  writeNow(): void;
  add(run: TaskRun, phase: TaskPhase): void;
}

export interface AcceptanceDeps {
  registry: TaskRegistry;
  runner: Runner;
  telemetry: TaskTelemetry;
  store: TaskStore;
  maxQueued: number;
  reporter: Reporter;
  /** An engine runs the tasks in another process: a task must be registered and its args JSON, as for a durable store. */
  engine: boolean;
  /** The record as `manager.get(id)` answers it (a handle following another task reads it). */
  get(id: string): Promise<TaskRecord | undefined>;
}

/**
 * Taking a task in: validation, the idempotency key, the record and its write-ahead to a durable store.
 * Every add (`ctx.tasks`, `manager.add`, `retry(id)`) goes through `accept`; what it accepts goes to the runner.
 */
export class Acceptance implements FollowSource {
  readonly runner: Runner;
  readonly store: TaskStore;
  readonly #deps: AcceptanceDeps;
  readonly #durable: boolean;
  readonly #live: LiveRecords | undefined;
  readonly #claimsKeysOnSave: boolean;
  // Durable stores: idempotency keys held by live tasks of this process, answered without a store round trip.
  readonly #localKeys = new Map<string, string>();
  closing = false;

  constructor(deps: AcceptanceDeps) {
    this.#deps = deps;
    this.runner = deps.runner;
    this.store = deps.store;
    this.#durable = deps.store.durable === true;
    this.#live = deps.store[kLiveRecords];
    this.#claimsKeysOnSave = deps.store.capabilities?.claimsKeysOnSave === true;
  }

  get(id: string): Promise<TaskRecord | undefined> {
    return this.#deps.get(id);
  }

  /** The name an add of `fn` with `overrides` runs under; throws what such an add would (options, persist). */
  check(where: string, fn: TaskFunction, overrides: TaskOptions | undefined): string {
    const resolved = this.#deps.registry.optionsFor(where, fn, overrides);
    if (this.#durable) this.#checkPersist(where, fn, resolved, []);
    if (this.#deps.engine) this.#checkForEngine(where, fn, resolved, []);
    return resolved.name;
  }

  /** Accept a task: returns the run, or the id of the task holding its idempotency key. */
  accept(
    where: string,
    fn: unknown,
    args: unknown[],
    overrides: TaskOptions | undefined,
    phase: TaskPhase,
    request: AcceptingRequest | undefined,
    retryOf?: string,
  ): TaskRun | string {
    if (this.closing) throw new TaskManagerClosedError();
    if (typeof fn !== 'function')
      throw new TypeError(`${where}: argument "fn" must be a function, got ${fn === null ? 'null' : typeof fn}`);
    const { runner, maxQueued } = this.#deps;
    const live = this.#live;
    const options = this.#deps.registry.optionsFor(where, fn as TaskFunction, overrides);
    const recoverable = this.#durable && this.#checkPersist(where, fn as TaskFunction, options, args);
    if (this.#deps.engine) this.#checkForEngine(where, fn as TaskFunction, options, args);
    if (options.isolate === 'thread') checkCloneable(where, options.name, args);
    // Checked before anything is recorded or claimed: a refused task leaves no trace. (So a duplicate
    // idempotency key is refused too while the queue is full.)
    if (runner.waiting >= maxQueued) {
      const error = new TaskQueueFullError(maxQueued);
      if (request !== undefined) request.queueFull = error;
      throw error;
    }
    const id = newTaskId();
    const key = options.idempotencyKey;
    if (key !== undefined) {
      const holder = live !== undefined ? live.claimKey(key, id) : this.#localKeys.get(key);
      if (holder !== undefined) return holder;
    }
    const requestLink = this.#deps.telemetry.enqueuedFrom(id, options.name);
    const createdAt = Date.now();
    const record = pendingRecord(
      id,
      options,
      args,
      createdAt,
      requestLink,
      retryOf,
      // A delayed first attempt (startAfter/runAt), due from the add; `retry(id)` runs at once.
      retryOf === undefined ? dueTime(options, createdAt) : undefined,
      recoverable ? persistedOptions(overrides) : undefined,
    );
    // Write-ahead: a durable task starts only once its record is committed, so a task whose write failed
    // (503) never runs, and its idempotency key, claimed by that same write, is known before it runs.
    const awaitingWrite = recoverable || (key !== undefined && this.#durable);
    const run = new TaskRun(runner, record, fn as TaskFunction, options, requestLink, recoverable, awaitingWrite);
    const effectivePhase = options.eager ? 'now' : phase;
    if (live !== undefined) {
      // A task an engine runs is read back from the engine (its records), not from this process's store: only
      // a keyed one is held here, as the holder later adds of its key answer. The rest would only age in
      // the history, each record kept past two scavenges for nothing (the bullmq part's web process).
      if (!this.#deps.engine || key !== undefined) live.add(record);
    } else {
      // Later adds with this key in this process get this id without asking the store.
      if (key !== undefined) this.#localKeys.set(key, id);
      if (request !== undefined && (recoverable || !this.#durable)) {
        // Acknowledged with the request: written in its batch before the response (a 503 if that fails).
        // A task that starts before the response cannot wait for the batch: its write goes out now.
        request.unsaved(run);
        if (awaitingWrite && effectivePhase === 'now') request.writeNow();
      } else {
        this.#persistRuns([run], false).catch((error: unknown) =>
          this.#deps.reporter.report(`store write of task ${id}`, error),
        );
      }
    }
    runner.accept(run);
    if (request !== undefined) request.add(run, effectivePhase);
    else runner.submit(run);
    return run;
  }

  /** `manager.retry(id)`: a failed or interrupted registered task runs again as a new task; answers the new id. */
  async retry(id: string): Promise<string> {
    const record = typeof id === 'string' ? await this.store.get(id) : undefined;
    if (record === undefined) throw new TaskNotFoundError(String(id));
    if (record.status !== 'failed' && record.status !== 'interrupted') {
      throw new TaskflowError(
        `retry: task ${id} is ${record.status}; only failed or interrupted tasks can be retried`,
        { code: 'ERR_TASK_NOT_RETRYABLE' },
      );
    }
    const registration = this.#deps.registry.named(record.name);
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
    // `record.id`, not `id`: an alias (an id that lost its idempotency key's claim) retries its holder.
    const result = this.accept('retry', registration.fn, record.args, overrides, 'now', undefined, record.id);
    return typeof result === 'string' ? result : result.id;
  }

  /** The handle of what `accept` answered: the task's own, or one following the holder of its key. */
  handle(runOrId: TaskRun | string, args: unknown[]): TaskHandle {
    return typeof runOrId === 'string' ? followingHandle(this, runOrId, args) : handleOf(runOrId, args);
  }

  /** A request's batch: when the write fails, its tasks are not acknowledged and do not run. */
  persist(runs: TaskRun[]): Promise<void> {
    return this.#persistRuns(runs, true);
  }

  /** A resumed task holds its idempotency key in this process again. */
  holdKey(key: string, id: string): void {
    this.#localKeys.set(key, id);
  }

  /** A task has ended: its key, if it held one here, is the store's to answer again. */
  forgetKey(key: string | undefined, id: string): void {
    if (key !== undefined && this.#localKeys.get(key) === id) this.#localKeys.delete(key);
  }

  async #persistRuns(runs: TaskRun[], acknowledged: boolean): Promise<void> {
    const { store, runner } = this;
    let result: SaveResult;
    let saved = false;
    let claimedHere = false;
    try {
      result = await store.save(runs.length === 1 ? [runs[0].record] : runs.map((run) => run.record));
      saved = true;
      // A store that does not claim keys inside save() (capabilities.claimsKeysOnSave) has its keys claimed
      // now, after the write (a claim weighs the holder by its stored record), before the runs may start.
      if (result === undefined && !this.#claimsKeysOnSave) {
        claimedHere = true;
        result = await this.#claimKeys(runs);
      }
    } catch (error) {
      for (const run of runs) {
        // Added outside a request, nobody can be told: it still runs here (without the store's dedupe).
        if (!runner.writeSettled(run, !acknowledged)) continue;
        // The client gets a 503: the task was never accepted, so it must not run. Not written later,
        // unless the write went through and only the key claim failed: then it is stored cancelled.
        if (acknowledged) run.refuse(saved);
      }
      throw error;
    }
    let losers: TaskRecord[] | undefined;
    for (const run of runs) {
      const holder = result?.get(run.id);
      if (!runner.writeSettled(run, holder === undefined) || holder === undefined) continue;
      this.forgetKey(run.record.idempotencyKey, run.id);
      run.duplicateOf(holder, () => follow(this, holder, run.record));
      if (claimedHere) (losers ??= []).push(run.record);
    }
    // Stored pending before the claim, a loser is stored again as a cancelled duplicate: never resumed.
    if (losers !== undefined)
      await store
        .save(losers)
        .catch((error: unknown) => this.#deps.reporter.report('store write of duplicate tasks', error));
  }

  /** Claims the idempotency keys of the runs waiting for their write; answers the ones that lost → the holder's id. */
  async #claimKeys(runs: TaskRun[]): Promise<Map<string, string> | undefined> {
    let lost: Map<string, string> | undefined;
    const claims: Promise<void>[] = [];
    for (const run of runs) {
      const key = run.record.idempotencyKey;
      if (!run.awaitingWrite || key === undefined) continue;
      claims.push(
        this.#claimKey(key, run.id).then((holder) => {
          if (holder !== undefined && holder !== run.id) (lost ??= new Map()).set(run.id, holder);
        }),
      );
    }
    await Promise.all(claims);
    return lost;
  }

  /** An engine's worker finds the task by its registered name and reads its args as JSON. */
  #checkForEngine(where: string, fn: TaskFunction, options: ResolvedTaskOptions, args: unknown[]): void {
    if (this.#deps.registry.of(fn)?.name !== options.name)
      throw new TypeError(
        `${where}: with option "engine" a task runs in a worker process, which finds it by its registered name: register "${options.name}" with manager.task(fn) in both processes (and do not rename it with option "name")`,
      );
    assertPersistable(where, options.name, args);
  }

  // A bulk add of keyed tasks (one write per task outside requests, or one request's batch) claims at most
  // CLAIMS_IN_FLIGHT keys at a time, not one call per task at once; a call ending hands its slot to the next.
  #claiming = 0;
  readonly #claimQueue: (() => void)[] = [];

  async #claimKey(key: string, id: string): Promise<string | undefined> {
    if (this.#claiming < CLAIMS_IN_FLIGHT) this.#claiming++;
    else await new Promise<void>((resolve) => this.#claimQueue.push(resolve));
    try {
      return await this.store.claimKey(key, id);
    } finally {
      const next = this.#claimQueue.shift();
      if (next !== undefined) next();
      else this.#claiming--;
    }
  }

  /**
   * `persist` (default true with a durable store) needs what a restarted process needs: a task it can find
   * again by name and args it can read back. Returns whether the task is persisted.
   */
  #checkPersist(where: string, fn: TaskFunction, options: ResolvedTaskOptions, args: unknown[]): boolean {
    if (options.persist === false) return false;
    const registration = this.#deps.registry.of(fn);
    if (registration === undefined) {
      throw new TypeError(
        `${where}: option "persist" (on by default with a durable store) needs a registered task, and ` +
          `"${options.name}" is not registered: ` +
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
}
