// End to end, as a user runs it: `node --import koa-taskflow/instrumentation app.js` in a child process, the
// real OTLP/HTTP exporter posting JSON to a real receiver on 127.0.0.1, real HTTP requests to the app, and the
// app's pino lines read from its stdout.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { loggingErrorHandler, setGlobalErrorHandler } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { BasicTracerProvider, BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { taskLog } from 'koa-taskflow';
import { onCleanup, startApp, waitFor } from './helpers/server.js';
import { startNode } from './helpers/child.js';
import { countBy, readTaskLog } from './helpers/durable-app.js';
import { tempDir } from './helpers/files.js';
import { refusedPort, startOtlpReceiver, type ReceivedSpan } from './helpers/otlp-receiver.js';

const repo = fileURLToPath(new URL('..', import.meta.url));
const appScript = fileURLToPath(new URL('./fixtures/otel-app.js', import.meta.url));
const durableScript = fileURLToPath(new URL('./fixtures/durable-app.js', import.meta.url));

interface PinoLine {
  level: number;
  msg: string;
  trace_id?: string;
  span_id?: string;
  trace_flags?: string;
  task?: { id: string; name: string; attempt: number };
  tags?: Record<string, string>;
  status?: string;
  port?: number;
  [field: string]: unknown;
}

interface App {
  url: string;
  lines: PinoLine[];
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(signal: NodeJS.Signals): void;
}

/**
 * Start the fixture app under the instrumentation entry (or another `--import` entry: an app's own SDK
 * setup); resolves once it listens. Killed after the test.
 */
