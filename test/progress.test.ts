import { afterEach, describe, expect, it, vi } from 'vitest';
import { filterObserver, InMemoryObserver, semconv, taskProgress, type ProgressEvent } from 'koa-taskflow';
import { join } from 'node:path';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { BasicTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { startAdmin, TOKEN } from './helpers/admin.js';
import { openSse } from './helpers/sse.js';
import { inMemorySpans } from './helpers/otel.js';
import { tempDir } from './helpers/files.js';
import { createManager, deferred } from './helpers/server.js';

const exporter = inMemorySpans();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });

afterEach(() => {
  vi.useRealTimers();
});

describe('taskProgress(value, fields?)', () => {
  it('throttles a tight loop to one event per 100 ms carrying the last value; the record holds the latest at once; the attempt end emits the rest', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    const observer = new InMemoryObserver();
    // filterObserver passes progress events on name and tags.
    const filtered = new InMemoryObserver();
    const manager = createManager({ observers: [observer, filterObserver({ names: ['crunch'] }, filtered)] });
    const other = manager.task(function other() {
      taskProgress(0.9);
    });
    manager.add(other);
    await vi.advanceTimersByTimeAsync(0);
    observer.clear();
    const gate = deferred<void>();
    const task = manager.task(async function crunch() {
      for (let i = 0; i < 1000; i++) taskProgress(i / 999, { done: i });
      await gate.promise;
      taskProgress(0.25);
      taskProgress(0.5, { phase: 'last' });
    });
    const id = manager.add(task);
    await vi.advanceTimersByTimeAsync(0);
    expect((await manager.get(id))?.progress).toBe(1);
    expect(observer.progress).toEqual([]);
    await vi.advanceTimersByTimeAsync(100);
    expect(observer.progress).toHaveLength(1);
    expect(observer.progress[0]).toMatchObject({
      type: 'progress',
      taskId: id,
      name: 'crunch',
      attempt: 1,
      value: 1,
      fields: { done: 999 },
    });
    await vi.advanceTimersByTimeAsync(1_000);
    // Nothing new in the meantime: no event.
    expect(observer.progress).toHaveLength(1);
    gate.resolve();
    await manager.drain();
    // The task ended before its window did: its last value went out with the end, before `success`.
    expect(observer.progress.map((e) => [e.value, e.fields])).toEqual([
      [1, { done: 999 }],
      [0.5, { phase: 'last' }],
    ]);
    const events = observer.forTask(id).map((e) => (e.type === 'lifecycle' ? e.status : e.type));
    expect(events).toEqual(['pending', 'running', 'progress', 'progress', 'success']);
    expect((await manager.get(id))?.progress).toBe(0.5);
    expect(filtered.progress.map((e) => e.value)).toEqual([1, 0.5]);
  });

  it('rejects a value that is not a number from 0 to 1, naming "value"; outside a task a good value does nothing', async () => {
    const observer = new InMemoryObserver();
    const manager = createManager({ observers: [observer] });
    const errors: unknown[] = [];
    const task = manager.task(function bad(value: unknown) {
      try {
        taskProgress(value as number);
      } catch (error) {
        errors.push(error);
      }
    });
    for (const value of [-0.1, 1.01, Number.NaN, Number.POSITIVE_INFINITY, '0.5', undefined, null])
      manager.add(task, value);
    await manager.drain();
    expect(errors).toHaveLength(7);
    expect(errors.slice(0, 4).every((e) => e instanceof RangeError && /"value"/.test(e.message))).toBe(true);
    expect(errors.slice(4).every((e) => e instanceof TypeError && /"value"/.test(e.message))).toBe(true);
    expect(() => taskProgress(2)).toThrow(RangeError);
    expect(() => taskProgress(0.5, { outside: true })).not.toThrow();
    expect(observer.progress).toEqual([]);
    expect((await manager.list()).every((r) => r.progress === undefined)).toBe(true);
  });

  it('puts task.progress events with the value and fields on the attempt span', async () => {
    const manager = createManager({ tracerProvider: provider });
    const task = manager.task(async function upload() {
      taskProgress(0.3, { bytes: 300, apiKey: 'secret' });
      await new Promise((resolve) => setTimeout(resolve, 150));
      taskProgress(1);
    });
    manager.add(task);
    await manager.drain();
    const span = exporter.getFinishedSpans().find((s) => s.events.some((e) => e.name === semconv.EVENT_TASK_PROGRESS));
    expect(span).toBeDefined();
    const progress = span!.events.filter((e) => e.name === 'task.progress');
    expect(progress.map((e) => e.attributes?.[semconv.ATTR_TASK_PROGRESS])).toEqual([0.3, 1]);
    expect(progress[0].attributes).toMatchObject({ bytes: 300 });
    // Fields are redacted like log fields.
    expect(progress[0].attributes?.apiKey).not.toBe('secret');
  });

  it('arrives over the admin SSE stream', async () => {
    const manager = createManager();
    const gate = deferred<void>();
    const task = manager.task(async function report() {
      taskProgress(0.4, { step: 'a' });
      await gate.promise;
    });
    const { base } = await startAdmin({}, manager);
    const stream = await openSse(`${base}/events`, { authorization: `Bearer ${TOKEN}` });
    const id = manager.add(task);
    await stream.until((m) => m.some((x) => x.event === 'progress'), 'a progress event');
    const event = JSON.parse(stream.messages.find((m) => m.event === 'progress')!.data) as ProgressEvent;
    expect(event).toMatchObject({ type: 'progress', taskId: id, name: 'report', value: 0.4, fields: { step: 'a' } });
    gate.resolve();
    await manager.drain();
  });

  it("a durable store keeps the latest progress, written with the task's next status change", async () => {
    const path = join(tempDir(), 'tasks.db');
    const manager = createManager({ store: new SqliteStore({ path }) });
    const task = manager.task(function steps() {
      for (let i = 1; i <= 7; i++) taskProgress(i / 10);
    });
    const id = manager.add(task);
    await manager.drain();
    await manager.shutdown();
    const reopened = new SqliteStore({ path });
    expect((await reopened.get(id))?.progress).toBe(0.7);
    await reopened.close();
  });
});
