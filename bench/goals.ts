// Every goal of the benchmark, and the reference rows read beside them, defined once: the runner measures the
// comparisons they name, the report and docs/benchmarks.md show them, evaluated from bench/results.json.
import type { GrowthRead, GrowthRow, Ratio, Results } from './results.ts';

/** `higher`: the value must be at least the target (a ratio of capacity); `lower`: at most (ms, bytes). */
export type Direction = 'higher' | 'lower';

export type Measure =
  /** HTTP: the baseline's CPU per request ÷ the variant's, from bursts of the same turn, the servers side by side. */
  | { kind: 'capacity'; variant: string; baseline: string }
  /** The durable part: the baseline's CPU per request ÷ the variant's, measured as `capacity` is. */
  | { kind: 'durable'; variant: string; baseline: string }
  /** The OpenTelemetry part: in-process ns per task ÷ no SDK's, the same round's. */
  | { kind: 'otel'; variant: string }
  /** In process: the variant's tasks/s ÷ the baseline's. */
  | { kind: 'throughput'; variant: string; baseline: string }
  /**
   * In process: what a traced task costs (ns per task) ÷ what its parts cost apart, the SDK's span alone plus
   * an untraced task: 1.00 when tracing a task adds nothing beyond the SDK's own work; all rows of one run.
   */
  | { kind: 'tracedCost'; traced: string; sdk: string; untraced: string }
  /** In process: heap bytes per task queued behind a blocker. */
  | { kind: 'queuedHeap' }
  /** History growth, at the largest history measured: a read's median latency (ms). */
  | { kind: 'growthRead'; store: string; read: GrowthRead }
  /** History growth, at the largest history measured: the event loop's largest delay during any read (ms). */
  | { kind: 'growthLoopDelay'; store: string }
  /** History growth: CPU per durable task at the largest history ÷ the same store empty. */
  | { kind: 'growthCpu'; store: string }
  /** Isolate: the variant's p99 latency ÷ the baseline's in the same round, at the same request rate (the median
   * over the rounds); only if every task ran. */
  | { kind: 'latency'; variant: string; baseline: string }
  /** The BullMQ part: one of its ratios (results.bullmq), by key: `<baseline>/<variant>` (web: CPU per request,
   * as `capacity`; worker: CPU per job) or `<baseline>/<variant> jobs/s` (the variant's ÷ the baseline's). */
  | { kind: 'bullmq'; key: string };

export interface Goal {
  what: string;
  measure: Measure;
  /** Undefined for a reference row: the method's own calibration, or a floor (the same work done by hand). */
  target?: number;
  direction: Direction;
  /** Where the goal comes from. */
  issue?: string;
}

const capacity = (variant: string, baseline: string): Measure => ({ kind: 'capacity', variant, baseline });

/** A reference row of the durable part: a store's server against bare Koa's. */
const durable = (what: string, variant: string): Goal => ({
  what,
  measure: { kind: 'durable', variant, baseline: 'bare' },
  direction: 'higher',
});

/** The isolate part's rows: p99 latency ÷ another server's at the same request rate (lower is better). */
const latency = (what: string, variant: string, baseline: string, target?: number): Goal => ({
  what,
  measure: { kind: 'latency', variant, baseline },
  direction: 'lower',
  ...(target === undefined ? {} : { target, issue: '#20' }),
});

/** The history size the growth targets are set at (issue 16). */
export const GROWTH_TARGET_SIZE = 1_000_000;
export const GROWTH_STORES = ['sqlite', 'redis'] as const;

function growthGoals(store: string): Goal[] {
  const label = store === 'sqlite' ? 'SQLite' : 'Redis';
  const read = (read: GrowthRead, what: string): Goal => ({
    what: `${label}: ${what}`,
    measure: { kind: 'growthRead', store, read },
    target: 20,
    direction: 'lower',
    issue: '#16',
  });
  return [
    read('metrics', '`metrics()`, ms'),
    read('listByTag', '`list` by one tag, ms'),
    read('deadLetters', 'the dead letters (`list({ status: "failed" })`), ms'),
    {
      what: `${label}: the event loop's largest delay during those reads, ms`,
      measure: { kind: 'growthLoopDelay', store },
      target: 20,
      direction: 'lower',
      issue: '#16',
    },
    {
      what: `${label}: CPU per durable task ÷ the same store empty`,
      measure: { kind: 'growthCpu', store },
      target: 1.2,
      direction: 'lower',
      issue: '#16',
    },
  ];
}

