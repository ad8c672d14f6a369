// One server of the durable-store benchmark: `node bench/durable-server.js <variant> [redisPort]`, prints
// `ready <port>`. `GET /__stats` waits until every task has run and its record is written, then answers with
// the process's CPU time so far, so each request is charged with all the work it caused.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Koa from 'koa';
import { serveBenchApp } from './lib.js';

const variant = process.argv[2];
const redisPort = Number(process.argv[3] ?? 0);
let ran = 0;
let drain = async () => {};
let close = async () => {};
const app = new Koa();
app.silent = true;

if (variant !== 'bare') {
  const { TaskManager } = await import('koa-taskflow');
  let store;
  if (variant.startsWith('sqlite')) {
    const { SqliteStore } = await import('koa-taskflow/sqlite');
    const dir = mkdtempSync(join(tmpdir(), 'bench-sqlite-'));
    store = new SqliteStore({ path: join(dir, 'tasks.db'), synchronous: variant === 'sqlite-full' ? 'FULL' : 'NORMAL' });
    close = async () => rmSync(dir, { recursive: true, force: true });
  } else if (variant === 'null-durable') {
    // A durable store that writes nothing: the cost of the durable path (write-ahead, batching) without I/O.
    store = { durable: true, save: async () => undefined, get: async () => undefined, list: async () => [], claimKey: async () => undefined, claimOrphans: async () => [], close: async () => {} };
  } else if (variant === 'redis') {
    const { RedisStore } = await import('koa-taskflow/redis');
    store = new RedisStore({ url: `redis://127.0.0.1:${redisPort}` }, { prefix: `bench-${process.pid}` });
  } else {
    throw new Error(`unknown variant ${variant}`);
  }
  const manager = new TaskManager({ store });
  const work = manager.task(async function work(_n) {
    ran++;
  });
  await manager.start();
  app.use(manager.middleware());
  app.use(async (ctx, next) => {
    ctx.tasks.addTask(work, 1);
    await next();
  });
  drain = () => manager.drain();
  const previousClose = close;
  close = async () => {
    await manager.shutdown();
    await previousClose();
  };
}

app.use((ctx) => {
  ctx.body = 'ok';
});

const server = serveBenchApp(app, () => drain(), () => ({ ran }));
process.on('SIGTERM', async () => {
  server.closeAllConnections();
  await close();
  process.exit(0);
});
