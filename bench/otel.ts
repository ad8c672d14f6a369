// The OpenTelemetry part of `npm run bench` (`--only otel`): what tracing costs a task, in one process,
// printed as one JSON line (run by bench/run.ts with --expose-gc: it sets a global context manager, so it
// gets a process of its own). Each task is the typical shape: added outside a request, one taskLog(), sync body.
// The variants run interleaved, round after round (order rotated, GC before each run), median ns per task:
//   no-sdk        – the default with nothing registered: the API's no-op tracer and meter (the baseline)
//   noop-provider – a tracer provider passed that records nothing: the path any provider takes, minus the SDK
//   sdk           – for scale: a real BasicTracerProvider + MeterProvider (batch processor, exporter that drops)
// (Runs before 2026-11-29 also had a manager with its telemetry stubbed out through its internals; the library
// has no public way to leave its telemetry out, and the no-SDK default skips it, so that row is gone.)
// Env: TASKS (per run, default 20000), ROUNDS (default 15).
import { ProxyTracerProvider, type TracerProvider } from '@opentelemetry/api';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import { TaskManager, taskLog } from 'koa-taskflow';
import { median, percentile } from './lib.ts';
import type { OtelResults } from './results.ts';
import { droppingTracerProvider } from './tracing.ts';

const TASKS = Number(process.env.TASKS ?? 20_000);
const ROUNDS = Number(process.env.ROUNDS ?? 15);
const gc = globalThis.gc ?? (() => {});

const sdkTracer = droppingTracerProvider(1 << 17);
const sdkMeter = new MeterProvider();
// Not the global proxy, so the manager cannot tell it records nothing: each attempt starts a (non-recording) span.
const noopProvider: TracerProvider = { getTracer: (name) => new ProxyTracerProvider().getTracer(name) };

// A run adds all its tasks at once: the queue must hold them.
const maxQueued = TASKS;
const VARIANTS: { name: string; label: string; manager: () => TaskManager }[] = [
  { name: 'no-sdk', label: 'no SDK registered (the default)', manager: () => new TaskManager({ maxQueued }) },
  {
    name: 'noop-provider',
    label: 'a tracer provider passed that records nothing',
    manager: () => new TaskManager({ maxQueued, tracerProvider: noopProvider }),
  },
  {
    name: 'sdk',
    label: 'a real SDK (batch processor, dropping exporter), for scale',
    manager: () => new TaskManager({ maxQueued, tracerProvider: sdkTracer, meterProvider: sdkMeter }),
  },
];

function work(i: number): void {
  taskLog('working', { i });
}

async function run(makeManager: () => TaskManager): Promise<number> {
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

const samples = VARIANTS.map(() => [] as number[]);
for (const variant of VARIANTS) await run(variant.manager); // warm-up: JIT and caches for every variant
for (let round = 0; round < ROUNDS; round++) {
  for (let k = 0; k < VARIANTS.length; k++) {
    const i = (round + k) % VARIANTS.length;
    samples[i].push(await run(VARIANTS[i].manager));
  }
}
await sdkTracer.shutdown();
await sdkMeter.shutdown();

// Each round's ratio to the baseline of the same round: the machine's drift between rounds cancels out.
const ratios = (i: number) => samples[i].map((ns, round) => ns / samples[0][round]);
const results: Omit<OtelResults, 'started' | 'nodeVersion' | 'machine' | 'load'> = {
  config: { TASKS, ROUNDS },
  rows: VARIANTS.map((v, i) => ({
    name: v.name,
    label: v.label,
    nsPerTask: median(samples[i]),
    ratio: { value: median(ratios(i)), spread: [percentile(ratios(i), 25), percentile(ratios(i), 75)] },
  })),
};
console.log(JSON.stringify(results));
