import { checkKnownKeys, optionError } from './options.js';
import type { Runner } from './runner.js';
import type { CancelRequest, TaskStore } from './types.js';

const CANCEL_OPTIONS = new Set(['reason']);

/** The reason a cancelled task's record gets when `cancel(id)` is given none. */
export const DEFAULT_CANCEL_REASON = 'cancelled';

export interface CancelOptions {
  /** Stored as the record's `reason` and in the TaskCancelledError's message. Default `cancelled`. */
  reason?: string;
}

/**
 * `manager.cancel(id)`: a task of this process is cancelled here at once; any other unfinished task of a
 * durable store gets a cancel request on its record, which the instance holding it reads with its next lease
 * renewal (no extra round trip per task) and applies here through `apply`.
 */
export class Cancellation {
  readonly #runner: Runner;
  readonly #store: TaskStore;
  readonly #engine: ((id: string, reason: string) => Promise<boolean>) | undefined;

  /** `engine`: the engine's cancel of a task handed to it (`EngineHooks.cancel`). */
  constructor(runner: Runner, store: TaskStore, engine?: (id: string, reason: string) => Promise<boolean>) {
    this.#runner = runner;
    this.#store = store;
    this.#engine = engine;
  }

  /** Bad arguments throw at the call; the rest answers asynchronously. */
  cancel(id: string, options: CancelOptions | undefined): Promise<boolean> {
    if (typeof id !== 'string') throw new TypeError(`cancel: "id" must be a string, got ${typeof id}`);
    if (options !== undefined && (options === null || typeof options !== 'object'))
      throw new TypeError(
        `cancel: argument "options" must be an object, got ${options === null ? 'null' : typeof options}`,
      );
    if (options !== undefined) checkKnownKeys('cancel', options, CANCEL_OPTIONS);
    const reason = options?.reason ?? DEFAULT_CANCEL_REASON;
    if (typeof reason !== 'string' || reason === '')
      throw optionError('cancel', 'reason', 'a non-empty string', reason);
    return this.#cancel(id, reason);
  }

  async #cancel(id: string, reason: string, followed = false): Promise<boolean> {
    const live = this.#runner.live(id);
    if (live !== undefined) return live.cancelRequested(reason);
    if (this.#engine !== undefined) return this.#engine(id, reason);
    const store = this.#store;
    if (store.durable !== true) return false;
    // This process's last status writes land first (an empty save joins the pending group commit): a task
    // that has just ended here is answered as finished, not given a request nobody will read.
    await store.save([]).catch(() => undefined);
    if (store.requestCancel !== undefined && (await store.requestCancel(id, reason))) return true;
    if (followed) return false;
    // An id that lost its idempotency key's claim (an alias) answers its holder's record in get(): cancelling
    // it cancels the holder, wherever it runs, as the id it was given stands for that task.
    const holder = (await store.get(id).catch(() => undefined))?.id;
    return holder !== undefined && holder !== id && this.#cancel(holder, reason, true);
  }

  /** Cancel requests the store answered with a lease renewal: those of tasks live here end now. */
  apply(requests: readonly CancelRequest[]): void {
    const live = requests.flatMap(({ id, reason }) => {
      const run = this.#runner.live(id);
      return run === undefined ? [] : [{ run, reason }];
    });
    // Waiting ones first: a slot freed by cancelling a running one must not start a task cancelled too.
    for (const { run, reason } of live) if (run.current === undefined) run.cancelRequested(reason);
    for (const { run, reason } of live) run.cancelRequested(reason);
  }
}
