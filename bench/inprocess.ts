// In-process measurements, printed as one JSON line (run by bench/run.ts with --expose-gc):
//  - no-op tasks/s through manager.add, untraced and traced, against p-queue and against the OpenTelemetry SDK's
//    own work for one span (tinybench, batches of 1 000), in ROUNDS rounds that take turns, the median of each;
//    goals.ts reads their ratios (tasks/s ÷ p-queue's; ns per traced task ÷ the SDK's + an untraced task's);
//  - after-response start latency: response `finish` → first line of the task, over real HTTP requests;
//  - memory per queued task with 100 000 tasks waiting behind a blocker (heap and RSS).
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { Bench } from 'tinybench';
import Koa from 'koa';
import PQueue from 'p-queue';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, context, trace, type Span } from '@opentelemetry/api';
import { MemoryStore, TaskManager, taskLog } from 'koa-taskflow';
import { median, percentile } from './lib.ts';
import type { InProcessResults } from './results.ts';
import { droppingTracerProvider } from './tracing.ts';

const BATCH = 1_000;
const QUEUED = Number(process.env.QUEUED ?? 100_000);
const results = {} as Omit<InProcessResults, 'started' | 'nodeVersion' | 'machine' | 'load'>;
const gc = globalThis.gc ?? (() => {});

// ── throughput ──
const tracerProvider = droppingTracerProvider();
const sdkTracer = tracerProvider.getTracer('bench');

const untraced = new TaskManager({ concurrency: 16, store: new MemoryStore({ maxRecords: 2_000 }) });
const traced = new TaskManager({ concurrency: 16, tracerProvider, store: new MemoryStore({ maxRecords: 2_000 }) });
// Async in shape (a promise back), as the tasks users write.
const noop = (): Promise<void> => Promise.resolve();
const noopUntraced = untraced.task(function noop() {
  return Promise.resolve();
});
const noopTraced = traced.task(function noop() {
  taskLog('tick');
  return Promise.resolve();
});
const pqueue = new PQueue({ concurrency: 16 });

/**
 * The SDK's own work for one attempt span, as our attempt makes it (src/otel.ts): a consumer span under the
 * root context, the attempt's 7 attributes, one `task.log` event, an OK status, the end.
 */
function spanByHand(): void {
  endSpan(startSpan());
}

function startSpan(): Span {
  const span = sdkTracer.startSpan('task noop', { kind: SpanKind.CONSUMER }, ROOT_CONTEXT);
  span.setAttributes({
    'task.id': 'id',
    'task.name': 'noop',
    'task.attempt': 1,
    'task.max_attempts': 1,
    'messaging.system': 'koa-taskflow',
    'messaging.operation.type': 'process',
    'messaging.message.id': 'id',
  });
  return span;
}

function endSpan(span: Span): void {
  span.addEvent('task.log', { 'log.message': 'tick', 'log.level': 'info' });
  span.setStatus({ code: SpanStatusCode.OK });
  span.end();
}

// The floor of the traced goal: an untraced task that makes that span itself, so the SDK and the task share one
// heap as they do in a traced task; what a traced task costs beyond it is our tracing glue. As the contract
// asks of an attempt span, it is the active span while the task runs (spans the task makes are its children):
// the SDK's context manager enters it, which the SDK-alone row above does not do.
const noopSpanByHand = untraced.task(function noopSpan() {
  const span = startSpan();
  return context.with(trace.setSpan(ROOT_CONTEXT, span), () => {
    endSpan(span);
    return Promise.resolve();
  });
});

