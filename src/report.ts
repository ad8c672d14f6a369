import { toSafeError, type TaskStoreError } from './errors.js';
import type { TaskLogger } from './types.js';

/**
 * Where the library's own failures go (an observer that threw, a store write that failed, a record that
 * cannot be read): the manager's logger, else the console. Reporting never throws.
 */
export class Reporter {
  // Ids of stored records the store could not read, each reported once (bounded: see unreadable()).
  readonly #unreadableIds = new Set<string>();

  constructor(readonly logger: TaskLogger | undefined) {}

  report(stage: string, error: unknown): void {
    try {
      this.#write(stage, error);
    } catch {
      // What a task or an onError threw may not survive a logger (a Proxy, a throwing getter): its safe
      // description is written instead, and a report never throws.
      try {
        this.#write(stage, toSafeError(error));
      } catch {
        // The logger itself fails: nothing is left to report through.
      }
    }
  }

  warn(fields: object, message: string): void {
    if (this.logger !== undefined) this.logger.warn(fields, message);
    else console.warn(message, fields);
  }

  /** A stored record the store skipped because it cannot read it: logged once per id, however often it is met. */
  unreadable(id: string, error: TaskStoreError): void {
    if (this.#unreadableIds.has(id)) return;
    // Past the bound (a store full of damage) the first ones are forgotten and may be reported again.
    if (this.#unreadableIds.size >= 10_000) this.#unreadableIds.clear();
    this.#unreadableIds.add(id);
    this.report(`skipped task ${id}: its stored record cannot be read (reported once)`, error);
  }

  #write(stage: string, error: unknown): void {
    if (this.logger !== undefined) this.logger.error({ err: error }, `koa-taskflow: ${stage}`);
    else console.error(`koa-taskflow: ${stage}:`, error);
  }
}
