import type { LifecycleEvent, LogEvent, TaskObserver, TaskStatus } from '../types.js';

type Report = (observer: TaskObserver, stage: string, error: unknown) => void;

/**
 * Calls observers in order without ever waiting for them: a throwing, rejecting or hanging observer
 * cannot delay a task, another observer or a response. Each observer's first failure is reported once.
 */
export class ObserverChain {
  #observers: readonly TaskObserver[];
  #logObservers: TaskObserver[] = [];
  #lifecycleObservers: TaskObserver[] = [];
  readonly #reported = new WeakSet<TaskObserver>();
  /** False when nobody handles log events: callers skip building them. */
  hasLog = false;
  hasLifecycle = false;

  constructor(observers: readonly TaskObserver[], readonly report: Report) {
    this.#observers = observers;
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
    this.#logObservers = this.#observers.filter((o) => typeof o.onLog === 'function');
    this.#lifecycleObservers = this.#observers.filter((o) => typeof o.onLifecycle === 'function');
    this.hasLog = this.#logObservers.length > 0;
    this.hasLifecycle = this.#lifecycleObservers.length > 0;
  }

  emitLog(event: LogEvent): void {
    for (const observer of this.#logObservers) this.#call(observer, 'onLog', () => observer.onLog!(event));
  }

  /** Whether some observer would use a lifecycle event with this status: callers skip building it otherwise. */
  wantsLifecycle(status: TaskStatus, retrying: boolean): boolean {
    for (const observer of this.#lifecycleObservers) {
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

  emitLifecycle(event: LifecycleEvent): void {
    for (const observer of this.#lifecycleObservers) this.#call(observer, 'onLifecycle', () => observer.onLifecycle!(event));
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
      const fn = observer[stage];
      if (typeof fn !== 'function') continue;
      pending.push(
        Promise.resolve()
          .then(() => fn.call(observer))
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

  #call(observer: TaskObserver, stage: string, invoke: () => void | Promise<void>): void {
    try {
      const result = invoke();
      if (result !== undefined && typeof (result as Promise<void>).then === 'function') {
        (result as Promise<void>).then(undefined, (error: unknown) => this.#fail(observer, stage, error));
      }
    } catch (error) {
      this.#fail(observer, stage, error);
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
