// manager.repeat: one ordinary task run per tick of a schedule (`every` ms or a cron pattern), once per tick
// across the instances sharing a durable store.
import { Cron } from 'croner';
import {
  checkKnownKeys,
  MAX_TIMER_MS,
  numberError,
  optionError,
  validateTaskOptions,
  type TaskOptions,
} from './options.js';
import type { TaskFunction, TaskStore } from './types.js';

/** When `manager.repeat` runs its task: every `every` ms, or on a cron pattern (in time zone `tz`). */
export interface RepeatSchedule {
  /** Milliseconds between ticks, aligned on the epoch (`every: 60_000` ticks on each minute), like BullMQ's `every`. */
  every?: number;
  /** A cron pattern (5 fields, or 6 with seconds first), parsed by croner. */
  cron?: string;
  /** IANA time zone of `cron` (default: the process's). Daylight-saving gaps and repeats follow croner. */
  tz?: string;
}

/** What `manager.repeat` answers. */
export interface Repeating {
  /** No further ticks from this call (a tick already running goes on). Idempotent. */
  stop(): void;
}

/** What a repeat needs from its TaskManager. */
export interface RepeatHost {
  readonly store: TaskStore;
  readonly durable: boolean;
  /** The name a tick of `fn` runs under; throws (naming the option) what an add with `overrides` would. */
  check(where: string, fn: TaskFunction, overrides: TaskOptions): string;
  /** Add one tick's run now; throws what `manager.add` throws. */
  add(where: string, fn: TaskFunction, overrides: TaskOptions): void;
  report(stage: string, error: unknown): void;
}

const WHERE = 'manager.repeat';
const SCHEDULE_KEYS = new Set(['every', 'cron', 'tz']);
/** Set by the repeat on every tick: passing them would break the once-per-tick claim or the schedule. */
const OWN_OPTIONS = ['idempotencyKey', 'startAfter', 'runAt', 'eager'] as const;

/** The tag a repeat's runs carry: what lets a starting instance find the latest tick of its schedule. */
export const REPEAT_TAG = 'repeat';

/** A tick's idempotency key: the same on every instance, so the store lets one of them run it. */
export function repeatKey(name: string, tickAt: number): string {
  return `repeat:${name}:${new Date(tickAt).toISOString()}`;
}

const TICK_IN_KEY = /^repeat:.+:(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)$/;

/** The tick a run belongs to, read back from its idempotency key (so a run resumed after a crash knows it too). */
export function tickOf(idempotencyKey: string | undefined): Date | undefined {
  const match = idempotencyKey === undefined ? null : TICK_IN_KEY.exec(idempotencyKey);
  return match === null ? undefined : new Date(match[1]);
}

/** Tick times of a schedule, in epoch ms: the same on every instance. */
export interface Ticks {
  /** The repeat tag's value: the schedule as written. */
  readonly label: string;
  /** The first tick strictly after `time`, or undefined when the pattern has no more. */
  after(time: number): number | undefined;
  /** The latest tick at or before `time`. */
  atOrBefore(time: number): number | undefined;
}

function everyTicks(every: number): Ticks {
  return {
    label: `every ${every}ms`,
    after: (time) => (Math.floor(time / every) + 1) * every,
    atOrBefore: (time) => Math.floor(time / every) * every,
  };
}

function cronTicks(pattern: string, tz: string | undefined): Ticks {
  let cron: Cron;
  try {
    cron = new Cron(pattern, { timezone: tz, paused: true });
  } catch (error) {
    throw optionError(
      WHERE,
      'cron',
      `a cron pattern croner accepts (${(error as Error).message})`,
      pattern,
      RangeError,
    );
  }
  if (cron.nextRun() === null)
    throw optionError(WHERE, 'cron', 'a cron pattern that matches a time to come', pattern, RangeError);
  return {
    label: tz === undefined ? `cron ${pattern}` : `cron ${pattern} ${tz}`,
    after: (time) => cron.nextRun(new Date(time))?.getTime(),
    // previousRuns looks strictly before its reference: one ms later includes `time` itself.
    atOrBefore: (time) => cron.previousRuns(1, new Date(time + 1))[0]?.getTime(),
  };
}

function scheduleTicks(schedule: unknown): Ticks {
  if (schedule === null || typeof schedule !== 'object' || Array.isArray(schedule))
    throw new TypeError(`${WHERE}: argument "schedule" must be an object ({ every } or { cron, tz? })`);
  checkKnownKeys(WHERE, schedule, SCHEDULE_KEYS);
  const { every, cron, tz } = schedule as RepeatSchedule;
  if ((every === undefined) === (cron === undefined))
    throw new TypeError(`${WHERE}: pass exactly one of options "every" (ms) and "cron" (a pattern)`);
  if (every !== undefined) {
    if (typeof every !== 'number' || !Number.isInteger(every) || every < 1 || every > MAX_TIMER_MS)
      throw numberError(
        WHERE,
        'every',
        `an integer from 1 to ${MAX_TIMER_MS} (milliseconds; for longer periods use "cron")`,
        every,
      );
    if (tz !== undefined)
      throw new TypeError(`${WHERE}: option "tz" applies to "cron" only ("every" ticks are aligned on the epoch)`);
    return everyTicks(every);
  }
  if (typeof cron !== 'string' || cron.trim() === '') throw optionError(WHERE, 'cron', 'a cron pattern string', cron);
  if (tz !== undefined) {
    if (typeof tz !== 'string' || tz === '') throw optionError(WHERE, 'tz', 'an IANA time zone name', tz);
    try {
      new Intl.DateTimeFormat('en-US', { timeZone: tz });
    } catch {
      throw optionError(WHERE, 'tz', 'an IANA time zone name such as "Europe/Paris"', tz, RangeError);
    }
  }
  return cronTicks(cron, tz);
}

