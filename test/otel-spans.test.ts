// Spans through an in-memory exporter: one span per attempt, its attributes, links, events and status,
// behind a real Koa server whose request span stands in for what @opentelemetry/instrumentation-http makes.
import { describe, expect, it } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { context, propagation, SpanKind, SpanStatusCode, trace, type Tracer } from '@opentelemetry/api';
import {
  AlwaysOffSampler,
  BasicTracerProvider,
  SimpleSpanProcessor,
  type ReadableSpan,
} from '@opentelemetry/sdk-trace-base';
import { ATTR_EXCEPTION_MESSAGE, ATTR_EXCEPTION_TYPE } from '@opentelemetry/semantic-conventions';
import {
  ATTR_MESSAGING_MESSAGE_ID as SEMCONV_MESSAGING_MESSAGE_ID,
  ATTR_MESSAGING_OPERATION_TYPE as SEMCONV_MESSAGING_OPERATION_TYPE,
  ATTR_MESSAGING_SYSTEM as SEMCONV_MESSAGING_SYSTEM,
} from '@opentelemetry/semantic-conventions/incubating';
import type Koa from 'koa';
import pino from 'pino';
import {
  getTaskContext,
  semconv,
  taskLog,
  type TaskManager,
  type TaskManagerOptions,
  type TaskRecord,
} from 'koa-taskflow';
import { interruptEndlessTask } from './helpers/interrupt.js';
import { capturePino } from './helpers/pino.js';
import { inMemorySpans } from './helpers/otel.js';
import { createManager, startApp, waitFor } from './helpers/server.js';

const exporter = inMemorySpans();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const tracer = provider.getTracer('test-http-server');

const spans = (): ReadableSpan[] => exporter.getFinishedSpans();
const named = (name: string): ReadableSpan[] => spans().filter((s) => s.name === name);
const only = (name: string): ReadableSpan => {
  const found = named(name);
  expect(found, `spans named ${name}`).toHaveLength(1);
  return found[0];
};

/** The request span as HTTP instrumentation makes it: SERVER, active through the handler, ended on `finish`. */
function requestSpans(app: Koa, requestTracer: Tracer = tracer): void {
  app.use((ctx, next) =>
    requestTracer.startActiveSpan(`${ctx.method} ${ctx.path}`, { kind: SpanKind.SERVER }, async (span) => {
      ctx.res.once('finish', () => span.end());
      await next();
    }),
  );
}

async function traced(setup: (app: Koa, manager: TaskManager) => void, options: TaskManagerOptions = {}) {
  return startApp(
    (app, manager) => {
      requestSpans(app);
      setup(app, manager);
    },
    { tracerProvider: provider, ...options },
  );
}

describe('attribute names', () => {
  it('are the semantic-convention names where a convention exists', () => {
    expect(semconv.ATTR_MESSAGING_SYSTEM).toBe(SEMCONV_MESSAGING_SYSTEM);
    expect(semconv.ATTR_MESSAGING_OPERATION_TYPE).toBe(SEMCONV_MESSAGING_OPERATION_TYPE);
    expect(semconv.ATTR_MESSAGING_MESSAGE_ID).toBe(SEMCONV_MESSAGING_MESSAGE_ID);
    expect(semconv.ATTR_ERROR_TYPE).toBe('error.type');
  });
});