/** The BullMQ part's rows (issue 19): ours against raw BullMQ doing the same, in the same run. */
const bullmq = (what: string, key: string, target?: number): Goal => ({
  what,
  measure: { kind: 'bullmq', key },
  direction: 'higher',
  ...(target === undefined ? {} : { target, issue: '#19' }),
});
const BULLMQ_GOALS: readonly Goal[] = [
  bullmq(
    'BullMQ web process, 1 untraced task/request ÷ raw BullMQ (`queue.add` on `finish`), CPU/request',
    'bq-raw/bq-untraced',
    0.9,
  ),
  bullmq(
    'BullMQ web process, 1 traced task/request ÷ raw BullMQ + bullmq-otel, CPU/request',
    'bq-raw-otel/bq-traced',
    1.0,
  ),
  bullmq('(the method) raw BullMQ ÷ raw BullMQ, an A/A comparison', 'bq-raw/bq-raw-again'),
  bullmq('BullMQ worker: CPU per job, a plain BullMQ `Worker` ÷ ours', 'w-raw/w-ours'),
  bullmq('BullMQ worker: jobs/s through one worker, ours ÷ a plain BullMQ `Worker`', 'w-raw/w-ours jobs/s'),
  bullmq('BullMQ worker, traced: CPU per job, bullmq-otel ÷ ours', 'w-raw-otel/w-traced'),
  bullmq('BullMQ worker, traced: jobs/s, ours ÷ bullmq-otel', 'w-raw-otel/w-traced jobs/s'),
];

