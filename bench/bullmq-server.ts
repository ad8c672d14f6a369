// One web process of the BullMQ part (bench/bullmq.ts): `node bench/bullmq-server.ts <variant> <redisPort>`,
// prints `ready <port>`. Each request enqueues one job and nothing in this process runs it (a web process only
// enqueues): `GET /__stats` answers once every add has reached Redis, so the CPU time of the add is charged
// to its request, and counts the jobs waiting in the queue as `ran` (one per request served). Each process has
// a queue of its own, so two servers side by side do not share one.
//   bq-raw         raw BullMQ: `queue.add` on the response's `finish` (bq-raw-again: the same, for an A/A row)
//   bq-raw-otel    the same with bullmq-otel as the queue's `telemetry` (a producer span per add, its context
//                  in the job), under the request span
//   bq-untraced    koa-taskflow with bullmqEngine: `ctx.tasks.addTask(task, 1)`
//   bq-traced      the same under the request span, with a pino logger (the request link travels in the job)
// The traced two share one OpenTelemetry setup: bench/tracing.ts (a real SDK, batch processor, exporter that
// drops), the W3C propagator a NodeSDK registers, and a request span per request as HTTP instrumentation makes.
import Koa from 'koa';
import pino from 'pino';
import type { JobsOptions } from 'bullmq';
import { SpanKind, context, propagation, trace } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { isMain, oneTaskPerRequest, serveBenchApp } from './lib.ts';

/** What both sides keep in Redis: the retention bullmqEngine sets by default (7 days, 10 000 completed). */
export const KEEP: Pick<JobsOptions, 'removeOnComplete' | 'removeOnFail'> = {
  removeOnComplete: { age: 7 * 24 * 3600, count: 10_000 },
  removeOnFail: { age: 7 * 24 * 3600 },
};

/** The tracing of the traced variants (web and worker): the SDK, the propagator, a request span per request. */
export async function setUpTracing(app?: Koa): Promise<void> {
  const { droppingTracerProvider } = await import('./tracing.ts');
  trace.setGlobalTracerProvider(droppingTracerProvider());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  const tracer = trace.getTracer('bench');
  app?.use((ctx, next) =>
    tracer.startActiveSpan(`${ctx.method} /`, { kind: SpanKind.SERVER }, (span) => {
      ctx.res.once('finish', () => span.end());
      return next();
    }),
  );
}

async function main(variant: string, redisPort: number): Promise<void> {
  const connection = { host: '127.0.0.1', port: redisPort };
  const queueName = `${variant}-${process.pid}`;
  const app = new Koa();
  app.silent = true;
  const traced = variant === 'bq-traced' || variant === 'bq-raw-otel';
  if (traced) await setUpTracing(app);
  let drain: () => Promise<unknown>;
  const { Queue } = await import('bullmq');
  switch (variant) {
    case 'bq-raw':
    case 'bq-raw-again':
    case 'bq-raw-otel': {
      const { BullMQOtel } = await import('bullmq-otel');
      const queue = new Queue(queueName, {
        connection,
        ...(variant === 'bq-raw-otel' && { telemetry: new BullMQOtel({ tracerName: 'bench' }) }),
      });
      await queue.waitUntilReady();
      const adding = new Set<Promise<unknown>>();
      app.use(async (ctx, next) => {
        // The request's context, so that bullmq-otel's producer span is the request span's child (on `finish`
        // the request's context is no longer the active one).
        const active = traced ? context.active() : undefined;
        ctx.res.once('finish', () => {
          const add = () => queue.add('work', { n: 1 }, KEEP);
          const added = active === undefined ? add() : context.with(active, add);
          adding.add(added);
          void added.finally(() => adding.delete(added));
        });
        await next();
      });
      drain = async () => {
        while (adding.size > 0) await Promise.allSettled(adding);
      };
      break;
    }
    case 'bq-untraced':
    case 'bq-traced': {
      const { TaskManager } = await import('koa-taskflow');
      const { bullmqEngine } = await import('koa-taskflow/bullmq');
      const manager = new TaskManager({
        logger: traced ? pino(pino.destination({ dest: '/dev/null', sync: true })) : undefined,
        engine: bullmqEngine({ connection, queue: queueName }),
      });
      // Registered here as in the workers; never run in this process.
      const task = manager.task(function work(n: number) {
        return Promise.resolve(n);
      });
      await manager.start();
      drain = oneTaskPerRequest(app, manager, task);
      break;
    }
    default:
      throw new Error(`unknown variant ${variant}`);
  }
  app.use((ctx) => {
    ctx.body = 'ok';
  });
  // Read after the adds have settled, outside the bursts' requests.
  const counter = new Queue(queueName, { connection });
  let jobs = 0;
  serveBenchApp(
    app,
    async () => {
      await drain();
      jobs = await counter.count();
    },
    () => ({ ran: jobs }),
  );
  process.on('SIGTERM', () => process.exit(0));
}

if (isMain(import.meta.url)) await main(process.argv[2], Number(process.argv[3]));