describe('an attempt span', () => {
  it('is a CONSUMER span `task <name>` starting its own trace, linked to the request span, with every attribute', async () => {
    const { url, manager } = await traced((app, manager) => {
      const sendWelcome = manager.task(async function sendWelcome(_email: string) {}, { retries: 2 });
      app.use((ctx) => {
        ctx.body = ctx.tasks
          .with({ tags: { tenant: 'acme', plan: 'pro' }, priority: 7, idempotencyKey: 'welcome:a@b.c' })
          .addTask(sendWelcome, 'a@b.c');
      });
    });
    const response = await fetch(`${url}/signup`);
    const id = await response.text();
    await manager.drain();
    await waitFor(() => named('GET /signup').length === 1, 5_000, 'the request span');
    const request = only('GET /signup');
    const attempt = only('task sendWelcome');

    expect(attempt.kind).toBe(SpanKind.CONSUMER);
    expect(attempt.parentSpanContext).toBeUndefined();
    expect(attempt.spanContext().traceId).not.toBe(request.spanContext().traceId);
    expect(attempt.instrumentationScope.name).toBe('koa-taskflow');
    expect(attempt.links.map((l) => l.context)).toEqual([request.spanContext()]);
    expect(attempt.attributes).toEqual({
      'task.id': id,
      'task.name': 'sendWelcome',
      'task.attempt': 1,
      'task.max_attempts': 3,
      'task.priority': 7,
      'task.idempotency_key': 'welcome:a@b.c',
      'task.tag.tenant': 'acme',
      'task.tag.plan': 'pro',
      'messaging.system': 'koa-taskflow',
      'messaging.operation.type': 'process',
      'messaging.message.id': id,
      // What a Jaeger tag search finds a request's tasks by (Jaeger shows links only on the span holding them).
      'task.request.trace_id': request.spanContext().traceId,
      'task.request.span_id': request.spanContext().spanId,
    });

    // From the task to the request and back.
    const record = await manager.get(id);
    expect(record).toMatchObject({
      traceId: attempt.spanContext().traceId,
      spanId: attempt.spanContext().spanId,
      requestTraceId: request.spanContext().traceId,
      requestSpanId: request.spanContext().spanId,
      requestTraceFlags: request.spanContext().traceFlags,
    });
  });

  it('leaves out priority and idempotency key when unset, and has no link when added outside any span', async () => {
    const manager = createManager({ tracerProvider: provider });
    const id = manager.add(function nightly() {});
    await manager.drain();
    const attempt = only('task nightly');
    expect(attempt.links).toEqual([]);
    expect(attempt.attributes).toEqual({
      'task.id': id,
      'task.name': 'nightly',
      'task.attempt': 1,
      'task.max_attempts': 1,
      'messaging.system': 'koa-taskflow',
      'messaging.operation.type': 'process',
      'messaging.message.id': id,
    });
    const record = await manager.get(id);
    expect(record?.requestTraceId).toBeUndefined();
    expect(record?.requestSpanId).toBeUndefined();
  });

  it('links to the span that was active where the task was added, in every phase', async () => {
    const { url, manager } = await traced((app) => {
      app.use(async (ctx) => {
        ctx.tasks.addTask(function afterResponse() {});
        ctx.tasks.afterRoute.schedule(function afterRoute() {});
        await ctx.tasks.schedule(function now() {}).started;
        ctx.body = 'ok';
      });
    });
    await fetch(`${url}/phases`);
    await waitFor(() => named('GET /phases').length === 1, 5_000, 'the request span');
    await manager.drain();
    const request = only('GET /phases').spanContext();
    for (const name of ['afterResponse', 'afterRoute', 'now']) {
      expect(
        only(`task ${name}`).links.map((l) => l.context),
        name,
      ).toEqual([request]);
    }
  });
});

describe('the request span', () => {
  it('gets a `task.enqueued` event per task it adds, in order', async () => {
    const { url, manager } = await traced((app) => {
      app.use((ctx) => {
        const first = ctx.tasks.addTask(function first() {});
        const second = ctx.tasks.afterRoute.schedule(function second() {}).id;
        ctx.body = { first, second };
      });
    });
    const { first, second } = (await (await fetch(`${url}/two`)).json()) as { first: string; second: string };
    await waitFor(() => named('GET /two').length === 1, 5_000, 'the request span');
    await manager.drain();
    const events = only('GET /two').events.map((e) => ({ name: e.name, attributes: e.attributes }));
    expect(events).toEqual([
      { name: 'task.enqueued', attributes: { 'task.id': first, 'task.name': 'first' } },
      { name: 'task.enqueued', attributes: { 'task.id': second, 'task.name': 'second' } },
    ]);
  });
});