export const GOALS: readonly Goal[] = [
  // Issue 20's goals: each a ratio against a baseline measured in the same run, with the reference rows that
  // explain them (the method's own noise and scale, and the floors: the same work written by hand).
  {
    what: '(the method) bare Koa ÷ bare Koa, an A/A comparison',
    measure: capacity('bare-again', 'bare'),
    direction: 'higher',
  },
  {
    what: '(scale) a 2.5 µs busy loop per request ÷ bare Koa',
    measure: capacity('busy-loop', 'bare'),
    direction: 'higher',
  },
  {
    what: '(reference) mounted, no task ÷ bare Koa (CPU/request)',
    measure: capacity('mounted', 'bare'),
    direction: 'higher',
  },
  {
    what: '1 traced task/request ÷ the contract of a traced task by hand',
    measure: capacity('traced', 'handrolled-contract'),
    target: 1.0,
    direction: 'higher',
    issue: '#20',
  },
  {
    what: '(floor) the contract of a traced task by hand ÷ Koa + request span',
    measure: capacity('handrolled-contract', 'koa-span'),
    direction: 'higher',
  },
  {
    what: '(floor) 1 traced task/request ÷ that contract by hand with its tasks started as ours (together, at the end of the turn)',
    measure: capacity('traced', 'handrolled-contract-batched'),
    direction: 'higher',
  },
  {
    what: 'in process: ns per traced task ÷ (ns per span of the SDK alone + ns per untraced task)',
    measure: { kind: 'tracedCost', traced: 'traced', sdk: 'sdk-alone', untraced: 'untraced' },
    target: 1.0,
    direction: 'lower',
    issue: '#20',
  },
  {
    what: '(floor) in process: ns per traced task ÷ ns per untraced task that makes the same span by hand, active while it runs',
    // tasks/s of the floor ÷ the traced task's: the same ratio of ns per task.
    measure: { kind: 'throughput', variant: 'span-by-hand', baseline: 'traced' },
    direction: 'lower',
  },
  {
    what: '(floor) in process: ns per untraced task that makes that span by hand, active while it runs ÷ (ns per span of the SDK alone + ns per untraced task)',
    measure: { kind: 'tracedCost', traced: 'span-by-hand', sdk: 'sdk-alone', untraced: 'untraced' },
    direction: 'lower',
  },
  {
    what: '1 untraced task/request ÷ p-queue on `finish`',
    measure: capacity('untraced', 'p-queue'),
    target: 1.0,
    direction: 'higher',
    issue: '#20',
  },
  {
    what: '(floor) the contract of an untraced task by hand ÷ p-queue on `finish`',
    measure: capacity('handrolled-record', 'p-queue'),
    direction: 'higher',
  },
  {
    what: '(floor) 1 untraced task/request ÷ the contract of an untraced task by hand',
    measure: capacity('untraced', 'handrolled-record'),
    direction: 'higher',
  },
  {
    what: 'in process: untraced tasks/s ÷ p-queue',
    measure: { kind: 'throughput', variant: 'untraced', baseline: 'p-queue' },
    target: 0.75,
    direction: 'higher',
    issue: '#20',
  },
  {
    what: '(floor) in process: p-queue + an id, a record in a bounded map and AsyncLocalStorage.run, tasks/s ÷ p-queue',
    measure: { kind: 'throughput', variant: 'p-queue-contract', baseline: 'p-queue' },
    direction: 'higher',
  },
  {
    what: '(floor) in process: the same id, record, map and AsyncLocalStorage.run with a queue of 16 by hand (no library), tasks/s ÷ p-queue',
    measure: { kind: 'throughput', variant: 'least-contract', baseline: 'p-queue' },
    direction: 'higher',
  },
  {
    what: '(floor) in process: untraced tasks/s ÷ that queue by hand',
    measure: { kind: 'throughput', variant: 'untraced', baseline: 'least-contract' },
    direction: 'higher',
  },
  {
    what: '(floor) in process: the SDK alone, spans/s ÷ p-queue tasks/s',
    measure: { kind: 'throughput', variant: 'sdk-alone', baseline: 'p-queue' },
    direction: 'higher',
  },
  {
    what: '1 durable task/request (SqliteStore) ÷ 1 untraced task/request in memory',
    measure: capacity('sqlite', 'untraced'),
    target: 0.9,
    direction: 'higher',
    issue: '#20',
  },
  {
    what: '(floor) the least a durable SQLite store does, written by hand as a TaskStore ÷ 1 untraced task/request in memory',
    measure: capacity('sqlite-least', 'untraced'),
    direction: 'higher',
  },
  {
    what: '(floor) that least store with the indexes and counts the admin reads need ÷ 1 untraced task/request in memory',
    measure: capacity('sqlite-least-indexed', 'untraced'),
    direction: 'higher',
  },
  {
    what: '(floor) SqliteStore ÷ that least store with the admin indexes and counts',
    measure: capacity('sqlite', 'sqlite-least-indexed'),
    direction: 'higher',
  },
  {
    what: 'heap bytes per queued task (100k queued)',
    measure: { kind: 'queuedHeap' },
    target: 400,
    direction: 'lower',
    issue: '#20',
  },
  // The durable part's rows: each store against bare Koa, for scale.
  durable('(durable part, floor) a durable store that writes nothing ÷ bare Koa', 'null-durable'),
  durable('(durable part) SqliteStore, synchronous=NORMAL ÷ bare Koa', 'sqlite'),
  durable('(durable part) SqliteStore, synchronous=FULL ÷ bare Koa', 'sqlite-full'),
  durable('(durable part) RedisStore ÷ bare Koa', 'redis'),
  {
    what: '(OpenTelemetry) ns per task, a tracer provider that records nothing ÷ no SDK',
    measure: { kind: 'otel', variant: 'noop-provider' },
    direction: 'lower',
  },
  {
    what: '(OpenTelemetry, scale) ns per task, a real SDK ÷ no SDK',
    measure: { kind: 'otel', variant: 'sdk' },
    direction: 'lower',
  },
  latency(
    "one 50 ms CPU task/request, `isolate: 'thread'`: p99 latency ÷ bare Koa at the same rate (every task ran)",
    'thread',
    'bare',
    1.5,
  ),
  latency(
    '(floor) the same work sent to one worker thread written by hand, no library: p99 latency ÷ bare Koa',
    'by-hand',
    'bare',
  ),
  latency("(floor) `isolate: 'thread'` ÷ that hand-written worker thread, p99 latency", 'thread', 'by-hand'),
  latency('(reference) the same tasks in process: p99 latency ÷ bare Koa at the same rate', 'in-process', 'bare'),
  ...GROWTH_STORES.flatMap(growthGoals),
  ...BULLMQ_GOALS,
];

/** The HTTP comparisons the goals read (each a pair of servers measured side by side). */
export const capacityPairs = (): [baseline: string, variant: string][] =>
  GOALS.flatMap((g) => (g.measure.kind === 'capacity' ? [[g.measure.baseline, g.measure.variant]] : []));

