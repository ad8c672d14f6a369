// `npm run demo`: the signup app on embedded defaults (no services), traced in-process, driven by a burst of
// its own requests. Each request is printed as a tree once its tasks have ended: the request span, then
// every task attempt span linked to it, with its log events. `--once` exits after the burst.
// With OTEL_EXPORTER_OTLP_ENDPOINT set, spans are also exported over OTLP/HTTP (e.g. to the compose stack).
import { randomBytes } from 'node:crypto';
import { mkdirSync, createWriteStream, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { BatchSpanProcessor, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { resourceFromAttributes } from '@opentelemetry/resources';
import pino from 'pino';
import { createSignupApp } from './signup-app.js';

const once = process.argv.includes('--once');
const requests = Number(process.env.DEMO_REQUESTS ?? 6);
const color = process.stdout.isTTY && !process.env.NO_COLOR;
const paint = (code) => (text) => (color ? `\x1b[${code}m${text}\x1b[0m` : String(text));
const dim = paint(2);
const green = paint(32);
const red = paint(31);
const cyan = paint(36);
const bold = paint(1);

// ── tracing: keep finished spans in memory for the tree; optionally export over OTLP too ──
const finished = [];
const collector = {
  export(spans, done) {
    finished.push(...spans);
    done({ code: 0 });
  },
  shutdown: async () => {},
};
const spanProcessors = [new SimpleSpanProcessor(collector)];
if (process.env.OTEL_EXPORTER_OTLP_ENDPOINT) {
  const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-http');
  spanProcessors.push(new BatchSpanProcessor(new OTLPTraceExporter()));
}
const resource = resourceFromAttributes({ 'service.name': process.env.OTEL_SERVICE_NAME ?? 'koa-taskflow-demo' });
const provider = new NodeTracerProvider({ resource, spanProcessors });
provider.register();
const tracer = trace.getTracer('koa-taskflow-demo');

// ── pino lines go to a file, so the terminal shows the tree; one is printed at the end ──
mkdirSync('.tmp', { recursive: true });
const logPath = '.tmp/demo-logs.ndjson';
const logger = pino({ level: 'debug' }, createWriteStream(logPath));

const printed = new Set();
const observer = {
  async onLifecycle(event) {
    if (!['success', 'failed', 'cancelled', 'interrupted'].includes(event.status)) return;
    const record = await manager.get(event.taskId);
    if (record?.requestSpanId) setImmediate(() => void printRequest(record.requestSpanId));
  },
};
// The dashboard is behind Basic auth even here: a fresh password per run, printed below.
const adminPassword = process.env.ADMIN_PASSWORD ?? randomBytes(9).toString('base64url');
const { app, manager, admin } = createSignupApp({ logger, observers: [observer], adminAuth: { users: { admin: adminPassword } } });

// The request span: what @opentelemetry/instrumentation-http makes for you under `--import koa-taskflow/instrumentation`.
const handle = app.callback();
const server = createServer((req, res) => {
  const path = req.url.split('?')[0];
  tracer.startActiveSpan(`${req.method} ${path}`, { kind: SpanKind.SERVER, attributes: { 'http.request.method': req.method, 'url.path': path } }, (span) => {
    res.once('finish', () => {
      span.setAttribute('http.response.status_code', res.statusCode);
      if (res.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    });
    handle(req, res);
  });
});
await manager.start();
await new Promise((resolve) => server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', resolve));
const url = `http://127.0.0.1:${server.address().port}`;
console.log(bold(`koa-taskflow demo on ${url}`) + dim(`  (pino lines: ${logPath})`));
console.log(`dashboard: ${url}/tasks/dashboard  (user admin, password ${adminPassword})`);

async function printRequest(requestSpanId) {
  if (printed.has(requestSpanId)) return;
  const records = (await manager.list()).filter((r) => r.requestSpanId === requestSpanId);
  if (records.some((r) => !['success', 'failed', 'cancelled', 'interrupted'].includes(r.status))) return;
  const requestSpan = finished.find((s) => s.spanContext().spanId === requestSpanId);
  if (!requestSpan || printed.has(requestSpanId)) return;
  printed.add(requestSpanId);
  const attempts = finished
    .filter((s) => s.links.some((l) => l.context.spanId === requestSpanId))
    .sort((a, b) => hrMs(a.startTime) - hrMs(b.startTime));
  const status = requestSpan.attributes['http.response.status_code'];
  const tags = records[0] ? Object.entries(records[0].tags).map(([k, v]) => `${k}=${v}`).join(' ') : '';
  const lines = [`${cyan('▶')} ${bold(requestSpan.name)}  ${status}  ${ms(requestSpan.duration)}  ${dim(`trace ${requestSpan.spanContext().traceId}`)}  ${dim(tags)}`];
  attempts.forEach((span, i) => {
    const last = i === attempts.length - 1;
    const ok = span.status.code === SpanStatusCode.OK;
    const a = span.attributes;
    const mark = ok ? green('✔') : red('✘');
    const err = ok ? '' : red(`  ${a['error.type']}: ${span.status.message}`);
    const retried = span.links.length > 1 ? dim('  ↳ linked to previous attempt') : '';
    lines.push(`  ${last ? '└─' : '├─'} ${mark} ${span.name.padEnd(18)} attempt ${a['task.attempt']}/${a['task.max_attempts']}  ${ms(span.duration).padStart(8)}  ${dim(`trace ${span.spanContext().traceId.slice(0, 12)}…`)}${err}${retried}`);
    const events = span.events.filter((e) => e.name === 'task.log');
    events.forEach((e, j) => {
      const fields = Object.entries(e.attributes).filter(([k]) => !k.startsWith('log.')).map(([k, v]) => `${k}=${v}`).join(' ');
      lines.push(`  ${last ? '   ' : '│  '}  ${j === events.length - 1 ? '└' : '├'} ${dim(`+${(hrMs(e.time) - hrMs(span.startTime)).toFixed(1)} ms`)} ${e.attributes['log.level']} ${e.attributes['log.message']} ${dim(fields)}`);
    });
  });
  console.log(lines.join('\n'));
}

const hrMs = ([s, ns]) => s * 1e3 + ns / 1e6;
const ms = (hr) => `${hrMs(hr).toFixed(1)} ms`;

// ── the burst ──
const tenants = ['acme', 'globex', 'initech'];
await Promise.all(
  Array.from({ length: requests }, async (_, i) => {
    const res = await fetch(`${url}/signup?email=user${i}@example.com&tenant=${tenants[i % tenants.length]}`, { method: 'POST' });
    await res.arrayBuffer();
  }),
);
await manager.drain();
await new Promise((resolve) => setTimeout(resolve, 20));

const metrics = await manager.metrics();
console.log(
  bold('\ntasks: ') +
    Object.entries(metrics.byStatus)
      .filter(([, n]) => n > 0)
      .map(([s, n]) => `${s} ${n}`)
      .join(', ') +
    dim(`  success rate ${(metrics.successRate * 100).toFixed(0)}%, p95 ${metrics.p95DurationMs} ms`),
);
logger.flush?.();
await new Promise((resolve) => setTimeout(resolve, 50));
const sample = readFileSync(logPath, 'utf8')
  .split('\n')
  .filter(Boolean)
  .map((line) => JSON.parse(line))
  .find((line) => line.msg === 'welcome mail sent');
if (sample) console.log(bold('a pino line from a task ') + dim('(same trace_id as its attempt span):\n') + JSON.stringify(sample));

async function stop() {
  admin.close();
  server.close();
  await manager.shutdown({ timeoutMs: 5_000 });
  await provider.shutdown();
}

if (once) {
  await stop();
} else {
  console.log(bold(`\nserving on ${url}`) + `  try: curl -X POST '${url}/signup?email=you@example.com&tenant=acme'   (Ctrl-C stops gracefully)`);
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.once(signal, async () => {
      console.log(dim('\nshutting down: waiting for running tasks…'));
      await stop();
      process.exit(0);
    });
  }
}
