// One worker run of the BullMQ part (bench/bullmq.ts): `node bench/bullmq-worker.ts <variant> <redisPort>
// <warmup> <jobs>`. It fills a queue of its own with warmup + jobs jobs (added the way its producer adds them,
// before anything is measured), starts one worker at concurrency 16 on it, lets the first `warmup` jobs run (the
// JIT settles, BullMQ's fetch loop is full), then measures the next `jobs`: the process's CPU time (all its
// threads) and the wall time until the last has completed. Prints one JSON line: `{ cpuPerJob, jobsPerSecond }`.
//   w-raw        a plain BullMQ `Worker`, concurrency 16, jobs added by `queue.addBulk`
//   w-raw-otel   the same with bullmq-otel as the queue's and the worker's `telemetry`, added under a span
//   w-ours       koa-taskflow's worker (`manager.work()`, bullmqEngine's default concurrency, 16), tasks added by
//                `manager.add` in the same process before it works
//   w-traced     the same with the OpenTelemetry SDK and a pino logger, tasks added under a span
// The body is the same everywhere: it counts the job and returns.
import pino from 'pino';
import { trace } from '@opentelemetry/api';
import { KEEP, setUpTracing } from './bullmq-server.ts';
import { isMain } from './lib.ts';

export const BULLMQ_WORKER_VARIANTS = ['w-raw', 'w-raw-otel', 'w-ours', 'w-traced'] as const;
export type WorkerVariant = (typeof BULLMQ_WORKER_VARIANTS)[number];

export interface WorkerSample {
  /** µs of the worker process's CPU time per job. */
  cpuPerJob: number;
  jobsPerSecond: number;
}

const CONCURRENCY = 16;

async function main(variant: WorkerVariant, redisPort: number, warmup: number, jobs: number): Promise<void> {
  const connection = { host: '127.0.0.1', port: redisPort, maxRetriesPerRequest: null };
  const queueName = `${variant}-${process.pid}`;
  const total = warmup + jobs;
  const traced = variant === 'w-traced' || variant === 'w-raw-otel';
  if (traced) await setUpTracing();
  // The producer's adds run under a span, as a request's would: the job carries its context.
  const underSpan = <T>(fn: () => Promise<T>): Promise<T> =>
    traced ? trace.getTracer('bench').startActiveSpan('GET /', (span) => fn().finally(() => span.end())) : fn();
  const { Queue, Worker } = await import('bullmq');
  const { BullMQOtel } = await import('bullmq-otel');
  const telemetry = variant === 'w-raw-otel' ? { telemetry: new BullMQOtel({ tracerName: 'bench' }) } : {};
  const queue = new Queue(queueName, { connection, ...telemetry });
  let ran = 0;
  const body = (): Promise<void> => {
    ran++;
    return Promise.resolve();
  };
  let work: () => Promise<unknown>;
  let close: () => Promise<unknown>;
  if (variant === 'w-raw' || variant === 'w-raw-otel') {
    for (let i = 0; i < total; i += 1000)
      await underSpan(() =>
        queue.addBulk(
          Array.from({ length: Math.min(1000, total - i) }, () => ({ name: 'work', data: { n: 1 }, opts: KEEP })),
        ),
      );
    let stopWorker = async (): Promise<unknown> => undefined;
    work = async () => {
      const worker = new Worker(queueName, body, { connection, concurrency: CONCURRENCY, ...telemetry });
      stopWorker = () => worker.close();
      await worker.waitUntilReady();
    };
    close = () => stopWorker();
  } else {
    const { TaskManager } = await import('koa-taskflow');
    const { bullmqEngine } = await import('koa-taskflow/bullmq');
    const manager = new TaskManager({
      logger: traced ? pino(pino.destination({ dest: '/dev/null', sync: true })) : undefined,
      engine: bullmqEngine({ connection, queue: queueName }),
      maxQueued: total,
    });
    const task = manager.task(function work() {
      return body();
    });
    await manager.start();
    for (let i = 0; i < total; i += 1000)
      await underSpan(() => {
        for (let k = i; k < Math.min(total, i + 1000); k++) manager.add(task);
        return manager.drain();
      });
    work = () => manager.work();
    close = () => manager.shutdown();
  }
  if ((await queue.count()) !== total) throw new Error(`${variant}: the queue holds ${await queue.count()} jobs`);
  const until = async (done: () => boolean | Promise<boolean>) => {
    while (!(await done())) await new Promise((r) => setTimeout(r, 5));
  };
  global.gc?.();
  await work();
  await until(() => ran >= warmup);
  const cpu = process.cpuUsage();
  const start = performance.now();
  await until(() => ran >= total);
  // The last jobs' completions reach Redis after their bodies ran.
  await until(async () => {
    const counts = await queue.getJobCounts('active', 'waiting');
    return counts.active + counts.waiting === 0;
  });
  const seconds = (performance.now() - start) / 1000;
  const used = process.cpuUsage(cpu);
  const sample: WorkerSample = { cpuPerJob: (used.user + used.system) / jobs, jobsPerSecond: jobs / seconds };
  await close();
  await queue.obliterate({ force: true });
  await queue.close();
  console.log(JSON.stringify(sample));
}

if (isMain(import.meta.url))
  await main(
    process.argv[2] as WorkerVariant,
    Number(process.argv[3]),
    Number(process.argv[4]),
    Number(process.argv[5]),
  );
