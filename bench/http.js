// HTTP benchmark: every variant in one run, each compared with its baseline in back-to-back pairs, median
// of ROUNDS rounds (see comparisons() below). For each: req/s and
// latency (autocannon, loopback, fixed request count) and the server's CPU time per request *including the
// background work the request caused* (process.cpuUsage() of the server before/after, read after draining).
// Capacity ratio = baseline CPU per request ÷ variant CPU per request (≥ 1 means as cheap or cheaper).
import autocannon from 'autocannon';
import { fmt, median, startRedis, startServer } from './lib.js';

const ROUNDS = Number(process.env.ROUNDS ?? 3);
const SECONDS = Number(process.env.SECONDS ?? 4);
const CONNECTIONS = Number(process.env.CONNECTIONS ?? 10);
const WARMUP = Number(process.env.WARMUP ?? 1);

/** variant → the baseline its capacity ratio is measured against, and the goal. */
export const VARIANTS = [
  { name: 'bare', label: 'bare Koa' },
  { name: 'mounted', label: 'koa-taskflow mounted, no task', baseline: 'bare', goal: 0.97 },
  { name: 'untraced', label: '1 untraced task/request', baseline: 'bare', goal: 0.9, tasks: true },
  { name: 'untraced-short-history', label: '1 untraced task/request, MemoryStore keeping 100 records (not 10 000)', baseline: 'bare', tasks: true },
  { name: 'handrolled', label: "hand-rolled: res.on('finish') + setImmediate", baseline: 'bare', tasks: true },
  { name: 'p-queue', label: 'p-queue on finish', baseline: 'bare', tasks: true },
  { name: 'koa-span', label: 'Koa + request span, no task' },
  { name: 'traced', label: '1 traced task/request (span + link + taskLog → event + pino)', baseline: 'koa-span', goal: 0.85, tasks: true },
  { name: 'handrolled-otel', label: 'hand-rolled finish + setImmediate + span + event + pino', baseline: 'koa-span', tasks: true },
  // The same by hand, doing what the contract asks of a traced task on top: the floor of our traced path.
  { name: 'handrolled-contract', label: 'hand-rolled, with what the contract adds (task id, 7 attributes, enqueued event, active span, status, task/tags fields)', baseline: 'koa-span', tasks: true },
  { name: 'bullmq', label: 'BullMQ (real redis-server) on finish', baseline: 'bare', tasks: true, needsRedis: true },
  // The durable stores, served by bench/durable-server.js (`npm run bench:durable` compares them in more detail).
  { name: 'sqlite', label: '1 durable task/request: SqliteStore (WAL, synchronous=NORMAL)', baseline: 'bare', goal: 0.6, tasks: true, script: 'durable-server.js' },
  { name: 'redis', label: '1 durable task/request: RedisStore (local redis-server)', baseline: 'bare', tasks: true, needsRedis: true, script: 'durable-server.js' },
];

async function get(url) {
  const response = await fetch(url);
  return response.json();
}

async function measure(variant, redisPort) {
  const server = await startServer(new URL(variant.script ?? './server.js', import.meta.url).pathname, [variant.name, String(redisPort ?? 0)]);
  try {
    await autocannon({ url: server.url, connections: CONNECTIONS, duration: WARMUP });
    const before = await get(`${server.url}/__stats`);
    const result = await autocannon({ url: server.url, connections: CONNECTIONS, duration: SECONDS });
    const after = await get(`${server.url}/__stats`);
    // Counted by the server: requests cut off when autocannon stops were still served (and cost CPU).
    const served = after.served - before.served;
    return {
      rps: result.requests.total / SECONDS,
      p50: result.latency.p50,
      p99: result.latency.p99,
      cpuPerRequest: (after.cpuMicros - before.cpuMicros) / served,
      // A request cut off when autocannon stopped (at most one per connection) may never have finished, and
      // a task started on `finish` then never runs: that is not a backlog. More missing tasks are.
      allTasksRan: variant.tasks ? served - (after.ran - before.ran) <= CONNECTIONS : true,
      errors: result.errors + result.non2xx,
    };
  } finally {
    await server.stop();
  }
}

