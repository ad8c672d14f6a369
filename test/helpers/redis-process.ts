// A redis-server child process on a free loopback port, with no test-runner hooks: the tests wrap it
// (test/helpers/redis.ts: a temp dir and a stop after each test), and the benchmarks start one directly.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';

export interface RedisServer {
  port: number;
  url: string;
  /** Stop the server (SIGTERM) and wait for it to exit. */
  stop(): Promise<void>;
  /** Start it again on the same port and data directory. */
  start(): Promise<void>;
  /** Stall it (SIGSTOP): connections stay open, commands wait unanswered in its socket buffers. */
  pause(): void;
  /** Let a stalled server go on (SIGCONT): it runs what was sent to it meanwhile. */
  resume(): void;
}

export interface RedisServerOptions {
  /** Where Redis keeps its files. */
  dir: string;
  /** `'always'`: an append-only file fsynced on every write (a restart keeps the data); `'none'`: nothing on disk. */
  persistence: 'always' | 'none';
}

export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function ping(port: number): Promise<boolean> {
  const client = new Redis({
    host: '127.0.0.1',
    port,
    lazyConnect: true,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
  });
  client.on('error', () => {});
  try {
    await client.connect();
    return (await client.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    client.disconnect();
  }
}

async function waitUntilUp(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ping(port))) {
    if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not answer within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** Start a redis-server; resolves once it answers PING. */
export async function spawnRedisServer({ dir, persistence }: RedisServerOptions): Promise<RedisServer> {
  const port = await freePort();
  const durability =
    persistence === 'always' ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no'];
  let child: ChildProcess | undefined;
  let paused = false;
  const server: RedisServer = {
    port,
    url: `redis://127.0.0.1:${port}`,
    async start() {
      const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', ...durability];
      child = spawn('redis-server', args, { stdio: 'ignore' });
      const started = child;
      const failed = new Promise<never>((_, reject) => started.once('error', reject));
      await Promise.race([failed, waitUntilUp(port, 10_000)]);
    },
    async stop() {
      const running = child;
      child = undefined;
      if (running === undefined || running.exitCode !== null) return;
      await new Promise<void>((resolve) => {
        running.once('exit', () => resolve());
        // A stopped process gets its SIGTERM only once it goes on.
        if (paused) running.kill('SIGCONT');
        paused = false;
        running.kill('SIGTERM');
      });
    },
    pause() {
      paused = child?.kill('SIGSTOP') === true;
    },
    resume() {
      if (child?.kill('SIGCONT') === true) paused = false;
    },
  };
  await server.start();
  return server;
}
