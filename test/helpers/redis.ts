// A real redis-server for the tests: a free loopback port, its own temp dir, append-only file fsynced on
// every write (so a restart keeps the data, as a production Redis with AOF would). Stopped after the test.
import { tempDir } from './files.js';
import { spawnRedisServer, type RedisServer } from './redis-process.js';
import { onCleanup } from './server.js';

export type { RedisServer } from './redis-process.js';

export async function startRedisServer(): Promise<RedisServer> {
  const server = await spawnRedisServer({ dir: tempDir('taskflow-redis-'), persistence: 'always' });
  onCleanup(() => server.stop());
  return server;
}
