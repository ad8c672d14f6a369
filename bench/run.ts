// `npm run bench`: the HTTP benchmark (every comparison side by side, ROUNDS rounds) and the in-process
// measurements, then bench/results.json (the measurements), bench/results.md and bench/ratios.svg.
// Loopback only; bounded in time. `node bench/run.js --render` rewrites the report from results.json.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { fmt } from './lib.js';
import { runHttpBench } from './http.js';

const here = (file) => new URL(file, import.meta.url).pathname;

let measured;
if (process.argv.includes('--render')) {
  measured = JSON.parse(readFileSync(here('./results.json'), 'utf8'));
} else {
  const started = new Date().toISOString();
  const http = await runHttpBench((line) => console.log(line));
  console.log('in-process measurements…');
  const inprocess = JSON.parse(
    execFileSync(process.execPath, ['--expose-gc', here('./inprocess.js')], { encoding: 'utf8' })
      .trim()
      .split('\n')
      .at(-1),
  );
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB`;
  measured = { started, nodeVersion: process.version, machine, http, inprocess };
  writeFileSync(here('./results.json'), `${JSON.stringify(measured, null, 1)}\n`);
}
const { started, nodeVersion, machine, http, inprocess } = measured;

const byName = new Map(http.rows.map((r) => [r.name, r]));
const pq = inprocess.throughput.find((t) => t.name.startsWith('p-queue')).tasksPerSecond;
const tracedTput = inprocess.throughput.find((t) => t.name.startsWith('koa-taskflow traced')).tasksPerSecond;
const sdkAlone = inprocess.throughput.find((t) => t.name.startsWith('OpenTelemetry SDK alone')).tasksPerSecond;
const range = (spread) => (spread ? `${fmt(spread[0], 2)}–${fmt(spread[1], 2)}` : '');
const row = (name) => ({ value: byName.get(name).capacityRatio, spread: byName.get(name).spread });
// Each goal as the issue set it, and the floors that bound it: the same comparison made with what a user would
// write by hand to get what the contract gives (a task record, its history, a limit, the task's context…).
const goals = [
  { what: 'mounted, no task ÷ bare Koa (CPU/request)', ...row('mounted'), goal: 0.97 },
  { what: '(the method) bare Koa ÷ bare Koa, an A/A comparison', ...row('bare-again') },
  { what: '(scale) a 2.5 µs busy loop per request ÷ bare Koa', ...row('busy-loop') },
  { what: '1 untraced task/request ÷ bare Koa', ...row('untraced'), goal: 0.9 },
  { what: '(floor) the contract of an untraced task by hand ÷ bare Koa', ...row('handrolled-record') },
  {
    what: '(floor) 1 untraced task/request ÷ the contract of an untraced task by hand',
    ...http.extra.untracedVsRecord,
  },
  { what: '1 traced task/request ÷ Koa + request span', ...row('traced'), goal: 0.85 },
  { what: '(floor) the contract of a traced task by hand ÷ Koa + request span', ...row('handrolled-contract') },
  {
    what: '1 traced task/request ÷ hand-rolled finish + setImmediate + span + event + pino',
    ...http.extra.tracedVsHandrolled,
    goal: 1.0,
  },
  { what: '(floor) 1 traced task/request ÷ the contract of a traced task by hand', ...http.extra.tracedVsContract },
  { what: '1 durable task/request (SqliteStore) ÷ bare Koa', ...row('sqlite'), goal: 0.6 },
  { what: '(floor) a task persisted by hand in SQLite ÷ bare Koa', ...row('sqlite-by-hand') },
  { what: '(floor) SqliteStore ÷ a task persisted by hand in SQLite', ...http.extra.sqliteVsByHand },
  { what: 'traced in-process tasks/s ÷ untraced p-queue', value: tracedTput / pq, goal: 0.5 },
  { what: '(floor) the SDK alone, spans/s ÷ untraced p-queue tasks/s', value: sdkAlone / pq },
  {
    what: 'heap bytes per queued task (100k queued)',
    value: inprocess.memoryPerQueuedTask.heapBytes,
    goal: 1024,
    lowerIsBetter: true,
  },
];
for (const g of goals)
  g.met = g.goal === undefined ? undefined : g.lowerIsBetter ? g.value <= g.goal : g.value >= g.goal;

const table = [
  '| variant | req/s | ÷ bare | p50 ms | p99 ms | µs CPU/request | capacity ratio | middle half of the ratios | against | every task ran |',
  '|---|---|---|---|---|---|---|---|---|---|',
  ...http.rows.map(
    (r) =>
      `| ${r.label} | ${fmt(r.rps, 0)} | ${fmt(r.rpsRatio, 2)} | ${r.p50} | ${r.p99} | ${fmt(r.cpuPerRequest)} | ${r.baseline ? fmt(r.capacityRatio, 2) : '1 (baseline)'} | ${range(r.spread)} | ${r.baseline ?? ''} | ${r.tasks ? (r.allTasksRan ? 'yes' : '**no: backlog**') : '–'} |`,
  ),
].join('\n');
const goalTable = [
  '| goal | measured | middle half | target | met |',
  '|---|---|---|---|---|',
  ...goals.map(
    (g) =>
      `| ${g.what} | ${fmt(g.value, g.lowerIsBetter ? 0 : 2)} | ${range(g.spread)} | ${g.goal === undefined ? '–' : `${g.lowerIsBetter ? '≤' : '≥'} ${g.goal}`} | ${g.met === undefined ? '–' : g.met ? 'yes' : '**no**'} |`,
  ),
].join('\n');
const throughput = inprocess.throughput.map((t) => `| ${t.name} | ${fmt(t.tasksPerSecond, 0)} |`).join('\n');

const markdown = `# Benchmark results

Generated by \`npm run bench\` on ${started} — Node ${nodeVersion}, ${machine}.
HTTP: autocannon on loopback, ${http.config.CONNECTIONS} connections. Every comparison (a variant against its
baseline, and ours against the same work written by hand) runs **both servers side by side**, each in its own
process, warmed for ${http.config.WARMUP} s (long enough to fill MemoryStore's 10 000-record history), then measured in
${http.config.BURSTS} bursts of ${http.config.SECONDS} s each, taking turns; **${http.config.ROUNDS} rounds** with fresh processes, the
order of the comparisons rotating. This shared VM's speed drifts by more than the differences measured,
even within seconds, so a ratio is only taken between two bursts a second apart. *µs CPU/request* is the
server process's \`process.cpuUsage()\` (all threads: GC and libuv included) over a burst's requests, read
after the background work they caused has drained, divided by the request count (median of all the
variant's bursts). *Capacity ratio* = baseline CPU/request ÷ variant CPU/request of two neighbouring bursts,
median over all of them: 1.00 costs the same as the baseline, 0.50 twice as much; *middle half* is the 25th
to 75th percentile of those ratios. The A/A row (bare Koa against itself) shows what the method reads
for no difference; the busy-loop row shows what it reads for a known 2.5 µs of CPU per request.
CPU per request is the steadier of the two numbers on a shared 2-core machine; req/s is shown too.

## HTTP

${table}

## Goals

${goalTable}

## In process

| tasks through \`add()\` (batches of 1 000, awaited) | tasks/s |
|---|---|
${throughput}

After-response start latency (response \`finish\` → task's first line, ${inprocess.startLatencyMs.samples} requests):
p50 ${fmt(inprocess.startLatencyMs.p50 * 1000, 1)} µs, p99 ${fmt(inprocess.startLatencyMs.p99 * 1000, 1)} µs.

Memory per queued task (${inprocess.memoryPerQueuedTask.tasks} queued behind a blocker, after GC):
${fmt(inprocess.memoryPerQueuedTask.heapBytes, 0)} B heap, ${fmt(inprocess.memoryPerQueuedTask.rssBytes, 0)} B RSS.

![capacity ratios](ratios.svg)
`;
writeFileSync(here('./results.md'), markdown);
const byHand = [
  {
    label: '1 untraced task vs its contract by hand',
    capacityRatio: http.extra.untracedVsRecord.value,
    baseline: 'by hand',
  },
  {
    label: '1 traced task vs its contract by hand',
    capacityRatio: http.extra.tracedVsContract.value,
    baseline: 'by hand',
  },
  { label: 'SqliteStore vs persisting by hand', capacityRatio: http.extra.sqliteVsByHand.value, baseline: 'by hand' },
  {
    label: '1 traced task vs span + event + pino by hand',
    capacityRatio: http.extra.tracedVsHandrolled.value,
    baseline: 'by hand',
    goal: 1.0,
  },
];
writeFileSync(here('./ratios.svg'), chart([...http.rows.filter((r) => r.baseline), ...byHand]));
console.log(`\n${goalTable}\n\nwrote bench/results.md and bench/ratios.svg`);

/** A horizontal bar chart of capacity ratios with each goal marked. */
function chart(rows) {
  const width = 900;
  const barH = 26;
  const left = 390;
  const scale = (v) => left + Math.min(v, 1.3) * ((width - left - 120) / 1.3);
  const height = 40 + rows.length * (barH + 10) + 30;
  const bars = rows
    .map((r, i) => {
      const y = 30 + i * (barH + 10);
      const color = r.goal === undefined ? '#8a94a6' : r.capacityRatio >= r.goal ? '#2e9e5b' : '#d0553f';
      const goal =
        r.goal === undefined
          ? ''
          : `<line x1="${scale(r.goal)}" x2="${scale(r.goal)}" y1="${y - 3}" y2="${y + barH + 3}" stroke="#222" stroke-dasharray="3 2"/>`;
      return `<text x="${left - 8}" y="${y + barH / 2 + 4}" text-anchor="end" font-size="12">${escapeXml(r.label.length > 58 ? `${r.label.slice(0, 57)}…` : r.label)}</text>
<rect x="${left}" y="${y}" width="${scale(r.capacityRatio) - left}" height="${barH}" fill="${color}"/>
<text x="${scale(r.capacityRatio) + 4}" y="${y + barH / 2 + 4}" font-size="12">${fmt(r.capacityRatio, 2)} (vs ${r.baseline})</text>${goal}`;
    })
    .join('\n');
  const axis = [0, 0.25, 0.5, 0.75, 1, 1.25]
    .map(
      (v) =>
        `<line x1="${scale(v)}" x2="${scale(v)}" y1="24" y2="${height - 24}" stroke="#ddd"/><text x="${scale(v)}" y="${height - 8}" font-size="11" text-anchor="middle">${v}</text>`,
    )
    .join('\n');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="#fff"/>
<text x="10" y="16" font-size="13" font-weight="bold">Capacity ratio (baseline CPU/request ÷ variant CPU/request; dashed line = goal)</text>
${axis}
${bars}
</svg>
`;
}

function escapeXml(text) {
  return text.replace(/[<>&'"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c]);
}
