// HTTP benchmark: every variant in one run, each compared with its baseline, the servers compared alive side by
// side and measured in short bursts taking turns (see measureGroup() below), ROUNDS rounds with fresh processes. For
// each: req/s and latency (autocannon, loopback) and the server's CPU time per request *including the
// background work the request caused* (process.cpuUsage() of the server before/after, read after draining).
// Capacity ratio = baseline CPU per request ÷ variant CPU per request (≥ 1 means as cheap or cheaper).
import autocannon from 'autocannon';
import { capacityPairs } from './goals.ts';
import {
  beside,
  burst,
  fmt,
  isMain,
  median,
  percentile,
  startRedis,
  startServer,
  type BenchServer,
  type BurstSample,
} from './lib.ts';
import type { HttpResults, HttpRow, Ratio } from './results.ts';

export interface HttpConfig {
  ROUNDS: number;
  BURSTS: number;
  SECONDS: number;
  CONNECTIONS: number;
  /**
   * Requests each server is sent before it is measured: a server's steady state. Counted, not timed: a traced
   * server serves a third of bare Koa's requests per second, and its CPU per request only settles after
   * ~20 000 requests (before, the JIT's compiler threads are still busy and are charged to each request).
   */
  WARMUP_REQUESTS: number;
  /** Every variant against its baseline (`--full`), not only the comparisons the goals read. */
  EVERY_VARIANT: boolean;
}

const fromEnv = (config: HttpConfig): HttpConfig => ({
  ROUNDS: Number(process.env.ROUNDS ?? config.ROUNDS),
  BURSTS: Number(process.env.BURSTS ?? config.BURSTS),
  SECONDS: Number(process.env.SECONDS ?? config.SECONDS),
  CONNECTIONS: Number(process.env.CONNECTIONS ?? config.CONNECTIONS),
  WARMUP_REQUESTS: Number(process.env.WARMUP_REQUESTS ?? config.WARMUP_REQUESTS),
  EVERY_VARIANT: config.EVERY_VARIANT,
});

/**
 * `npm run bench`: the comparisons the goals read, their servers in groups (GROUPS), 1 round of 10 turns of a
 * burst each (about 3.5 minutes). The 20 000-request warm-up is paid once per server and round, so one round of
 * 10 turns gives the same 10 ratios as 2 rounds of 5 for half the warm-ups and server starts.
 */
export const HTTP_DEFAULT = fromEnv({
  ROUNDS: 1,
  BURSTS: 10,
  SECONDS: 1,
  CONNECTIONS: 10,
  WARMUP_REQUESTS: 20_000,
  EVERY_VARIANT: false,
});
/** `npm run bench -- --full`: every variant against its baseline too, 3 rounds (about 15 minutes). */
export const HTTP_FULL = fromEnv({ ...HTTP_DEFAULT, ROUNDS: 3, BURSTS: 3, EVERY_VARIANT: true });
export const HTTP_QUICK: HttpConfig = {
  ROUNDS: 1,
  BURSTS: 2,
  SECONDS: 0.5,
  CONNECTIONS: 4,
  WARMUP_REQUESTS: 1_000,
  EVERY_VARIANT: true,
};

export interface Variant {
  name: string;
  label: string;
  /** The server its row in the table is compared with (its goals are in goals.ts). */
  baseline?: string;
  /** It runs one task per request: every one must have run once the server has drained. */
  tasks?: boolean;
  needsRedis?: boolean;
  /** The server script, `server.ts` when not given. */
  script?: string;
}

interface Sample extends BurstSample {
  allTasksRan: boolean;
}

