// Metrics through a real sdk-metrics MeterProvider and a pull reader: names, units, attributes, values.
import { describe, expect, it } from 'vitest';
import { metrics as metricsApi } from '@opentelemetry/api';
import {
  AggregationTemporality,
  DataPointType,
  MeterProvider,
  MetricReader,
  type MetricData,
} from '@opentelemetry/sdk-metrics';
import { TaskManager } from 'koa-taskflow';
import { interruptEndlessTask } from './helpers/interrupt.js';
import { createManager, deferred } from './helpers/server.js';

class PullReader extends MetricReader {
  constructor(temporality: AggregationTemporality) {
    super({ aggregationTemporalitySelector: () => temporality });
  }
  protected async onShutdown(): Promise<void> {}
  protected async onForceFlush(): Promise<void> {}
}

function meterWithReader(temporality = AggregationTemporality.CUMULATIVE): {
  meterProvider: MeterProvider;
  read: () => Promise<Map<string, MetricData>>;
} {
  const reader = new PullReader(temporality);
  const meterProvider = new MeterProvider({ readers: [reader] });
  return {
    meterProvider,
    async read() {
      const { resourceMetrics, errors } = await reader.collect();
      expect(errors).toEqual([]);
      const byName = new Map<string, MetricData>();
      for (const scope of resourceMetrics.scopeMetrics) {
        expect(scope.scope.name).toBe('koa-taskflow');
        for (const metric of scope.metrics) byName.set(metric.descriptor.name, metric);
      }
      return byName;
    },
  };
}

/** `{ "<task.name>/<task.status>": value }` of a metric's data points. */
function points(
  metric: MetricData | undefined,
  value: (v: unknown) => number = (v) => v as number,
): Record<string, number> {
  const out: Record<string, number> = {};
  for (const point of metric?.dataPoints ?? []) {
    const key = [point.attributes['task.name'], point.attributes['task.status']]
      .filter((x) => x !== undefined)
      .join('/');
    out[key || '-'] = value(point.value);
  }
  return out;
}

