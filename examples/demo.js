// `npm run demo`: the signup app on embedded defaults (no services), traced in-process, driven by a burst of
// its own requests. Each request is printed as a tree once its tasks have ended: the request span, then
// every task attempt span linked to it with a waterfall bar on the request's timeline, and its log events.
// In a terminal a status line below the trees counts queued / running / retrying / finished tasks live.
// `--once` exits after the burst; `--every <seconds>` resends it while serving. With OTEL_EXPORTER_OTLP_ENDPOINT
// set, spans and metrics are also exported over OTLP/HTTP (e.g. to the compose stack); pino lines always go to
// .tmp/demo-logs.ndjson.
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SpanKind, SpanStatusCode, metrics, trace } from '@opentelemetry/api';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { BatchSpanProcessor, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { resourceFromAttributes } from '@opentelemetry/resources';
import pino from 'pino';
import { createSignupApp } from './signup-app.js';

const once = process.argv.includes('--once');
// `--every <seconds>`: while serving, send the burst again every so often (keeps the Grafana rate panels moving).
const everyArg = process.argv.indexOf('--every');
const everyMs = everyArg === -1 ? 0 : Number(process.argv[everyArg + 1]) * 1000;
if (everyArg !== -1 && !(everyMs > 0)) throw new RangeError('--every needs a number of seconds, e.g. --every 5');
const requests = Number(process.env.DEMO_REQUESTS ?? 6);
// The status line rewrites itself with \r, so only in a terminal (DEMO_LIVE=1/0 overrides).
let live = process.env.DEMO_LIVE ? process.env.DEMO_LIVE === '1' : Boolean(process.stdout.isTTY);
const color = process.stdout.isTTY && !process.env.NO_COLOR;
const paint = (code) => (text) => (color ? `\x1b[${code}m${text}\x1b[0m` : String(text));
const dim = paint(2);
const green = paint(32);
const red = paint(31);
const cyan = paint(36);
const bold = paint(1);

// `npm run demo | head` closes stdout early: stop writing instead of dying on EPIPE.
let stdoutClosed = false;
process.stdout.on('error', (error) => {
  if (error.code !== 'EPIPE') throw error;
  stdoutClosed = true;
});

// ── tracing: keep the spans of unprinted trees in memory; optionally export spans and metrics over OTLP ──
const finished = [];
const enqueuedIds = (span) => span.events.filter((e) => e.name === 'task.enqueued').map((e) => e.attributes['task.id']);
const collector = {
  export(spans, done) {
    for (const span of spans) {
      // Task attempts (linked) and requests that added tasks; other requests (the dashboard's) are not drawn.
      if (span.links.length > 0) finished.push(span);
      else if (enqueuedIds(span).length > 0) {
        finished.push(span);
        // A request whose tasks ended before it did (eager ones) is printed now.
        setImmediate(() => void printRequest(span.spanContext().spanId));
      }
    }
    done({ code: 0 });
  },
  shutdown: async () => {},
};
const resource = resourceFromAttributes({ 'service.name': process.env.OTEL_SERVICE_NAME ?? 'koa-taskflow-demo' });
const spanProcessors = [new SimpleSpanProcessor(collector)];
const otlpEndpoint = process.env.OTEL_EXPORTER_OTLP_ENDPOINT;
let meterProvider;
if (otlpEndpoint) {
  // Both exporters read the standard OTEL_EXPORTER_OTLP_* variables and post JSON to <endpoint>/v1/traces and /v1/metrics.
  const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-http');
  const { OTLPMetricExporter } = await import('@opentelemetry/exporter-metrics-otlp-http');
  const { MeterProvider, PeriodicExportingMetricReader } = await import('@opentelemetry/sdk-metrics');
  spanProcessors.push(new BatchSpanProcessor(new OTLPTraceExporter()));
  const exportIntervalMillis = Number(process.env.OTEL_METRIC_EXPORT_INTERVAL ?? 5_000);
  meterProvider = new MeterProvider({
    resource,
    readers: [new PeriodicExportingMetricReader({ exporter: new OTLPMetricExporter(), exportIntervalMillis })],
  });
  // Global, and before the app builds its TaskManager: the manager takes its meter from the global provider.
  metrics.setGlobalMeterProvider(meterProvider);
}
const provider = new NodeTracerProvider({ resource, spanProcessors });
provider.register();
const tracer = trace.getTracer('koa-taskflow-demo');

// ── pino lines go to a file (the one the compose stack's collector tails), so the terminal shows the trees ──
const logPath = fileURLToPath(new URL('../.tmp/demo-logs.ndjson', import.meta.url));
mkdirSync(new URL('../.tmp/', import.meta.url), { recursive: true });
writeFileSync(logPath, ''); // each run starts the file afresh
const logger = pino({ level: 'debug' }, pino.destination({ dest: logPath, sync: false }));

// ── live progress: every unfinished task's state, from the lifecycle events ──
const ENDED = ['success', 'failed', 'cancelled', 'interrupted'];
const unfinished = new Map(); // task id → { name, state: 'queued' | 'running' | 'retrying' }
const ended = { success: 0, failed: 0, cancelled: 0, interrupted: 0 };
let served = 0;
const observer = {
  async onLifecycle(event) {
    if (ENDED.includes(event.status)) {
      unfinished.delete(event.taskId);
      ended[event.status] += 1;
    } else {
      // A task back to `pending` with an error is waiting for its next attempt.
      const state = event.status === 'running' ? 'running' : event.error ? 'retrying' : 'queued';
      unfinished.set(event.taskId, { name: event.name, state });
    }
    statusChanged();
    if (!ENDED.includes(event.status)) return;
    const record = await manager.get(event.taskId);
    if (record?.requestSpanId) setImmediate(() => printRequest(record.requestSpanId));
  },
};

const BAR = 24; // waterfall columns
const LABEL = 38; // where the bars start
let statusShown = false;
let statusTimer;
let lastDraw = 0;
function write(text) {
  if (!stdoutClosed) process.stdout.write(text);
}
/** Print whole lines above the status line, then redraw it. */
function out(text) {
  clearStatus();
  write(`${text}\n`);
  if (live) drawStatus();
}
function clearStatus() {
  if (statusShown) write('\r\x1b[2K');
  statusShown = false;
}
function statusChanged() {
  if (!live || statusTimer) return;
  statusTimer = setTimeout(drawStatus, Math.max(0, lastDraw + 50 - Date.now()));
}
function drawStatus() {
  clearTimeout(statusTimer);
  statusTimer = undefined;
  if (!live) return;
  lastDraw = Date.now();
  const inState = (state) => [...unfinished.values()].filter((t) => t.state === state);
  const running = inState('running');
  const names = [...new Set(running.map((t) => t.name))].join(', ');
  const plain =
    `● requests ${served}  │  queued ${inState('queued').length}  running ${running.length}${names ? ` (${names})` : ''}` +
    `  retrying ${inState('retrying').length}  │  success ${ended.success}  failed ${ended.failed}` +
    (ended.cancelled + ended.interrupted > 0 ? `  cancelled ${ended.cancelled}  interrupted ${ended.interrupted}` : '');
  // One row only: a wrapped status line could not be erased with \r.
  const width = (process.stdout.columns ?? 120) - 1;
  const line = plain.length > width ? `${plain.slice(0, width - 1)}…` : plain;
  clearStatus();
  write(cyan(line.slice(0, 1)) + dim(line.slice(1)));
  statusShown = true;
}

// The dashboard is behind Basic auth even here: a fresh password per run, printed below.
const adminPassword = process.env.ADMIN_PASSWORD ?? randomBytes(9).toString('base64url');
const { app, manager, admin } = createSignupApp({
  logger,
  observers: [observer],
  adminAuth: { users: { admin: adminPassword } },
});

// The request span: what @opentelemetry/instrumentation-http makes for you under `--import koa-taskflow/instrumentation`.
const handle = app.callback();
const server = createServer((req, res) => {
  const path = req.url.split('?')[0];
  served += 1;
  statusChanged();
  tracer.startActiveSpan(
    `${req.method} ${path}`,
    { kind: SpanKind.SERVER, attributes: { 'http.request.method': req.method, 'url.path': path } },
    (span) => {
      res.once('finish', () => {
        span.setAttribute('http.response.status_code', res.statusCode);
        if (res.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
        span.end();
      });
      handle(req, res);
    },
  );
});
await manager.start();
await new Promise((resolve) => server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', resolve));
const url = `http://127.0.0.1:${server.address().port}`;
out(bold(`koa-taskflow demo on ${url}`) + dim(`  (pino lines: ${relative(process.cwd(), logPath)})`));
out(`dashboard: ${url}/tasks/dashboard  (user admin, password ${adminPassword})`);
if (otlpEndpoint) {
  out(
    `exporting spans and metrics over OTLP/HTTP to ${otlpEndpoint}` +
      dim(
        `  (metrics every ${meterProvider && Number(process.env.OTEL_METRIC_EXPORT_INTERVAL ?? 5_000) / 1000} s and at exit)`,
      ),
  );
}
out(
  dim(
    `waterfall: ${BAR} columns from each request's start to its last attempt's end, ░ queued or waiting to retry, █ running; then start offset, duration`,
  ),
);

// ── one request's tree: the request span, its linked attempts as a waterfall, their log events ──
const hrMs = ([s, ns]) => s * 1e3 + ns / 1e6;
const cell = (plain, painted = plain) => painted + ' '.repeat(Math.max(1, LABEL - plain.length));
const timing = (offset, duration) => `${`+${offset.toFixed(1)}`.padStart(7)} ms ${duration.toFixed(1).padStart(6)} ms`;

/** Draws spans on the request's timeline: from the request's start to whichever ends last. */
function timeline(origin, end) {
  const col = (t) => Math.min(BAR, Math.max(0, Math.round(((t - origin) / (end - origin || 1)) * BAR)));
  return (waitFrom, start, stop, paintRun) => {
    const s = Math.min(col(start), BAR - 1);
    const e = Math.max(s + 1, col(stop));
    const w = waitFrom === undefined ? s : Math.min(col(waitFrom), s);
    return `▕${dim('·'.repeat(w) + '░'.repeat(s - w))}${paintRun('█'.repeat(e - s))}${dim('·'.repeat(BAR - e))}▏`;
  };
}

function printRequest(requestSpanId) {
  const requestSpan = finished.find((s) => s.spanContext().spanId === requestSpanId);
  // Not ended yet, already printed, or some of its tasks still to end: a later call prints it.
  if (!requestSpan || enqueuedIds(requestSpan).some((id) => unfinished.has(id))) return;
  // Printed once: its spans leave memory (a long `--every` run keeps only the trees not printed yet).
  const mine = (s) => s === requestSpan || s.links.some((l) => l.context.spanId === requestSpanId);
  const attempts = finished
    .filter((s) => s !== requestSpan && mine(s))
    .sort((a, b) => hrMs(a.startTime) - hrMs(b.startTime));
  finished.splice(0, finished.length, ...finished.filter((s) => !mine(s)));
  const origin = hrMs(requestSpan.startTime);
  const bar = timeline(origin, Math.max(hrMs(requestSpan.endTime), ...attempts.map((s) => hrMs(s.endTime))));
  // A first attempt waits from its enqueueing (the request span's `task.enqueued` event), a retry from the previous attempt's end.
  const enqueuedAt = new Map(
    requestSpan.events.filter((e) => e.name === 'task.enqueued').map((e) => [e.attributes['task.id'], hrMs(e.time)]),
  );
  const endedAt = new Map(attempts.map((s) => [s.spanContext().spanId, hrMs(s.endTime)]));

  const status = requestSpan.attributes['http.response.status_code'];
  const tags = Object.entries(attempts[0]?.attributes ?? {})
    .filter(([k]) => k.startsWith('task.tag.'))
    .map(([k, v]) => `${k.slice('task.tag.'.length)}=${v}`)
    .join(' ');
  const head = `${requestSpan.name}  ${status}`;
  const lines = [
    cell(`▶ ${head}`, `${cyan('▶')} ${bold(head)}`) +
      bar(undefined, origin, hrMs(requestSpan.endTime), cyan) +
      ` ${timing(0, hrMs(requestSpan.duration))}  ${dim(tags)}  ${dim(`trace ${requestSpan.spanContext().traceId}`)}`,
  ];
  attempts.forEach((span, i) => {
    const last = i === attempts.length - 1;
    const ok = span.status.code === SpanStatusCode.OK;
    const a = span.attributes;
    const start = hrMs(span.startTime);
    const previous = span.links[1] && endedAt.get(span.links[1].context.spanId);
    const err = ok ? '' : red(`  ${a['error.type']}: ${span.status.message}`);
    const retried = previous !== undefined ? dim('  ↳ linked to previous attempt') : '';
    const label = `${span.name.padEnd(18)} attempt ${a['task.attempt']}/${a['task.max_attempts']}`;
    lines.push(
      cell(`  ${last ? '└─' : '├─'} ✔ ${label}`, `  ${last ? '└─' : '├─'} ${ok ? green('✔') : red('✘')} ${label}`) +
        bar(previous ?? enqueuedAt.get(a['task.id']), start, hrMs(span.endTime), ok ? green : red) +
        ` ${timing(start - origin, hrMs(span.duration))}  ${dim(`trace ${span.spanContext().traceId.slice(0, 12)}…`)}${err}${retried}`,
    );
    const events = span.events.filter((e) => e.name === 'task.log');
    events.forEach((e, j) => {
      const fields = Object.entries(e.attributes)
        .filter(([k]) => !k.startsWith('log.'))
        .map(([k, v]) => `${k}=${v}`)
        .join(' ');
      lines.push(
        `  ${last ? '   ' : '│  '}  ${j === events.length - 1 ? '└' : '├'} ${dim(`+${(hrMs(e.time) - start).toFixed(1)} ms`)} ${e.attributes['log.level']} ${e.attributes['log.message']} ${dim(fields)}`,
      );
    });
  });
  out(lines.join('\n'));
}

// ── the burst ──
const tenants = ['acme', 'globex', 'initech'];
let sent = 0;
function burst() {
  return Promise.all(
    Array.from({ length: requests }, async () => {
      const i = sent++;
      const res = await fetch(`${url}/signup?email=user${i}@example.com&tenant=${tenants[i % tenants.length]}`, {
        method: 'POST',
      });
      await res.arrayBuffer();
    }),
  );
}
await burst();
await manager.drain();
await new Promise((resolve) => setTimeout(resolve, 20));

const summary = await manager.metrics();
out(
  bold('\ntasks: ') +
    Object.entries(summary.byStatus)
      .filter(([, n]) => n > 0)
      .map(([s, n]) => `${s} ${n}`)
      .join(', ') +
    dim(`  success rate ${(summary.successRate * 100).toFixed(0)}%, p95 ${summary.p95DurationMs} ms`),
);
await new Promise((resolve, reject) => logger.flush((error) => (error ? reject(error) : resolve())));
const sample = readFileSync(logPath, 'utf8')
  .split('\n')
  .filter(Boolean)
  .map((line) => JSON.parse(line))
  .find((line) => line.msg === 'welcome mail sent');
if (sample)
  out(bold('a pino line from a task ') + dim('(same trace_id as its attempt span):\n') + JSON.stringify(sample));

async function stop() {
  admin.close();
  server.close();
  await manager.shutdown({ timeoutMs: 5_000 });
  // Flushes: the last metric export carries the final counts, the batch processor the last spans.
  await meterProvider?.shutdown();
  await provider.shutdown();
}

if (once) {
  clearStatus();
  live = false;
  await stop();
} else {
  out(
    bold(`\nserving on ${url}`) +
      `  try: curl -X POST '${url}/signup?email=you@example.com&tenant=acme'   (Ctrl-C stops gracefully)`,
  );
  // A burst still in flight at Ctrl-C meets a closed server: nothing to report.
  const repeat = everyMs > 0 ? setInterval(() => burst().catch(() => {}), everyMs) : undefined;
  if (repeat) out(dim(`resending the burst (${requests} requests) every ${everyMs / 1000} s`));
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.once(signal, async () => {
      clearInterval(repeat);
      out(dim('\nshutting down: waiting for running tasks…'));
      clearStatus();
      live = false;
      await stop();
      process.exit(0);
    });
  }
}
