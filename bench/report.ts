// `npm run bench:report`: bench/results.md, bench/ratios.svg and the tables of docs/benchmarks.md,
// docs/durable-stores.md and docs/opentelemetry.md (between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`),
// all made from bench/results.json and goals.ts alone, so the docs cannot drift from the measurements
// (test/bench-report.test.ts checks the committed files).
import { readFileSync, writeFileSync } from 'node:fs';
import { GOALS, bullmqTarget, capacityTarget, evaluate, type Goal } from './goals.ts';
import { beside, fmt, isMain, type RunInfo } from './lib.ts';
import { GROWTH_READS, readResults, type GrowthRow, type HttpResults, type Results } from './results.ts';

export const RESULTS_MD = beside('results.md', import.meta.url);
export const RATIOS_SVG = beside('ratios.svg', import.meta.url);
export const BENCHMARKS_DOC = beside('../docs/benchmarks.md', import.meta.url);
export const DURABLE_DOC = beside('../docs/durable-stores.md', import.meta.url);
export const OTEL_DOC = beside('../docs/opentelemetry.md', import.meta.url);

const range = (spread: [number, number] | undefined, digits: number) =>
  spread ? `${fmt(spread[0], digits)}–${fmt(spread[1], digits)}` : '';
const thousands = (n: number) => n.toLocaleString('en').replace(/,/g, ' ');
const warmup = (config: { WARMUP_REQUESTS?: number; WARMUP?: number }) =>
  config.WARMUP_REQUESTS !== undefined
    ? `with ${thousands(config.WARMUP_REQUESTS)} requests`
    : `for ${config.WARMUP} s`;
const runLine = (what: string, run: RunInfo) =>
  `${what}: ${run.started.slice(0, 16).replace('T', ' ')} UTC, Node ${run.nodeVersion}, ${run.machine}, ` +
  `${run.load ? `load average ${fmt(run.load[0], 2)} → ${fmt(run.load[1], 2)}` : 'load not recorded'}` +
  `${run.seconds === undefined ? '' : `, ${fmt(run.seconds / 60)} min`}`;

function digits(goal: Goal): number {
  switch (goal.measure.kind) {
    case 'queuedHeap':
      return 0;
    case 'growthRead':
    case 'growthLoopDelay':
      return 1;
    default:
      return 2;
  }
}

/** Every goal and reference row: measured value, middle half, target, met. */
export function goalTable(results: Results): string {
  const rows = GOALS.map((goal) => {
    const result = evaluate(goal, results);
    const d = digits(goal);
    const at = result?.size === undefined ? '' : ` (${thousands(result.size)} records)`;
    const target = goal.target === undefined ? '–' : `${goal.direction === 'higher' ? '≥' : '≤'} ${goal.target}`;
    const met = result === undefined ? 'not measured' : result.met === undefined ? '–' : result.met ? 'yes' : '**no**';
    return `| ${goal.what}${at} | ${result === undefined ? '' : fmt(result.value, d)} | ${range(result?.spread, d)} | ${target} | ${met} |`;
  });
  return ['| goal | measured | middle half | target | met |', '|---|---|---|---|---|', ...rows].join('\n');
}

/** Each store at each history size: fill time, CPU per task (and ÷ the empty store), each read (loop delay). */
export function growthTable(results: Results): string {
  const growth = results.growth;
  if (growth === undefined) return '_Not measured yet: `npm run bench:growth`._';
  const empty = new Map(growth.rows.filter((r) => r.size === 0).map((r) => [r.store, r.cpuPerTaskUs]));
  const cell = (row: GrowthRow, read: (typeof GROWTH_READS)[number]) =>
    `${fmt(row.reads[read].ms)} (${fmt(row.reads[read].maxLoopDelayMs)})`;
  return [
    `${runLine('Run', growth)}; CPU per task: the median of 5 rounds of ${thousands(growth.config.tasks)} ` +
      `tasks; each read the median of ${growth.config.readRepeats}, in ms, and in brackets the event loop's ` +
      `largest delay during them (ms); *no read*: the largest delay over the same pattern with no read, ` +
      `what the machine alone did to the event loop.`,
    '',
    '| store | records | fill s | µs CPU/task | ÷ empty | `list` 50 | by tag | dead letters | `metrics()` | no read |',
    '|---|---|---|---|---|---|---|---|---|---|',
    ...growth.rows.map(
      (r) =>
        `| ${r.store} | ${thousands(r.size)} | ${fmt(r.fillMs / 1000)} | ${fmt(r.cpuPerTaskUs)} | ` +
        `${fmt(r.cpuPerTaskUs / (empty.get(r.store) ?? NaN), 2)} | ` +
        `${GROWTH_READS.map((read) => cell(r, read)).join(' | ')} | (${fmt(r.idleLoopDelayMs)}) |`,
    ),
  ].join('\n');
}

