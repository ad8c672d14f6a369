// Every store runs the conformance suite of koa-taskflow/testing: the built-in ones and a store written to
// the documented TaskStore interface alone (test/fixtures/map-store.ts), as a third-party store would.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { MemoryStore } from 'koa-taskflow';
import { RedisStore } from 'koa-taskflow/redis';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { describeTaskStore, type TaskStoreHarness } from 'koa-taskflow/testing';
import { MapStore } from './fixtures/map-store.js';
import { tempDir } from './helpers/files.js';
import { startRedisServer, type RedisServer } from './helpers/redis.js';

const run = promisify(execFile);

// A redis-server of its own per test (stopped after it, as every test's cleanups are).
const servers = new WeakMap<RedisStore, RedisServer>();
const newRedisStore = async () => {
  const server = await startRedisServer();
  const store = new RedisStore({ url: server.url }, { prefix: 'conformance' });
  servers.set(store, server);
  return store;
};
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- each harness is typed by its own store
const stores: [string, TaskStoreHarness<any>][] = [
  ['MemoryStore', { create: () => new MemoryStore() }],
  [
    'SqliteStore',
    {
      create: () => new SqliteStore({ path: join(tempDir(), 'tasks.db') }),
      reopen: (store: SqliteStore) => new SqliteStore({ path: store.path }),
      capabilities: { retention: { retentionDays: 7 } },
    },
  ],
  [
    'RedisStore',
    {
      create: newRedisStore,
      reopen: (store: RedisStore) => new RedisStore({ url: servers.get(store)!.url }, { prefix: store.prefix }),
      capabilities: { retention: { retentionDays: 7 } },
    },
  ],
  [
    'a custom store (a shared Map)',
    { create: () => new MapStore(), reopen: (store: MapStore) => new MapStore(store.backing) },
  ],
];

for (const [name, harness] of stores) describeTaskStore(name, harness, { describe, it });

describe('docs/api.md, "Prove it with koa-taskflow/testing"', () => {
  it('runs its snippet as it is shown, under node:test, against a custom store', async () => {
    const doc = readFileSync('docs/api.md', 'utf8');
    const snippet = readFileSync('test/fixtures/store-conformance.node-test.js', 'utf8');
    expect(doc).toContain('```js\n' + snippet + '```');
    const { stdout } = await run(process.execPath, [
      '--test',
      '--test-reporter=tap',
      'test/fixtures/store-conformance.node-test.js',
    ]);
    expect(stdout).toMatch(/^# fail 0$/m);
    expect(Number(/^# pass (\d+)$/m.exec(stdout)?.[1])).toBeGreaterThan(15);
  });
});