export interface Evaluated extends Ratio {
  /** Undefined for a reference row (no target). */
  met?: boolean;
  /** For the growth goals: the history size the value was measured at. */
  size?: number;
}

function largest(rows: readonly GrowthRow[], store: string): GrowthRow | undefined {
  return rows
    .filter((r) => r.store === store)
    .reduce<GrowthRow | undefined>((a, r) => (a && a.size >= r.size ? a : r), undefined);
}

const tasksPerSecond = (results: Results, key: string): number | undefined =>
  results.inprocess?.throughput.find((t) => t.key === key)?.tasksPerSecond;

function measured(measure: Measure, results: Results): (Ratio & { size?: number }) | undefined {
  switch (measure.kind) {
    case 'capacity':
      return results.http?.ratios[`${measure.baseline}/${measure.variant}`];
    case 'durable':
      return results.durable?.ratios[`${measure.baseline}/${measure.variant}`];
    case 'otel':
      return results.otel?.rows.find((r) => r.name === measure.variant)?.ratio;
    case 'throughput': {
      const variant = tasksPerSecond(results, measure.variant);
      const baseline = tasksPerSecond(results, measure.baseline);
      return variant === undefined || baseline === undefined ? undefined : { value: variant / baseline };
    }
    case 'tracedCost': {
      const rates = [measure.traced, measure.sdk, measure.untraced].map((key) => tasksPerSecond(results, key));
      if (rates.some((rate) => rate === undefined)) return undefined;
      const [traced, sdk, untraced] = rates.map((rate) => 1e9 / rate!);
      return { value: traced / (sdk + untraced) };
    }
    case 'queuedHeap':
      return results.inprocess && { value: results.inprocess.memoryPerQueuedTask.heapBytes };
    case 'growthRead': {
      const row = largest(results.growth?.rows ?? [], measure.store);
      return row && { value: row.reads[measure.read].ms, size: row.size };
    }
    case 'growthLoopDelay': {
      const row = largest(results.growth?.rows ?? [], measure.store);
      return row && { value: Math.max(...Object.values(row.reads).map((r) => r.maxLoopDelayMs)), size: row.size };
    }
    case 'growthCpu': {
      const rows = results.growth?.rows.filter((r) => r.store === measure.store) ?? [];
      const empty = rows.find((r) => r.size === 0);
      const row = largest(rows, measure.store);
      return empty && row && { value: row.cpuPerTaskUs / empty.cpuPerTaskUs, size: row.size };
    }
    case 'bullmq':
      return results.bullmq?.ratios[measure.key] ?? results.bullmq?.worker.ratios[measure.key];
    case 'latency': {
      const row = (variant: string) => results.isolate?.rows.find((r) => r.variant === variant);
      const variant = row(measure.variant);
      const baseline = row(measure.baseline);
      if (variant === undefined || baseline === undefined) return undefined;
      // A row whose tasks did not all run has not done the work the goal is about: no value.
      if (variant.ran < variant.served) return { value: NaN };
      // Against bare Koa: the paired ratio of each round; against another row: the ratio of their medians.
      if (measure.baseline === 'bare' && variant.p99Ratio !== undefined) return variant.p99Ratio;
      return { value: variant.p99 / baseline.p99 };
    }
  }
}

/** A goal's value in `results` and whether it meets its target; undefined when that part was not measured. */
export function evaluate(goal: Goal, results: Results): Evaluated | undefined {
  const value = measured(goal.measure, results);
  if (value === undefined || !Number.isFinite(value.value)) return undefined;
  if (goal.target === undefined) return value;
  return { ...value, met: goal.direction === 'higher' ? value.value >= goal.target : value.value <= goal.target };
}

/** The target of the capacity goal comparing `variant` with `baseline`, if there is one. */
export const capacityTarget = (variant: string, baseline: string): number | undefined =>
  GOALS.find((g) => g.measure.kind === 'capacity' && g.measure.variant === variant && g.measure.baseline === baseline)
    ?.target;

/** The target of the BullMQ part's goal comparing `variant` with `baseline`, if there is one. */
export const bullmqTarget = (variant: string, baseline: string): number | undefined =>
  BULLMQ_GOALS.find((g) => g.measure.kind === 'bullmq' && g.measure.key === `${baseline}/${variant}`)?.target;
