import type { AddressInfo } from 'node:net';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import Koa from 'koa';
import { afterEach } from 'vitest';
import { TaskManager, type TaskManagerOptions } from 'koa-taskflow';

export interface Harness {
  manager: TaskManager;
  app: Koa;
  url: string;
  server: Server;
}

const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

/** Run `fn` at the end of the current test (LIFO). */
export function onCleanup(fn: () => Promise<void> | void): void {
  cleanups.push(async () => {
    await fn();
  });
}

/** A TaskManager shut down after the test. */
export function createManager(options?: TaskManagerOptions): TaskManager {
  const manager = new TaskManager(options);
  onCleanup(() => manager.shutdown({ timeoutMs: 1_000 }));
  return manager;
}

/**
 * A real Koa app listening on a loopback port with the manager's middleware mounted first;
 * `setup` adds the routes. Closed after the test.
 */
export async function startApp(
  setup: (app: Koa, manager: TaskManager) => void,
  options?: TaskManagerOptions | TaskManager,
): Promise<Harness> {
  const manager = options instanceof TaskManager ? options : createManager(options);
  const app = mountApp(manager, setup);
  await manager.start();
  return { manager, app, ...(await listen(app)) };
}

/** A Koa app with the manager's middleware mounted first and `setup`'s routes; `manager.start()` is not called. */
export function mountApp(manager: TaskManager, setup: (app: Koa, manager: TaskManager) => void): Koa {
  const app = new Koa();
  app.silent = true;
  app.use(manager.middleware());
  setup(app, manager);
  return app;
}

/**
 * Serve `app` on a loopback port; closed after the test. `around` wraps each request's handling (an app's
 * AsyncLocalStorage held over the whole request, response included, as HTTP instrumentation holds its span).
 */
export async function listen(
  app: Koa,
  around?: (handle: ReturnType<Koa['callback']>, req: IncomingMessage, res: ServerResponse) => Promise<void>,
): Promise<{ server: Server; url: string }> {
  let server: Server;
  if (around === undefined) {
    server = app.listen(0, '127.0.0.1');
  } else {
    const handle = app.callback();
    server = createServer((req, res) => void around(handle, req, res)).listen(0, '127.0.0.1');
  }
  await new Promise<void>((resolve) => server.once('listening', resolve));
  onCleanup(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  const { port } = server.address() as AddressInfo;
  return { server, url: `http://127.0.0.1:${port}` };
}

/** A promise with its resolve exposed: lets a test hold a task until it decides. */
export function deferred<T = void>(): {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (error: unknown) => void;
} {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Poll `check` until it returns true (no fixed sleeps in tests); fails after `timeoutMs`. */
export async function waitFor(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5_000,
  what = 'condition',
): Promise<void> {
  const start = Date.now();
  while (!(await check())) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
