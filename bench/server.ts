// One benchmark server process: `node bench/server.ts <variant> [redisPort]`. Prints `ready <port>`.
// `GET /__stats` waits until the variant's background work has drained, then answers with the process's CPU
// time so far and how many tasks ran, so the driver can charge every request with the work it caused.
import Koa from 'koa';
import pino from 'pino';
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  context,
  createContextKey,
  trace,
  type SpanContext,
  type Tracer,
} from '@opentelemetry/api';
import { oneTaskPerRequest, serveBenchApp } from './lib.ts';

const variant = process.argv[2];
const redisPort = Number(process.argv[3] ?? 0);
let ran = 0;
let drain = async (): Promise<void> => {};
const app = new Koa();
app.silent = true;

// ── tracing for the traced variants: a real SDK with a batch processor whose exporter drops everything ──
let tracer: Tracer | undefined;
const traced = ['traced', 'koa-span', 'handrolled-otel', 'handrolled-contract', 'handrolled-contract-batched'].includes(
  variant,
);
if (traced) {
  const { droppingTracerProvider } = await import('./tracing.ts');
  trace.setGlobalTracerProvider(droppingTracerProvider());
  tracer = trace.getTracer('bench');
  // The request span, as HTTP instrumentation would make it: active for the whole handler, ended on finish.
  app.use((ctx, next) =>
    tracer!.startActiveSpan(`${ctx.method} /`, { kind: SpanKind.SERVER }, (span) => {
      ctx.res.once('finish', () => span.end());
      return next();
    }),
  );
}
const logger = traced ? pino(pino.destination({ dest: '/dev/null', sync: true })) : undefined;

// Async in shape (a promise back) like the tasks users write, without an await for the linter to flag.
function noop(value?: unknown): Promise<unknown> {
  ran++;
  return Promise.resolve(value);
}

interface HandRecord {
  id: string;
  name: string;
  status: string;
  args: unknown[];
  tags: Record<string, string>;
  attempts: number;
  createdAt: number;
  startedAt: number | undefined;
  endedAt: number | undefined;
  durationMs: number | undefined;
  error: { type: string; message: string } | undefined;
  traceId: string | undefined;
  spanId: string | undefined;
  /** The request's span (`requestTraceId`/`requestSpanId` of a TaskRecord), set by the traced floor. */
  requestTraceId: string | undefined;
  requestSpanId: string | undefined;
  /** A TaskRecord's `logs`: none until the task logs (the same empty array until then). */
  logs: { time: number; level: string; message: string; attempt: number; fields?: Record<string, unknown> }[];
}
const NO_LOGS: HandRecord['logs'] = [];
type HandBody = (record: HandRecord, request: SpanContext | undefined) => Promise<unknown>;

/**
 * The floor of the contract, by hand: a task id, a record with its status and times kept in a bounded history
 * (the last 10 000 finished, dropped oldest first, as MemoryStore does), the request's span context for a link,
 * the task started on the response's `close` under a concurrency limit of 16 with a queue, and its failure
 * caught into the record. `body(record, requestSpanContext)` runs the work; it resolves with the error or
 * undefined. `batched`: the tasks of every response that closed in a turn of the event loop start together at
 * its end (one setImmediate), as koa-taskflow starts them, instead of each in its response's `close`.
 */