export const VARIANTS: readonly Variant[] = [
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
  { name: 'mounted', label: 'koa-taskflow mounted, no task', baseline: 'bare' },
  { name: 'untraced', label: '1 untraced task/request', baseline: 'bare', tasks: true },
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
      'hand-rolled, with what the contract adds (task id, record with status and times in a 10 000-record ' +
      'history, concurrency limit, task context)',
    baseline: 'bare',
    tasks: true,
  },
  { name: 'p-queue', label: 'p-queue on finish', baseline: 'bare', tasks: true },
  { name: 'koa-span', label: 'Koa + request span, no task' },
  {
    name: 'traced',
    label: '1 traced task/request (span + link + taskLog → event + pino)',
    baseline: 'koa-span',
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
      "hand-rolled, with what the contract adds (the untraced contract row's record, history, limit and " +
      'context, plus 9 attributes with the request ids, enqueued event, active span with the task in its ' +
      'context, status, secret-looking log keys masked, the log on the record, task/tags/request ids on the line)',
    baseline: 'koa-span',
    tasks: true,
  },
  // The same, its tasks started as ours are: those of every response that closed in a turn of the event loop
  // together at its end. What the traced goal reads once koa-taskflow's own way of starting them is taken away.
  {
    name: 'handrolled-contract-batched',
    label: "hand-rolled, the traced contract's row with its tasks started together at the end of the turn",
    baseline: 'koa-span',
    tasks: true,
  },
  { name: 'bullmq', label: 'BullMQ (real redis-server) on finish', baseline: 'bare', tasks: true, needsRedis: true },
  // The durable stores, served by bench/durable-server.ts (the durable part, bench/durable.ts, compares them all).
  {
    name: 'sqlite',
    label: '1 durable task/request: SqliteStore (WAL, synchronous=NORMAL)',
    baseline: 'bare',
    tasks: true,
    script: 'durable-server.ts',
  },
  {
    name: 'sqlite-least',
    label:
      'the least a durable SQLite store does, by hand (a TaskStore: the acceptances of a turn appended in one ' +
      'transaction before the response, status changes upserted by task id in batches; no other index, no counts)',
    baseline: 'untraced',
    tasks: true,
    script: 'durable-server.ts',
  },
  {
    name: 'sqlite-least-indexed',
    label:
      'the same, plus what the admin reads of issue 16 need to stay fast as the history grows (indexes by ' +
      'creation time, by status, by name and status; a count per name and status, kept in the same transaction)',
    baseline: 'untraced',
    tasks: true,
    script: 'durable-server.ts',
  },
  {
    name: 'redis',
    label: '1 durable task/request: RedisStore (local redis-server)',
    baseline: 'bare',
    tasks: true,
    needsRedis: true,
    script: 'durable-server.ts',
  },
];

export function serve(variant: Variant, redisPort: number | undefined): Promise<BenchServer> {
  return startServer(beside(variant.script ?? 'server.ts', import.meta.url), [variant.name, String(redisPort ?? 0)]);
}

/** One burst against a warm server, and whether every task its requests caused has run. */
async function measure(variant: Variant, server: BenchServer, config: HttpConfig): Promise<Sample> {
  const { SECONDS, CONNECTIONS } = config;
  const sample = await burst(server, SECONDS, CONNECTIONS);
  // A request cut off when autocannon stopped (at most one per connection) may never have finished, and a
  // task started on `finish` then never runs: that is not a backlog. More missing tasks are.
  return { ...sample, allTasksRan: variant.tasks ? sample.served - sample.ran <= CONNECTIONS : true };
}

/**
 * Servers compared with one another: all started and warmed, then BURSTS turns in which each serves one burst,
 * the order rotating from turn to turn (with two, which side goes first alternates). This shared VM's speed
 * drifts from one second to the next by more than the differences being measured, so a ratio is only taken
 * between the bursts of one turn, a few seconds apart. Answers the samples by turn, then by server.
 */