describe('the record of a finished traced task', () => {
  it('reads back as it ended: the same fields, in the same order, with the same values', async () => {
    const { url, manager } = await traced((app, manager) => {
      const work = manager.task(function work(n: number) {
        taskLog('did the work', { n });
      });
      app.use((ctx) => {
        const handle = ctx.tasks.afterResponse.schedule(work, 1);
        ctx.body = handle.id;
        // What the task's record was when it ended (the handle's copy), against what the store serves later.
        void handle.done.then((record) => ended.set(handle.id, record));
      });
    });
    const ended = new Map<string, TaskRecord>();
    const id = await (await fetch(`${url}/`)).text();
    await manager.drain();
    await waitFor(() => ended.has(id), 5_000, 'done');
    const atEnd = ended.get(id)!;
    expect(atEnd).toMatchObject({ status: 'success', attempts: 1, traceId: expect.any(String) });
    expect(atEnd.requestTraceId).toEqual(expect.any(String));
    for (const served of [await manager.get(id), (await manager.list()).find((r) => r.id === id)]) {
      expect(Object.keys(served!)).toEqual(Object.keys(atEnd));
      expect(JSON.stringify(served)).toBe(JSON.stringify(atEnd));
    }
  });
});

describe('status', () => {
  it('is OK for a successful attempt, with no exception event', async () => {
    const manager = createManager({ tracerProvider: provider });
    manager.add(function fine() {});
    await manager.drain();
    const attempt = only('task fine');
    expect(attempt.status).toEqual({ code: SpanStatusCode.OK });
    expect(attempt.events).toEqual([]);
    expect(attempt.attributes['error.type']).toBeUndefined();
  });

  it('is ERROR for a failed attempt, with an `exception` event and `error.type`', async () => {
    const manager = createManager({ tracerProvider: provider });
    manager.add(async function broken() {
      throw new RangeError('amount must be positive');
    });
    await manager.drain();
    const attempt = only('task broken');
    expect(attempt.status).toEqual({ code: SpanStatusCode.ERROR, message: 'amount must be positive' });
    expect(attempt.attributes['error.type']).toBe('RangeError');
    expect(attempt.events).toHaveLength(1);
    expect(attempt.events[0].name).toBe('exception');
    expect(attempt.events[0].attributes).toMatchObject({
      [ATTR_EXCEPTION_TYPE]: 'RangeError',
      [ATTR_EXCEPTION_MESSAGE]: 'amount must be positive',
    });
  });

  it('names what was thrown when it is not an Error, as the record does', async () => {
    const manager = createManager({ tracerProvider: provider });
    const id = manager.add(function throwsString() {
      throw 'plain string'; // eslint-disable-line @typescript-eslint/only-throw-error -- a thrown non-Error is the case
    });
    await manager.drain();
    const attempt = only('task throwsString');
    expect(attempt.attributes['error.type']).toBe('string');
    expect(attempt.status).toEqual({ code: SpanStatusCode.ERROR, message: 'plain string' });
    expect((await manager.get(id))?.error?.type).toBe('string');
  });

  it('shows a timeout as TaskTimeoutError', async () => {
    const manager = createManager({ tracerProvider: provider });
    manager.with({ timeout: 20 }).add(async function slow() {
      const { signal } = getTaskContext()!;
      await new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }));
    });
    await manager.drain();
    const attempt = only('task slow');
    expect(attempt.status.code).toBe(SpanStatusCode.ERROR);
    expect(attempt.attributes['error.type']).toBe('TaskTimeoutError');
    expect(attempt.events[0].attributes?.[ATTR_EXCEPTION_TYPE]).toBe('TaskTimeoutError');
  });

  it('shows an attempt cut short by shutdown as TaskInterruptedError', async () => {
    const manager = createManager({ tracerProvider: provider });
    await interruptEndlessTask(manager);
    const attempt = only('task endless');
    expect(attempt.status.code).toBe(SpanStatusCode.ERROR);
    expect(attempt.attributes['error.type']).toBe('TaskInterruptedError');
  });
});

