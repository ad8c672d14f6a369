// Shared pieces of the benchmark scripts: child servers, a throwaway redis-server, medians, formatting.
import { spawn, spawnSync } from 'node:child_process';
import autocannon from 'autocannon';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

export function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

export async function freePort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Start `node <script> ...args` and resolve once it prints `ready <port>`. */
export function startServer(script, args) {
  const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const match = /ready (\d+)/.exec(out);
      if (match) resolve({ child, url: `http://127.0.0.1:${match[1]}`, stop: () => stopChild(child) });
    });
    child.once('exit', (code) =>
      reject(new Error(`${script} ${args.join(' ')} exited with ${code} before it was ready`)),
    );
  });
}

function stopChild(child) {
  if (child.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', resolve);
    child.kill('SIGTERM');
  });
}

/** A redis-server on a free loopback port in a temp dir, or undefined when the binary is missing. */
export async function startRedis() {
  if (spawnSync('redis-server', ['--version']).status !== 0) return undefined;
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'bench-redis-'));
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'],
    { stdio: 'ignore' },
  );
  for (let i = 0; i < 100; i++) {
    if (
      spawnSync('redis-cli', ['-p', String(port), 'ping'])
        .stdout?.toString()
        .trim() === 'PONG'
    )
      break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    stop: async () => {
      await stopChild(child);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * One burst of requests against a running bench server: `GET /__stats` before and after (it answers once the
 * server's background work has drained), so the CPU time of the work each request caused is charged to it.
 * `served`/`ran` are counted by the server: requests cut off when autocannon stops were still served.
 */
export async function burst(server, seconds, connections) {
  const stats = async () => (await fetch(`${server.url}/__stats`)).json();
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
    ran: after.ran - before.ran,
    errors: result.errors + result.non2xx,
  };
}

export const fmt = (value, digits = 1) => (value === undefined || Number.isNaN(value) ? 'n/a' : value.toFixed(digits));

/**
 * Run `measure(variant)` for every variant, `rounds` times, rotating the order each round so no variant
 * always runs first (or last) on a warming machine. Returns the samples by variant name.
 */
export async function interleavedRounds(variants, rounds, measure, describe) {
  const samples = new Map(variants.map((v) => [v.name, []]));
  for (let round = 0; round < rounds; round++) {
    const order = variants.map((_, i) => variants[(i + round) % variants.length]);
    for (const variant of order) {
      const sample = await measure(variant);
      samples.get(variant.name).push(sample);
      describe(
        `round ${round + 1}/${rounds} ${variant.name.padEnd(16)} ${fmt(sample.rps, 0).padStart(7)} req/s  ${fmt(sample.cpuPerRequest)} µs CPU/req  p99 ${sample.p99} ms`,
        sample,
      );
    }
  }
  return samples;
}

/**
 * Serve a benchmark app on a loopback port and print `ready <port>`. `GET /__stats` waits until `drain()`
 * says the background work is done, then answers with the process's CPU time so far, the requests served
 * and `extra()`, so the driver can charge every request with the work it caused.
 */
export function serveBenchApp(app, drain, extra = () => ({})) {
  let served = 0;
  const handle = app.callback();
  const server = createHttpServer(async (req, res) => {
    if (req.url === '/__stats') {
      await drain();
      // Let setImmediate/after-finish work of the last requests settle before reading the clock.
      await new Promise((r) => setTimeout(r, 30));
      await drain();
      const cpu = process.cpuUsage();
      res.end(JSON.stringify({ cpuMicros: cpu.user + cpu.system, served, rss: process.memoryUsage().rss, ...extra() }));
      return;
    }
    served++;
    handle(req, res);
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, '127.0.0.1', () => console.log(`ready ${server.address().port}`));
  return server;
}