// The floor of the untraced goal: p-queue plus what the contract keeps by hand: an id, a record in a bounded map
// (2 000 finished, as the MemoryStore above), and the AsyncLocalStorage.run that getTaskContext() needs.
interface FloorRecord {
  id: string;
  status: string;
  createdAt: number;
  endedAt: number | undefined;
}
const floorContext = new AsyncLocalStorage<FloorRecord>();
const floorRecords = new Map<string, FloorRecord>();
const floorEnded: (string | undefined)[] = new Array<string | undefined>(2_000).fill(undefined);
let floorEndedAt = 0;
let floorRan = 0;
const floorWork = (): Promise<void> => {
  if (floorContext.getStore() !== undefined) floorRan++;
  return noop();
};
function newFloorRecord(): FloorRecord {
  const record: FloorRecord = { id: randomUUID(), status: 'pending', createdAt: Date.now(), endedAt: undefined };
  floorRecords.set(record.id, record);
  return record;
}
function floorEnd(record: FloorRecord): void {
  record.status = 'success';
  record.endedAt = Date.now();
  // The oldest finished record goes (a ring of the last 2 000 finished ids).
  const oldest = floorEnded[floorEndedAt];
  if (oldest !== undefined) floorRecords.delete(oldest);
  floorEnded[floorEndedAt] = record.id;
  floorEndedAt = (floorEndedAt + 1) % floorEnded.length;
}
function addFloorTask(): void {
  const record = newFloorRecord();
  void pqueue.add(() => floorContext.run(record, floorWork).then(() => floorEnd(record)));
}

// The least floor of the untraced goal: the same id, record, bounded map and context, with the least queue that
// keeps 16 running and the rest in order (an array read from a head index), no library. p-queue's own work
// (its events, its promise per task, its interval logic) is in the floor above, and koa-taskflow has a queue
// of its own, so that floor bounded nothing (an untraced task read 1.4–1.9 × its tasks/s).
const leastWaiting: FloorRecord[] = [];
let leastHead = 0;
let leastRunning = 0;
let leastIdle: (() => void) | undefined;
function startLeast(record: FloorRecord): void {
  leastRunning++;
  void floorContext.run(record, floorWork).then(() => {
    floorEnd(record);
    leastRunning--;
    if (leastHead < leastWaiting.length) {
      const next = leastWaiting[leastHead];
      leastWaiting[leastHead++] = undefined as unknown as FloorRecord;
      startLeast(next);
    } else if (leastRunning === 0) {
      leastWaiting.length = leastHead = 0;
      leastIdle?.();
    }
  });
}
function addLeastTask(): void {
  const record = newFloorRecord();
  if (leastRunning < 16) startLeast(record);
  else leastWaiting.push(record);
}
const leastIdleNow = (): Promise<void> =>
  leastRunning === 0 ? Promise.resolve() : new Promise((resolve) => (leastIdle = resolve));

// Each task's key is what goals.ts reads; its name is what the report shows.
const KEYS: Record<string, string> = {
  'p-queue (no-op)': 'p-queue',
  'koa-taskflow untraced (no-op)': 'untraced',
  'OpenTelemetry SDK alone (span + 7 attributes + event + end, no task)': 'sdk-alone',
  'koa-taskflow traced (span + taskLog event)': 'traced',
  'untraced task that makes the same span by hand, active while it runs (floor)': 'span-by-hand',
  'p-queue + an id, a record in a bounded map and AsyncLocalStorage.run (floor)': 'p-queue-contract',
  'the same id, record, map and AsyncLocalStorage.run with a queue of 16 by hand, no library (floor)': 'least-contract',
};

// Each row that makes spans waits for the span processor to export them (the exporter drops them), so the
// processor's work for a row's spans is that row's, not the next row's.
const flushed = (): Promise<void> => tracerProvider.forceFlush();

