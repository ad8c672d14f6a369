// The BullMQ part of `npm run bench` (`--only bullmq`, issue 19): koa-taskflow with bullmqEngine against raw
// BullMQ doing the same, on a redis-server the part starts (none found: the part fails, it skips nothing).
//   web     a web process enqueueing one task per request, nothing run there (bench/bullmq-server.ts), measured
//           by the HTTP part's method (bench/http.ts: both servers side by side, paired bursts): ours untraced
//           against `queue.add` on `finish`, ours traced against the same with bullmq-otel, and raw BullMQ
//           against itself (A/A: the method's noise)
//   worker  one worker process running already queued jobs with a trivial body (bench/bullmq-worker.ts): CPU
//           per job and jobs/s, ours against a plain BullMQ `Worker`, traced against bullmq-otel; each round runs
//           every variant once in a rotating order, and a ratio is read within a round
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { HTTP_DEFAULT, HTTP_QUICK, runHttpBench, type HttpConfig, type Variant } from './http.ts';
import { beside, fmt, median, percentile, startRedis } from './lib.ts';
import { BULLMQ_WORKER_VARIANTS, type WorkerSample, type WorkerVariant } from './bullmq-worker.ts';
import type { BullmqResults, BullmqWorkerRow, Ratio } from './results.ts';

const server = (name: string, label: string, baseline?: string): Variant => ({
  name,
  label,
  baseline,
  tasks: true,
  needsRedis: true,
  script: 'bullmq-server.ts',
});

export const BULLMQ_VARIANTS: readonly Variant[] = [
  server('bq-raw', 'raw BullMQ: `queue.add` on `finish`'),
  server('bq-raw-again', 'raw BullMQ again (A/A: the noise of the method)', 'bq-raw'),
  server('bq-untraced', 'koa-taskflow + bullmqEngine, untraced: `ctx.tasks.addTask`', 'bq-raw'),
  server('bq-raw-otel', 'raw BullMQ + bullmq-otel, under a request span'),
  server('bq-traced', 'koa-taskflow + bullmqEngine, traced, under a request span', 'bq-raw-otel'),
];

/** The comparisons of the worker part: [baseline, variant]. */
export const WORKER_PAIRS: readonly [WorkerVariant, WorkerVariant][] = [
  ['w-raw', 'w-ours'],
  ['w-raw-otel', 'w-traced'],
];

export const WORKER_LABELS: Record<WorkerVariant, string> = {
  'w-raw': 'a plain BullMQ `Worker` (concurrency 16)',
  'w-raw-otel': 'the same with bullmq-otel',
  'w-ours': "koa-taskflow's worker (`manager.work()`, concurrency 16)",
  'w-traced': "koa-taskflow's worker, traced (SDK + pino)",
};

export interface BullmqConfig {
  web: HttpConfig;
  /** Rounds of the worker part: each runs every worker variant once. */
  ROUNDS: number;
  /** Jobs run before the measured ones, and the measured ones, per worker run. */
  WARMUP_JOBS: number;
  JOBS: number;
}

/** `npm run bench`: about 1.5 minutes on a 2-core machine (the HTTP part's 1 round of 6 paired bursts). */
export const BULLMQ_DEFAULT: BullmqConfig = {
  web: { ...HTTP_DEFAULT, BURSTS: 6, WARMUP_REQUESTS: 10_000, EVERY_VARIANT: true },
  ROUNDS: 3,
  WARMUP_JOBS: 300,
  JOBS: 1000,
};
/** `--full`: the HTTP part's 3 bursts and 3 rounds, 5 worker rounds of 3 000 jobs. */
export const BULLMQ_FULL: BullmqConfig = {
  web: { ...HTTP_DEFAULT, ROUNDS: 3, BURSTS: 3, EVERY_VARIANT: true },
  ROUNDS: 5,
  WARMUP_JOBS: 500,
  JOBS: 3000,
};
export const BULLMQ_QUICK: BullmqConfig = { web: HTTP_QUICK, ROUNDS: 1, WARMUP_JOBS: 100, JOBS: 200 };

