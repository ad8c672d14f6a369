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

if (variant === 'sqlite-by-hand') {
  // What a user would write to persist a task by hand: its row inserted before the response (so an acknowledged
  // task is on disk), updated when it has run. node:sqlite, WAL, synchronous=NORMAL, one statement per write.
  const { DatabaseSync } = await import('node:sqlite');
  const { randomUUID } = await import('node:crypto');
  const dir = mkdtempSync(join(tmpdir(), 'bench-sqlite-'));
  const db = new DatabaseSync(join(dir, 'tasks.db'));
  db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL');
  db.exec(
    'CREATE TABLE tasks (id TEXT PRIMARY KEY, name TEXT, status TEXT, args TEXT, created_at INTEGER, ended_at INTEGER)',
  );
  const insert = db.prepare(
    "INSERT INTO tasks (id, name, status, args, created_at) VALUES (?, 'work', 'pending', ?, ?)",
  );
  const finish = db.prepare("UPDATE tasks SET status = 'success', ended_at = ? WHERE id = ?");
  let running = 0;
  let idle: (() => void) | undefined;
  app.use(async (ctx, next) => {
    const id = randomUUID();
    insert.run(id, JSON.stringify([1]), Date.now());
    running++;
    ctx.res.once('close', () => {
      ran++;
      finish.run(Date.now(), id);
      if (--running === 0) idle?.();
    });
    await next();
  });
  drain = () => (running === 0 ? Promise.resolve() : new Promise<void>((resolve) => (idle = resolve)));
  close = () => {
    db.close();
    rmSync(dir, { recursive: true, force: true });
    return Promise.resolve();
  };
} else if (variant !== 'bare') {
  const { TaskManager } = await import('koa-taskflow');
  let store: TaskStore;
  if (variant.startsWith('sqlite')) {
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
