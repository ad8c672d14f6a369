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
  for (const [name, named] of byNameCounts) byName[name] = summarise(named, byNameDurations.get(name) ?? []);
  return { ...summarise(all, allDurations), byName };
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
    if (record.durationMs !== undefined && record.status === 'success') durations.push({ name: record.name, duration: record.durationMs });
  }
  return metricsFrom(counts.values(), durations);
}