describe('retries', () => {
  it('make one span per attempt, each linked to the request and to the previous attempt', async () => {
    const { url, manager } = await traced((app, manager) => {
      let calls = 0;
      const flaky = manager.task(
        async function flaky() {
          calls++;
          if (calls < 3) throw new Error(`failure ${calls}`);
        },
        { retries: 3 },
      );
      app.use((ctx) => {
        ctx.body = ctx.tasks.with({ tags: { tenant: 'acme' } }).addTask(flaky);
      });
    });
    const id = await (await fetch(`${url}/flaky`)).text();
    await manager.drain();
    await waitFor(() => named('GET /flaky').length === 1, 5_000, 'the request span');
    const request = only('GET /flaky').spanContext();
    const attempts = named('task flaky').sort(
      (a, b) => Number(a.attributes['task.attempt']) - Number(b.attributes['task.attempt']),
    );
    expect(attempts.map((s) => s.attributes['task.attempt'])).toEqual([1, 2, 3]);
    expect(attempts.map((s) => s.attributes['task.max_attempts'])).toEqual([4, 4, 4]);
    expect(attempts.map((s) => s.attributes['task.id'])).toEqual([id, id, id]);
    expect(attempts.map((s) => s.attributes['task.tag.tenant'])).toEqual(['acme', 'acme', 'acme']);
    expect(attempts.map((s) => s.status.code)).toEqual([SpanStatusCode.ERROR, SpanStatusCode.ERROR, SpanStatusCode.OK]);
    expect(new Set(attempts.map((s) => s.spanContext().traceId)).size).toBe(3);
    expect(attempts[0].links.map((l) => l.context)).toEqual([request]);
    expect(attempts[1].links.map((l) => l.context)).toEqual([request, attempts[0].spanContext()]);
    expect(attempts[2].links.map((l) => l.context)).toEqual([request, attempts[1].spanContext()]);
    // The record points at the attempt that decided the outcome.
    expect((await manager.get(id))?.spanId).toBe(attempts[2].spanContext().spanId);
  });

  it('give an attempt added outside a request only the previous-attempt link', async () => {
    const manager = createManager({ tracerProvider: provider });
    manager.with({ retries: 1 }).add(function twice() {
      if (getTaskContext()!.attempt === 1) throw new Error('first');
    });
    await manager.drain();
    const [first, second] = named('task twice').sort(
      (a, b) => Number(a.attributes['task.attempt']) - Number(b.attributes['task.attempt']),
    );
    expect(first.links).toEqual([]);
    expect(second.links.map((l) => l.context)).toEqual([first.spanContext()]);
  });
});

describe('taskLog', () => {
  it('adds a `task.log` event to the attempt span with message, level and fields (redacted)', async () => {
    const manager = createManager({ tracerProvider: provider });
    manager.add(function charge() {
      taskLog('charging card', {
        cents: 1900,
        live: false,
        currency: 'EUR',
        card: { last4: '4242' },
        codes: ['a', 'b'],
        password: 'hunter2',
      });
      taskLog('slow processor', { level: 'warn', ms: 812 });
    });
    await manager.drain();
    const attempt = only('task charge');
    expect(attempt.events.map((e) => ({ name: e.name, attributes: e.attributes }))).toEqual([
      {
        name: 'task.log',
        attributes: {
          'log.message': 'charging card',
          'log.level': 'info',
          cents: 1900,
          live: false,
          currency: 'EUR',
          card: '{"last4":"4242"}',
          codes: ['a', 'b'],
          password: '[redacted]',
        },
      },
      { name: 'task.log', attributes: { 'log.message': 'slow processor', 'log.level': 'warn', ms: 812 } },
    ]);
  });

  it('goes to the span of the attempt that logged, across awaits and timers', async () => {
    const manager = createManager({ tracerProvider: provider });
    manager.with({ retries: 1 }).add(async function twoTries() {
      const { attempt } = getTaskContext()!;
      await sleep(1);
      setTimeout(() => taskLog('from a timer', { attempt }), 0);
      await sleep(5);
      if (attempt === 1) throw new Error('again');
    });
    await manager.drain();
    for (const span of named('task twoTries')) {
      const logs = span.events.filter((e) => e.name === 'task.log');
      expect(logs.map((e) => e.attributes?.attempt)).toEqual([span.attributes['task.attempt']]);
    }
  });
});