/** Tasks/s through add(), the after-response start latency and the memory per queued task. */
export function inProcessTable(results: Results): string {
  const inprocess = results.inprocess;
  if (inprocess === undefined) return '_Not measured yet: `node bench/run.ts --only inprocess`._';
  return [
    `${runLine('Run', inprocess)}.`,
    '',
    '| tasks through `add()` (batches of 1 000, awaited) | tasks/s |',
    '|---|---|',
    ...inprocess.throughput.map((t) => `| ${t.name} | ${fmt(t.tasksPerSecond, 0)} |`),
    '',
    `After-response start latency (response \`finish\` → task's first line, ${inprocess.startLatencyMs.samples} requests):`,
    `p50 ${fmt(inprocess.startLatencyMs.p50 * 1000, 1)} µs, p99 ${fmt(inprocess.startLatencyMs.p99 * 1000, 1)} µs.`,
    `Memory per queued task (${thousands(inprocess.memoryPerQueuedTask.tasks)} queued behind a blocker, after GC):`,
    `${fmt(inprocess.memoryPerQueuedTask.heapBytes, 0)} B heap, ${fmt(inprocess.memoryPerQueuedTask.rssBytes, 0)} B RSS.`,
  ].join('\n');
}

/** Every variant of an HTTP-measured part: req/s, latency, CPU per request, its capacity ratio and goal. */
export function variantTable(
  part: HttpResults | undefined,
  command: string,
  reference = 'bare',
  targets?: (variant: string, baseline: string) => number | undefined,
): string {
  if (part === undefined) return `_Not measured yet: \`${command}\`._`;
  return [
    `| variant | req/s | ÷ ${reference} | p50 ms | p99 ms | µs CPU/request | capacity ratio | middle half of the ` +
      'ratios | against | goal | every task ran |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
    ...part.rows.map((r) => {
      const ratio = r.baseline === undefined ? undefined : part.ratios[`${r.baseline}/${r.name}`];
      const goal = r.baseline === undefined ? undefined : (targets ?? capacityTarget)(r.name, r.baseline);
      const ran = r.tasks ? (r.allTasksRan ? 'yes' : '**no: backlog**') : '–';
      return (
        `| ${r.label} | ${fmt(r.rps, 0)} | ${fmt(r.rpsRatio, 2)} | ${r.p50} | ${r.p99} | ` +
        `${fmt(r.cpuPerRequest)} | ${ratio ? fmt(ratio.value, 2) : '1 (baseline)'} | ` +
        `${range(ratio?.spread, 2)} | ${r.baseline ?? ''} | ${goal === undefined ? '' : `≥ ${goal}`} | ${ran} |`
      );
    }),
  ].join('\n');
}

/** The durable part: its run, how it measures, every store against bare Koa. */
export function durableTable(results: Results): string {
  const durable = results.durable;
  const run = durable
    ? `${runLine('Run', durable)}; ${durable.config.ROUNDS} round${durable.config.ROUNDS === 1 ? '' : 's'} of ${durable.config.BURSTS} paired ` +
      `${durable.config.SECONDS} s bursts per store, ${durable.config.CONNECTIONS} connections, loopback, each ` +
      "store's server beside bare Koa's (the method of [Benchmarks](benchmarks.md#how-it-measures)). The server " +
      'runs its tasks in the same process, so its CPU time per request includes writing the record before the ' +
      'response, running the task and writing its end.\n\n'
    : '';
  return `${run}${variantTable(durable, 'node --expose-gc bench/run.ts --only durable')}`;
}

/** The OpenTelemetry part: ns per task in process with no SDK, a provider that records nothing, a real SDK. */
export function otelTable(results: Results): string {
  const otel = results.otel;
  if (otel === undefined) return '_Not measured yet: `node --expose-gc bench/run.ts --only otel`._';
  return [
    `${runLine('Run', otel)}; in one process, the variants interleaved, ${otel.config.ROUNDS} rounds of ` +
      `${thousands(otel.config.TASKS)} tasks each (one \`taskLog\` per task); the median, and each round's ratio ` +
      "to the same round's no-SDK run.",
    '',
    '| variant | ns per task | ÷ no SDK | middle half |',
    '|---|---|---|---|',
    ...otel.rows.map(
      (r) =>
        `| ${r.label} | ${thousands(Math.round(r.nsPerTask))} | ${fmt(r.ratio.value, 3)} | ${range(r.ratio.spread, 3)} |`,
    ),
  ].join('\n');
}

