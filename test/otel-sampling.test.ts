// Sampling and the two trace modes, through a real Koa server whose request span stands in for HTTP
// instrumentation's, with an SDK tracer provider and an in-memory exporter. The end-to-end versions (the
// instrumentation entry, an app's own NodeSDK, a task recovered by another process) are in otel-e2e.
import { describe, expect, it } from 'vitest';
import { SpanKind, trace, type Tracer } from '@opentelemetry/api';
import {
  AlwaysOnSampler,
  BasicTracerProvider,
  ParentBasedSampler,
  SimpleSpanProcessor,
  TraceIdRatioBasedSampler,
  type ReadableSpan,
  type Sampler,
} from '@opentelemetry/sdk-trace-base';
import type Koa from 'koa';
import { getTaskContext, taskLog, taskSampler, type TaskManager, type TaskManagerOptions } from 'koa-taskflow';
import { capturePino } from './helpers/pino.js';
import { inMemorySpans } from './helpers/otel.js';
import { createManager, startApp } from './helpers/server.js';

const exporter = inMemorySpans();

const providerWith = (sampler: Sampler) =>
  new BasicTracerProvider({ sampler, spanProcessors: [new SimpleSpanProcessor(exporter)] });
const ratio = (r: number) => new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(r) });

/** A Koa app with a request span (SERVER, active through the handler) from `tracer`. */
async function tracedApp(tracer: Tracer, setup: (app: Koa, manager: TaskManager) => void, options: TaskManagerOptions) {
  return startApp((app, manager) => {
    app.use((ctx, next) =>
      tracer.startActiveSpan(`${ctx.method} ${ctx.path}`, { kind: SpanKind.SERVER }, async (span) => {
        ctx.res.once('finish', () => span.end());
        await next();
      }),
    );
    setup(app, manager);
  }, options);
}

const attemptsOf = (taskId: string): ReadableSpan[] =>
  exporter.getFinishedSpans().filter((s) => s.attributes['task.id'] === taskId);

/**
 * `count` requests, each adding one task; every other task fails its first attempt and is retried. Returns,
 * per request, whether its span was exported and how many of its task's attempts were.
 */
async function requestsWithTasks(sampler: Sampler, count: number, options: TaskManagerOptions = {}) {
  const provider = providerWith(sampler);
  const failedOnce = new Set<number>();
  const { url, manager } = await tracedApp(
    provider.getTracer('http'),
    (app, m) => {
      const work = m.task(
        async function work(n: number) {
          if (n % 2 === 0 && !failedOnce.has(n)) {
            failedOnce.add(n);
            throw new Error('first attempt fails');
          }
        },
        { retries: 1 },
      );
      app.use((ctx) => {
        ctx.body = {
          id: ctx.tasks.addTask(work, Number(ctx.query.n)),
          traceId: trace.getActiveSpan()!.spanContext().traceId,
        };
      });
    },
    { tracerProvider: provider, ...options },
  );
  const requests: { id: string; traceId: string; n: number }[] = [];
  for (let n = 0; n < count; n++)
    requests.push({ ...((await (await fetch(`${url}/?n=${n}`)).json()) as { id: string; traceId: string }), n });
  await manager.drain();
  const exported = new Set(exporter.getFinishedSpans().map((s) => s.spanContext().traceId));
  return requests.map((r) => ({
    ...r,
    requestKept: exported.has(r.traceId),
    attemptsKept: attemptsOf(r.id).length,
    attemptsRun: r.n % 2 === 0 ? 2 : 1,
  }));
}

