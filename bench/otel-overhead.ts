// `npm run bench:otel`: what tracing costs a task, with no OpenTelemetry SDK registered and with one.
//
// Two variants run interleaved in the same process, round after round (order rotated, GC between runs), and
// the median time per task is compared:
//   no-sdk  – the shipped default with nothing registered: the API's no-op tracer and meter
//   sdk     – for scale: a real BasicTracerProvider + MeterProvider (batch processor, exporter that drops)
// Each task is the typical shape: added outside a request, one taskLog() call, sync body.
// (Earlier versions also ran a manager whose telemetry was stubbed out, through `manager.runner`; the
// runner is not public, so that baseline is gone until the library offers a public way to leave it out.)
// Env: TASKS (per run, default 20000), ROUNDS (default 15).
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import { TaskManager, taskLog } from 'koa-taskflow';
import { median } from './lib.ts';
import { droppingTracerProvider } from './tracing.ts';

const TASKS = Number(process.env.TASKS ?? 20_000);
const ROUNDS = Number(process.env.ROUNDS ?? 15);
const gc = globalThis.gc ?? (() => {});

const sdkTracer = droppingTracerProvider(1 << 17);
const sdkMeter = new MeterProvider();

const VARIANTS: Record<string, () => TaskManager> = {
  'no-sdk': () => new TaskManager(),
  sdk: () => new TaskManager({ tracerProvider: sdkTracer, meterProvider: sdkMeter }),
};

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

const names = Object.keys(VARIANTS);
const samples: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
for (const name of names) await run(VARIANTS[name]); // warm-up: JIT and caches for every variant
for (let round = 0; round < ROUNDS; round++) {
  for (let k = 0; k < names.length; k++) {
    const name = names[(round + k) % names.length];
    samples[name].push(await run(VARIANTS[name]));
  }
}

const noSdk = median(samples['no-sdk']);
console.log(
  `koa-taskflow tracing overhead — ${TASKS} tasks per run, ${ROUNDS} interleaved rounds, median; Node ` +
    `${process.version}${globalThis.gc ? '' : ' (run with --expose-gc for steadier numbers)'}`,
);
console.log('variant   ns/task   ratio vs no-sdk   spread (min–max ns)');
for (const name of names) {
  const values = samples[name];
  const m = median(values);
  console.log(
    `${name.padEnd(8)} ${m.toFixed(0).padStart(8)}   ${(m / noSdk).toFixed(3).padStart(15)}   ` +
      `${Math.min(...values).toFixed(0)}–${Math.max(...values).toFixed(0)}`,
  );
}
await sdkTracer.shutdown();
await sdkMeter.shutdown();
