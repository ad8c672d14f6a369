// `node:sqlite` is built into Node.js from 22.5 (unflagged from 22.13; this package needs 22.15). On an older
// Node, or one started with --no-experimental-sqlite, a static import fails with ERR_UNKNOWN_BUILTIN_MODULE,
// which does not say what to do: load it here and say which Node is needed instead.
import type * as NodeSqlite from 'node:sqlite';
import { TaskflowError } from '../errors.js';

let sqlite: typeof NodeSqlite;
try {
  sqlite = await import('node:sqlite');
} catch (error) {
  throw new TaskflowError(
    `koa-taskflow/sqlite needs Node.js >= 22.15, whose built-in node:sqlite module this Node.js ` +
      `${process.version} does not provide (or it was disabled with --no-experimental-sqlite); upgrade ` +
      `Node.js, or use MemoryStore or RedisStore`,
    { cause: error, code: 'ERR_NODE_SQLITE_UNAVAILABLE' },
  );
}

export const { DatabaseSync } = sqlite;