/** A repeat checked at the call: the name its ticks run under, its schedule, and its options (with the `repeat` tag). */
export interface CheckedRepeat {
  readonly fn: TaskFunction;
  readonly name: string;
  readonly schedule: RepeatSchedule;
  readonly options: TaskOptions;
}

/** Validates everything at the call, naming the option: what `startRepeat` and an engine's repeat both start from. */
export function checkRepeat(
  host: Pick<RepeatHost, 'check'>,
  fn: unknown,
  schedule: unknown,
  options: unknown,
): CheckedRepeat & { readonly ticks: Ticks } {
  if (typeof fn !== 'function')
    throw new TypeError(`${WHERE}: argument "task" must be a function, got ${fn === null ? 'null' : typeof fn}`);
  const ticks = scheduleTicks(schedule);
  validateTaskOptions(`${WHERE}: options`, options);
  const own = options === undefined ? undefined : OWN_OPTIONS.find((key) => options[key] !== undefined);
  if (own !== undefined)
    throw new TypeError(`${WHERE}: option "${own}" cannot be passed: the repeat sets when each tick runs and its key`);
  if (options?.tags?.[REPEAT_TAG] !== undefined)
    throw new TypeError(`${WHERE}: option "tags.${REPEAT_TAG}" is set by the repeat (to its schedule)`);
  const tags = { ...options?.tags, [REPEAT_TAG]: ticks.label };
  const name = host.check(WHERE, fn as TaskFunction, { ...options, tags });
  return { fn: fn as TaskFunction, name, schedule: schedule as RepeatSchedule, options: { ...options, tags }, ticks };
}

/**
 * Validates everything at the call, then arms the timer. With a durable store it also looks for a missed tick:
 * see `catchUp`.
 */
export function startRepeat(
  host: RepeatHost,
  fn: unknown,
  schedule: unknown,
  options: unknown,
  onStop: (repeat: Repeating) => void,
): Repeating {
  const checked = checkRepeat(host, fn, schedule, options);
  const repeat = new Repeat(host, checked.fn, checked.name, checked.ticks, checked.options, onStop);
  repeat.arm(Date.now());
  if (host.durable) void repeat.catchUp();
  return repeat;
}

class Repeat implements Repeating {
  #timer: NodeJS.Timeout | undefined;
  #due = 0;
  /** The latest tick this repeat added: a catch-up older than it has nothing left to catch up. */
  #added = -Infinity;
  #stopped = false;

  constructor(
    private readonly host: RepeatHost,
    private readonly fn: TaskFunction,
    private readonly name: string,
    private readonly ticks: Ticks,
    private readonly options: TaskOptions,
    private readonly onStop: (repeat: Repeating) => void,
  ) {}

  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.onStop(this);
  }

  /** Waits for the first tick after `time`. */
  arm(time: number): void {
    const due = this.ticks.after(time);
    if (due === undefined) return this.stop();
    this.#due = due;
    this.#wait();
  }

  // Re-checks the clock when the timer fires: a timer may fire a little early, and one wait is at most
  // MAX_TIMER_MS (a yearly cron waits in several). Unref'd: a repeat alone does not keep the process alive.
  #wait(): void {
    if (this.#stopped) return;
    const wait = this.#due - Date.now();
    if (wait > 0) {
      this.#timer = setTimeout(() => this.#wait(), Math.min(wait, MAX_TIMER_MS));
      this.#timer.unref?.();
      return;
    }
    // Late by more than a period (a blocked event loop, a suspended machine): the latest due tick runs, once.
    const tickAt = Math.max(this.#due, this.ticks.atOrBefore(Date.now()) ?? this.#due);
    this.#tick(tickAt);
    this.arm(tickAt);
  }

  #tick(tickAt: number): void {
    this.#added = Math.max(this.#added, tickAt);
    try {
      this.host.add(WHERE, this.fn, { ...this.options, idempotencyKey: repeatKey(this.name, tickAt) });
    } catch (error) {
      // The queue is full or the manager is closing: this tick is skipped, the next one comes as planned.
      this.host.report(`repeat of "${this.name}": the tick of ${new Date(tickAt).toISOString()} was not added`, error);
    }
  }

  /**
   * Ticks missed while every instance was down run once, now: the latest tick at or before now runs when the
   * newest stored run of this repeat (found by its name and `repeat` tag) belongs to an earlier tick. It
   * claims the same key as a timer tick, so instances starting together still run it once. With no stored
   * run at all (a first start, or past the store's retention) nothing is caught up.
   */
  async catchUp(): Promise<void> {
    const now = Date.now();
    const latest = this.ticks.atOrBefore(now);
    if (latest === undefined) return;
    try {
      const [newest] = await this.host.store.list({
        name: this.name,
        tags: { [REPEAT_TAG]: this.ticks.label },
        limit: 1,
      });
      if (newest === undefined || this.#stopped || this.#added >= latest) return;
      const last = tickOf(newest.idempotencyKey)?.getTime() ?? newest.createdAt;
      if (last < latest) this.#tick(latest);
    } catch (error) {
      // Stopped (or shut down) while the store was asked: nothing to report.
      if (!this.#stopped) this.host.report(`repeat of "${this.name}": looking for a missed tick (none is run)`, error);
    }
  }
}
