import type { Job } from 'bullmq';
import type { EngineHost } from '../engine.js';
import { TaskStalledError } from '../errors.js';
import { pendingRecord, TaskRun, type RunHost } from '../task-run.js';
import type { Attempt } from '../attempt.js';
import type { LogLevel, TaskRecord, TaskStatus } from '../types.js';
import { fromIds, toIds, type JobData } from './job.js';

/** How one attempt in the worker ended, for BullMQ: done, retry (BullMQ's backoff), failed for good, or handed back. */
export type JobOutcome = 'success' | 'retry' | 'failed' | 'cancelled' | 'handBack';

/**
 * One BullMQ attempt of a task, run by the same TaskRun as in-process attempts (context, span, timeout,
 * signal, taskLog, lifecycle events, metrics), under a host that answers BullMQ instead of retrying itself.
 */
export class JobRun extends TaskRun {
  outcome: JobOutcome | undefined;
  /**
   * Resolves when the attempt has ended as far as BullMQ is concerned: at its end, or when shutdown gave up
   * on it (an attempt without a timeout is abandoned while its body may still run; the job goes back now).
   */
  readonly attemptEnded: Promise<void>;
  endAttempt!: () => void;

  constructor(
    host: RunHost,
    record: TaskRecord,
    fn: TaskRun['fn'],
    options: TaskRun['options'],
    readonly job: Job<JobData>,
  ) {
    super(host, record, fn, options, fromIds(job.data.link), false, false);
    this.previousAttempt = fromIds(job.data.previous);
    this.attemptEnded = new Promise((resolve) => (this.endAttempt = resolve));
  }

  /** Its `running` is written to the job (the attempt's span ids) before the body runs: a stall's next attempt links to it. */
  override get confirmsStart(): boolean {
    return true;
  }

  override log(attempt: Attempt, level: LogLevel, message: string, fields: Record<string, unknown> | undefined): void {
    super.log(attempt, level, message, fields);
    const safe = fields === undefined ? '' : ` ${JSON.stringify(this.runner.redact(fields))}`;
    this.job
      .log(`[${level}] ${message}${safe}`)
      .catch((error: unknown) => this.runner.report(`job.log of task ${this.id}`, error));
  }

  /** taskProgress() as BullMQ's job progress, throttled as for spans and observers: the value, or `{ value, ...fields }`. */
  protected override progressEmitted(value: number, fields: Record<string, unknown> | undefined): void {
    this.job
      .updateProgress(fields === undefined ? value : { ...fields, value })
      .catch((error: unknown) => this.runner.report(`job.updateProgress of task ${this.id}`, error));
  }
}

/** The RunHost of job attempts: status changes go to the job, and an outcome is noted for the processor. */
export class JobHost implements RunHost {
  readonly telemetry: RunHost['telemetry'];
  readonly chain: RunHost['chain'];
  readonly redact: RunHost['redact'];
  stopping = false;
  readonly #host: EngineHost;

  constructor(host: EngineHost) {
    this.#host = host;
    this.telemetry = host.runHost.telemetry;
    this.chain = host.runHost.chain;
    this.redact = host.runHost.redact;
  }

  report(stage: string, error: unknown): void {
    this.#host.runHost.report(stage, error);
  }

  snapshot(record: TaskRecord): TaskRecord {
    return this.#host.runHost.snapshot(record);
  }

  /** The runs of the jobs active in this worker, by record: a status change finds its job. */
  readonly active = new Map<TaskRecord, JobRun>();

  recordChanged(record: TaskRecord): Promise<unknown> | undefined {
    if (record.status !== 'running') return undefined;
    const run = this.active.get(record);
    return run && this.#recordStart(run).catch((error: unknown) => this.report(`job update of task ${run.id}`, error));
  }

  retryLater(run: TaskRun): void {
    (run as JobRun).outcome = 'retry';
  }

  attemptEnded(run: TaskRun): void {
    (run as JobRun).endAttempt();
  }

  taskEnded(run: TaskRun): void {
    const status: TaskStatus = run.record.status;
    (run as JobRun).outcome =
      status === 'success'
        ? 'success'
        : status === 'interrupted'
          ? 'handBack'
          : status === 'cancelled'
            ? 'cancelled'
            : 'failed';
  }

  release(run: TaskRun): void {
    (run as JobRun).outcome = 'handBack';
  }

  /**
   * The attempt of `job` that BullMQ gives this worker: `attemptsStarted` numbers it (stalls included), and
   * starts that failed nothing (a stall, a hand-back at shutdown) use up no retry, as in-process.
   */
  runOf(job: Job<JobData>): JobRun | undefined {
    const registration = this.#host.registry.named(job.name);
    if (registration === undefined) return undefined;
    const data = job.data;
    const options = this.#host.registry.optionsFor('worker', registration.fn, data.options);
    const started = Math.max(1, job.attemptsStarted);
    const freeStarts = Math.max(0, started - 1 - job.attemptsMade);
    // A repeat's tick (a job of its scheduler's template) is the task whose id is the job's.
    const record = pendingRecord(
      data.id === '' ? job.id! : data.id,
      options,
      data.args,
      data.id === '' ? job.timestamp : data.createdAt,
      fromIds(data.link),
      undefined,
      undefined,
      undefined,
    );
    record.attempts = started - 1;
    // Starts that failed nothing (a stall, a hand-back at shutdown) use up no retry.
    record.maxAttempts += freeStarts;
    const run = new JobRun(this, record, registration.fn, options, job);
    this.active.set(record, run);
    return run;
  }

  /** Past its `maxStalls` (BullMQ's `stalledCounter`), the task ends `failed` with TaskStalledError without running. */
  stalledOut(run: JobRun): TaskStalledError | undefined {
    const stalls = run.job.stalledCounter;
    if (stalls <= run.options.maxStalls) return undefined;
    const error = new TaskStalledError(stalls, run.options.maxStalls);
    run.failStalled(error);
    return error;
  }

  /** The attempt's span ids, written to the job before its body runs. */
  async #recordStart(run: JobRun): Promise<void> {
    const ids = toIds(run.previousAttempt);
    if (ids === undefined || ids[1] === run.job.data.previous?.[1]) return;
    await run.job.updateData({ ...run.job.data, previous: ids });
  }
}