async function measureGroup(
  members: readonly Variant[],
  redisPort: number | undefined,
  config: HttpConfig,
  round: number,
): Promise<Sample[][]> {
  const { BURSTS, CONNECTIONS, WARMUP_REQUESTS } = config;
  const started = await Promise.allSettled(members.map((v) => serve(v, redisPort)));
  const servers = started.filter((s) => s.status === 'fulfilled').map((s) => s.value);
  try {
    for (const s of started) if (s.status === 'rejected') throw s.reason;
    for (const server of servers)
      await autocannon({ url: server.url, connections: CONNECTIONS, amount: WARMUP_REQUESTS });
    const bursts: Sample[][] = [];
    for (let i = 0; i < BURSTS; i++) {
      const samples: Sample[] = [];
      // Which server goes first rotates, and starts one further on in the next round: with an odd BURSTS two
      // servers still each go first as often as the other over two rounds.
      for (let k = 0; k < members.length; k++) {
        const at = (i + round + k) % members.length;
        samples[at] = await measure(members[at], servers[at], config);
      }
      bursts.push(samples);
    }
    return bursts;
  } finally {
    await Promise.all(servers.map((server) => server.stop()));
  }
}

/** Every comparison a goal reads (ours against the same done by hand…), and every variant against its baseline. */
function comparisons(variants: readonly Variant[], everyVariant: boolean): [string, string][] {
  const names = new Set(variants.map((v) => v.name));
  const pairs = new Map<string, [string, string]>();
  if (everyVariant)
    for (const v of variants) if (v.baseline !== undefined) pairs.set(`${v.baseline}/${v.name}`, [v.baseline, v.name]);
  for (const [base, name] of capacityPairs()) pairs.set(`${base}/${name}`, [base, name]);
  return [...pairs.values()].filter(([base, name]) => names.has(base) && names.has(name));
}

/**
 * The goals' rows measured together, so the ratios between ours, the same work by hand and the library it is
 * held to come from the same bursts (read in one run, ours ÷ by hand × by hand ÷ library is ours ÷ library,
 * rather than three comparisons made minutes apart).
 */
export const GROUPS: readonly (readonly string[])[] = [
  ['bare', 'bare-again', 'busy-loop', 'mounted'],
  ['koa-span', 'handrolled-contract', 'handrolled-contract-batched', 'traced'],
  ['p-queue', 'handrolled-record', 'untraced'],
  ['untraced', 'sqlite-least', 'sqlite-least-indexed', 'sqlite'],
];

interface ComparisonSet {
  members: string[];
  pairs: [string, string][];
}

/** The comparisons as the server sets that measure them: each pair in the first group holding both, else alone. */
function comparisonSets(pairs: readonly [string, string][], groups: readonly (readonly string[])[]): ComparisonSet[] {
  const left = [...pairs];
  const sets: ComparisonSet[] = [];
  for (const group of groups) {
    const inGroup = left.filter(([base, name]) => group.includes(base) && group.includes(name));
    if (inGroup.length === 0) continue;
    for (const pair of inGroup) left.splice(left.indexOf(pair), 1);
    sets.push({ members: group.filter((n) => inGroup.some((pair) => pair.includes(n))), pairs: inGroup });
  }
  return [...sets, ...left.map(([base, name]): ComparisonSet => ({ members: [base, name], pairs: [[base, name]] }))];
}