/** The BullMQ part: its run, the web processes against raw BullMQ, and the worker runs. */
export function bullmqTable(results: Results): string {
  const bullmq = results.bullmq;
  if (bullmq === undefined) return '_Not measured yet: `node --expose-gc bench/run.ts --only bullmq`._';
  const web = bullmq.config;
  const worker = bullmq.worker;
  const ratio = (key: string) => {
    const r = worker.ratios[key];
    return r ? `${fmt(r.value, 2)} (${range(r.spread, 2)})` : '';
  };
  return [
    `${runLine('Run', bullmq)}; redis-server on loopback, started by the part.`,
    '',
    `**Web process**, one job enqueued per request and none run there: ${web.ROUNDS} rounds of ${web.BURSTS} ` +
      `paired ${web.SECONDS} s bursts per comparison, ${web.CONNECTIONS} connections, each server beside its ` +
      "baseline's (the HTTP method); *every task ran*: every request served left one job in Redis.",
    '',
    variantTable(bullmq, 'node --expose-gc bench/run.ts --only bullmq', 'raw BullMQ', bullmqTarget),
    '',
    `**One worker** running ${thousands(worker.config.JOBS)} queued jobs (after ${thousands(worker.config.WARMUP_JOBS)} ` +
      `to warm up) with a body that returns at once; ${worker.config.ROUNDS} rounds, each running every worker ` +
      "once; ratios within a round, median (middle half). *CPU ratio*: the baseline's CPU per job ÷ the row's.",
    '',
    '| worker | µs CPU/job | jobs/s | CPU ratio | jobs/s ratio | against |',
    '|---|---|---|---|---|---|',
    ...worker.rows.map((r) => {
      const base = r.baseline;
      const key = `${base}/${r.variant}`;
      return (
        `| ${r.label} | ${fmt(r.cpuPerJob)} | ${fmt(r.jobsPerSecond, 0)} | ` +
        `${base ? ratio(key) : '1 (baseline)'} | ${base ? ratio(`${key} jobs/s`) : '1 (baseline)'} | ${base ?? ''} |`
      );
    }),
  ].join('\n');
}

export function resultsMarkdown(results: Results): string {
  const http = results.http;
  const method = http
    ? `${runLine('HTTP', http)}.
Autocannon on loopback, ${http.config.CONNECTIONS} connections. Every comparison (a variant against its baseline, and
ours against the same work written by hand) runs **its servers side by side**, each in its own process; the servers
a group of goals reads (ours, the same work by hand, and the baseline they are held to) run together. Each is warmed
${warmup(http.config)} (the 10 000-record history full and the JIT settled), then they are measured in ${http.config.BURSTS} turns, each
server serving one ${http.config.SECONDS} s burst a turn, the one that goes first rotating; **${http.config.ROUNDS} rounds** with fresh
processes, the order of the groups rotating. A ratio is only taken between two bursts of the same turn, seconds apart, as a shared machine's speed drifts by more than
the differences measured. *µs CPU/request* is the server's \`process.cpuUsage()\` (all threads) over a burst's
requests, read after the background work they caused has drained, divided by the request count (median of all the
variant's bursts). *Capacity ratio* = baseline CPU/request ÷ variant CPU/request of the same turn, median
over all of them: 1.00 costs the same as the baseline, 0.50 twice as much; *middle half* is the 25th to 75th
percentile of those ratios.`
    : '';
  return `# Benchmark results

Generated by \`npm run bench:report\` from \`bench/results.json\` (written by \`npm run bench\`); the goals are
defined in \`bench/goals.ts\`, the method is described in [docs/benchmarks.md](../docs/benchmarks.md).

## Goals

${goalTable(results)}

## HTTP

${method}

${variantTable(http, 'node --expose-gc bench/run.ts --only http')}

![capacity ratios](ratios.svg)

## Durable stores

${durableTable(results).replace('(benchmarks.md#', '(../docs/benchmarks.md#')}

## In process

${inProcessTable(results)}

## OpenTelemetry

${otelTable(results)}

## BullMQ

${bullmqTable(results)}

## History growth

${growthTable(results)}
`;
}

