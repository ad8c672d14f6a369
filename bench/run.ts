// `npm run bench`: every part of the benchmark, then bench/results.json (the measurements) and the report made
// from it (bench/report.ts: bench/results.md, bench/ratios.svg and the tables of docs/benchmarks.md).
//   http       every HTTP comparison side by side (bench/http.ts), ~17 min
//   inprocess  tasks/s through add(), after-response start latency, memory per queued task, ~1 min
//   growth     SQLite and Redis with 0, 200 000 and 1 000 000 finished records (bench/growth.ts), ~10 min
// Run it with --expose-gc (npm run bench does). Options: --only growth,inprocess (the other parts keep their
// last results); --quick (every part small, in a minute or two, written to --out or a temp file, never over
// the committed results); --out <file>.
// Loopback only; bounded in time.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { GROWTH_FULL, GROWTH_QUICK, runGrowthBench } from './growth.ts';
import { HTTP_FULL, HTTP_QUICK, runHttpBench } from './http.ts';
import { beside, timedPart } from './lib.ts';
import { writeReport } from './report.ts';
import { RESULTS_PATH, readResults, writeResults, type InProcessResults, type Results } from './results.ts';

const PARTS = ['http', 'inprocess', 'growth'] as const;
type Part = (typeof PARTS)[number];

const { values } = parseArgs({
  options: { only: { type: 'string' }, quick: { type: 'boolean', default: false }, out: { type: 'string' } },
});
const parts = (values.only?.split(',') ?? PARTS) as Part[];
for (const part of parts)
  if (!PARTS.includes(part)) throw new Error(`--only: unknown part ${part} (${PARTS.join(', ')})`);
const quick = values.quick;
const out = values.out ?? (quick ? join(tmpdir(), 'koa-taskflow-bench-quick.json') : RESULTS_PATH);
const log = (line: string) => console.log(line);

function inProcess(): Promise<Omit<InProcessResults, 'started' | 'nodeVersion' | 'machine' | 'load'>> {
  const env = quick ? { ...process.env, QUEUED: '10000', BENCH_MS: '200' } : process.env;
  const output = execFileSync(process.execPath, ['--expose-gc', beside('inprocess.ts', import.meta.url)], {
    encoding: 'utf8',
    env,
  });
  return Promise.resolve(JSON.parse(output.trim().split('\n').at(-1)!) as InProcessResults);
}

// A part run alone replaces its own section; the others keep what was measured before.
const results: Results = existsSync(out) ? readResults(out) : {};
if (parts.includes('http')) {
  results.http = await timedPart(() => runHttpBench(quick ? HTTP_QUICK : HTTP_FULL, log));
  writeResults(results, out);
}
if (parts.includes('inprocess')) {
  log('in-process measurements…');
  results.inprocess = await timedPart(inProcess);
  writeResults(results, out);
}
if (parts.includes('growth')) {
  log('history growth…');
  results.growth = await timedPart(() => runGrowthBench({ ...(quick ? GROWTH_QUICK : GROWTH_FULL), log }));
  writeResults(results, out);
}
log(`wrote ${out}`);
if (out === RESULTS_PATH) log(writeReport(results));
