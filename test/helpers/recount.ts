import type { TaskManager, TaskRecord } from 'koa-taskflow';
import { metricsFromBuckets, type DurationBucket, type StatusCount } from '../../src/metrics.js';
import { taskRecord } from './durable-app.js';

// The task.duration histogram's bucket bounds, in ms.
const BOUNDS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000, Infinity];

/** metrics() as a store must give it: recounted from `records`, durations in the task.duration buckets. */
export function recountMetrics(records: readonly TaskRecord[]) {
  const counts = new Map<string, StatusCount>();
  const buckets = new Map<string, DurationBucket>();
  for (const r of records) {
    const key = `${r.name}/${r.status}`;
    if (!counts.has(key)) counts.set(key, { name: r.name, status: r.status, count: 0 });
    counts.get(key)!.count++;
    if (r.status !== 'success' || r.durationMs === undefined) continue;
    const le = BOUNDS.find((bound) => r.durationMs! <= bound)!;
    const bucketKey = `${r.name}/${le}`;
    if (!buckets.has(bucketKey)) buckets.set(bucketKey, { name: r.name, le, count: 0, sumMs: 0 });
    const bucket = buckets.get(bucketKey)!;
    bucket.count++;
    bucket.sumMs += r.durationMs;
  }
  return metricsFromBuckets(counts.values(), buckets.values());
}

/**
 * Starts `manager` and runs tasks numbered `from` to `to` (excluded) to a mix of outcomes: successes of
 * 0–6 ms, failures after a retry, and successes on a retry.
 */
export async function runMixedOutcomes(manager: TaskManager, from: number, to: number): Promise<void> {
  let calls = 0;
  const flaky = manager.task(
    async function flaky(n: number) {
      calls++;
      await new Promise((resolve) => setTimeout(resolve, n % 7));
      if (n % 3 === 0) throw new Error('boom');
      if (n % 5 === 0 && calls % 2 === 0) throw new Error('once');
      return n;
    },
    { retries: 1, backoff: 1 },
  );
  await manager.start();
  for (let n = from; n < to; n++) manager.add(flaky, n);
  await manager.drain();
}

/**
 * 30 ended records of task 'old' created and ended at `at` (alternately success and failed, durations 0–2 900 ms,
 * tag t=x), for a retention pass to delete and the counts to follow.
 */
export function oldRecords(at: number): TaskRecord[] {
  return Array.from({ length: 30 }, (_, i) =>
    taskRecord(`old-${i}`, {
      name: 'old',
      status: i % 2 ? 'success' : 'failed',
      createdAt: at,
      endedAt: at,
      durationMs: i * 100,
      tags: { t: 'x' },
    }),
  );
}
