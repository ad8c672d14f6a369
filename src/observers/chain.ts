import { kWriteLog, type WriteLog } from './pino.js';
import type {
  LifecycleEvent,
  LogEvent,
  LogLevel,
  ObserverMetrics,
  ProgressEvent,
  TaskEvent,
  TaskObserver,
  TaskStatus,
} from '../types.js';

type Stage = 'onLog' | 'onLifecycle' | 'onProgress';
type Report = (observer: TaskObserver, stage: string, error: unknown) => void;
/** Told once per observer, at its first dropped event. */
type ReportDrop = (label: string, why: string) => void;

export const DEFAULT_OBSERVER_TIMEOUT_MS = 5_000;
export const DEFAULT_OBSERVER_MAX_IN_FLIGHT = 1_000;

export interface ObserverLimits {
  /** A call whose promise has not settled after this long counts as a dropped event. */
  timeoutMs: number;
  /** Calls of one observer whose promises have not settled; past it, its events are dropped. */
  maxInFlight: number;
}

/** An observer in the chain, with what is known of its asynchronous calls. */
interface Entry {
  readonly observer: TaskObserver;
  readonly label: string;
  /** Calls that returned a promise not settled yet. Synchronous observers stay at 0 and pay nothing more. */
  inFlight: number;
  dropReported: boolean;
}

/** A pinoObserver, which can write a task's log line without a LogEvent. */
type PinoWriter = TaskObserver & { [kWriteLog]?: WriteLog };

/** How an observer is named in `metrics().observers` and in the drop report. */
function labelOf(observer: TaskObserver): string {
  if (typeof observer.name === 'string' && observer.name !== '') return observer.name;
  const constructorName = (observer.constructor as { name?: unknown } | undefined)?.name;
  return typeof constructorName === 'string' && constructorName !== '' && constructorName !== 'Object'
    ? constructorName
    : 'anonymous';
}

/**
 * Calls observers in order without ever waiting for them: a throwing, rejecting or hanging observer
 * cannot delay a task, another observer or a response. Each observer's first failure is reported once.
 *
 * Memory is bounded too: an observer's calls that returned a promise stay counted until it settles. At
 * `maxInFlight` of them its next events are dropped (not handed to it, so it cannot keep them), and a call
 * not settled after `timeoutMs` counts as a dropped event. Drops are counted per observer; the first one
 * is reported once.
 */
export class ObserverChain {
  #observers: readonly TaskObserver[];
  #logObservers: Entry[] = [];
  #lifecycleObservers: Entry[] = [];
  #progressObservers: Entry[] = [];
  // An observer keeps its entry (and its calls in flight) across subscribe/unsubscribe re-indexing.
  readonly #entries = new WeakMap<TaskObserver, Entry>();
  readonly #reported = new WeakSet<TaskObserver>();
  readonly #limits: ObserverLimits;
  readonly #dropped = new Map<string, number>();
  #droppedTotal = 0;
  /** False when nobody handles log events: callers skip building them. */
  hasLog = false;
  hasLifecycle = false;
  hasProgress = false;
  /**
   * Set when the one log observer is a pinoObserver (a manager's `logger` and no other): callers write its line
   * with `writeLog` from the attempt's parts instead of building a LogEvent for it.
   */
  writesLogDirectly = false;
  #writeLog: WriteLog | undefined;

