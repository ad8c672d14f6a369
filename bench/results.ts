// The shape of bench/results.json: one section per part of `npm run bench`, each stamped with when it ran and
// how loaded the machine was (a part can be run again alone: `node bench/run.ts --only growth`).
import { readFileSync, writeFileSync } from 'node:fs';
import type { RunInfo } from './lib.ts';

/** A ratio taken many times: its median and the middle half (25th–75th percentile) of the samples. */
export interface Ratio {
  value: number;
  spread?: [number, number];
}

export interface HttpRow {
  name: string;
  label: string;
  baseline?: string;
  tasks?: boolean;
  rps: number;
  rpsRatio: number;
  p50: number;
  p99: number;
  cpuPerRequest: number;
  allTasksRan: boolean;
  errors: number;
}

export interface HttpResults extends RunInfo {
  /** EVERY_VARIANT: every variant against its baseline; runs before 2026-11-29 all did, without the field. */
  config: {
    ROUNDS: number;
    BURSTS: number;
    SECONDS: number;
    CONNECTIONS: number;
    /** Requests per server before measuring (runs before 2026-11-30 warmed for `WARMUP` seconds instead). */
    WARMUP_REQUESTS?: number;
    WARMUP?: number;
    EVERY_VARIANT?: boolean;
  };
  rows: HttpRow[];
  /** Capacity ratios by `<baseline>/<variant>`: baseline CPU per request ÷ the variant's, bursts of the same turn. */
  ratios: Record<string, Ratio>;
}

export interface InProcessResults extends RunInfo {
  throughput: { key: string; name: string; tasksPerSecond: number }[];
  startLatencyMs: { p50: number; p99: number; samples: number };
  memoryPerQueuedTask: { tasks: number; heapBytes: number; rssBytes: number };
}

export interface ReadTiming {
  /** Median latency of the read, ms. */
  ms: number;
  /** The event loop's largest delay while the read ran (all its repetitions), ms. */
  maxLoopDelayMs: number;
}

export const GROWTH_READS = ['list', 'listByTag', 'deadLetters', 'metrics'] as const;
export type GrowthRead = (typeof GROWTH_READS)[number];

export interface GrowthRow {
  store: string;
  size: number;
  fillMs: number;
  cpuPerTaskUs: number;
  reads: Record<GrowthRead, ReadTiming>;
  /** The event loop's largest delay over the same pattern with no read: the machine's own noise, ms. */
  idleLoopDelayMs: number;
}

export interface GrowthResults extends RunInfo {
  config: { tasks: number; readRepeats: number };
  rows: GrowthRow[];
}

/** In process, ns per task through `add()` with one `taskLog()`, each telemetry setting interleaved (bench/otel.ts). */
export interface OtelRow {
  name: string;
  label: string;
  nsPerTask: number;
  /** ns per task ÷ the `no-sdk` row's of the same round: the median and middle half over the rounds. */
  ratio: Ratio;
}

export interface OtelResults extends RunInfo {
  config: { TASKS: number; ROUNDS: number };
  rows: OtelRow[];
}

/** The isolate part: one row per server, medians over the rounds (latencies in ms), counts summed. */
export interface IsolateRow {
  variant: string;
  p50: number;
  p99: number;
  /** p99 ÷ bare Koa's p99 in the same round, over the rounds (absent from the per-burst samples). */
  p99Ratio?: Ratio;
  served: number;
  /** Tasks that ended `success` (the `thread` and `in-process` servers: one per request). */
  ran: number;
  errors: number;
}

export interface IsolateResults {
  config: { ROUNDS: number; SECONDS: number; RATE: number; threads: number };
  rows: IsolateRow[];
}

/** The BullMQ part's worker runs: medians over the rounds. */
export interface BullmqWorkerRow {
  variant: string;
  label: string;
  /** The row it is compared with, if any. */
  baseline?: string;
  /** µs of the worker process's CPU time per job. */
  cpuPerJob: number;
  jobsPerSecond: number;
}

/**
 * The BullMQ part (bench/bullmq.ts): its web processes measured as the HTTP part is (their ratios keyed
 * `<baseline>/<variant>`), and its worker runs, whose ratios are keyed `<baseline>/<variant>` (CPU per job:
 * the baseline's ÷ the variant's) and `<baseline>/<variant> jobs/s` (the variant's ÷ the baseline's).
 */
export interface BullmqResults extends HttpResults {
  worker: {
    config: { ROUNDS: number; WARMUP_JOBS: number; JOBS: number };
    rows: BullmqWorkerRow[];
    ratios: Record<string, Ratio>;
  };
}

export interface Results {
  http?: HttpResults;
  /** The durable stores against bare Koa, measured the way the HTTP part is (bench/durable.ts). */
  durable?: HttpResults;
  otel?: OtelResults;
  isolate?: IsolateResults;
  inprocess?: InProcessResults;
  growth?: GrowthResults;
  /** koa-taskflow on BullMQ against raw BullMQ: web processes and workers (bench/bullmq.ts). */
  bullmq?: BullmqResults;
}

export const RESULTS_PATH = new URL('./results.json', import.meta.url).pathname;

export function readResults(path = RESULTS_PATH): Results {
  return JSON.parse(readFileSync(path, 'utf8')) as Results;
}

export function writeResults(results: Results, path = RESULTS_PATH): void {
  writeFileSync(path, `${JSON.stringify(results, null, 1)}\n`);
}
