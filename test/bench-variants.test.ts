// `npm run bench` takes a quarter of an hour, so it is not run here; this checks that every server it
// compares still starts, serves, and accounts for its background work, so a broken variant is caught now and
// not in the middle of a benchmark run.
import { describe, expect, it } from 'vitest';
import { BULLMQ_QUICK, BULLMQ_VARIANTS, runBullmqWorkers } from '../bench/bullmq.ts';
import { DURABLE_VARIANTS } from '../bench/durable.ts';
import { GOALS, capacityPairs, evaluate } from '../bench/goals.ts';
import { VARIANTS, serve, type Variant } from '../bench/http.ts';
import type { ServerStats } from '../bench/lib.ts';
import { startRedisServer } from './helpers/redis.js';

const REQUESTS = 40;

async function exercise(variant: Variant, redisPort: number): Promise<{ before: ServerStats; after: ServerStats }> {
  const server = await serve(variant, redisPort);
  try {
    const stats = async () => (await (await fetch(`${server.url}/__stats`)).json()) as ServerStats;
    const before = await stats();
    for (let i = 0; i < REQUESTS; i++) {
      const response = await fetch(server.url);
      expect(response.status, variant.name).toBe(200);
      expect(await response.text(), variant.name).toBe('ok');
    }
    return { before, after: await stats() };
  } finally {
    await server.stop();
  }
}

describe('the benchmark variants (bench/server.ts, bench/durable-server.ts, bench/durable.ts, bench/bullmq.ts)', () => {
  it(
    'every variant serves its requests and, once drained, has run one task per request',
    { timeout: 120_000 },
    async () => {
      const redis = await startRedisServer();
      // The HTTP part's variants, the durable part's (which shares some of them) and the BullMQ part's web
      // processes (their `ran`: the jobs their requests left in Redis).
      const variants = [
        ...new Map([...VARIANTS, ...DURABLE_VARIANTS, ...BULLMQ_VARIANTS].map((v) => [v.name, v])).values(),
      ];
      const names = new Set(variants.map((v) => v.name));
      // Each comparison's baseline is a variant too.
      for (const variant of variants)
        if (variant.baseline) expect(names.has(variant.baseline), variant.baseline).toBe(true);
      // And every server a goal of bench/goals.ts compares.
      for (const pair of capacityPairs()) for (const name of pair) expect(names.has(name), name).toBe(true);
      // Two at a time: each is its own process.
      const queue = [...variants];
      const worker = async (): Promise<void> => {
        for (let variant = queue.shift(); variant !== undefined; variant = queue.shift()) {
          const { before, after } = await exercise(variant, redis.port);
          expect(after.served - before.served, variant.name).toBe(REQUESTS);
          expect(after.cpuMicros, variant.name).toBeGreaterThan(before.cpuMicros);
          // A variant with tasks must have run all of them by the time /__stats answers (it drains first).
          if (variant.tasks) expect(after.ran! - before.ran!, variant.name).toBe(REQUESTS);
        }
      };
      await Promise.all([worker(), worker()]);
    },
  );

  it(
    'the BullMQ part runs every worker (ours, a plain Worker, each traced) over queued jobs, and its worker rows read it',
    { timeout: 120_000 },
    async () => {
      const worker = await runBullmqWorkers({ ...BULLMQ_QUICK, WARMUP_JOBS: 20, JOBS: 100 }, () => {});
      expect(worker.rows.map((r) => r.variant)).toEqual(['w-raw', 'w-raw-otel', 'w-ours', 'w-traced']);
      for (const row of worker.rows) {
        expect(row.cpuPerJob, row.variant).toBeGreaterThan(0);
        expect(row.jobsPerSecond, row.variant).toBeGreaterThan(0);
      }
      const at = {
        bullmq: { rows: [], ratios: {}, config: BULLMQ_QUICK.web, worker, started: '', nodeVersion: '', machine: '' },
      };
      const workerGoals = GOALS.filter((g) => g.measure.kind === 'bullmq' && g.measure.key.startsWith('w-'));
      expect(workerGoals).toHaveLength(4);
      for (const goal of workerGoals) expect(evaluate(goal, at)?.value, goal.what).toBeGreaterThan(0);
    },
  );
});