  constructor(
    observers: readonly TaskObserver[],
    readonly report: Report,
    readonly reportDrop: ReportDrop = () => {},
    limits: Partial<ObserverLimits> = {},
  ) {
    this.#observers = observers;
    this.#limits = {
      timeoutMs: limits.timeoutMs ?? DEFAULT_OBSERVER_TIMEOUT_MS,
      maxInFlight: limits.maxInFlight ?? DEFAULT_OBSERVER_MAX_IN_FLIGHT,
    };
    this.#index();
  }

  get observers(): readonly TaskObserver[] {
    return this.#observers;
  }

  /** Append an observer at run time (the admin's event stream does); returns its removal. */
  subscribe(observer: TaskObserver): () => void {
    this.#observers = [...this.#observers, observer];
    this.#index();
    return () => {
      this.#observers = this.#observers.filter((o) => o !== observer);
      this.#index();
    };
  }

  #index(): void {
    const entries = this.#observers.map((observer) => {
      let entry = this.#entries.get(observer);
      if (entry === undefined)
        this.#entries.set(observer, (entry = { observer, label: labelOf(observer), inFlight: 0, dropReported: false }));
      return entry;
    });
    this.#logObservers = entries.filter((e) => typeof e.observer.onLog === 'function');
    this.#lifecycleObservers = entries.filter((e) => typeof e.observer.onLifecycle === 'function');
    this.hasLog = this.#logObservers.length > 0;
    const only = this.#logObservers.length === 1 ? (this.#logObservers[0].observer as PinoWriter) : undefined;
    this.#writeLog = typeof only?.[kWriteLog] === 'function' ? only[kWriteLog] : undefined;
    this.writesLogDirectly = this.#writeLog !== undefined;
    this.hasLifecycle = this.#lifecycleObservers.length > 0;
    this.#progressObservers = entries.filter((e) => typeof e.observer.onProgress === 'function');
    this.hasProgress = this.#progressObservers.length > 0;
  }

  emitLog(event: LogEvent): void {
    this.#emit(this.#logObservers, 'onLog', event);
  }

  /**
   * The line `emitLog` would have the one log observer (a pinoObserver) write, from the attempt's parts; for
   * callers that saw `writesLogDirectly` and `wantsLog(level)`. A throw is reported as its `onLog`'s would be.
   */
  readonly writeLog: WriteLog = (level, message, fields, record, attempt, tags, spanContext) => {
    try {
      this.#writeLog!(level, message, fields, record, attempt, tags, spanContext);
    } catch (error) {
      this.#fail(this.#logObservers[0].observer, 'onLog', error);
    }
  };

  emitProgress(event: ProgressEvent): void {
    this.#emit(this.#progressObservers, 'onProgress', event);
  }

  #emit(entries: readonly Entry[], stage: Stage, event: TaskEvent): void {
    const max = this.#limits.maxInFlight;
    for (const entry of entries) {
      if (entry.inFlight >= max) this.#drop(entry, `${max} calls in flight (option "observerMaxInFlight")`);
      else this.#call(entry, stage, event);
    }
  }

  /** Whether some observer would use a lifecycle event with this status: callers skip building it otherwise. */
  wantsLifecycle(status: TaskStatus, retrying: boolean): boolean {
    for (const { observer } of this.#lifecycleObservers) {
      if (typeof observer.wantsLifecycle !== 'function') return true;
      try {
        if (observer.wantsLifecycle(status, retrying)) return true;
      } catch (error) {
        this.#fail(observer, 'wantsLifecycle', error);
        return true;
      }
    }
    return false;
  }

  /** Whether some observer would use a log event at this level: callers skip building it otherwise. */
  wantsLog(level: LogLevel): boolean {
    for (const { observer } of this.#logObservers) {
      if (typeof observer.wantsLog !== 'function') return true;
      try {
        if (observer.wantsLog(level)) return true;
      } catch (error) {
        this.#fail(observer, 'wantsLog', error);
        return true;
      }
    }
    return false;
  }

  emitLifecycle(event: LifecycleEvent): void {
    this.#emit(this.#lifecycleObservers, 'onLifecycle', event);
  }

  /** Events dropped since the chain was made, in all and per observer label. */
  metrics(): ObserverMetrics {
    return { dropped: this.#droppedTotal, byObserver: Object.fromEntries(this.#dropped) };
  }

  /** Start every observer; a failing one is reported and the rest still start. */
  async startup(timeoutMs: number): Promise<void> {
    await this.#all('startup', timeoutMs);
  }

  /** Close every observer, waiting at most `timeoutMs` for slow ones. */
  async close(timeoutMs: number): Promise<void> {
    await this.#all('close', timeoutMs);
  }

  async #all(stage: 'startup' | 'close', timeoutMs: number): Promise<void> {
    const pending: Promise<unknown>[] = [];
    for (const observer of this.observers) {
      if (typeof observer[stage] !== 'function') continue;
      pending.push(
        Promise.resolve()
          .then(() => observer[stage]!())
          .catch((error: unknown) => this.#fail(observer, stage, error)),
      );
    }
    if (pending.length === 0) return;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs);
      timer.unref();
    });
    await Promise.race([Promise.all(pending), timeout]);
    clearTimeout(timer);
  }

  #call(entry: Entry, stage: Stage, event: TaskEvent): void {
    const observer = entry.observer;
    try {
      const result =
        stage === 'onLog'
          ? observer.onLog!(event as LogEvent)
          : stage === 'onLifecycle'
            ? observer.onLifecycle!(event as LifecycleEvent)
            : observer.onProgress!(event as ProgressEvent);
      // Only a call that returned a promise is tracked: the synchronous built-ins pay for this test alone.
      if (result != null && typeof (result as PromiseLike<void>).then === 'function') this.#track(entry, stage, result);
    } catch (error) {
      this.#fail(observer, stage, error);
    }
  }

  /**
   * Count the call in flight until its promise settles. Nothing here holds the event: whatever the
   * observer keeps, it keeps for at most `maxInFlight` calls.
   */
  #track(entry: Entry, stage: string, result: PromiseLike<void>): void {
    entry.inFlight++;
    const { timeoutMs } = this.#limits;
    let timer: NodeJS.Timeout | undefined = setTimeout(() => {
      timer = undefined;
      this.#drop(entry, `a call to ${stage} did not settle within ${timeoutMs} ms (option "observerTimeoutMs")`);
    }, timeoutMs);
    timer.unref();
    const settled = (): void => {
      entry.inFlight--;
      if (timer !== undefined) clearTimeout(timer);
    };
    try {
      result.then(settled, (error: unknown) => {
        settled();
        this.#fail(entry.observer, stage, error);
      });
    } catch (error) {
      // A thenable whose then() throws will never settle through it.
      settled();
      throw error;
    }
  }

  #drop(entry: Entry, why: string): void {
    this.#droppedTotal++;
    this.#dropped.set(entry.label, (this.#dropped.get(entry.label) ?? 0) + 1);
    if (entry.dropReported) return;
    entry.dropReported = true;
    try {
      this.reportDrop(entry.label, why);
    } catch {
      // Reporting must not become the failure it reports.
    }
  }

  #fail(observer: TaskObserver, stage: string, error: unknown): void {
    if (this.#reported.has(observer)) return;
    this.#reported.add(observer);
    try {
      this.report(observer, stage, error);
    } catch {
      // Reporting must not become the failure it reports.
    }
  }
}
