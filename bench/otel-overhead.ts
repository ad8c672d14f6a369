// `npm run bench:otel`: what tracing costs a task when no OpenTelemetry SDK is registered.
//
// Three variants run interleaved in the same process, round after round (order rotated, GC between runs),
// and the median time per task is compared:
//   absent  – the manager's telemetry stubbed out: no span started, no metric recorded, no link looked up
//   no-sdk  – the shipped default with nothing registered: the API's no-op tracer and meter
//   sdk     – for scale: a real BasicTracerProvider + MeterProvider (batch processor, exporter that drops)
// Each task is the typical shape: added outside a request, one taskLog() call, sync body.
// Ratio no-sdk ÷ absent ≈ 1.00 is the claim. Whole tasks are noisy (scheduling, GC), so the telemetry calls
// a task makes are also timed alone, with no SDK: that is the absolute price per task.
// Env: TASKS (per run, default 20000), ROUNDS (default 15), CALLS (telemetry-only loop, default 1e6).
import { INVALID_SPAN_CONTEXT, trace } from '@opentelemetry/api';
import { BasicTracerProvider, BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import { TaskManager, taskLog } from 'koa-taskflow';

const TASKS = Number(process.env.TASKS ?? 20_000);
const ROUNDS = Number(process.env.ROUNDS ?? 15);
const CALLS = Number(process.env.CALLS ?? 1_000_000);
const gc = globalThis.gc ?? (() => {});

const NOOP_SPAN = trace.wrapSpanContext(INVALID_SPAN_CONTEXT);
const dropping = { export: (_spans, done) => done({ code: 0 }), shutdown: async () => {} };
const sdkTracer = new BasicTracerProvider({
  spanProcessors: [new BatchSpanProcessor(dropping, { maxQueueSize: 1 << 17 })],
});
const sdkMeter = new MeterProvider();

const VARIANTS = {
  absent() {
    const manager = new TaskManager();
    // The telemetry object is shared by the manager (enqueue) and the runner (attempts): stub it in place.
    const telemetry = manager.runner.telemetry;
    telemetry.enqueuedFrom = () => undefined;
    telemetry.startAttempt = () => NOOP_SPAN;
    telemetry.endAttempt = () => {};
    return manager;
  },
  'no-sdk': () => new TaskManager(),
  sdk: () => new TaskManager({ tracerProvider: sdkTracer, meterProvider: sdkMeter }),
};

function work(i) {
  taskLog('working', { i });
}

async function run(makeManager) {
  const manager = makeManager();
  await manager.start();
  gc();
  const start = process.hrtime.bigint();
  for (let i = 0; i < TASKS; i++) manager.add(work, i);
  await manager.drain();
  const ns = Number(process.hrtime.bigint() - start) / TASKS;
  await manager.shutdown();
  return ns;
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

const names = Object.keys(VARIANTS);
const samples = Object.fromEntries(names.map((n) => [n, []]));
for (const name of names) await run(VARIANTS[name]); // warm-up: JIT and caches for every variant
for (let round = 0; round < ROUNDS; round++) {
  for (let k = 0; k < names.length; k++) {
    const name = names[(round + k) % names.length];
    samples[name].push(await run(VARIANTS[name]));
  }
}

const absent = median(samples.absent);
console.log(
  `koa-taskflow tracing overhead — ${TASKS} tasks per run, ${ROUNDS} interleaved rounds, median; Node ${process.version}${globalThis.gc ? '' : ' (run with --expose-gc for steadier numbers)'}`,
);
console.log('variant   ns/task   ratio vs absent   spread (min–max ns)');
for (const name of names) {
  const values = samples[name];
  const m = median(values);
  console.log(
    `${name.padEnd(8)} ${m.toFixed(0).padStart(8)}   ${(m / absent).toFixed(3).padStart(15)}   ${Math.min(...values).toFixed(0)}–${Math.max(...values).toFixed(0)}`,
  );
}

// The calls one task's telemetry makes (enqueue, start, end), alone, on the no-SDK path.
const telemetry = new TaskManager().runner.telemetry;
const input = { id: '3f1c9a52-7d0e-4c1b-9a55-2b1a4f1e8c11', name: 'work', maxAttempts: 1, tags: { tenant: 'acme' } };
function telemetryLoop(calls) {
  const start = process.hrtime.bigint();
  for (let i = 0; i < calls; i++) {
    telemetry.enqueuedFrom(input.id, input.name);
    telemetry.endAttempt(telemetry.startAttempt(input, 1), input.name, 1, undefined);
  }
  return Number(process.hrtime.bigint() - start) / calls;
}
telemetryLoop(CALLS / 10);
const perTask = median(Array.from({ length: 7 }, () => telemetryLoop(CALLS)));
console.log(
  `no-SDK telemetry calls of one task, alone: ${perTask.toFixed(0)} ns (${((perTask / median(samples['no-sdk'])) * 100).toFixed(2)}% of a whole task)`,
);
await sdkTracer.shutdown();
await sdkMeter.shutdown();