describe('pino lines', () => {
  it('a taskLog is a span event before it is a pino line (span events first in the chain)', async () => {
    const eventsWhenWritten: string[][] = [];
    const logger = pino(
      { level: 'info' },
      {
        write() {
          // pino writes synchronously inside taskLog(): the attempt span as it is at that moment.
          eventsWhenWritten.push((getTaskContext()!.span as unknown as ReadableSpan).events.map((e) => e.name));
        },
      },
    );
    const manager = createManager({ tracerProvider: provider, logger });
    manager.add(function logsTwice() {
      taskLog('one');
      taskLog('two');
    });
    await manager.drain();
    expect(eventsWhenWritten).toEqual([['task.log'], ['task.log', 'task.log']]);
  });

  it('lifecycle lines carry the trace_id, span_id and trace_flags of the latest attempt span', async () => {
    const { logger, lines } = capturePino('debug');
    const manager = createManager({ tracerProvider: provider, logger });
    const id = manager.with({ retries: 1 }).add(function flaky() {
      if (getTaskContext()!.attempt === 1) throw new Error('once');
    });
    await manager.drain();
    const [first, second] = named('task flaky').map((s) => s.spanContext());
    const lifecycle = lines.filter((l) => (l.task as { id?: string } | undefined)?.id === id && l.status !== undefined);
    const ids = (l: Record<string, unknown>) => [l.status, l.trace_id, l.span_id, l.trace_flags];
    expect(lifecycle.map(ids)).toEqual([
      ['pending', undefined, undefined, undefined],
      ['running', first.traceId, first.spanId, '01'],
      ['pending', first.traceId, first.spanId, '01'],
      ['running', second.traceId, second.spanId, '01'],
      ['success', second.traceId, second.spanId, '01'],
    ]);
  });
});