function handrolledTasks(body: HandBody, batched = false): void {
  const records = new Map<string, HandRecord>();
  const ended: string[] = [];
  let endedHead = 0;
  const queue: [HandRecord, SpanContext | undefined][] = [];
  let running = 0;
  let idle: (() => void) | undefined;
  const start = (record: HandRecord, request: SpanContext | undefined): void => {
    running++;
    record.status = 'running';
    const startedAt = Date.now();
    record.startedAt = startedAt;
    record.attempts = 1;
    void body(record, request).then((error) => {
      record.endedAt = Date.now();
      record.durationMs = record.endedAt - startedAt;
      record.status = error === undefined ? 'success' : 'failed';
      if (error !== undefined)
        record.error =
          error instanceof Error
            ? { type: error.name, message: error.message }
            : { type: typeof error, message: typeof error === 'string' ? error : 'a non-Error was thrown' };
      ended.push(record.id);
      if (records.size > 10_000) records.delete(ended[endedHead++]);
      if (endedHead > 1024 && endedHead * 2 > ended.length) {
        ended.splice(0, endedHead);
        endedHead = 0;
      }
      running--;
      if (queue.length > 0) start(...queue.shift()!);
      else if (running === 0) idle?.();
    });
  };
  const startOrQueue = (record: HandRecord, request: SpanContext | undefined) =>
    running < 16 ? start(record, request) : queue.push([record, request]);
  let closed: [HandRecord, SpanContext | undefined][] = [];
  const startClosed = () => {
    const now = closed;
    closed = [];
    for (const [record, request] of now) startOrQueue(record, request);
  };
  app.use(async (ctx, next) => {
    const id = randomUUID();
    const requestSpan = tracer && trace.getActiveSpan();
    const request = requestSpan?.spanContext();
    requestSpan?.addEvent('task.enqueued', { 'task.id': id, 'task.name': 'work' });
    const record: HandRecord = {
      id,
      name: 'work',
      status: 'pending',
      args: [1],
      tags: {},
      attempts: 0,
      createdAt: Date.now(),
      startedAt: undefined,
      endedAt: undefined,
      durationMs: undefined,
      error: undefined,
      traceId: undefined,
      spanId: undefined,
      requestTraceId: undefined,
      requestSpanId: undefined,
      logs: NO_LOGS,
    };
    records.set(id, record);
    if (!batched) ctx.res.once('close', () => startOrQueue(record, request));
    else
      ctx.res.once('close', () => {
        if (closed.push([record, request]) === 1) setImmediate(startClosed);
      });
    await next();
  });
  drain = () => (running === 0 ? Promise.resolve() : new Promise<void>((resolve) => (idle = resolve)));
}

