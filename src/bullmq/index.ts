/**
 * `koa-taskflow/bullmq`: BullMQ as the engine behind a TaskManager. Web processes enqueue (one job per task);
 * `manager.work()` processes run the same registered tasks from the queue, each BullMQ attempt as one of our
 * attempts (span, links, taskLog, metrics). See docs/bullmq.md.
 */
import { setImmediate as afterThisTurn } from 'node:timers';
import type { ConnectionOptions, FlowJob, FlowProducer, Job, JobsOptions, Queue, Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { DEFAULT_CANCEL_REASON } from '../cancellation.js';
import { kEngine, type EngineHooks, type EngineHost, type TaskEngine } from '../engine.js';
import { TaskflowError, TaskInterruptedError } from '../errors.js';
import {
  checkKnownKeys,
  numberError,
  optionError,
  retryDelay,
  type ResolvedTaskOptions,
  type TaskOptions,
} from '../options.js';
import type { Repeating, RepeatSchedule } from '../repeat.js';
import type { TaskRun } from '../task-run.js';
import { CancelChannel } from './cancel.js';
import { FleetEvents } from './events.js';
import { JobHost, type JobRun } from './job-run.js';
import { BACKOFF_TYPE, jobOf, jobRunOptions, jobShape, jobTaskOptions, type JobData, type JobShape } from './job.js';
import { FleetLimits, LIMIT_PARK } from './limit.js';
import { BullmqRecords, jobFailure, redisOf } from './records.js';
import { JobScheduleRepeat } from './schedule.js';

export type { TaskEngine };

export interface BullmqEngineOptions {
  /** BullMQ's `connection`: ioredis options (`{ host, port }`) or an ioredis instance (with `maxRetriesPerRequest: null` for workers). */
  connection: ConnectionOptions;
  /** The queue's name. Default `'tasks'`. */
  queue?: string;
  /** BullMQ's key prefix. Default BullMQ's (`'bull'`). */
  prefix?: string;
  /** Run tasks in this process from `manager.start()` on, as `manager.work()` does. Default `false`: enqueue only. */
  work?: boolean;
  /** Jobs one worker process runs at once. Default 16 (the TaskManager's `concurrency` default). */
  concurrency?: number;
  /**
   * How many times a job may stall (its worker died or blocked past `lockDurationMs`) before BullMQ fails
   * it: BullMQ's `maxStalledCount`. A task's own `maxStalls` (default 1) is checked too, the lower wins.
   * Default 1.
   */
  maxStalledCount?: number;
  /** BullMQ's `stalledInterval`: how often a worker looks for stalled jobs. Default 30 000 ms. */
  stalledIntervalMs?: number;
  /** BullMQ's `lockDuration`: a job whose worker stops renewing its lock for this long is stalled. Default 30 000 ms. */
  lockDurationMs?: number;
  /** BullMQ's `removeOnComplete`. Default: keep 7 days, at most 10 000 (the durable stores' `retentionDays`). */
  removeOnComplete?: JobsOptions['removeOnComplete'];
  /** BullMQ's `removeOnFail`. Default: keep 7 days. */
  removeOnFail?: JobsOptions['removeOnFail'];
}

const WEEK_S = 7 * 24 * 3600;
const HANDED = 'handed to BullMQ';
const ENGINE_OPTIONS = new Set([
  'connection',
  'queue',
  'prefix',
  'work',
  'concurrency',
  'maxStalledCount',
  'stalledIntervalMs',
  'lockDurationMs',
  'removeOnComplete',
  'removeOnFail',
]);

type BullMQ = typeof import('bullmq');
let loading: Promise<BullMQ> | undefined;

/** bullmq is an optional peer dependency: loaded when first needed, with a clear error when it is missing. */
function loadBullMQ(): Promise<BullMQ> {
  return (loading ??= import('bullmq').catch((cause: unknown) => {
    loading = undefined;
    throw new TaskflowError(
      'koa-taskflow/bullmq needs the "bullmq" package: npm install bullmq (an optional peer dependency, >= 5)',
      { code: 'ERR_BULLMQ_MISSING', cause },
    );
  }));
}

function checkOptions(options: BullmqEngineOptions): void {
  const where = 'bullmqEngine';
  if (options === null || typeof options !== 'object') throw new TypeError(`${where}: options must be an object`);
  checkKnownKeys(where, options, ENGINE_OPTIONS);
  if (options.connection === null || typeof options.connection !== 'object')
    throw new TypeError(
      `${where}: option "connection" is required: ioredis options ({ host, port }) or an ioredis instance`,
    );
  if (
    options.queue !== undefined &&
    (typeof options.queue !== 'string' || options.queue === '' || options.queue.includes(':'))
  )
    throw optionError(where, 'queue', 'a non-empty string without ":"', options.queue);
  if (options.work !== undefined && typeof options.work !== 'boolean')
    throw optionError(where, 'work', 'a boolean', options.work);
  for (const key of ['concurrency', 'maxStalledCount', 'stalledIntervalMs', 'lockDurationMs'] as const) {
    const value = options[key];
    if (value !== undefined && (!Number.isInteger(value) || value < (key === 'maxStalledCount' ? 0 : 1)))
      throw numberError(where, key, `an integer >= ${key === 'maxStalledCount' ? 0 : 1}`, value);
  }
}

/** How long index entries are kept: as long as BullMQ keeps the longer-lived of completed and failed jobs. */
function retentionMs(keep: Pick<JobsOptions, 'removeOnComplete' | 'removeOnFail'>): number {
  const ageOf = (option: JobsOptions['removeOnComplete']): number =>
    option === true
      ? 0
      : typeof option === 'object' && 'age' in option && option.age !== undefined
        ? option.age * 1000
        : WEEK_S * 1000;
  return Math.max(ageOf(keep.removeOnComplete), ageOf(keep.removeOnFail));
}

/**
 * `queue.add` without BullMQ's telemetry wrapper, which our queue never has a `telemetry` for (our spans
 * replace it): `add` runs `addJob` inside two more async functions and builds a span name it does not use,
 * per job. BullMQ documents `addJob` as that telemetry-free add, for subclasses; a BullMQ without it gets `add`.
 */
function telemetryFreeAdd(queue: Queue): Queue['add'] {
  const addJob = (queue as unknown as { addJob?: Queue['add'] }).addJob;
  return typeof addJob === 'function' ? addJob.bind(queue) : queue.add.bind(queue);
}

/** BullMQ as the engine of a TaskManager: `new TaskManager({ engine: bullmqEngine({ connection }) })`. */
export function bullmqEngine(options: BullmqEngineOptions): TaskEngine {
  checkOptions(options);
  return { kind: 'bullmq', [kEngine]: new BullmqEngine(options) };
}

class BullmqEngine implements EngineHooks {
  readonly #options: BullmqEngineOptions;
  readonly #name: string;
  readonly #keep: Pick<JobsOptions, 'removeOnComplete' | 'removeOnFail'>;
  #host: EngineHost | undefined;
  #jobs: JobHost | undefined;
  #queue: Promise<Queue> | undefined;
  /** The made queue's add, as `telemetryFreeAdd` answers it. */
  #addTo: Queue['add'] | undefined;
  /** The queue's Redis connection, once made: the adds of one event-loop turn are written to it together. */
  #client: Redis | undefined;
  #corked = false;
  #worker: Worker | undefined;
  #flow: Promise<FlowProducer> | undefined;
  readonly #chains = new Map<object, TaskRun[]>();
  /** The job shape of each registration's own resolved options, built on its first add. */
  readonly #shapes = new WeakMap<ResolvedTaskOptions, JobShape>();
  readonly #adding = new Set<Promise<unknown>>();
  #cancels: CancelChannel | undefined;
  #limits: FleetLimits | undefined;
  readonly #events: FleetEvents;
  /** The manager's reads and the admin over BullMQ's jobs (see records.ts). */
  readonly records: BullmqRecords;

  constructor(options: BullmqEngineOptions) {
    this.#options = options;
    this.#name = options.queue ?? 'tasks';
    this.#keep = {
      removeOnComplete: options.removeOnComplete ?? { age: WEEK_S, count: 10_000 },
      removeOnFail: options.removeOnFail ?? { age: WEEK_S },
    };
    const report = (stage: string, error: unknown) => this.#host?.reporter.report(stage, error);
    this.#events = new FleetEvents({
      connection: options.connection,
      name: this.#name,
      prefix: options.prefix,
      queue: () => this.#queueNow(),
      loadQueueEvents: () => loadBullMQ().then((bullmq) => bullmq.QueueEvents),
      redact: () => this.#host?.runHost.redact,
      report,
    });
    this.records = new BullmqRecords({
      queue: () => this.#queueNow(),
      retentionMs: retentionMs(this.#keep),
      report,
      subscribe: (observer) => this.#events.subscribe(observer),
    });
  }

  bind(host: EngineHost): void {
    if (this.#host !== undefined)
      throw new TypeError(
        'new TaskManager: option "engine" is already the engine of another TaskManager; make one per manager',
      );
    this.#host = host;
    const base = `${this.#options.prefix ?? 'bull'}:${this.#name}`;
    this.#cancels = new CancelChannel(base, host);
    this.#limits = new FleetLimits(base, this.#options.lockDurationMs ?? 30_000, (stage, error) =>
      host.reporter.report(stage, error),
    );
  }

  #queueNow(): Promise<Queue> {
    return (this.#queue ??= loadBullMQ().then(({ Queue }) => {
      const queue = new Queue(this.#name, { connection: this.#options.connection, prefix: this.#options.prefix });
      // A connection that fails is reported by the queue's own calls; until then adds are written one by one.
      redisOf(queue).then(
        (client) => (this.#client = client),
        () => {},
      );
      this.#addTo = telemetryFreeAdd(queue);
      return queue;
    }));
  }

  /**
   * The adds of one event-loop turn leave for Redis in one socket write: the connection's socket is corked at
   * the turn's first add and uncorked once the turn's I/O callbacks have run. A loaded web process serves
   * many requests a turn (all 10 connections' in the benchmark), and each add written alone cost a syscall
   * and its loopback delivery in this process, and a read of its own in Redis: written together, a request
   * costs ~0.87× the CPU it did (paired bursts). The adds stay BullMQ's own, one job and one reply each.
   */
  #coalesce(): void {
    const client = this.#client;
    if (this.#corked || client === undefined || client.status !== 'ready') return;
    // An ioredis Cluster has no one socket (`stream`): its adds go out as they come.
    const stream = client.stream as Redis['stream'] | undefined;
    if (typeof stream?.cork !== 'function') return;
    this.#corked = true;
    stream.cork();
    // node:timers' own binding, not the global: an app's tests that fake the global setImmediate would
    // otherwise hold every add in the socket until they advance their clock.
    afterThisTurn(() => {
      this.#corked = false;
      stream.uncork();
    });
  }

  /** The job of `run`: its registration's shape unless it was added with options of its own. */
  #jobOf(run: TaskRun): ReturnType<typeof jobOf> {
    const resolved = run.options;
    let shape = this.#shapes.get(resolved);
    if (shape === undefined) {
      const registered = this.#host!.registry.named(run.name)?.resolved === resolved;
      shape = jobShape(resolved, registered, this.#keep);
      if (registered) this.#shapes.set(resolved, shape);
    }
    return jobOf(run, shape);
  }

  /** Add one job: straight to the queue once it is made (no promise hop per task on the hot path). */
  #add(run: TaskRun): Promise<unknown> {
    const { data, opts } = this.#jobOf(run);
    const add = this.#addTo;
    this.#coalesce();
    return add !== undefined
      ? add(run.name, data, opts)
      : this.#queueNow().then(() => this.#addTo!(run.name, data, opts));
  }

  async start(): Promise<void> {
    await this.#queueNow();
    if (this.#options.work === true) await this.work();
  }

  dispatch(run: TaskRun): void {
    // A request's after-response tasks run one after another, in the order added, on whichever workers: they
    // go to BullMQ together as one chain (see #chain). The request's sequence hands them over in one turn,
    // as each ends here the moment it is handed.
    const sequence = run.sequence;
    if (sequence !== undefined && run.record.runAt === undefined && run.options.idempotencyKey === undefined) {
      let chain = this.#chains.get(sequence);
      if (chain === undefined) {
        this.#chains.set(sequence, (chain = []));
        queueMicrotask(() => this.#addChain(sequence));
      }
      chain.push(run);
      run.release(HANDED);
      return;
    }
    this.records.index(run);
    // The task stays unfinished here (drain() waits for it) until BullMQ has it: its add failing cancels it.
    this.#add(run).then(
      // Cancelled here while BullMQ took it: cancelled there too.
      () => (run.isFinal ? this.#track(this.#cancelNow(run.id, run.record.reason)) : run.release(HANDED)),
      (error: unknown) => {
        this.#host?.reporter.report(`BullMQ add of task ${run.id}`, error);
        run.cancel('cancelled', 'engine_unavailable', error instanceof Error ? error : undefined);
      },
    );
  }

  /**
   * One request's after-response tasks: one job alone, or a BullMQ flow where each task is the parent of the
   * one added before it, so BullMQ starts it only once that one has ended (`ignoreDependencyOnFailure`: a
   * task that finally failed does not hold the next back, as in-process).
   */
  #addChain(sequence: object): void {
    const runs = this.#chains.get(sequence)!;
    this.#chains.delete(sequence);
    for (const run of runs) this.records.index(run);
    let added: Promise<unknown>;
    if (runs.length === 1) added = this.#add(runs[0]);
    else {
      let node: FlowJob | undefined;
      for (const run of runs) {
        const { data, opts } = this.#jobOf(run);
        if (node !== undefined) node.opts = { ...node.opts, ignoreDependencyOnFailure: true };
        node = {
          name: run.name,
          queueName: this.#name,
          prefix: this.#options.prefix,
          data,
          opts,
          ...(node && { children: [node] }),
        };
      }
      added = this.#flowNow().then((flow) => flow.add(node!));
    }
    this.#track(
      added.catch((error: unknown) =>
        this.#host?.reporter.report(`BullMQ add of tasks ${runs.map((run) => run.id).join(', ')}`, error),
      ),
    );
  }

  /** Work on BullMQ that `settled()` (drain, shutdown) waits for; `work` never rejects. */
  #track(work: Promise<unknown>): void {
    this.#adding.add(work);
    void work.then(() => this.#adding.delete(work));
  }

  async cancel(id: string, reason = DEFAULT_CANCEL_REASON): Promise<boolean> {
    // A request's chain handed over a moment ago may not be in BullMQ yet.
    await this.settled();
    return this.#cancelNow(id, reason);
  }

  async #cancelNow(id: string, reason = DEFAULT_CANCEL_REASON): Promise<boolean> {
    return this.#cancels!.cancel(await this.#queueNow(), id, reason).catch((error: unknown) => {
      this.#host?.reporter.report(`BullMQ cancel of task ${id}`, error);
      return false;
    });
  }

  repeat(name: string, schedule: RepeatSchedule, options: TaskOptions): Repeating {
    const host = this.#host!;
    const registration = host.registry.named(name)!;
    const resolved = host.registry.optionsFor('manager.repeat', registration.fn, options);
    // A tick's job has no task id of its own: the worker gives it the job's id (`repeat:<name>:<tick ms>`).
    const data: JobData = { id: '', args: [], options: jobTaskOptions(resolved), createdAt: 0 };
    return new JobScheduleRepeat(
      this.#queueNow(),
      name,
      schedule,
      { data, opts: jobRunOptions(resolved, this.#keep) },
      (work) => this.#track(work),
      (stage, error) => host.reporter.report(stage, error),
    );
  }

  /** Resolves once every chain handed over so far is in BullMQ (or was reported failing). */
  async settled(): Promise<void> {
    while (this.#adding.size > 0) await Promise.all(this.#adding);
    await this.records.settled();
  }

  #flowNow(): Promise<FlowProducer> {
    return (this.#flow ??= loadBullMQ().then(
      ({ FlowProducer }) => new FlowProducer({ connection: this.#options.connection, prefix: this.#options.prefix }),
    ));
  }

  async work(): Promise<void> {
    if (this.#worker !== undefined) return;
    const host = this.#host;
    if (host === undefined) throw new TypeError('work(): the engine is not the engine of a TaskManager');
    const { Worker } = await loadBullMQ();
    const jobs = (this.#jobs = new JobHost(host));
    // Subscribed before the worker takes a job: a cancel of a job it runs cannot be missed.
    await this.#cancels!.subscribe(await this.#queueNow(), (id, reason) => {
      for (const run of jobs.active.values()) if (run.id === id) return run.cancelRequested(reason) || true;
      return false;
    });
    const o = this.#options;
    this.#worker = new Worker<JobData>(this.#name, (job, token) => this.#process(jobs, job, token), {
      connection: o.connection,
      prefix: o.prefix,
      concurrency: o.concurrency ?? 16,
      maxStalledCount: o.maxStalledCount ?? 1,
      // BullMQ's defaults hold unless set (an explicit `undefined` would replace them).
      ...(o.stalledIntervalMs !== undefined && { stalledInterval: o.stalledIntervalMs }),
      ...(o.lockDurationMs !== undefined && { lockDuration: o.lockDurationMs }),
      settings: {
        // Our retry waits (delay, backoff, maxDelay, jitter) as BullMQ's backoff, from the task's options.
        backoffStrategy: (attemptsMade, type, _error, job) => {
          if (type !== BACKOFF_TYPE || job === undefined) return 0;
          const registration = host.registry.named(job.name);
          if (registration === undefined) return 0;
          return retryDelay(
            host.registry.optionsFor('worker', registration.fn, (job.data as JobData).options),
            attemptsMade,
          );
        },
      },
    });
    this.#worker.on('error', (error) => host.reporter.report('BullMQ worker', error));
  }

  async #process(jobs: JobHost, job: Job<JobData>, token: string | undefined): Promise<void> {
    const { UnrecoverableError, DelayedError } = await loadBullMQ();
    const run = jobs.runOf(job);
    if (run === undefined)
      throw new UnrecoverableError(
        `no task is registered under "${job.name}" in this worker; register it with manager.task()`,
      );
    let holds = false;
    try {
      const stalled = jobs.stalledOut(run);
      if (stalled !== undefined) throw jobFailure({ type: stalled.name, message: stalled.message }, UnrecoverableError);
      const cancelled = this.#cancels!.pending(await this.#queueNow(), job, run.id);
      if (cancelled !== undefined) run.cancelRequested(cancelled);
      else if (run.options.limit !== undefined) {
        const limits = this.#limits!;
        const queue = await this.#queueNow();
        const answer = await limits.acquire(queue, run, job.id!, run.options.limit);
        holds = answer === 0;
        // Over its key's limit: back to BullMQ delayed, using up no retry (unless cancelled meanwhile); over
        // the concurrency it parks until an attempt of its key ends, over the rate until the window opens.
        if (!holds && !run.isFinal) {
          await job.moveToDelayed(Date.now() + (answer === LIMIT_PARK ? limits.parkMs : answer), token);
          if (answer === LIMIT_PARK) await limits.park(queue, run, job.id!, run.options.limit);
          throw new DelayedError();
        }
      }
      if (!run.isFinal) {
        void run.runAttempt();
        await run.attemptEnded;
      }
      const error = run.record.error;
      switch (run.outcome) {
        case 'success':
          return;
        case 'retry':
          throw jobFailure(error);
        case 'handBack':
          // Interrupted by shutdown: back to the queue as it was, no retry used (requeueOnInterrupt false: failed).
          if (!run.options.requeueOnInterrupt) throw jobFailure(error, UnrecoverableError);
          await job.moveToDelayed(Date.now(), token);
          throw new DelayedError();
        default:
          throw jobFailure(error, UnrecoverableError);
      }
    } finally {
      jobs.active.delete(run.record);
      if (holds) await this.#release(run, job.id!);
    }
  }

  async #release(run: JobRun, jobId: string): Promise<void> {
    await this.#limits!.release(await this.#queueNow(), run, jobId).catch((error: unknown) =>
      this.#host?.reporter.report(`limit release of task ${run.id}`, error),
    );
  }

  async close(timeoutMs: number): Promise<void> {
    const worker = this.#worker;
    const jobs = this.#jobs;
    if (worker !== undefined && jobs !== undefined) {
      // Like the runner's stop: running attempts get `timeoutMs`, then unshielded ones are aborted (handed back).
      const closed = worker.close();
      let timer: NodeJS.Timeout | undefined;
      const timedOut = await Promise.race([
        closed.then(() => false),
        new Promise<boolean>((resolve) => (timer = setTimeout(resolve, timeoutMs, true))),
      ]);
      clearTimeout(timer);
      if (timedOut) {
        jobs.stopping = true;
        for (const run of jobs.active.values())
          if (!run.options.shield) run.current?.abort(new TaskInterruptedError('shutdown'));
        await closed;
      }
    }
    await this.#cancels?.close();
    await this.settled();
    await this.#events.close();
    await (await this.#flow)?.close();
    await (await this.#queue)?.close();
  }
}
