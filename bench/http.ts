// HTTP benchmark: every variant in one run, each compared with its baseline as a pair of servers alive side by
// side, measured in alternating short bursts (see measurePair() below), ROUNDS rounds with fresh processes. For
// each: req/s and latency (autocannon, loopback) and the server's CPU time per request *including the
// background work the request caused* (process.cpuUsage() of the server before/after, read after draining).
// Capacity ratio = baseline CPU per request ÷ variant CPU per request (≥ 1 means as cheap or cheaper).
import autocannon from 'autocannon';
import { burst, fmt, median, percentile, startRedis, startServer } from './lib.js';

const ROUNDS = Number(process.env.ROUNDS ?? 3);
const BURSTS = Number(process.env.BURSTS ?? 3);
const SECONDS = Number(process.env.SECONDS ?? 1);
const CONNECTIONS = Number(process.env.CONNECTIONS ?? 10);
// Long enough to fill MemoryStore's 10 000-record history and let the JIT settle: a server's steady state.
const WARMUP = Number(process.env.WARMUP ?? 1.5);

/** variant → the baseline its capacity ratio is measured against, and the goal. */
export const VARIANTS = [
  { name: 'bare', label: 'bare Koa' },
  // An A/A comparison: the same server twice. Whatever it reads is the method's own noise on this machine.
  { name: 'bare-again', label: 'bare Koa again (A/A: the noise of the method)', baseline: 'bare' },
  // A known cost: a 2.5 µs busy loop after each response (no allocation, no I/O), about what one untraced task
  // costs in process. What the method reads for it is the scale for every other row.
  {
    name: 'busy-loop',
    label: 'bare Koa + a 2.5 µs busy loop after each response (a known cost, for scale)',
    baseline: 'bare',
  },
  { name: 'mounted', label: 'koa-taskflow mounted, no task', baseline: 'bare', goal: 0.97 },
  { name: 'untraced', label: '1 untraced task/request', baseline: 'bare', goal: 0.9, tasks: true },
  {
    name: 'untraced-short-history',
    label: '1 untraced task/request, MemoryStore keeping 100 records (not 10 000)',
    baseline: 'bare',
    tasks: true,
  },
  { name: 'handrolled', label: "hand-rolled: res.on('finish') + setImmediate", baseline: 'bare', tasks: true },
  // The same by hand, doing what the contract asks of an untraced task on top: the floor of our untraced path.
  {
    name: 'handrolled-record',
    label:
      'hand-rolled, with what the contract adds (task id, record with status and times in a 10 000-record history, concurrency limit, task context)',
    baseline: 'bare',
    tasks: true,
  },
  { name: 'p-queue', label: 'p-queue on finish', baseline: 'bare', tasks: true },
  { name: 'koa-span', label: 'Koa + request span, no task' },
  {
    name: 'traced',
    label: '1 traced task/request (span + link + taskLog → event + pino)',
    baseline: 'koa-span',
    goal: 0.85,
    tasks: true,
  },
  {
    name: 'handrolled-otel',
    label: 'hand-rolled finish + setImmediate + span + event + pino',
    baseline: 'koa-span',
    tasks: true,
  },
  // The same by hand, doing what the contract asks of a traced task on top: the floor of our traced path.
  {
    name: 'handrolled-contract',
    label:
      "hand-rolled, with what the contract adds (the untraced contract row's record, history, limit and context, plus 7 attributes, enqueued event, active span, status, task/tags fields)",
    baseline: 'koa-span',
    tasks: true,
  },
  { name: 'bullmq', label: 'BullMQ (real redis-server) on finish', baseline: 'bare', tasks: true, needsRedis: true },
  // The durable stores, served by bench/durable-server.js (`npm run bench:durable` compares them in more detail).
  {
    name: 'sqlite',
    label: '1 durable task/request: SqliteStore (WAL, synchronous=NORMAL)',
    baseline: 'bare',
    goal: 0.6,
    tasks: true,
    script: 'durable-server.js',
  },
  {
    name: 'sqlite-by-hand',
    label: 'the same persisted by hand: INSERT before the response, UPDATE when done (node:sqlite, WAL, NORMAL)',
    baseline: 'bare',
    tasks: true,
    script: 'durable-server.js',
  },
  {
    name: 'redis',
    label: '1 durable task/request: RedisStore (local redis-server)',
    baseline: 'bare',
    tasks: true,
    needsRedis: true,
    script: 'durable-server.js',
  },
];

function serve(variant, redisPort) {
  return startServer(new URL(variant.script ?? './server.js', import.meta.url).pathname, [
    variant.name,
    String(redisPort ?? 0),
  ]);
}

/** One burst against a warm server, and whether every task its requests caused has run. */
async function measure(variant, server) {
  const sample = await burst(server, SECONDS, CONNECTIONS);
  // A request cut off when autocannon stopped (at most one per connection) may never have finished, and a
  // task started on `finish` then never runs: that is not a backlog. More missing tasks are.
  return { ...sample, allTasksRan: variant.tasks ? sample.served - sample.ran <= CONNECTIONS : true };
}