const run = promisify(execFile);

async function workerRun(variant: WorkerVariant, redisPort: number, config: BullmqConfig): Promise<WorkerSample> {
  const args = [beside('bullmq-worker.ts', import.meta.url), variant, String(redisPort)];
  const { stdout } = await run(process.execPath, [
    '--expose-gc',
    ...args,
    String(config.WARMUP_JOBS),
    String(config.JOBS),
  ]);
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as WorkerSample;
}

const ratio = (values: number[]): Ratio => ({
  value: median(values),
  spread: [percentile(values, 25), percentile(values, 75)],
});

/** The worker part alone (the smoke test runs it with a few jobs): `config.ROUNDS` rounds of every worker. */
export async function runBullmqWorkers(
  config: BullmqConfig,
  log: (line: string) => void,
): Promise<BullmqResults['worker']> {
  const redis = await startRedis();
  if (redis === undefined) throw new Error('redis-server not found');
  const samples = new Map<WorkerVariant, WorkerSample[]>(BULLMQ_WORKER_VARIANTS.map((v) => [v, []]));
  try {
    for (let round = 0; round < config.ROUNDS; round++)
      for (let i = 0; i < BULLMQ_WORKER_VARIANTS.length; i++) {
        const variant = BULLMQ_WORKER_VARIANTS[(i + round) % BULLMQ_WORKER_VARIANTS.length];
        const sample = await workerRun(variant, redis.port, config);
        samples.get(variant)!.push(sample);
        log(
          `worker round ${round + 1}/${config.ROUNDS} ${variant.padEnd(10)} ${fmt(sample.cpuPerJob)} µs CPU/job  ` +
            `${fmt(sample.jobsPerSecond, 0)} jobs/s`,
        );
      }
  } finally {
    await redis.stop();
  }
  const rows = BULLMQ_WORKER_VARIANTS.map((variant): BullmqWorkerRow => ({
    variant,
    label: WORKER_LABELS[variant],
    baseline: WORKER_PAIRS.find(([, v]) => v === variant)?.[0],
    cpuPerJob: median(samples.get(variant)!.map((s) => s.cpuPerJob)),
    jobsPerSecond: median(samples.get(variant)!.map((s) => s.jobsPerSecond)),
  }));
  // Within a round: the baseline's CPU per job ÷ the variant's (capacity), the variant's jobs/s ÷ the baseline's.
  const ratios: Record<string, Ratio> = {};
  for (const [base, variant] of WORKER_PAIRS) {
    const b = samples.get(base)!;
    const v = samples.get(variant)!;
    ratios[`${base}/${variant}`] = ratio(v.map((s, i) => b[i].cpuPerJob / s.cpuPerJob));
    ratios[`${base}/${variant} jobs/s`] = ratio(v.map((s, i) => s.jobsPerSecond / b[i].jobsPerSecond));
  }
  return { config: { ROUNDS: config.ROUNDS, WARMUP_JOBS: config.WARMUP_JOBS, JOBS: config.JOBS }, rows, ratios };
}

export async function runBullmqBench(
  config: BullmqConfig,
  log: (line: string) => void,
): Promise<Omit<BullmqResults, 'started' | 'nodeVersion' | 'machine' | 'load'>> {
  if (spawnSync('redis-server', ['--version']).status !== 0)
    throw new Error('the bullmq part needs redis-server on the PATH (apt-get install redis-server); not found');
  const web = await runHttpBench(config.web, log, BULLMQ_VARIANTS);
  // Requests/s against raw BullMQ's (the report's "÷ reference" column).
  const raw = web.rows.find((r) => r.name === 'bq-raw');
  for (const row of web.rows) row.rpsRatio = raw ? row.rps / raw.rps : NaN;
  const worker = await runBullmqWorkers(config, log);
  return { ...web, worker };
}
