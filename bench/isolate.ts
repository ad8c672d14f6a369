// The isolate benchmark (issue #20): requests at a fixed rate, each adding one 50 ms CPU task, served by a Koa app
// running the tasks in worker threads (`isolate: 'thread'`) or in process, beside bare Koa at the same rate. The
// goal reads p99 latency ÷ bare Koa's; every task must have run. The rate stays under what the pool can compute
// (maxThreads = cores − 1 threads × 20 tasks/s each), so the thread row measures latency, not a growing queue.
import { availableParallelism } from 'node:os';
import autocannon from 'autocannon';
import { beside, fmt, median, percentile, startServer, type BenchServer, type ServerStats } from './lib.ts';
import type { IsolateResults, IsolateRow } from './results.ts';

export interface IsolateConfig {
  /** Rounds of one burst per server, in a rotating order; the ratio is the median of each round's. */
  ROUNDS: number;
  SECONDS: number;
  /** Requests per second, all servers. */
  RATE: number;
  /** Requests with 0 ms tasks that warm each server up before the rounds. */
  WARMUP: number;
}

const threads = Math.max(1, availableParallelism() - 1);
// Half of the pool's capacity (20 tasks of 50 ms per thread per second), at most 20 req/s.
const rate = Math.min(20, threads * 10);
export const ISOLATE_FULL: IsolateConfig = { ROUNDS: 8, SECONDS: 3, RATE: rate, WARMUP: 5_000 };
export const ISOLATE_DEFAULT: IsolateConfig = { ...ISOLATE_FULL, ROUNDS: 5 };
export const ISOLATE_QUICK: IsolateConfig = { ROUNDS: 2, SECONDS: 1, RATE: rate, WARMUP: 200 };

export const ISOLATE_VARIANTS = ['bare', 'thread', 'in-process', 'by-hand'] as const;

/** A server's `/__stats`: answered once every task it was given has run. */
async function statsOf(server: BenchServer): Promise<ServerStats & { mainCpuMicros: number }> {
  return (await (await fetch(`${server.url}/__stats`)).json()) as ServerStats & { mainCpuMicros: number };
}

/**
 * The four servers stay up side by side and are measured in alternating bursts (the machine's other load
 * then weighs on each about equally): each round gives a p99 per server, and the ratio of a round is read from
 * that round's bursts alone.
 */
export async function runIsolateBench(config: IsolateConfig, log: (line: string) => void): Promise<IsolateResults> {
  const servers = new Map<string, BenchServer>();
  const samples = new Map<string, IsolateRow[]>(ISOLATE_VARIANTS.map((v) => [v, []]));
  const ratios = new Map<string, number[]>(ISOLATE_VARIANTS.map((v) => [v, []]));
  try {
    for (const variant of ISOLATE_VARIANTS) {
      const server = await startServer(beside('isolate-server.ts', import.meta.url), [variant]);
      servers.set(variant, server);
      // Warm-up, as a server that has been up a while: WARMUP requests with 0 ms tasks (the same code as a
      // burst's, without the CPU; the HTTP part warms its servers with 20 000 requests for the same reason: at
      // 10 requests/s a burst's code would otherwise run in V8's interpreter and baseline tiers, and a path
      // is measured by its size in bytecodes rather than by its work), then 1 s at the bursts' rate with
      // 50 ms tasks (the pool's threads start and load the task's module).
      await autocannon({ url: `${server.url}/?warm`, connections: 10, amount: config.WARMUP });
      await statsOf(server);
      await autocannon({ url: server.url, connections: 2, duration: 1, overallRate: config.RATE });
    }
    for (let round = 0; round < config.ROUNDS; round++) {
      const p99 = new Map<string, number>();
      for (let i = 0; i < ISOLATE_VARIANTS.length; i++) {
        const variant = ISOLATE_VARIANTS[(i + round) % ISOLATE_VARIANTS.length];
        const server = servers.get(variant)!;
        const before = await statsOf(server);
        // Each response's own time, not autocannon's latency histogram: with `overallRate` that histogram
        // corrects for coordinated omission with an interval of 1 ms where each connection sends one request
        // a second, so a response of n ms is recorded n times (n, n − 1, …, 1), and it keeps whole
        // milliseconds. A 3 s burst of 30 responses then held ~200 samples whose p50 read 6 ms for responses
        // whose own median was 2.
        const times: number[] = [];
        const result = await new Promise<autocannon.Result>((resolve, reject) => {
          const options = { url: server.url, connections: 10, duration: config.SECONDS, overallRate: config.RATE };
          autocannon(options, (error: Error | null, done) => (error ? reject(error) : resolve(done))).on(
            'response',
            (_client, statusCode, _bytes, ms) => {
              if (statusCode >= 200 && statusCode < 300) times.push(ms);
            },
          );
        });
        // Answers once every task has run: the next burst starts on an idle machine.
        const after = await statsOf(server);
        const row: IsolateRow = {
          variant,
          p50: percentile(times, 50),
          p99: percentile(times, 99),
          served: after.served - before.served,
          ran: (after.ran ?? 0) - (before.ran ?? 0),
          errors: result.errors + result.non2xx,
        };
        samples.get(variant)!.push(row);
        p99.set(variant, row.p99);
        // (The CPU of the /__stats request itself is in it too, the same for every server.)
        const mainCpu = (after.mainCpuMicros - before.mainCpuMicros) / row.served;
        log(
          `isolate round ${round + 1}/${config.ROUNDS} ${variant.padEnd(10)} p50 ${fmt(row.p50)} ms  p99 ${fmt(row.p99)} ms  served ${row.served}  tasks ran ${row.ran}  main thread ${fmt(mainCpu, 0)} µs CPU/request`,
        );
      }
      for (const variant of ISOLATE_VARIANTS) ratios.get(variant)!.push(p99.get(variant)! / p99.get('bare')!);
    }
  } finally {
    for (const server of servers.values()) await server.stop();
  }
  const rows = ISOLATE_VARIANTS.map((variant): IsolateRow => {
    const all = samples.get(variant)!;
    const paired = ratios.get(variant)!;
    return {
      variant,
      p50: median(all.map((r) => r.p50)),
      p99: median(all.map((r) => r.p99)),
      p99Ratio: { value: median(paired), spread: [percentile(paired, 25), percentile(paired, 75)] },
      served: all.reduce((n, r) => n + r.served, 0),
      ran: all.reduce((n, r) => n + r.ran, 0),
      errors: all.reduce((n, r) => n + r.errors, 0),
    };
  });
  return { config: { ...config, threads }, rows };
}
