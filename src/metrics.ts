import { TASK_STATUSES, type NameMetrics, type TaskMetrics, type TaskRecord, type TaskStatus } from './types.js';

function emptyCounts(): Record<TaskStatus, number> {
  return Object.fromEntries(TASK_STATUSES.map((s) => [s, 0])) as Record<TaskStatus, number>;
}

function summarise(records: readonly TaskRecord[]): NameMetrics {
  const byStatus = emptyCounts();
  const durations: number[] = [];
  for (const record of records) {
    byStatus[record.status]++;
    if (record.durationMs !== undefined && record.status === 'success') durations.push(record.durationMs);
  }
  const ended = byStatus.success + byStatus.failed + byStatus.interrupted;
  durations.sort((a, b) => a - b);
  const sum = durations.reduce((a, b) => a + b, 0);
  return {
    total: records.length,
    byStatus,
    successRate: ended === 0 ? null : byStatus.success / ended,
    avgDurationMs: durations.length === 0 ? null : sum / durations.length,
    // Nearest-rank percentile: the smallest duration with at least 95% of the others at or below it.
    p95DurationMs: durations.length === 0 ? null : durations[Math.ceil(0.95 * durations.length) - 1],
  };
}

/** Counts per status and per name, success rate, mean and p95 duration of successful tasks. */
export function computeMetrics(records: readonly TaskRecord[]): TaskMetrics {
  const groups = new Map<string, TaskRecord[]>();
  for (const record of records) {
    let group = groups.get(record.name);
    if (group === undefined) groups.set(record.name, (group = []));
    group.push(record);
  }
  const byName: Record<string, NameMetrics> = {};
  for (const [name, group] of groups) byName[name] = summarise(group);
  return { ...summarise(records), byName };
}
