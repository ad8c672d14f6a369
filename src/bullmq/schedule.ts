import type { JobsOptions, Queue } from 'bullmq';
import type { RepeatSchedule, Repeating } from '../repeat.js';
import type { JobData } from './job.js';

/**
 * `manager.repeat()` on BullMQ: one job scheduler per task name (its id), upserted by every process that
 * calls repeat() (the same id, so the fleet has one schedule, and a changed schedule replaces it). Each tick
 * is a job of the scheduler's template, run by the workers as the task (its task id the job's id). `stop()`
 * removes the scheduler for every process; a process shutting down leaves it.
 */
export class JobScheduleRepeat implements Repeating {
  #stopped = false;
  readonly #upserted: Promise<unknown>;

  constructor(
    private readonly queue: Promise<Queue>,
    private readonly name: string,
    schedule: RepeatSchedule,
    template: { data: JobData; opts: JobsOptions },
    private readonly track: (work: Promise<unknown>) => void,
    private readonly report: (stage: string, error: unknown) => void,
  ) {
    const repeat =
      schedule.every !== undefined
        ? { every: schedule.every }
        : { pattern: schedule.cron, ...(schedule.tz !== undefined && { tz: schedule.tz }) };
    this.#upserted = queue
      .then((q) => q.upsertJobScheduler(name, repeat, { name, data: template.data, opts: template.opts }))
      .catch((error: unknown) => this.report(`repeat of "${name}": the BullMQ job scheduler was not saved`, error));
    this.track(this.#upserted);
  }

  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    const removed = this.#upserted
      .then(() => this.queue)
      .then((q) => q.removeJobScheduler(this.name))
      .catch((error: unknown) =>
        this.report(`repeat of "${this.name}": the BullMQ job scheduler was not removed`, error),
      );
    this.track(removed);
  }
}