/**
 * A comparison: the baseline's server and the variant's, both started and warmed, then BURSTS bursts of each
 * in turn, the order alternating. This shared VM's speed drifts from one second to the next by more than the
 * differences being measured, so a ratio is only taken between two bursts a second apart.
 */
async function measurePair(base, variant, redisPort) {
  const started = await Promise.allSettled([serve(base, redisPort), serve(variant, redisPort)]);
  const servers = started.filter((s) => s.status === 'fulfilled').map((s) => s.value);
  try {
    for (const s of started) if (s.status === 'rejected') throw s.reason;
    for (const server of servers) await autocannon({ url: server.url, connections: CONNECTIONS, duration: WARMUP });
    const bursts = [];
    for (let i = 0; i < BURSTS; i++) {
      const pair = [];
      for (const side of i % 2 === 0 ? [0, 1] : [1, 0])
        pair[side] = await measure(side === 0 ? base : variant, servers[side]);
      bursts.push(pair);
    }
    return bursts;
  } finally {
    await Promise.all(servers.map((server) => server.stop()));
  }
}

/** Every variant against its baseline, and each of ours against what a user would write by hand instead. */
function comparisons(variants) {
  const names = new Set(variants.map((v) => v.name));
  const pairs = variants.filter((v) => v.baseline && names.has(v.baseline)).map((v) => [v.baseline, v.name]);
  // We must never be slower than doing it by hand while doing more.
  for (const [handmade, ours] of [
    ['handrolled-otel', 'traced'],
    ['handrolled-contract', 'traced'],
    ['handrolled-record', 'untraced'],
    ['sqlite-by-hand', 'sqlite'],
  ]) {
    if (names.has(handmade) && names.has(ours)) pairs.push([handmade, ours]);
  }
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
  try {
    for (let round = 0; round < ROUNDS; round++) {
      for (let i = 0; i < pairs.length; i++) {
        const [base, name] = pairs[(i + round) % pairs.length];
        const bursts = await measurePair(byName.get(base), byName.get(name), redis?.port);
        for (const [baseSample, sample] of bursts) {
          samples.get(base).push(baseSample);
          samples.get(name).push(sample);
          paired.get(`${base}/${name}`).cpu.push(baseSample.cpuPerRequest / sample.cpuPerRequest);
        }
        if (process.env.VERBOSE)
          log(bursts.map(([b, x]) => `${fmt(x.cpuPerRequest)}/${fmt(b.cpuPerRequest)}`).join(' '));
        const cpu = (list) => fmt(median(list.map((x) => x.cpuPerRequest)));
        const backlog = bursts.some(([, x]) => !x.allTasksRan) ? '  BACKLOG' : '';
        log(
          `round ${round + 1}/${ROUNDS} ${name.padEnd(22)} vs ${base.padEnd(20)} ${cpu(bursts.map((b) => b[1])).padStart(6)} vs ${cpu(bursts.map((b) => b[0])).padStart(6)} µs CPU/req  ratio ${fmt(median(bursts.map(([b, x]) => b.cpuPerRequest / x.cpuPerRequest)), 2)}${backlog}`,
        );
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
        // The middle half of the paired ratios: how far one comparison moves on this machine.
        spread: own ? [percentile(own.cpu, 25), percentile(own.cpu, 75)] : undefined,
      };
    });
  const bare = rows.find((r) => r.name === 'bare');
  for (const row of rows) row.rpsRatio = bare ? row.rps / bare.rps : NaN;
  const ratio = (base, name) => {
    const cpu = paired.get(`${base}/${name}`)?.cpu;
    return cpu
      ? { value: median(cpu), spread: [percentile(cpu, 25), percentile(cpu, 75)] }
      : { value: NaN, spread: undefined };
  };
  const extra = {
    tracedVsHandrolled: ratio('handrolled-otel', 'traced'),
    tracedVsContract: ratio('handrolled-contract', 'traced'),
    untracedVsRecord: ratio('handrolled-record', 'untraced'),
    sqliteVsByHand: ratio('sqlite-by-hand', 'sqlite'),
  };
  return { rows, extra, config: { ROUNDS, BURSTS, SECONDS, CONNECTIONS, WARMUP } };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { rows, extra } = await runHttpBench();
  console.table(
    rows.map((r) => ({
      variant: r.name,
      'req/s': fmt(r.rps, 0),
      'µs CPU/req': fmt(r.cpuPerRequest),
      capacity: fmt(r.capacityRatio, 2),
      goal: r.goal ?? '',
    })),
  );
  console.log(
    `traced ÷ hand-rolled: ${fmt(extra.tracedVsHandrolled.value, 2)}, ÷ contract by hand: ${fmt(extra.tracedVsContract.value, 2)}; untraced ÷ contract by hand: ${fmt(extra.untracedVsRecord.value, 2)}`,
  );
}
