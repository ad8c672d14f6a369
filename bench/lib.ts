// Shared pieces of the benchmark scripts: child servers, a throwaway redis-server, medians, formatting.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import autocannon from 'autocannon';
import type Koa from 'koa';
import type { TaskManager } from 'koa-taskflow';
import { spawnRedisServer } from '../test/helpers/redis-process.ts';

export const median = (values: readonly number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

export function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

export const fmt = (value: number | null | undefined, digits = 1): string =>
  value === undefined || value === null || Number.isNaN(value) ? 'n/a' : value.toFixed(digits);

/** Where and when a part of the benchmark ran: its numbers only compare within one such run. */
export interface RunInfo {
  started: string;
  nodeVersion: string;
  machine: string;
  /** The 1-minute load average when the part started and when it ended (other work on the machine); runs
   * before 2026-11-29 did not record it. */
  load?: [number, number];
  /** How long the part took, s (not recorded before 2026-11-29). */
  seconds?: number;
}

/** Run `part` and stamp its result with the date, the Node version and the machine's load around it. */
export async function timedPart<T extends object>(part: () => Promise<T>): Promise<T & RunInfo> {
  const start = new Date();
  const loadBefore = loadavg()[0];
  const result = await part();
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB`;
  const seconds = Math.round((Date.now() - start.getTime()) / 1000);
  const load: [number, number] = [loadBefore, loadavg()[0]];
  return { ...result, started: start.toISOString(), nodeVersion: process.version, machine, load, seconds };
}

export interface BenchServer {
  url: string;
  stop(): Promise<void>;
}

/** Start `node <script> ...args` and resolve once it prints `ready <port>`. */
export function startServer(script: string, args: string[]): Promise<BenchServer> {
  const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const match = /ready (\d+)/.exec(out);
      if (match) resolve({ url: `http://127.0.0.1:${match[1]}`, stop: () => stopChild(child) });
    });
    child.once('exit', (code) =>
      reject(new Error(`${script} ${args.join(' ')} exited with ${code} before it was ready`)),
    );
  });
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

/**
 * A redis-server on a free loopback port in a temp dir, nothing written to disk (the tests' helper, without
 * its append-only file), or undefined when the binary is missing.
 */
export async function startRedis(): Promise<{ port: number; url: string; stop(): Promise<void> } | undefined> {
  if (spawnSync('redis-server', ['--version']).status !== 0) return undefined;
  const dir = mkdtempSync(join(tmpdir(), 'bench-redis-'));
  const server = await spawnRedisServer({ dir, persistence: 'none' });
  return {
    port: server.port,
    url: server.url,
    stop: async () => {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** What a bench server's `GET /__stats` answers. */
export interface ServerStats {
  cpuMicros: number;
  served: number;
  rss: number;
  ran?: number;
}

export interface BurstSample {
  rps: number;
  p50: number;
  p99: number;
  cpuPerRequest: number;
  served: number;
  ran: number;
  errors: number;
}

/**
 * One burst of requests against a running bench server: `GET /__stats` before and after (it answers once the
 * server's background work has drained), so the CPU time of the work each request caused is charged to it.
 * `served`/`ran` are counted by the server: requests cut off when autocannon stops were still served.
 */
export async function burst(server: BenchServer, seconds: number, connections: number): Promise<BurstSample> {
  const stats = async () => (await (await fetch(`${server.url}/__stats`)).json()) as ServerStats;
  const before = await stats();
  const result = await autocannon({ url: server.url, connections, duration: seconds });
  const after = await stats();
  const served = after.served - before.served;
  return {
    rps: result.requests.total / seconds,
    p50: result.latency.p50,
    p99: result.latency.p99,
    cpuPerRequest: (after.cpuMicros - before.cpuMicros) / served,
    served,
    ran: (after.ran ?? 0) - (before.ran ?? 0),
    errors: result.errors + result.non2xx,
  };
}

/**
 * Serve a benchmark app on a loopback port and print `ready <port>`. `GET /__stats` waits until `drain()`
 * says the background work is done, then answers with the process's CPU time so far, the requests served
 * and `extra()`, so the driver can charge every request with the work it caused.
 */
export function serveBenchApp(app: Koa, drain: () => Promise<void>, extra: () => object = () => ({})): Server {
  let served = 0;
  const handle = app.callback();
  const server = createHttpServer((req, res) => {
    if (req.url === '/__stats') {
      void (async () => {
        await drain();
        // Let setImmediate/after-finish work of the last requests settle before reading the clock.
        await new Promise((r) => setTimeout(r, 30));
        await drain();
        const cpu = process.cpuUsage();
        const stats: ServerStats = {
          cpuMicros: cpu.user + cpu.system,
          served,
          rss: process.memoryUsage().rss,
          ...extra(),
        };
        res.end(JSON.stringify(stats));
      })();
      return;
    }
    served++;
    void handle(req, res);
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, '127.0.0.1', () => console.log(`ready ${(server.address() as AddressInfo).port}`));
  return server;
}

/**
 * Mount `manager` on `app` and answer every request with `ok` from a route that adds one `task(1)` (run after
 * the response), as an app's handler would; the app's later middleware never runs. Answers the drain.
 * The task is added in the route, not in a middleware of its own: the variants by hand each do their work
 * in one middleware, the place `manager.middleware()` takes here, so both sides have as many.
 */
export function oneTaskPerRequest(app: Koa, manager: TaskManager, task: (n: number) => unknown): () => Promise<void> {
  app.use(manager.middleware());
  app.use((ctx) => {
    ctx.tasks.addTask(task, 1);
    ctx.body = 'ok';
  });
  return () => manager.drain();
}

/** The path of a file next to the calling module. */
export const beside = (file: string, moduleUrl: string): string => new URL(file, moduleUrl).pathname;

/** True when the module at `moduleUrl` is the script node was started with. */
export const isMain = (moduleUrl: string): boolean => moduleUrl === `file://${process.argv[1]}`;
