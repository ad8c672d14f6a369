// `npm run bench`: every part of the benchmark, then bench/results.json (the measurements) and the report made
// from it (bench/report.ts: bench/results.md, bench/ratios.svg and the tables of docs/). Default sizes: 8 minutes
// on the 2-core machine with nothing else running (session 14's run; load average 2–3), the bullmq part 1.6 of
// them; under heavy other load the same sizes took up to 12 (`--full`: ~30 minutes):
//   http       the comparisons the goals read, side by side, 2 rounds (bench/http.ts); --full: every variant
//              against its baseline too, 3 rounds
//   durable    each durable store against bare Koa, the same method (bench/durable.ts), 1 round; --full: 3 rounds
//   inprocess  tasks/s through add(), after-response start latency, memory per queued task (bench/inprocess.ts)
//   otel       ns per task with no SDK, a provider that records nothing, a real SDK (bench/otel.ts); --full: 15 rounds
//   isolate    one 50 ms CPU task per request at a fixed rate: threads, in process, bare Koa (bench/isolate.ts),
//              5 rounds of 3 s bursts; --full: 8 rounds
//   bullmq     koa-taskflow on BullMQ against raw BullMQ (and bullmq-otel): a web process's CPU per request, a
//              worker's CPU per job and jobs/s, on a redis-server it starts (bench/bullmq.ts), about 2 minutes;
//              --full: 3 rounds of 3 bursts, 5 worker rounds
//   growth     SQLite and Redis with 0 and 100 000 finished records (bench/growth.ts); --full: 0, 200 000 and
//              1 000 000, where the #16 goals are set
// Run it with --expose-gc (npm run bench does). Options: --only growth,inprocess (the other parts keep their last
// results); --full; --quick (every part small, in a minute or two, written to --out or a temp file, never over
// the committed results); --out <file>. Loopback only; bounded in time.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BULLMQ_DEFAULT, BULLMQ_FULL, BULLMQ_QUICK, runBullmqBench } from './bullmq.ts';
import { DURABLE_VARIANTS } from './durable.ts';
import { GROWTH_DEFAULT, GROWTH_FULL, GROWTH_QUICK, runGrowthBench } from './growth.ts';
import { GROUPS, HTTP_DEFAULT, HTTP_FULL, HTTP_QUICK, VARIANTS, runHttpBench } from './http.ts';
import { ISOLATE_DEFAULT, ISOLATE_FULL, ISOLATE_QUICK, runIsolateBench } from './isolate.ts';
import { beside, timedPart } from './lib.ts';
import { writeReport } from './report.ts';
import { RESULTS_PATH, readResults, writeResults, type Results } from './results.ts';

const PARTS = ['http', 'durable', 'inprocess', 'otel', 'isolate', 'bullmq', 'growth'] as const;
type Part = (typeof PARTS)[number];

const { values } = parseArgs({
  options: {
    only: { type: 'string' },
    quick: { type: 'boolean', default: false },
    full: { type: 'boolean', default: false },
    out: { type: 'string' },
  },
});
const parts = (values.only?.split(',') ?? PARTS) as Part[];
for (const part of parts)
  if (!PARTS.includes(part)) throw new Error(`--only: unknown part ${part} (${PARTS.join(', ')})`);
const { quick, full } = values;
if (quick && full) throw new Error('--quick and --full: pick one');
const size = <T>(sizes: { quick: T; default: T; full: T }): T =>
  quick ? sizes.quick : full ? sizes.full : sizes.default;
const out = values.out ?? (quick ? join(tmpdir(), 'koa-taskflow-bench-quick.json') : RESULTS_PATH);
const log = (line: string) => console.log(line);

/** A part that runs in a process of its own (it sets process-wide state) and prints its result as a JSON line. */
function childPart<T>(script: string, env: Record<string, string>): Promise<T> {
  const output = execFileSync(process.execPath, ['--expose-gc', beside(script, import.meta.url)], {
    encoding: 'utf8',
    env: { ...env, ...process.env },
  });
  return Promise.resolve(JSON.parse(output.trim().split('\n').at(-1)!) as T);
}

// A part run alone replaces its own section; the others keep what was measured before.
const results: Results = existsSync(out) ? readResults(out) : {};
const http = size({ quick: HTTP_QUICK, default: HTTP_DEFAULT, full: HTTP_FULL });
if (parts.includes('http')) {
  log('HTTP comparisons…');
  results.http = await timedPart(() => runHttpBench(http, log, VARIANTS, GROUPS));
  writeResults(results, out);
}
if (parts.includes('durable')) {
  log('durable stores…');
  // Reference rows only (the durable goal is read in the HTTP part): one round and half the warm-up by default,
  // to keep the whole run within 10 minutes.
  const rounds = full ? http.ROUNDS : 1;
  const warmup = full ? http.WARMUP_REQUESTS : http.WARMUP_REQUESTS / 2;
  results.durable = await timedPart(() =>
    runHttpBench(
      { ...http, ROUNDS: rounds, BURSTS: 3, WARMUP_REQUESTS: warmup, EVERY_VARIANT: true },
      log,
      DURABLE_VARIANTS,
    ),
  );
  writeResults(results, out);
}
if (parts.includes('inprocess')) {
  log('in-process measurements…');
  const env = size<Record<string, string>>({ quick: { QUEUED: '10000', BENCH_MS: '200' }, default: {}, full: {} });
  results.inprocess = await timedPart(() => childPart<NonNullable<Results['inprocess']>>('inprocess.ts', env));
  writeResults(results, out);
}
if (parts.includes('otel')) {
  log('OpenTelemetry overhead…');
  const env = size<Record<string, string>>({
    quick: { TASKS: '2000', ROUNDS: '3' },
    default: { ROUNDS: '7' },
    full: {},
  });
  results.otel = await timedPart(() => childPart<NonNullable<Results['otel']>>('otel.ts', env));
  writeResults(results, out);
}
if (parts.includes('isolate')) {
  log('CPU-heavy tasks: isolate…');
  results.isolate = await timedPart(() =>
    runIsolateBench(size({ quick: ISOLATE_QUICK, default: ISOLATE_DEFAULT, full: ISOLATE_FULL }), log),
  );
  writeResults(results, out);
}
if (parts.includes('bullmq')) {
  log('BullMQ: koa-taskflow against raw BullMQ…');
  const bullmq = size({ quick: BULLMQ_QUICK, default: BULLMQ_DEFAULT, full: BULLMQ_FULL });
  results.bullmq = await timedPart(() => runBullmqBench(bullmq, log));
  writeResults(results, out);
}
if (parts.includes('growth')) {
  log('history growth…');
  const growth = size({ quick: GROWTH_QUICK, default: GROWTH_DEFAULT, full: GROWTH_FULL });
  results.growth = await timedPart(() => runGrowthBench({ ...growth, log }));
  writeResults(results, out);
}
log(`wrote ${out}`);
if (out === RESULTS_PATH) log(writeReport(results));
