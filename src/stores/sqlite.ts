import { TaskflowError } from '../errors.js';

/** Placeholder until the durable-store work lands: importing works, constructing says what to use instead. */
export class SqliteStore {
  constructor(_options?: { path: string }) {
    throw new TaskflowError('SqliteStore is not implemented yet in this version of koa-taskflow; use the default MemoryStore for now');
  }
}