async function startInstrumentedApp(env: Record<string, string>, entry = 'koa-taskflow/instrumentation'): Promise<App> {
  // Only the OTEL_* variables the test sets: none leak in from the environment running the tests.
  const base = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('OTEL_')));
  const child = spawn(process.execPath, ['--import', entry, appScript], {
    cwd: repo,
    env: { ...base, OTEL_SERVICE_NAME: 'otel-e2e', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: PinoLine[] = [];
  let buffer = '';
  child.stdout.on('data', (chunk: Buffer) => {
    buffer += chunk.toString();
    const parts = buffer.split('\n');
    buffer = parts.pop()!;
    for (const part of parts) if (part.trim() !== '') lines.push(JSON.parse(part) as PinoLine);
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  onCleanup(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  await waitFor(
    () => lines.some((l) => l.msg === 'listening') || child.exitCode !== null,
    15_000,
    `the app to listen; stderr: ${stderr}`,
  );
  const port = lines.find((l) => l.msg === 'listening')?.port;
  if (port === undefined) throw new Error(`the app did not start: ${stderr}`);
  return { url: `http://127.0.0.1:${port}`, lines, stderr: () => stderr, exited, kill: (signal) => child.kill(signal) };
}

const taskEnded = (lines: PinoLine[], id: string) =>
  lines.some((l) => l.task?.id === id && (l.status === 'success' || l.status === 'failed'));

describe('node --import koa-taskflow/instrumentation', () => {
  it('exports request and task spans linked both ways, with events, metrics, and pino lines carrying the same ids', async () => {
    const receiver = await startOtlpReceiver();
    const app = await startInstrumentedApp({
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      // Nothing is exported before shutdown: what arrives was flushed by the signal handling.
      OTEL_BSP_SCHEDULE_DELAY: '600000',
      OTEL_METRIC_EXPORT_INTERVAL: '600000',
      OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: 'http/json',
    });
    const response = await fetch(`${app.url}/signup`);
    expect(response.status).toBe(202);
    const { welcome, charge } = (await response.json()) as { welcome: string; charge: string };
    await waitFor(() => taskEnded(app.lines, welcome) && taskEnded(app.lines, charge), 10_000, 'both tasks to end');
    expect(receiver.spans).toEqual([]);

    // Ctrl-C (SIGINT; the test below uses SIGTERM): the app has no handler of its own, so the entry flushes,
    // then lets the signal end the process.
    app.kill('SIGINT');
    expect(await app.exited).toEqual({ code: null, signal: 'SIGINT' });
    expect(app.stderr()).toBe('');
    const spans = receiver.spans;
    expect(new Set(spans.map((s) => s.service))).toEqual(new Set(['otel-e2e']));
    const byId = new Map(spans.map((s) => [s.spanId, s]));

    // The request: pino instrumentation stamped the handler's log line with the span the handler ran in.
    const requestLine = app.lines.find((l) => l.msg === 'signup received')!;
    expect(requestLine.trace_id).toMatch(/^[0-9a-f]{32}$/);
    const handlerSpan = byId.get(requestLine.span_id!)!;
    expect(handlerSpan.traceId).toBe(requestLine.trace_id);
    // …which sits under the HTTP server span of the request.
    const ancestors: ReceivedSpan[] = [];
    for (
      let s: ReceivedSpan | undefined = handlerSpan;
      s !== undefined;
      s = s.parentSpanId ? byId.get(s.parentSpanId) : undefined
    )
      ancestors.push(s);
    expect(ancestors.at(-1)).toMatchObject({
      kind: 2,
      scope: '@opentelemetry/instrumentation-http',
      parentSpanId: undefined,
    });
    expect(ancestors.some((s) => s.scope === '@opentelemetry/instrumentation-koa')).toBe(true);
    // Request → tasks: one `task.enqueued` event per task.
    expect(handlerSpan.events.filter((e) => e.name === 'task.enqueued')).toEqual([
      { name: 'task.enqueued', attributes: { 'task.id': welcome, 'task.name': 'sendWelcome' } },
      { name: 'task.enqueued', attributes: { 'task.id': charge, 'task.name': 'chargeCard' } },
    ]);

    // Tasks → request: each attempt is a CONSUMER span in a trace of its own, linked to the handler's span.
    const requestLink = { traceId: handlerSpan.traceId, spanId: handlerSpan.spanId };
    const attempts = spans.filter((s) => s.scope === 'koa-taskflow');
    expect(attempts.map((s) => s.name).sort()).toEqual(['task chargeCard', 'task chargeCard', 'task sendWelcome']);
    for (const attempt of attempts) {
      expect(attempt).toMatchObject({ kind: 5, parentSpanId: undefined });
      expect(attempt.traceId).not.toBe(handlerSpan.traceId);
      expect(attempt.links[0]).toEqual(requestLink);
      expect(attempt.attributes).toMatchObject({
        'task.tag.tenant': 'acme',
        'messaging.system': 'koa-taskflow',
        'messaging.operation.type': 'process',
      });
    }
    const sendWelcome = attempts.find((s) => s.name === 'task sendWelcome')!;
    expect(sendWelcome.attributes).toMatchObject({
      'task.id': welcome,
      'messaging.message.id': welcome,
      'task.attempt': 1,
      'task.max_attempts': 1,
    });
    expect(sendWelcome.status.code).toBe(1);
    expect(sendWelcome.events).toEqual([
      { name: 'task.log', attributes: { 'log.message': 'sending welcome mail', 'log.level': 'info', email: 'a@b.c' } },
      {
        name: 'task.log',
        attributes: { 'log.message': 'welcome mail sent', 'log.level': 'info', email: 'a@b.c', provider: 'smtp' },
      },
    ]);
    // The HTTP call the task made is a child of its attempt span.
    const call = spans.find((s) => s.kind === 3 && s.parentSpanId === sendWelcome.spanId);
    expect(call?.traceId).toBe(sendWelcome.traceId);

    const [first, second] = attempts
      .filter((s) => s.name === 'task chargeCard')
      .sort((a, b) => Number(a.attributes['task.attempt']) - Number(b.attributes['task.attempt']));
    expect(first.attributes).toMatchObject({
      'task.id': charge,
      'task.attempt': 1,
      'task.max_attempts': 3,
      'error.type': 'Error',
    });
    expect(first.status).toEqual({ code: 2, message: 'card processor timed out' });
    expect(first.events.map((e) => e.name)).toEqual(['task.log', 'exception']);
    expect(first.events[1].attributes).toMatchObject({
      'exception.type': 'Error',
      'exception.message': 'card processor timed out',
    });
    expect(second.attributes['task.attempt']).toBe(2);
    expect(second.status.code).toBe(1);
    expect(second.links).toEqual([requestLink, { traceId: first.traceId, spanId: first.spanId }]);

    // pino lines written by taskLog carry the ids of the attempt span that logged them.
    const logLines = app.lines.filter((l) => l.task !== undefined && l.status === undefined);
    expect(logLines.map((l) => l.msg)).toEqual([
      'sending welcome mail',
      'welcome mail sent',
      'charging card',
      'charging card',
    ]);
    for (const line of logLines) {
      const span = attempts.find(
        (s) => s.attributes['task.id'] === line.task!.id && s.attributes['task.attempt'] === line.task!.attempt,
      )!;
      expect(line).toMatchObject({
        trace_id: span.traceId,
        span_id: span.spanId,
        trace_flags: '01',
        tags: { tenant: 'acme' },
      });
      expect(line.task!.name).toBe(span.attributes['task.name']);
    }
    expect(logLines.filter((l) => l.msg === 'charging card').map((l) => [l.level, l.cents])).toEqual([
      [40, 1900],
      [40, 1900],
    ]);

    // Metrics were flushed at shutdown too.
    const attemptsMetric = receiver.metrics.filter((m) => m.name === 'task.attempts' && m.scope === 'koa-taskflow');
    const counted = Object.fromEntries(
      attemptsMetric
        .flatMap((m) => m.points)
        .map((p) => [`${String(p.attributes['task.name'])}/${String(p.attributes['task.status'])}`, p.value]),
    );
    expect(counted).toEqual({ 'sendWelcome/success': 1, 'chargeCard/failed': 1, 'chargeCard/success': 1 });
  });

  it('leaves shutdown to an app with its own SIGTERM handler and exports the spans of tasks that end during it', async () => {
    const receiver = await startOtlpReceiver();
    const app = await startInstrumentedApp({
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_BSP_SCHEDULE_DELAY: '600000',
      OTEL_METRICS_EXPORTER: 'none',
      APP_HANDLES_SIGNALS: '1',
    });
    const { report } = (await (await fetch(`${app.url}/report`)).json()) as { report: string };
    await waitFor(() => app.lines.some((l) => l.msg === 'report started'), 10_000, 'the report task to start');
    app.kill('SIGTERM');
    expect(await app.exited).toEqual({ code: 0, signal: null });
    expect(app.stderr()).toBe('');
    expect(app.lines.at(-1)?.msg).toBe('app shut down');
    const span = receiver.spans.find((s) => s.attributes['task.id'] === report);
    expect(span?.status.code).toBe(1);
    expect(span?.events.map((e) => e.attributes['log.message'])).toEqual([
      'report started',
      'report finished during shutdown',
    ]);
  });

  it('with the OTLP endpoint refusing connections, requests and tasks behave the same and the process ends cleanly', async () => {
    const port = await refusedPort();
    const app = await startInstrumentedApp({
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
      // Export early and often, so failures happen while requests and tasks run.
      OTEL_BSP_SCHEDULE_DELAY: '20',
      OTEL_METRIC_EXPORT_INTERVAL: '50',
      OTEL_METRIC_EXPORT_TIMEOUT: '40',
    });
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const response = await fetch(`${app.url}/signup`);
      expect(response.status).toBe(202);
      const body = (await response.json()) as { welcome: string; charge: string };
      ids.push(body.welcome, body.charge);
    }
    await waitFor(() => ids.every((id) => taskEnded(app.lines, id)), 10_000, 'every task to end');
    const outcomes = ids.map(
      (id) =>
        app.lines.find((l) => l.task?.id === id && l.status !== undefined && ['success', 'failed'].includes(l.status))!
          .status,
    );
    // chargeCard fails its very first attempt only (then retries): every task ends in success.
    expect(outcomes).toEqual(ids.map(() => 'success'));
    // Tracing still stamps the lines even though nothing can be exported.
    expect(
      app.lines.filter((l) => l.msg === 'sending welcome mail').every((l) => /^[0-9a-f]{32}$/.test(l.trace_id ?? '')),
    ).toBe(true);
    app.kill('SIGTERM');
    // No unhandled rejection (Node would exit with code 1 and print it), no hang, nothing on stderr.
    expect(await app.exited).toEqual({ code: null, signal: 'SIGTERM' });
    expect(app.stderr()).toBe('');
  });

  it('with a collector that drops every connection, the exports are tried, fail, and the app does not notice', async () => {
    const receiver = await startOtlpReceiver();
    const { createServer } = await import('node:http');
    let dropped = 0;
    const broken = createServer((req) => {
      dropped++;
      req.socket.destroy();
    });
    await new Promise<void>((resolve) => broken.listen(0, '127.0.0.1', resolve));
    onCleanup(() => new Promise<void>((resolve) => broken.close(() => resolve())));
    const app = await startInstrumentedApp({
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${(broken.address() as { port: number }).port}`,
      OTEL_BSP_SCHEDULE_DELAY: '20',
      // Give up on each export (retries included) after a second, rather than the default ten.
      OTEL_EXPORTER_OTLP_TIMEOUT: '1000',
      OTEL_METRICS_EXPORTER: 'none',
    });
    const { welcome, charge } = (await (await fetch(`${app.url}/signup`)).json()) as {
      welcome: string;
      charge: string;
    };
    await waitFor(() => taskEnded(app.lines, welcome) && taskEnded(app.lines, charge), 10_000, 'both tasks to end');
    await waitFor(() => dropped > 0, 10_000, 'an export attempt');
    const health = await fetch(`${app.url}/health`);
    expect(await health.text()).toBe('ok');
    app.kill('SIGTERM');
    expect(await app.exited).toEqual({ code: null, signal: 'SIGTERM' });
    expect(app.stderr()).toBe('');
    expect(receiver.requests).toEqual([]);
  });

  it('does nothing with OTEL_SDK_DISABLED=true: no export, no ids on log lines, the default signal behaviour', async () => {
    const receiver = await startOtlpReceiver();
    const app = await startInstrumentedApp({
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_SDK_DISABLED: 'true',
      OTEL_BSP_SCHEDULE_DELAY: '20',
    });
    const { welcome } = (await (await fetch(`${app.url}/signup`)).json()) as { welcome: string };
    await waitFor(() => taskEnded(app.lines, welcome), 10_000, 'the task to end');
    expect(app.lines.filter((l) => l.trace_id !== undefined)).toEqual([]);
    app.kill('SIGTERM');
    expect(await app.exited).toEqual({ code: null, signal: 'SIGTERM' });
    expect(receiver.requests).toEqual([]);
  });
});

describe('the real OTLP exporter in process, endpoint refusing connections', () => {
  it('leaves requests and tasks as they are, and its failures never become unhandled rejections', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    onCleanup(() => {
      process.off('unhandledRejection', onUnhandled);
    });
    // Export failures go to OpenTelemetry's global error handler: collect them to see the exporter did try.
    const exportErrors: unknown[] = [];
    setGlobalErrorHandler((error) => exportErrors.push(error));
    onCleanup(() => setGlobalErrorHandler(loggingErrorHandler()));

    const port = await refusedPort();
    const exporter = new OTLPTraceExporter({ url: `http://127.0.0.1:${port}/v1/traces`, timeoutMillis: 1_000 });
    const provider = new BasicTracerProvider({
      spanProcessors: [new BatchSpanProcessor(exporter, { scheduledDelayMillis: 10 })],
    });
    const { url, manager } = await startApp(
      (app, manager) => {
        const notify = manager.task(function notify(n: number) {
          taskLog('notifying', { n });
        });
        app.use((ctx) => {
          ctx.body = ctx.tasks.addTask(notify, Number(ctx.query.n));
        });
      },
      { tracerProvider: provider },
    );
    const ids: string[] = [];
    for (let n = 0; n < 5; n++) {
      const response = await fetch(`${url}/?n=${n}`);
      expect(response.status).toBe(200);
      ids.push(await response.text());
    }
    await manager.drain();
    for (const id of ids)
      expect(await manager.get(id)).toMatchObject({
        status: 'success',
        traceId: expect.stringMatching(/^[0-9a-f]{32}$/),
      });
    await waitFor(() => exportErrors.length > 0, 10_000, 'a failed export');
    // An explicit flush or shutdown may report the failure to its caller (the instrumentation entry catches it).
    await provider.shutdown().catch(() => {});
    expect(unhandled).toEqual([]);
  });
});

describe('sampling a request and its tasks together, end to end', () => {
  /**
   * 60 requests to /work (every even one's task fails once and is retried), then SIGTERM: per request,
   * whether its server span reached the receiver, and how many of its task's attempts did.
   */
  async function requestsAndAttempts(env: Record<string, string>, entry?: string) {
    const receiver = await startOtlpReceiver();
    const app = await startInstrumentedApp(
      {
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        OTEL_BSP_SCHEDULE_DELAY: '50',
        OTEL_METRICS_EXPORTER: 'none',
        ...env,
      },
      entry,
    );
    const requests: { id: string; traceId: string; n: number }[] = [];
    for (let n = 0; n < 60; n++)
      requests.push({
        ...((await (await fetch(`${app.url}/work?n=${n}`)).json()) as { id: string; traceId: string }),
        n,
      });
    await waitFor(() => requests.every((r) => taskEnded(app.lines, r.id)), 15_000, 'every task to end');
    app.kill('SIGTERM');
    await app.exited;
    const servers = new Set(receiver.spans.filter((s) => s.kind === 2).map((s) => s.traceId));
    return requests.map((r) => ({
      n: r.n,
      requestKept: servers.has(r.traceId),
      attempts: receiver.spans.filter((s) => s.attributes['task.id'] === r.id).length,
      attemptsRun: r.n % 2 === 0 ? 2 : 1,
    }));
  }

  const expectTogether = (results: Awaited<ReturnType<typeof requestsAndAttempts>>) => {
    for (const r of results)
      expect({ n: r.n, attempts: r.attempts }).toEqual({ n: r.n, attempts: r.requestKept ? r.attemptsRun : 0 });
    expect(results.some((r) => r.requestKept)).toBe(true);
    expect(results.some((r) => !r.requestKept)).toBe(true);
  };

  it('under OTEL_TRACES_SAMPLER=parentbased_traceidratio at 0.5 with the instrumentation entry: every request and its attempts, retries included', async () => {
    expectTogether(
      await requestsAndAttempts({ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.5' }),
    );
  });

  it("with an app's own NodeSDK whose 50% sampler is wrapped in taskSampler (examples/own-sdk-tracing.js, as docs/opentelemetry.md shows it)", async () => {
    expect(readFileSync(join(repo, 'docs/opentelemetry.md'), 'utf8')).toContain(
      '```js\n' + readFileSync(join(repo, 'examples/own-sdk-tracing.js'), 'utf8') + '```',
    );
    expectTogether(
      await requestsAndAttempts({}, fileURLToPath(new URL('../examples/own-sdk-tracing.js', import.meta.url))),
    );
  });

  it('for tasks recovered by a second process after the first was SIGKILLed, the request decision travels in the record', async () => {
    const receiver = await startOtlpReceiver();
    const dir = tempDir();
    const env = {
      STORE: 'sqlite',
      DB: join(dir, 'tasks.db'),
      TASK_LOG: join(dir, 'tasks.log'),
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
      OTEL_TRACES_SAMPLER_ARG: '0.5',
      OTEL_BSP_SCHEDULE_DELAY: '20',
      OTEL_METRICS_EXPORTER: 'none',
      LEASE_MS: '600',
      ORPHAN_MS: '200',
    };
    const instrumented = { nodeArgs: ['--import', 'koa-taskflow/instrumentation'], cwd: repo };
    const first = startNode(durableScript, [], { ...env, MODE: 'hold' }, instrumented);
    const firstUrl = `http://127.0.0.1:${(JSON.parse(await first.waitForLine(/"listening"/, 15_000)) as { listening: number }).listening}`;
    // The callers' own trace context decides each request (parent-based): half sampled, half not.
    const added: { id: string; traceId: string; sampled: boolean }[] = [];
    for (let i = 0; i < 16; i++) {
      const traceId = randomBytes(16).toString('hex');
      const sampled = i % 2 === 0;
      const response = await fetch(`${firstUrl}/add?n=${i}`, {
        headers: { traceparent: `00-${traceId}-${randomBytes(8).toString('hex')}-${sampled ? '01' : '00'}` },
      });
      added.push({ id: ((await response.json()) as { id: string }).id, traceId, sampled });
    }
    await waitFor(() => countBy(env.TASK_LOG, 'start').size >= 4, 10_000, 'tasks to start in the first process');
    first.process.kill('SIGKILL');
    await first.exited;

    const second = startNode(durableScript, [], { ...env, MODE: 'fast' }, instrumented);
    await second.waitForLine(/"listening"/, 15_000);
    await waitFor(
      () => added.every((a) => readTaskLog(env.TASK_LOG).some((l) => l.id === a.id && l.event === 'done')),
      20_000,
      'every task to run',
    );
    const attemptsOf = (id: string) => receiver.spans.filter((s) => s.attributes['task.id'] === id);
    await waitFor(
      () => added.filter((a) => a.sampled).every((a) => attemptsOf(a.id).length > 0),
      10_000,
      'the sampled tasks to be exported',
    );
    second.process.kill('SIGTERM');
    await second.exited;
    for (const task of added) {
      const attempts = attemptsOf(task.id);
      if (!task.sampled) expect({ id: task.id, attempts }).toEqual({ id: task.id, attempts: [] });
      for (const attempt of attempts) expect(attempt.links.map((l) => l.traceId)).toContain(task.traceId);
    }
  });
});
