// `npm run bench:durable`: the cost of one durable task per request (SQLite with synchronous NORMAL and
// FULL, Redis), as a ratio to bare Koa measured in the same run, interleaved, median of ROUNDS rounds.
// Two ratios: req/s (autocannon, loopback) and server CPU time per request including the background work
// each request caused (process.cpuUsage before/after, read once every task has run and been written).
// Writes bench/durable-results.md. Loopback only; about ROUNDS × variants × (WARMUP + SECONDS) seconds.
import { writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import autocannon from 'autocannon';
import { capacityTarget } from './goals.ts';
import { beside, burst, fmt, interleavedRounds, median, startRedis, startServer, type BurstSample } from './lib.ts';

const ROUNDS = Number(process.env.ROUNDS ?? 3);
const SECONDS = Number(process.env.SECONDS ?? 4);
const WARMUP = Number(process.env.WARMUP ?? 1);
const CONNECTIONS = Number(process.env.CONNECTIONS ?? 10);

interface Variant {
  name: string;
  label: string;
  needsRedis?: boolean;
}
interface Sample extends BurstSample {
  allTasksRan: boolean;
}

const VARIANTS: Variant[] = [
  { name: 'bare', label: 'bare Koa' },
  {
    name: 'null-durable',
    label: 'a durable store that writes nothing (the floor of the durable path), 1 task/request',
  },
  { name: 'sqlite', label: 'SqliteStore (WAL, synchronous=NORMAL), 1 durable task/request' },
  { name: 'sqlite-full', label: 'SqliteStore (WAL, synchronous=FULL), 1 durable task/request' },
  { name: 'redis', label: 'RedisStore (local redis-server), 1 durable task/request', needsRedis: true },
];

async function measure(variant: Variant, redisPort: number | undefined): Promise<Sample> {
  const server = await startServer(beside('durable-server.ts', import.meta.url), [
    variant.name,
    String(redisPort ?? 0),
  ]);
  try {
    await autocannon({ url: server.url, connections: CONNECTIONS, duration: WARMUP });
    const sample = await burst(server, SECONDS, CONNECTIONS);
    return { ...sample, allTasksRan: variant.name === 'bare' || sample.ran === sample.served };
  } finally {
    await server.stop();
  }
}

const redis = await startRedis();
const variants = VARIANTS.filter((v) => !v.needsRedis || redis);
if (!redis) console.log('redis-server not found: the Redis variant is skipped');
let samples: Map<string, Sample[]>;
try {
  samples = await interleavedRounds(
    variants,
    ROUNDS,
    (variant) => measure(variant, redis?.port),
    (line, sample) =>
      console.log(
        `${line}${sample.allTasksRan ? '' : '  TASKS MISSING'}${sample.errors ? `  ${sample.errors} errors` : ''}`,
      ),
  );
} finally {
  await redis?.stop();
}

const rows = variants.map((v) => {
  const s = samples.get(v.name)!;
  return {
    ...v,
    rps: median(s.map((x) => x.rps)),
    p99: median(s.map((x) => x.p99)),
    cpuPerRequest: median(s.map((x) => x.cpuPerRequest)),
    allTasksRan: s.every((x) => x.allTasksRan),
    errors: s.reduce((a, x) => a + x.errors, 0),
    rpsRatio: NaN,
    cpuRatio: NaN,
    // The HTTP benchmark's goal for the same comparison (this one runs the servers one after the other).
    goal: capacityTarget(v.name, 'bare'),
  };
});
const bare = rows.find((r) => r.name === 'bare')!;
for (const row of rows) {
  row.rpsRatio = row.rps / bare.rps;
  row.cpuRatio = bare.cpuPerRequest / row.cpuPerRequest;
}
console.table(
  rows.map((r) => ({
    variant: r.name,
    'req/s': fmt(r.rps, 0),
    '÷ bare': fmt(r.rpsRatio, 2),
    'µs CPU/req': fmt(r.cpuPerRequest),
    'CPU ratio': fmt(r.cpuRatio, 2),
    goal: r.goal ?? '',
  })),
);

const md = [
  '# Durable stores: cost of one durable task per request',
  '',
  `\`npm run bench:durable\`, ${new Date().toISOString().slice(0, 10)}, Node ${process.version}, ` +
    `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}; ` +
    `${ROUNDS} rounds × ${SECONDS} s, ${CONNECTIONS} connections, loopback; medians. The server runs the tasks in the same process, so ` +
    'its CPU time per request includes writing the record before the response, running the task and writing its end.',
  '',
  '| variant | req/s | ÷ bare (req/s) | p99 ms | µs CPU/request | bare CPU ÷ this CPU | goal | every task ran |',
  '|---|---|---|---|---|---|---|---|',
  ...rows.map(
    (r) =>
      `| ${r.label} | ${fmt(r.rps, 0)} | ${fmt(r.rpsRatio, 2)} | ${r.p99} | ${fmt(r.cpuPerRequest)} | ` +
      `${fmt(r.cpuRatio, 2)} | ${r.goal ?? ''} | ` +
      `${r.name === 'bare' ? '–' : r.allTasksRan ? 'yes' : 'no'} |`,
  ),
  '',
].join('\n');
writeFileSync(new URL('./durable-results.md', import.meta.url), md);
console.log('wrote bench/durable-results.md');