describe('metrics on the `koa-taskflow` meter', () => {
  it('count attempts and record their duration in seconds, by task name and status', async () => {
    const { meterProvider, read } = meterWithReader();
    const manager = createManager({ meterProvider });
    const ok = manager.task(function ok() {});
    manager.add(ok);
    manager.add(ok);
    manager.with({ retries: 1 }).add(function bad() {
      throw new Error('always');
    });
    await manager.drain();
    const got = await read();

    const attempts = got.get('task.attempts')!;
    expect(attempts.dataPointType).toBe(DataPointType.SUM);
    expect(attempts.descriptor.unit).toBe('{attempt}');
    expect(points(attempts)).toEqual({ 'ok/success': 2, 'bad/failed': 2 });

    const duration = got.get('task.duration')!;
    expect(duration.dataPointType).toBe(DataPointType.HISTOGRAM);
    expect(duration.descriptor.unit).toBe('s');
    expect(points(duration, (v) => (v as { count: number }).count)).toEqual({ 'ok/success': 2, 'bad/failed': 2 });
    // Seconds-sized buckets, not the SDK's millisecond-sized defaults.
    const boundaries = (duration.dataPoints[0].value as { buckets: { boundaries: number[] } }).buckets.boundaries;
    expect(boundaries[0]).toBe(0.005);
    expect(boundaries).toContain(1);
    expect(boundaries.at(-1)).toBe(300);
    for (const point of duration.dataPoints) {
      const { sum, count } = point.value as { sum: number; count: number };
      expect(sum).toBeGreaterThanOrEqual(0);
      expect(sum / count).toBeLessThan(60); // seconds, not milliseconds
    }
  });

  it('count an attempt cut short by shutdown as `interrupted`', async () => {
    const { meterProvider, read } = meterWithReader();
    const manager = createManager({ meterProvider });
    await interruptEndlessTask(manager);
    expect(points((await read()).get('task.attempts'))).toEqual({ 'endless/interrupted': 1 });
  });

  it('`task.active` counts running attempts and `task.queue.depth` the tasks waiting for a slot', async () => {
    const { meterProvider, read } = meterWithReader();
    const manager = createManager({ meterProvider, concurrency: 1 });
    const release = deferred();
    const started = deferred();
    const slow = manager.task(async function slow() {
      started.resolve();
      await release.promise;
    });
    manager.add(slow);
    await started.promise;
    for (let i = 0; i < 3; i++) manager.add(function waiting() {});
    let got = await read();
    expect(got.get('task.active')?.dataPointType).toBe(DataPointType.SUM);
    expect(points(got.get('task.active'))).toEqual({ slow: 1 });
    expect(got.get('task.queue.depth')?.dataPointType).toBe(DataPointType.GAUGE);
    expect(points(got.get('task.queue.depth'))).toEqual({ '-': 3 });

    release.resolve();
    await manager.drain();
    got = await read();
    expect(points(got.get('task.active'))).toEqual({ slow: 0, waiting: 0 });
    expect(points(got.get('task.queue.depth'))).toEqual({ '-': 0 });
  });

  it('`task.queue.depth` counts the tasks waiting on their `limit` too, though they hold no slot', async () => {
    const { meterProvider, read } = meterWithReader();
    const manager = createManager({ meterProvider, concurrency: 4 });
    const release = deferred();
    const limited = manager.task(
      async function limited() {
        await release.promise;
      },
      { limit: { concurrency: 1 } },
    );
    for (let i = 0; i < 3; i++) manager.add(limited);
    expect(points((await read()).get('task.queue.depth'))).toEqual({ '-': 2 });
    release.resolve();
    await manager.drain();
    expect(points((await read()).get('task.queue.depth'))).toEqual({ '-': 0 });
  });

  it.each([
    { where: 'a slot', options: {}, concurrency: 1 },
    { where: 'their limit', options: { limit: { concurrency: 1 } }, concurrency: 4 },
  ])(
    '`task.queue.depth` stops counting tasks cancelled while they wait for $where',
    async ({ options, concurrency }) => {
      const { meterProvider, read } = meterWithReader();
      const manager = createManager({ meterProvider, concurrency });
      const release = deferred();
      const job = manager.task(async function job() {
        await release.promise;
      }, options);
      manager.add(job);
      const waiting = Array.from({ length: 100 }, () => manager.add(job));
      expect(points((await read()).get('task.queue.depth'))).toEqual({ '-': 100 });
      for (const id of waiting.slice(0, 70)) await manager.cancel(id);
      expect(points((await read()).get('task.queue.depth'))).toEqual({ '-': 30 });
      release.resolve();
      await manager.drain();
      expect(points((await read()).get('task.queue.depth'))).toEqual({ '-': 0 });
    },
  );

  it('stop reporting the queue depth of a manager that was shut down', async () => {
    // Delta: a collection shows only what was observed since the previous one.
    const { meterProvider, read } = meterWithReader(AggregationTemporality.DELTA);
    const first = createManager({ meterProvider });
    const second = createManager({ meterProvider });
    await first.start();
    await second.start();
    expect((await read()).get('task.queue.depth')?.dataPoints).toHaveLength(1);
    await first.shutdown();
    await second.shutdown();
    expect((await read()).get('task.queue.depth')?.dataPoints ?? []).toEqual([]);
  });

  it('follow a global MeterProvider registered after the manager was made but before start()', async () => {
    const { meterProvider, read } = meterWithReader();
    const manager = new TaskManager();
    try {
      metricsApi.setGlobalMeterProvider(meterProvider);
      await manager.start();
      manager.add(function late() {});
      await manager.drain();
      expect(points((await read()).get('task.attempts'))).toEqual({ 'late/success': 1 });
    } finally {
      await manager.shutdown();
      metricsApi.disable();
    }
  });
});
