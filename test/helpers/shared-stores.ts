// The durable stores a test runs against, each as one store several managers share (as instances would).
import { join } from 'node:path';
import type { TaskStore } from 'koa-taskflow';
import { RedisStore } from 'koa-taskflow/redis';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { tempDir } from './files.js';
import { startRedisServer } from './redis.js';

/** For `it.each`: a name, and a function opening a fresh store that answers a maker of clients of it. */
export function sharedStores(prefix: string): [string, () => Promise<() => TaskStore>][] {
  return [
    [
      'SQLite',
      () => {
        const path = join(tempDir(`taskflow-${prefix}-`), 'tasks.db');
        return Promise.resolve(() => new SqliteStore({ path }));
      },
    ],
    [
      'Redis',
      async () => {
        const redis = await startRedisServer();
        return () => new RedisStore({ url: redis.url }, { prefix });
      },
    ],
  ];
}