/** The HTTP part of `npm run bench`; the durable part is the same with its own `variants` (bench/durable.ts). */
export async function runHttpBench(
  config: HttpConfig = HTTP_DEFAULT,
  log: (line: string) => void = console.log,
  all: readonly Variant[] = VARIANTS,
  groups: readonly (readonly string[])[] = [],
): Promise<Omit<HttpResults, 'started' | 'nodeVersion' | 'machine' | 'load'>> {
  const { ROUNDS } = config;
  const redis = await startRedis();
  // ONLY=bare,untraced runs a subset (while profiling); the report needs them all.
  const only = process.env.ONLY?.split(',');
  const variants = all.filter((v) => (!v.needsRedis || redis) && (only === undefined || only.includes(v.name)));
  if (!redis) log('redis-server not found: BullMQ and Redis variants skipped');
  const byName = new Map(variants.map((v) => [v.name, v]));
  const pairs = comparisons(variants, config.EVERY_VARIANT);
  const sets = comparisonSets(pairs, groups);
  const samples = new Map<string, Sample[]>(variants.map((v) => [v.name, []]));
  const paired = new Map<string, number[]>(pairs.map(([base, name]) => [`${base}/${name}`, []]));
  try {
    for (let round = 0; round < ROUNDS; round++) {
      for (let i = 0; i < sets.length; i++) {
        const { members, pairs: measured } = sets[(i + round) % sets.length];
        const bursts = await measureGroup(
          members.map((name) => byName.get(name)!),
          redis?.port,
          config,
          round,
        );
        members.forEach((name, at) => samples.get(name)!.push(...bursts.map((b) => b[at])));
        for (const [base, name] of measured) {
          const pair = bursts.map((b) => [b[members.indexOf(base)], b[members.indexOf(name)]] as const);
          paired.get(`${base}/${name}`)!.push(...pair.map(([b, x]) => b.cpuPerRequest / x.cpuPerRequest));
          if (process.env.VERBOSE)
            log(pair.map(([b, x]) => `${fmt(x.cpuPerRequest)}/${fmt(b.cpuPerRequest)}`).join(' '));
          const cpu = (list: Sample[]) => fmt(median(list.map((x) => x.cpuPerRequest)));
          const backlog = pair.some(([, x]) => !x.allTasksRan) ? '  BACKLOG' : '';
          log(
            `round ${round + 1}/${ROUNDS} ${name.padEnd(22)} vs ${base.padEnd(20)} ` +
              `${cpu(pair.map((b) => b[1])).padStart(6)} vs ${cpu(pair.map((b) => b[0])).padStart(6)} µs ` +
              `CPU/req  ratio ` +
              `${fmt(median(pair.map(([b, x]) => b.cpuPerRequest / x.cpuPerRequest)), 2)}${backlog}`,
          );
        }
      }
    }
  } finally {
    await redis?.stop();
  }
  const rows: HttpRow[] = variants
    .filter((v) => samples.get(v.name)!.length > 0)
    .map((v) => {
      const s = samples.get(v.name)!;
      return {
        name: v.name,
        label: v.label,
        baseline: v.baseline,
        tasks: v.tasks,
        rps: median(s.map((x) => x.rps)),
        rpsRatio: NaN,
        p50: median(s.map((x) => x.p50)),
        p99: median(s.map((x) => x.p99)),
        cpuPerRequest: median(s.map((x) => x.cpuPerRequest)),
        allTasksRan: s.every((x) => x.allTasksRan),
        errors: s.reduce((a, x) => a + x.errors, 0),
      };
    });
  const bare = rows.find((r) => r.name === 'bare');
  for (const row of rows) row.rpsRatio = bare ? row.rps / bare.rps : NaN;
  // The middle half of the paired ratios: how far one comparison moves on this machine.
  const ratios: Record<string, Ratio> = {};
  for (const [key, cpu] of paired)
    if (cpu.length > 0) ratios[key] = { value: median(cpu), spread: [percentile(cpu, 25), percentile(cpu, 75)] };
  return { rows, ratios, config };
}

if (isMain(import.meta.url)) {
  const { rows, ratios } = await runHttpBench(
    process.argv.includes('--full') ? HTTP_FULL : HTTP_DEFAULT,
    console.log,
    VARIANTS,
    GROUPS,
  );
  console.table(
    rows.map((r) => ({
      variant: r.name,
      'req/s': fmt(r.rps, 0),
      'µs CPU/req': fmt(r.cpuPerRequest),
      capacity: fmt(ratios[`${r.baseline}/${r.name}`]?.value, 2),
    })),
  );
  for (const [pair, ratio] of Object.entries(ratios)) console.log(`${pair}: ${fmt(ratio.value, 2)}`);
}