/** The generated tables of each doc, by the doc's path and then by marker name. */
export function docsSections(results: Results): Record<string, Record<string, string>> {
  const note = '<!-- generated by `npm run bench:report` from bench/results.json: edit bench/report.ts, not this -->';
  const runs = (
    [
      ['HTTP', results.http],
      ['Durable stores', results.durable],
      ['In process', results.inprocess],
      ['OpenTelemetry', results.otel],
      ['BullMQ', results.bullmq],
    ] as const
  ).flatMap(([what, run]) => (run ? [`${runLine(what, run)}.`] : []));
  return {
    [BENCHMARKS_DOC]: {
      goals: `${note}\n${runs.join('\n')}\n\n${goalTable(results)}`,
      growth: `${note}\n${growthTable(results)}`,
      bullmq: `${note}\n${bullmqTable(results)}`,
    },
    [DURABLE_DOC]: { durable: `${note}\n${durableTable(results)}` },
    [OTEL_DOC]: { otel: `${note}\n${otelTable(results)}` },
  };
}

/** `text` with the content between each `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` replaced. */
export function replaceSections(text: string, sections: Record<string, string>, file = 'the doc'): string {
  let out = text;
  for (const [name, content] of Object.entries(sections)) {
    const open = `<!-- bench:${name} -->`;
    const close = `<!-- /bench:${name} -->`;
    const start = out.indexOf(open);
    const end = out.indexOf(close);
    if (start < 0 || end < start) throw new Error(`${file} has no ${open} … ${close} section`);
    out = `${out.slice(0, start + open.length)}\n${content}\n${out.slice(end)}`;
  }
  return out;
}

/** A horizontal bar chart of the capacity ratios, each goal's target marked. */
export function ratiosChart(results: Results): string {
  const http = results.http;
  const rows = GOALS.flatMap((goal) => {
    if (goal.measure.kind !== 'capacity') return [];
    const result = evaluate(goal, results);
    return result === undefined ? [] : [{ label: goal.what, value: result.value, target: goal.target }];
  });
  const width = 900;
  const barH = 26;
  const left = 420;
  const scale = (v: number) => left + Math.min(v, 2) * ((width - left - 90) / 2);
  const height = 40 + rows.length * (barH + 10) + 30;
  const bars = rows
    .map((r, i) => {
      const y = 30 + i * (barH + 10);
      const color = r.target === undefined ? '#8a94a6' : r.value >= r.target ? '#2e9e5b' : '#d0553f';
      const target =
        r.target === undefined
          ? ''
          : `<line x1="${scale(r.target)}" x2="${scale(r.target)}" y1="${y - 3}" y2="${y + barH + 3}" stroke="#222" stroke-dasharray="3 2"/>`;
      const label = r.label.length > 64 ? `${r.label.slice(0, 63)}…` : r.label;
      return `<text x="${left - 8}" y="${y + barH / 2 + 4}" text-anchor="end" font-size="12">${escapeXml(label)}</text>
<rect x="${left}" y="${y}" width="${scale(r.value) - left}" height="${barH}" fill="${color}"/>
<text x="${scale(r.value) + 4}" y="${y + barH / 2 + 4}" font-size="12">${fmt(r.value, 2)}</text>${target}`;
    })
    .join('\n');
  const axis = [0, 0.5, 1, 1.5, 2]
    .map(
      (v) =>
        `<line x1="${scale(v)}" x2="${scale(v)}" y1="24" y2="${height - 24}" stroke="#ddd"/><text x="${scale(v)}" y="${height - 8}" font-size="11" text-anchor="middle">${v}</text>`,
    )
    .join('\n');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="#fff"/>
<text x="10" y="16" font-size="13" font-weight="bold">Capacity ratio (baseline CPU/request ÷ variant CPU/request; dashed line = goal)${http ? `, ${http.started.slice(0, 10)}` : ''}</text>
${axis}
${bars}
</svg>
`;
}

function escapeXml(text: string): string {
  const entities: Record<string, string> = { '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' };
  return text.replace(/[<>&'"]/g, (c) => entities[c]);
}

/** Write results.md, ratios.svg and the docs tables from `results`; returns the goal table for the console. */
export function writeReport(results: Results): string {
  writeFileSync(RESULTS_MD, resultsMarkdown(results));
  writeFileSync(RATIOS_SVG, ratiosChart(results));
  for (const [doc, sections] of Object.entries(docsSections(results)))
    writeFileSync(doc, replaceSections(readFileSync(doc, 'utf8'), sections, doc));
  return `${goalTable(results)}\n\nwrote bench/results.md, bench/ratios.svg and the tables of docs/`;
}

if (isMain(import.meta.url)) console.log(writeReport(readResults()));