switch (variant) {
  case 'bare':
  case 'bare-again':
  case 'koa-span':
    break;
  case 'busy-loop': {
    // A known cost to read the others by: 2.5 µs of CPU after each response, allocating nothing.
    app.use(async (ctx, next) => {
      ctx.res.once('close', () => {
        const end = performance.now() + 0.0025;
        while (performance.now() < end);
      });
      await next();
    });
    break;
  }
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
    const manager = new TaskManager({
      logger,
      store: variant === 'untraced-short-history' ? new MemoryStore({ maxRecords: 100 }) : undefined,
    });
    const task = manager.task(
      variant === 'traced'
        ? function work(n: number) {
            taskLog('did the work', { n });
            return noop();
          }
        : function work(n: number) {
            return noop(n);
          },
    );
    drain = oneTaskPerRequest(app, manager, task);
    break;
  }
  case 'handrolled': {
    // What a user writes without a library: run the work after `finish`, off the response's tick.
    app.use(async (ctx, next) => {
      ctx.res.once('finish', () => setImmediate(() => void noop()));
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
          const span = tracer!.startSpan(
            'task work',
            { kind: SpanKind.CONSUMER, links: request ? [{ context: request }] : [] },
            ROOT_CONTEXT,
          );
          span.setAttributes({ 'task.name': 'work', 'task.attempt': 1 });
          span.addEvent('task.log', { 'log.message': 'did the work', n: 1 });
          const sc = span.spanContext();
          logger!.info(
            { trace_id: sc.traceId, span_id: sc.spanId, trace_flags: '01', task: { name: 'work', attempt: 1 }, n: 1 },
            'did the work',
          );
          ran++;
          span.end();
        }),
      );
      await next();
    });
    break;
  }
  case 'handrolled-contract':
  case 'handrolled-contract-batched': {
    // By hand, what the contract asks of one traced task beyond a span, an event and a log line: everything of
    // 'handrolled-record' below, plus the `task.enqueued` event on the request span, the attempt's
    // attributes (the request's ids among them), the span active while the work runs (so its own spans are
    // children) with the task beside it in the context (what getTaskContext() and taskLog() find the task by;
    // the log below finds it there), an OK status, the log fields masked under a secret-looking key (the
    // default of option `redact`), the log kept on the record (`logs`, as a TaskRecord has it) and
    // `task`/`tags` and the request's ids on the line. No retries, options, observers or handle.
    const tags = {};
    const TASK = createContextKey('the running task');
    const SECRET = /passw(or)?d|secret|token|authori[sz]ation|api[-_]?key|cookie|private[-_]?key|credential/i;
    const masked = (fields: Record<string, unknown>): Record<string, unknown> => {
      let copy: Record<string, unknown> | undefined;
      for (const key in fields) if (SECRET.test(key)) (copy ??= { ...fields })[key] = '[redacted]';
      return copy ?? fields;
    };
    const log = (message: string, unsafe: Record<string, unknown>) => {
      const active = context.active();
      const task = active.getValue(TASK) as HandRecord;
      const span = trace.getSpan(active)!;
      const sc = span.spanContext();
      const fields = masked(unsafe);
      span.addEvent('task.log', { 'log.message': message, 'log.level': 'info', ...fields });
      task.logs = [{ time: Date.now(), level: 'info', message, attempt: 1, fields }];
      logger!.info(
        {
          ...fields,
          trace_id: sc.traceId,
          span_id: sc.spanId,
          trace_flags: '01',
          request_trace_id: task.requestTraceId,
          request_span_id: task.requestSpanId,
          task: { id: task.id, name: task.name, attempt: 1 },
          tags,
        },
        message,
      );
    };
    handrolledTasks((record, request) => {
      const { id } = record;
      // task.id and task.name at the start, the rest once it records: what docs/opentelemetry.md promises a
      // sampler ("a sampler deciding an attempt is shown its task.id and task.name"), which taskSampler needs.
      const span = tracer!.startSpan(
        'task work',
        {
          kind: SpanKind.CONSUMER,
          links: request ? [{ context: request }] : [],
          attributes: { 'task.id': id, 'task.name': 'work' },
        },
        ROOT_CONTEXT,
      );
      span.setAttributes({
        'task.attempt': 1,
        'task.max_attempts': 1,
        'messaging.system': 'koa-taskflow',
        'messaging.operation.type': 'process',
        'messaging.message.id': id,
      });
      if (request !== undefined) {
        span.setAttribute('task.request.trace_id', request.traceId);
        span.setAttribute('task.request.span_id', request.spanId);
        record.requestTraceId = request.traceId;
        record.requestSpanId = request.spanId;
      }
      const sc = span.spanContext();
      record.traceId = sc.traceId;
      record.spanId = sc.spanId;
      const done = (error: unknown) => {
        span.setStatus({ code: error === undefined ? SpanStatusCode.OK : SpanStatusCode.ERROR });
        span.end();
        return error;
      };
      return context
        .with(trace.setSpan(ROOT_CONTEXT, span).setValue(TASK, record), () => {
          log('did the work', { n: 1 });
          return noop();
        })
        .then(() => done(undefined), done);
    }, variant === 'handrolled-contract-batched');
    break;
  }
  case 'handrolled-record': {
    // By hand, what the contract asks of one untraced task beyond running it after the response: see
    // handrolledTasks(). The work reads its context, as getTaskContext() would.
    const taskContext = new AsyncLocalStorage<HandRecord>();
    const work = function work(n: unknown) {
      if (taskContext.getStore() !== undefined) ran++;
      return Promise.resolve(n);
    };
    handrolledTasks((record) =>
      taskContext.run(record, work, record.args[0]).then(
        () => undefined,
        (error: unknown) => error,
      ),
    );
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
    // The worker runs in this process too, so its CPU is charged to the requests like ours is. Its processor
    // returns nothing: handed the job back, BullMQ would store the job as its own return value (a cycle).
    const worker = new Worker('bench', () => noop(), { connection, concurrency: 16 });
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

serveBenchApp(
  app,
  () => drain(),
  () => ({ ran }),
);
process.on('SIGTERM', () => process.exit(0));
