// One benchmark server process: `node bench/server.js <variant> [redisPort]`. Prints `ready <port>`.
// `GET /__stats` waits until the variant's background work has drained, then answers with the process's CPU
// time so far and how many tasks ran, so the driver can charge every request with the work it caused.
import Koa from 'koa';
import pino from 'pino';
import { randomUUID } from 'node:crypto';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, context, trace } from '@opentelemetry/api';
import { serveBenchApp } from './lib.js';

const variant = process.argv[2];
const redisPort = Number(process.argv[3] ?? 0);
let ran = 0;
let drain = async () => {};
const app = new Koa();
app.silent = true;

// ── tracing for the traced variants: a real SDK with a batch processor whose exporter drops everything ──
let tracer;
const traced = ['traced', 'koa-span', 'handrolled-otel', 'handrolled-contract'].includes(variant);
if (traced) {
  const { BasicTracerProvider, BatchSpanProcessor } = await import('@opentelemetry/sdk-trace-base');
  const { AsyncLocalStorageContextManager } = await import('@opentelemetry/context-async-hooks');
  const dropping = { export: (_spans, done) => done({ code: 0 }), shutdown: async () => {} };
  const provider = new BasicTracerProvider({ spanProcessors: [new BatchSpanProcessor(dropping, { maxQueueSize: 65_536 })] });
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  trace.setGlobalTracerProvider(provider);
  tracer = trace.getTracer('bench');
  // The request span, as HTTP instrumentation would make it: active for the whole handler, ended on finish.
  app.use((ctx, next) =>
    tracer.startActiveSpan(`${ctx.method} /`, { kind: SpanKind.SERVER }, (span) => {
      ctx.res.once('finish', () => span.end());
      return next();
    }),
  );
}
const logger = traced ? pino(pino.destination({ dest: '/dev/null', sync: true })) : undefined;

async function noop() {
  ran++;
}

switch (variant) {
  case 'bare':
  case 'koa-span':
    break;
  case 'mounted': {
    const { TaskManager } = await import('koa-taskflow');
    const manager = new TaskManager();
    app.use(manager.middleware());
    break;
  }
  case 'untraced':
  case 'untraced-short-history':
  case 'traced': {
    const { TaskManager, taskLog, MemoryStore } = await import('koa-taskflow');
    // The short-history variant: the same task with a store that keeps only the last 100 records, to show
    // what keeping 10 000 finished records in the heap costs (the garbage collector copies each one).
    const manager = new TaskManager({ logger, store: variant === 'untraced-short-history' ? new MemoryStore({ maxRecords: 100 }) : undefined });
    const task = manager.task(
      variant === 'traced'
        ? async function work(n) {
            taskLog('did the work', { n });
            ran++;
          }
        : async function work(_n) {
            ran++;
          },
    );
    app.use(manager.middleware());
    app.use(async (ctx, next) => {
      ctx.tasks.addTask(task, 1);
      await next();
    });
    drain = () => manager.drain();
    break;
  }
  case 'handrolled': {
    // What a user writes without a library: run the work after `finish`, off the response's tick.
    app.use(async (ctx, next) => {
      ctx.res.once('finish', () => setImmediate(noop));
      await next();
    });
    break;
  }
  case 'handrolled-otel': {
    // The same plus the observability we give: a span linked to the request, an event, a pino line.
    app.use(async (ctx, next) => {
      const request = trace.getActiveSpan()?.spanContext();
      ctx.res.once('finish', () =>
        setImmediate(() => {
          const span = tracer.startSpan('task work', { kind: SpanKind.CONSUMER, links: request ? [{ context: request }] : [] }, ROOT_CONTEXT);
          span.setAttributes({ 'task.name': 'work', 'task.attempt': 1 });
          span.addEvent('task.log', { 'log.message': 'did the work', n: 1 });
          const sc = span.spanContext();
          logger.info({ trace_id: sc.traceId, span_id: sc.spanId, trace_flags: '01', task: { name: 'work', attempt: 1 }, n: 1 }, 'did the work');
          ran++;
          span.end();
        }),
      );
      await next();
    });
    break;
  }
  case 'handrolled-contract': {
    // By hand, what the contract asks of one traced task beyond a span, an event and a log line: a task id, the
    // `task.enqueued` event on the request span, the attempt's attributes, the span active while the work runs
    // (so its own spans are children), an OK status, and `task`/`tags` on the line. No record, no retries.
    const tags = {};
    app.use(async (ctx, next) => {
      const id = randomUUID();
      const requestSpan = trace.getActiveSpan();
      const request = requestSpan?.spanContext();
      requestSpan?.addEvent('task.enqueued', { 'task.id': id, 'task.name': 'work' });
      ctx.res.once('finish', () =>
        setImmediate(() => {
          const span = tracer.startSpan('task work', { kind: SpanKind.CONSUMER, links: request ? [{ context: request }] : [] }, ROOT_CONTEXT);
          span.setAttributes({ 'task.id': id, 'task.name': 'work', 'task.attempt': 1, 'task.max_attempts': 1, 'messaging.system': 'koa-taskflow', 'messaging.operation.type': 'process', 'messaging.message.id': id });
          context.with(trace.setSpan(ROOT_CONTEXT, span), () => {
            span.addEvent('task.log', { 'log.message': 'did the work', 'log.level': 'info', n: 1 });
            const sc = span.spanContext();
            logger.info({ n: 1, trace_id: sc.traceId, span_id: sc.spanId, trace_flags: '01', task: { id, name: 'work', attempt: 1 }, tags }, 'did the work');
            ran++;
          });
          span.setStatus({ code: SpanStatusCode.OK });
          span.end();
        }),
      );
      await next();
    });
    break;
  }
  case 'p-queue': {
    const { default: PQueue } = await import('p-queue');
    const queue = new PQueue({ concurrency: 16 });
    app.use(async (ctx, next) => {
      ctx.res.once('finish', () => void queue.add(noop));
      await next();
    });
    drain = () => queue.onIdle();
    break;
  }
  case 'bullmq': {
    const { Queue, Worker } = await import('bullmq');
    const connection = { host: '127.0.0.1', port: redisPort };
    const queue = new Queue('bench', { connection });
    await queue.obliterate({ force: true }).catch(() => {});
    // The worker runs in this process too, so its CPU is charged to the requests like ours is.
    const worker = new Worker('bench', noop, { connection, concurrency: 16 });
    await worker.waitUntilReady();
    app.use(async (ctx, next) => {
      ctx.res.once('finish', () => void queue.add('work', { n: 1 }, { removeOnComplete: true }));
      await next();
    });
    drain = async () => {
      for (;;) {
        const counts = await queue.getJobCounts('waiting', 'active', 'delayed');
        if (counts.waiting + counts.active + counts.delayed === 0) return;
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    break;
  }
  default:
    throw new Error(`unknown variant ${variant}`);
}

app.use((ctx) => {
  ctx.body = 'ok';
});

serveBenchApp(app, () => drain(), () => ({ ran }));
process.on('SIGTERM', () => process.exit(0));