function addRows(bench: Bench): void {
  bench
    .add('p-queue (no-op)', async () => {
      for (let i = 0; i < BATCH; i++) void pqueue.add(noop);
      await pqueue.onIdle();
    })
    .add('koa-taskflow untraced (no-op)', async () => {
      for (let i = 0; i < BATCH; i++) untraced.add(noopUntraced);
      await untraced.drain();
    })
    // The floor of any traced task: the SDK's own work for one attempt span with its attributes and one event,
    // with no queue, record or context around it.
    .add('OpenTelemetry SDK alone (span + 7 attributes + event + end, no task)', () => {
      for (let i = 0; i < BATCH; i++) spanByHand();
      return flushed();
    })
    .add('koa-taskflow traced (span + taskLog event)', async () => {
      for (let i = 0; i < BATCH; i++) traced.add(noopTraced);
      await traced.drain();
      await flushed();
    })
    .add('untraced task that makes the same span by hand, active while it runs (floor)', async () => {
      for (let i = 0; i < BATCH; i++) untraced.add(noopSpanByHand);
      await untraced.drain();
      await flushed();
    })
    .add('p-queue + an id, a record in a bounded map and AsyncLocalStorage.run (floor)', async () => {
      for (let i = 0; i < BATCH; i++) addFloorTask();
      await pqueue.onIdle();
    })
    .add(
      'the same id, record, map and AsyncLocalStorage.run with a queue of 16 by hand, no library (floor)',
      async () => {
        for (let i = 0; i < BATCH; i++) addLeastTask();
        await leastIdleNow();
      },
    );
}

// The rows take turns, ROUNDS times (the machine's speed drifts within seconds): each row's figure is the median
// of its rounds, so the ratios goals.ts takes compare rows measured side by side.
const ROUNDS = Number(process.env.ROUNDS ?? 5);
const roundMs = Number(process.env.BENCH_MS ?? 2_000) / ROUNDS;
const rates = new Map<string, number[]>(Object.keys(KEYS).map((name) => [name, []]));
for (let round = 0; round < ROUNDS; round++) {
  const bench = new Bench({ time: roundMs, warmupTime: round === 0 ? 500 : 100 });
  addRows(bench);
  await bench.run();
  for (const t of bench.tasks) {
    const result = t.result as { latency?: { mean: number }; mean?: number };
    rates.get(t.name)!.push((BATCH * 1000) / (result.latency?.mean ?? result.mean ?? NaN));
  }
}
if (floorRan === 0) throw new Error('the p-queue floor ran no task in its context');
results.throughput = [...rates].map(([name, perRound]) => ({
  key: KEYS[name],
  name,
  tasksPerSecond: median(perRound),
}));
await untraced.shutdown();
await traced.shutdown();
await tracerProvider.shutdown();

// ── after-response start latency ──
{
  const manager = new TaskManager();
  const delays: number[] = [];
  const app = new Koa();
  app.use(manager.middleware());
  app.use((ctx) => {
    let finishedAt = 0;
    // Registered before the task is added, so it runs before koa-taskflow's own listener.
    ctx.res.once('finish', () => (finishedAt = performance.now()));
    ctx.tasks.addTask(() => void delays.push(performance.now() - finishedAt));
    ctx.body = 'ok';
  });
  const server = app.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  for (let i = 0; i < 3_000; i++) await (await fetch(url)).text();
  await manager.drain();
  server.close();
  await manager.shutdown();
  const sample = delays.slice(500);
  results.startLatencyMs = { p50: percentile(sample, 50), p99: percentile(sample, 99), samples: sample.length };
}

// ── memory per queued task ──
{
  // maxQueued raised to what is measured (the default, 10 000, is chosen from this figure: see the README's Backpressure).
  const manager = new TaskManager({
    concurrency: 1,
    maxQueued: QUEUED,
    store: new MemoryStore({ maxRecords: QUEUED + 10 }),
  });
  let release = (): void => {};
  const gate = new Promise<void>((resolve) => (release = resolve));
  const queued = manager.task(function queued(n: number) {
    return Promise.resolve(n);
  });
  manager.add(() => gate);
  gc();
  const before = process.memoryUsage();
  for (let i = 0; i < QUEUED; i++) manager.add(queued, i);
  gc();
  const after = process.memoryUsage();
  results.memoryPerQueuedTask = {
    tasks: QUEUED,
    heapBytes: (after.heapUsed - before.heapUsed) / QUEUED,
    rssBytes: (after.rss - before.rss) / QUEUED,
  };
  release();
  await manager.drain();
  await manager.shutdown();
}

console.log(JSON.stringify(results));
