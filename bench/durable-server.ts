// One server of the durable-store benchmark: `node bench/durable-server.ts <variant> [redisPort]`, prints
// `ready <port>`. `GET /__stats` waits until every task has run and its record is written, then answers with
// the process's CPU time so far, so each request is charged with all the work it caused.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Koa from 'koa';
import type { TaskStore } from 'koa-taskflow';
import { oneTaskPerRequest, serveBenchApp } from './lib.ts';

const variant = process.argv[2];
const redisPort = Number(process.argv[3] ?? 0);
let ran = 0;
let drain = async (): Promise<void> => {};
let close = async (): Promise<void> => {};
const app = new Koa();
app.silent = true;

if (variant !== 'bare') {
  const { TaskManager } = await import('koa-taskflow');
  let store: TaskStore;
  if (variant.startsWith('sqlite-least')) {
    const { LeastSqliteStore } = await import('./least-sqlite-store.ts');
    const dir = mkdtempSync(join(tmpdir(), 'bench-sqlite-'));
    store = new LeastSqliteStore(join(dir, 'tasks.db'), { indexed: variant === 'sqlite-least-indexed' });
    close = () => Promise.resolve(rmSync(dir, { recursive: true, force: true }));
  } else if (variant.startsWith('sqlite')) {
    const { SqliteStore } = await import('koa-taskflow/sqlite');
    const dir = mkdtempSync(join(tmpdir(), 'bench-sqlite-'));
    store = new SqliteStore({
      path: join(dir, 'tasks.db'),
      synchronous: variant === 'sqlite-full' ? 'FULL' : 'NORMAL',
    });
    close = () => Promise.resolve(rmSync(dir, { recursive: true, force: true }));
  } else if (variant === 'null-durable') {
    // A durable store that writes nothing: the cost of the durable path (write-ahead, batching) without I/O.
    const nothing =
      <T>(value: T) =>
      () =>
        Promise.resolve(value);
    store = {
      durable: true,
      save: nothing(undefined),
      get: nothing(undefined),
      list: nothing([]),
      claimKey: nothing(undefined),
      claimOrphans: nothing([]),
      close: nothing(undefined),
    };
  } else if (variant === 'redis') {
    const { RedisStore } = await import('koa-taskflow/redis');
    store = new RedisStore({ url: `redis://127.0.0.1:${redisPort}` }, { prefix: `bench-${process.pid}` });
  } else {
    throw new Error(`unknown variant ${variant}`);
  }
  const manager = new TaskManager({ store });
  const work = manager.task(function work(n: number) {
    ran++;
    return Promise.resolve(n);
  });
  await manager.start();
  drain = oneTaskPerRequest(app, manager, work);
  const previousClose = close;
  close = async () => {
    await manager.shutdown();
    await previousClose();
  };
}

app.use((ctx) => {
  ctx.body = 'ok';
});

const server = serveBenchApp(
  app,
  () => drain(),
  () => ({ ran }),
);
process.on('SIGTERM', () => {
  server.closeAllConnections();
  void close().then(() => process.exit(0));
});
