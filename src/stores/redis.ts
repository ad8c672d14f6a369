import { TaskflowError } from '../errors.js';

/** Placeholder until the durable-store work lands: importing works, constructing says what to use instead. */
export class RedisStore {
  constructor(_connection?: unknown, _options?: { prefix?: string }) {
    throw new TaskflowError('RedisStore is not implemented yet in this version of koa-taskflow; use the default MemoryStore for now');
  }
}