describe('inside a task', () => {
  it('the attempt span is the active span: spans the task starts are its children', async () => {
    const manager = createManager({ tracerProvider: provider });
    const seen: { active: unknown; fromContext: unknown }[] = [];
    manager.add(async function withChildren() {
      seen.push({ active: trace.getActiveSpan(), fromContext: getTaskContext()!.span });
      await sleep(1);
      await tracer.startActiveSpan('SELECT users', async (db) => {
        await new Promise((resolve) => setTimeout(resolve, 1));
        tracer.startSpan('nested').end();
        db.end();
      });
    });
    await manager.drain();
    const attempt = only('task withChildren');
    const db = only('SELECT users');
    const nested = only('nested');
    expect(seen[0].active).toBe(seen[0].fromContext);
    expect(db.spanContext().traceId).toBe(attempt.spanContext().traceId);
    expect(db.parentSpanContext?.spanId).toBe(attempt.spanContext().spanId);
    expect(nested.parentSpanContext?.spanId).toBe(db.spanContext().spanId);
  });

  it('a context the task derives (baggage, a value of its own) keeps the attempt span and the task context', async () => {
    const manager = createManager({ tracerProvider: provider });
    const seen: { span: unknown; attempt: unknown; baggage: unknown; value: unknown; after: unknown }[] = [];
    manager.add(async function derives() {
      const key = Symbol.for('test.derived');
      const withBaggage = propagation.setBaggage(
        context.active(),
        propagation.createBaggage({ 'tenant.id': { value: 'acme' } }),
      );
      await context.with(withBaggage.setValue(key, 'mine'), async () => {
        await sleep(1);
        seen.push({
          span: trace.getActiveSpan(),
          attempt: getTaskContext()?.id,
          baggage: propagation.getBaggage(context.active())?.getEntry('tenant.id')?.value,
          value: context.active().getValue(key),
          after: context.active().deleteValue(key).getValue(key),
        });
      });
    });
    await manager.drain();
    const [record] = await manager.list({ name: 'derives' });
    expect(seen).toHaveLength(1);
    expect((seen[0].span as { spanContext(): { spanId: string } }).spanContext().spanId).toBe(
      only('task derives').spanContext().spanId,
    );
    expect(seen[0]).toMatchObject({ attempt: record.id, baggage: 'acme', value: 'mine', after: undefined });
  });

  it('the context holds only the attempt span: nothing of the request (span, baggage) leaks in', async () => {
    const inTask: { baggage: unknown; span: string | undefined }[] = [];
    const { url, manager } = await traced((app) => {
      app.use(async (ctx) => {
        const baggage = propagation.createBaggage({ 'user.id': { value: '42' } });
        await context.with(propagation.setBaggage(context.active(), baggage), async () => {
          ctx.tasks.addTask(function afterResponse() {
            inTask.push({
              baggage: propagation.getBaggage(context.active()),
              span: trace.getActiveSpan()?.spanContext().spanId,
            });
          });
          await ctx.tasks.schedule(function now() {
            inTask.push({
              baggage: propagation.getBaggage(context.active()),
              span: trace.getActiveSpan()?.spanContext().spanId,
            });
          }).done;
        });
        ctx.body = 'ok';
      });
    });
    await fetch(`${url}/ctx`);
    await waitFor(() => inTask.length === 2, 5_000, 'both tasks');
    await manager.drain();
    const attemptSpanIds = [...named('task afterResponse'), ...named('task now')].map((s) => s.spanContext().spanId);
    expect(inTask.map((t) => t.baggage)).toEqual([undefined, undefined]);
    expect(inTask.map((t) => t.span).sort()).toEqual(attemptSpanIds.sort());
  });
});

describe('sampling and no SDK', () => {
  it('a task whose span is not sampled still runs, with a non-recording span and no trace ids on the record', async () => {
    const unsampled = new BasicTracerProvider({
      sampler: new AlwaysOffSampler(),
      spanProcessors: [new SimpleSpanProcessor(exporter)],
    });
    const manager = createManager({ tracerProvider: unsampled });
    const recording: boolean[] = [];
    const id = manager.add(function quiet() {
      taskLog('not sampled');
      recording.push(getTaskContext()!.span.isRecording());
    });
    await manager.drain();
    expect(recording).toEqual([false]);
    expect(spans()).toEqual([]);
    const record = await manager.get(id);
    expect(record).toMatchObject({ status: 'success' });
    expect(record?.traceId).toBeUndefined();
  });

  it('with no tracer provider registered, spans are no-ops and the task behaves the same', async () => {
    // This file never registers a global tracer provider: the manager gets the API's no-op one.
    const manager = createManager();
    const seen: { recording: boolean; traceId: string }[] = [];
    const id = manager.add(function untraced() {
      taskLog('hello', { a: 1 });
      const span = getTaskContext()!.span;
      seen.push({ recording: span.isRecording(), traceId: span.spanContext().traceId });
    });
    await manager.drain();
    expect(seen).toEqual([{ recording: false, traceId: '00000000000000000000000000000000' }]);
    const record = await manager.get(id);
    expect(record).toMatchObject({ status: 'success', logs: [expect.objectContaining({ message: 'hello' })] });
    expect(record?.traceId).toBeUndefined();
    expect(spans()).toEqual([]);
  });
});