describe('taskSampler', () => {
  it('keeps or drops every attempt of a task with the request that added it, retries included, under a 50% ratio', async () => {
    const results = await requestsWithTasks(taskSampler(ratio(0.5)), 60);
    for (const r of results)
      expect({ n: r.n, attempts: r.attemptsKept }).toEqual({ n: r.n, attempts: r.requestKept ? r.attemptsRun : 0 });
    // Both outcomes happened: the check above is not vacuous.
    expect(results.some((r) => r.requestKept)).toBe(true);
    expect(results.some((r) => !r.requestKept)).toBe(true);
  });

  it('without it, the same setup keeps tasks and requests apart, and the manager says so once, naming the fix', async () => {
    const { logger, lines } = capturePino('warn');
    const results = await requestsWithTasks(ratio(0.5), 60, { logger });
    expect(results.some((r) => r.attemptsKept !== (r.requestKept ? r.attemptsRun : 0))).toBe(true);
    const warnings = lines.filter((l) => String(l.msg).includes('taskSampler'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0].msg).toMatch(
      /request added a task whose attempt span was (sampled|dropped).*new NodeSDK\(\{ sampler: taskSampler\(yourSampler\) \}\)/,
    );
  });

  it('leaves a task added outside any span to the wrapped sampler as a root, and its retries follow that first decision', async () => {
    const provider = providerWith(taskSampler(new TraceIdRatioBasedSampler(0.5)));
    const manager = createManager({ tracerProvider: provider });
    const flaky = manager.task(
      async function flaky() {
        if (getTaskContext()!.attempt === 1) throw new Error('first attempt fails');
      },
      { retries: 1 },
    );
    const ids = Array.from({ length: 40 }, () => manager.add(flaky));
    await manager.drain();
    const kept = ids.map((id) => attemptsOf(id).length);
    expect(new Set(kept)).toEqual(new Set([0, 2]));
  });

  it('shows the wrapped sampler the task.id and task.name of an attempt it decides; a kept attempt gets every attribute after', async () => {
    const seen: Record<string, unknown>[] = [];
    const sampler = taskSampler({
      shouldSample: (_c, _t, _name, _kind, attributes) => {
        seen.push({ ...attributes });
        return { decision: attributes['task.name'] === 'kept' ? 2 : 0 };
      },
      toString: () => 'ByName',
    });
    const manager = createManager({ tracerProvider: providerWith(sampler) });
    const kept = manager.task(async function kept() {}, { tags: { tenant: 'acme' } });
    const dropped = manager.task(async function dropped() {});
    const keptId = manager.add(kept);
    const droppedId = manager.add(dropped);
    await manager.drain();
    expect(seen).toEqual([
      { 'task.id': keptId, 'task.name': 'kept' },
      { 'task.id': droppedId, 'task.name': 'dropped' },
    ]);
    expect(attemptsOf(droppedId)).toEqual([]);
    expect(attemptsOf(keptId)[0].attributes).toEqual({
      'task.id': keptId,
      'task.name': 'kept',
      'task.attempt': 1,
      'task.max_attempts': 1,
      'task.tag.tenant': 'acme',
      'messaging.system': 'koa-taskflow',
      'messaging.operation.type': 'process',
      'messaging.message.id': keptId,
    });
  });

  it('passes every other span to the wrapped sampler', () => {
    const seen: string[] = [];
    const sampler = taskSampler({
      shouldSample: (_c, _t, name) => {
        seen.push(name);
        return { decision: 0 };
      },
      toString: () => 'Recording',
    });
    const provider = providerWith(sampler);
    provider.getTracer('t').startSpan('GET /').end();
    expect(seen).toEqual(['GET /']);
    expect(sampler.toString()).toBe('TaskSampler{Recording}');
    expect(() => taskSampler({} as never)).toThrow(/taskSampler: argument "delegate" must be an OpenTelemetry sampler/);
  });
});