/**
 * Every comparison is measured as a pair, back to back, the order within the pair alternating by round:
 * this shared VM's speed drifts from one minute to the next by more than the differences being measured,
 * so a ratio is only trusted between two runs a few seconds apart. A variant's ratio is the median over
 * the rounds of its paired ratios; its µs and req/s columns are the medians of all its runs.
 */
function comparisons(variants) {
  const names = new Set(variants.map((v) => v.name));
  const pairs = variants.filter((v) => v.baseline && names.has(v.baseline)).map((v) => [v.baseline, v.name]);
  // We must never be slower than doing it by hand while doing more: traced against the hand-rolled ones.
  for (const handmade of ['handrolled-otel', 'handrolled-contract']) if (names.has(handmade) && names.has('traced')) pairs.push([handmade, 'traced']);
  return pairs;
}

export async function runHttpBench(log = console.log) {
  const redis = await startRedis();
  // ONLY=bare,untraced runs a subset (while profiling); the report needs them all.
  const only = process.env.ONLY?.split(',');
  const variants = VARIANTS.filter((v) => (!v.needsRedis || redis) && (only === undefined || only.includes(v.name)));
  if (!redis) log('redis-server not found: BullMQ and Redis variants skipped');
  const byName = new Map(variants.map((v) => [v.name, v]));
  const pairs = comparisons(variants);
  const samples = new Map(variants.map((v) => [v.name, []]));
  const paired = new Map(pairs.map(([base, name]) => [`${base}/${name}`, { cpu: [] }]));
  const run = async (name, round) => {
    const sample = await measure(byName.get(name), redis?.port);
    samples.get(name).push(sample);
    log(`round ${round + 1}/${ROUNDS} ${name.padEnd(22)} ${fmt(sample.rps, 0).padStart(7)} req/s  ${fmt(sample.cpuPerRequest)} µs CPU/req  p99 ${sample.p99} ms${sample.allTasksRan ? '' : '  BACKLOG'}`);
    return sample;
  };
  try {
    for (let round = 0; round < ROUNDS; round++) {
      for (let i = 0; i < pairs.length; i++) {
        const [base, name] = pairs[(i + round) % pairs.length];
        const first = round % 2 === 0 ? base : name;
        const a = await run(first, round);
        const b = await run(first === base ? name : base, round);
        const [baseSample, sample] = first === base ? [a, b] : [b, a];
        const ratios = paired.get(`${base}/${name}`);
        ratios.cpu.push(baseSample.cpuPerRequest / sample.cpuPerRequest);
      }
    }
  } finally {
    await redis?.stop();
  }
  const rows = variants
    .filter((v) => samples.get(v.name).length > 0)
    .map((v) => {
      const s = samples.get(v.name);
      const own = paired.get(`${v.baseline}/${v.name}`);
      return {
        ...v,
        rps: median(s.map((x) => x.rps)),
        p50: median(s.map((x) => x.p50)),
        p99: median(s.map((x) => x.p99)),
        cpuPerRequest: median(s.map((x) => x.cpuPerRequest)),
        allTasksRan: s.every((x) => x.allTasksRan),
        errors: s.reduce((a, x) => a + x.errors, 0),
        capacityRatio: own ? median(own.cpu) : NaN,
      };
    });
  const bare = rows.find((r) => r.name === 'bare');
  for (const row of rows) row.rpsRatio = bare ? row.rps / bare.rps : NaN;
  const ratio = (base, name) => (paired.has(`${base}/${name}`) ? median(paired.get(`${base}/${name}`).cpu) : NaN);
  const extra = { tracedVsHandrolled: ratio('handrolled-otel', 'traced'), tracedVsContract: ratio('handrolled-contract', 'traced') };
  return { rows, extra, config: { ROUNDS, SECONDS, CONNECTIONS, WARMUP } };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { rows, extra } = await runHttpBench();
  console.table(rows.map((r) => ({ variant: r.name, 'req/s': fmt(r.rps, 0), 'µs CPU/req': fmt(r.cpuPerRequest), capacity: fmt(r.capacityRatio, 2), goal: r.goal ?? '' })));
  console.log(`traced ÷ hand-rolled (capacity): ${fmt(extra.tracedVsHandrolled, 2)}`);
}
