import { TASK_STATUSES, type NameMetrics, type StoreMetrics, type TaskRecord, type TaskStatus } from './types.js';

/** How many tasks of one name have one status: what a store can count without loading the records. */
export interface StatusCount {
  name: string;
  status: TaskStatus;
  count: number;
}

function emptyCounts(): Record<TaskStatus, number> {
  return Object.fromEntries(TASK_STATUSES.map((s) => [s, 0])) as Record<TaskStatus, number>;
}

function summarise(byStatus: Record<TaskStatus, number>, durations: number[]): NameMetrics {
  let total = 0;
  for (const status of TASK_STATUSES) total += byStatus[status];
  const ended = byStatus.success + byStatus.failed + byStatus.interrupted;
  durations.sort((a, b) => a - b);
  const sum = durations.reduce((a, b) => a + b, 0);
  return {
    total,
    byStatus,
    successRate: ended === 0 ? null : byStatus.success / ended,
    avgDurationMs: durations.length === 0 ? null : sum / durations.length,
    // Nearest-rank percentile: the smallest duration with at least 95% of the others at or below it.
    p95DurationMs: durations.length === 0 ? null : durations[Math.ceil(0.95 * durations.length) - 1],
  };
}

/** The duration of one successful task. */
export interface SuccessDuration {
  name: string;
  duration: number;
}

/**
 * Counts per status and per name, success rate, mean and p95 duration of successful tasks, from status
 * counts and the durations of the successful tasks.
 */
export function metricsFrom(counts: Iterable<StatusCount>, successDurations: Iterable<SuccessDuration>): StoreMetrics {
  const all = emptyCounts();
  const byNameCounts = new Map<string, Record<TaskStatus, number>>();
  for (const { name, status, count } of counts) {
    let named = byNameCounts.get(name);
    if (named === undefined) byNameCounts.set(name, (named = emptyCounts()));
    named[status] += count;
    all[status] += count;
  }
  const allDurations: number[] = [];
  const byNameDurations = new Map<string, number[]>();
  for (const { name, duration } of successDurations) {
    allDurations.push(duration);
    let named = byNameDurations.get(name);
    if (named === undefined) byNameDurations.set(name, (named = []));
    named.push(duration);
  }
  const byName: Record<string, NameMetrics> = {};
  // Defined, not assigned: a task named "__proto__" would set the object's prototype instead of a key.
  for (const [name, named] of byNameCounts) {
    const value = summarise(named, byNameDurations.get(name) ?? []);
    Object.defineProperty(byName, name, { value, enumerable: true, writable: true, configurable: true });
  }
  return { ...summarise(all, allDurations), byName };
}

/**
 * Successful durations of one name in one bucket of the `task.duration` histogram: `le` its upper bound in
 * ms (Infinity for the last), `count` how many, `sumMs` their sum.
 */
export interface DurationBucket {
  name: string;
  le: number;
  count: number;
  sumMs: number;
}

/**
 * As `metricsFrom`, with the durations kept as histograms (bounded, whatever the history): the mean is
 * exact; the p95 is estimated within its bucket, linearly between the bucket's bounds (as Prometheus'
 * histogram_quantile does), or as the bucket's mean for the last, unbounded one.
 */
export function metricsFromBuckets(counts: Iterable<StatusCount>, buckets: Iterable<DurationBucket>): StoreMetrics {
  const byName = new Map<string, DurationBucket[]>();
  const all = new Map<number, DurationBucket>();
  for (const bucket of buckets) {
    let named = byName.get(bucket.name);
    if (named === undefined) byName.set(bucket.name, (named = []));
    named.push(bucket);
    const merged = all.get(bucket.le);
    if (merged === undefined) all.set(bucket.le, { ...bucket, name: '' });
    else {
      merged.count += bucket.count;
      merged.sumMs += bucket.sumMs;
    }
  }
  const metrics = metricsFrom(counts, []);
  Object.assign(metrics, durationSummary([...all.values()]));
  for (const [name, named] of byName)
    if (metrics.byName[name] !== undefined) Object.assign(metrics.byName[name], durationSummary(named));
  return metrics;
}

function durationSummary(buckets: DurationBucket[]): Pick<NameMetrics, 'avgDurationMs' | 'p95DurationMs'> {
  buckets.sort((a, b) => a.le - b.le);
  let count = 0;
  let sum = 0;
  for (const b of buckets) {
    count += b.count;
    sum += b.sumMs;
  }
  if (count === 0) return { avgDurationMs: null, p95DurationMs: null };
  const rank = Math.ceil(0.95 * count);
  let below = 0;
  let lower = 0;
  for (const b of buckets) {
    if (below + b.count >= rank) {
      const p95 = b.le === Infinity ? b.sumMs / b.count : lower + ((b.le - lower) * (rank - below)) / b.count;
      return { avgDurationMs: sum / count, p95DurationMs: p95 };
    }
    below += b.count;
    lower = b.le;
  }
  return { avgDurationMs: sum / count, p95DurationMs: lower };
}

/** The same from the records themselves (stores that cannot count on their own). */
export function computeMetrics(records: readonly TaskRecord[]): StoreMetrics {
  const counts = new Map<string, StatusCount>();
  const durations: SuccessDuration[] = [];
  for (const record of records) {
    const key = `${record.status}\u0000${record.name}`;
    const known = counts.get(key);
    if (known === undefined) counts.set(key, { name: record.name, status: record.status, count: 1 });
    else known.count++;
    if (record.durationMs !== undefined && record.status === 'success')
      durations.push({ name: record.name, duration: record.durationMs });
  }
  return metricsFrom(counts.values(), durations);
}