describe("trace: 'child'", () => {
  it('makes every attempt a child of the request span, in its trace, with the same name and attributes; a retry links to the attempt before', async () => {
    const provider = providerWith(new AlwaysOnSampler());
    let calls = 0;
    const { url, manager } = await tracedApp(
      provider.getTracer('http'),
      (app, m) => {
        const flaky = m.task(
          async function flaky() {
            taskLog('trying');
            if (calls++ === 0) throw new Error('first attempt fails');
          },
          { retries: 1, trace: 'child', tags: { tenant: 'acme' } },
        );
        app.use((ctx) => {
          ctx.body = { id: ctx.tasks.addTask(flaky) };
        });
      },
      { tracerProvider: provider },
    );
    const { id } = (await (await fetch(url)).json()) as { id: string };
    await manager.drain();
    const request = exporter.getFinishedSpans().find((s) => s.kind === SpanKind.SERVER)!;
    const [first, second] = attemptsOf(id).sort(
      (a, b) => Number(a.attributes['task.attempt']) - Number(b.attributes['task.attempt']),
    );
    for (const attempt of [first, second]) {
      expect(attempt.name).toBe('task flaky');
      expect(attempt.kind).toBe(SpanKind.CONSUMER);
      expect(attempt.spanContext().traceId).toBe(request.spanContext().traceId);
      expect(attempt.parentSpanContext?.spanId).toBe(request.spanContext().spanId);
      expect(attempt.attributes).toMatchObject({
        'task.id': id,
        'task.name': 'flaky',
        'task.tag.tenant': 'acme',
        'task.request.trace_id': request.spanContext().traceId,
      });
      expect(attempt.events.map((e) => e.name)).toContain('task.log');
    }
    expect(first.links).toEqual([]);
    expect(second.links.map((l) => l.context.spanId)).toEqual([first.spanContext().spanId]);
    expect(second.status.code).toBe(1);
  });

  it('can be the default for every task through the manager defaults, and a task option can turn it back to link', async () => {
    const provider = providerWith(new AlwaysOnSampler());
    const { url, manager } = await tracedApp(
      provider.getTracer('http'),
      (app, m) => {
        const inTrace = m.task(async function inTrace() {});
        const linked = m.task(async function linked() {}, { trace: 'link' });
        app.use((ctx) => {
          ctx.body = { child: ctx.tasks.addTask(inTrace), link: ctx.tasks.addTask(linked) };
        });
      },
      { tracerProvider: provider, defaults: { trace: 'child' } },
    );
    const ids = (await (await fetch(url)).json()) as { child: string; link: string };
    await manager.drain();
    const request = exporter
      .getFinishedSpans()
      .find((s) => s.kind === SpanKind.SERVER)!
      .spanContext();
    const [child] = attemptsOf(ids.child);
    const [link] = attemptsOf(ids.link);
    expect(child.parentSpanContext?.spanId).toBe(request.spanId);
    expect(link.parentSpanContext).toBeUndefined();
    expect(link.spanContext().traceId).not.toBe(request.traceId);
    expect(link.links.map((l) => l.context.spanId)).toEqual([request.spanId]);
  });

  it('is refused with a message naming the option when it is neither link nor child', () => {
    const manager = createManager();
    expect(() => manager.task(async function bad() {}, { trace: 'parent' as never })).toThrow(
      /option "trace" must be "link" or "child", got "parent"/,
    );
  });
});

describe('a task that adds a task', () => {
  it.each(['link', 'child'] as const)(
    'in %s mode relates the inner task to the attempt that added it',
    async (mode) => {
      const provider = providerWith(new AlwaysOnSampler());
      const manager = createManager({ tracerProvider: provider, defaults: { trace: mode } });
      let innerId = '';
      const inner = manager.task(async function inner() {});
      const outer = manager.task(async function outer() {
        innerId = manager.add(inner);
      });
      const outerId = provider.getTracer('t').startActiveSpan('job', (span) => {
        const id = manager.add(outer);
        span.end();
        return id;
      });
      await manager.drain();
      await manager.drain();
      const [outerSpan] = attemptsOf(outerId);
      const [innerSpan] = attemptsOf(innerId);
      expect(outerSpan.events.map((e) => [e.name, e.attributes?.['task.id']])).toContainEqual([
        'task.enqueued',
        innerId,
      ]);
      if (mode === 'child') {
        expect(innerSpan.parentSpanContext?.spanId).toBe(outerSpan.spanContext().spanId);
        expect(innerSpan.spanContext().traceId).toBe(outerSpan.spanContext().traceId);
      } else {
        expect(innerSpan.parentSpanContext).toBeUndefined();
        expect(innerSpan.links.map((l) => l.context.spanId)).toEqual([outerSpan.spanContext().spanId]);
      }
    },
  );
});

describe('pino lines of a task', () => {
  it('carry request_trace_id and request_span_id beside trace_id and span_id, task logs and lifecycle lines alike', async () => {
    const provider = providerWith(new AlwaysOnSampler());
    const { logger, lines } = capturePino('debug');
    const { url, manager } = await tracedApp(
      provider.getTracer('http'),
      (app, m) => {
        const work = m.task(async function work() {
          taskLog('working');
        });
        app.use((ctx) => {
          ctx.body = { id: ctx.tasks.addTask(work) };
        });
      },
      { tracerProvider: provider, logger },
    );
    const { id } = (await (await fetch(url)).json()) as { id: string };
    await manager.drain();
    const request = exporter
      .getFinishedSpans()
      .find((s) => s.kind === SpanKind.SERVER)!
      .spanContext();
    const [attempt] = attemptsOf(id);
    const taskLines = lines.filter((l) => (l.task as { id?: string } | undefined)?.id === id);
    expect(taskLines.map((l) => l.msg)).toEqual(
      expect.arrayContaining(['working', 'task work running', 'task work success']),
    );
    for (const line of taskLines.filter((l) => l.msg !== 'task work pending')) {
      expect(line).toMatchObject({
        request_trace_id: request.traceId,
        request_span_id: request.spanId,
        trace_id: attempt.spanContext().traceId,
      });
    }
  });
});
