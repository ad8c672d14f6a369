// cancel, repeat, limit and progress through the BullMQ engine: a web manager that only enqueues and worker
// managers (`work: true`), each with its own Redis connections as separate processes would have, on a real
// redis-server.
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Queue, QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import { getTaskContext, InMemoryObserver, taskProgress, TaskCancelledError, type TaskManager } from 'koa-taskflow';
import { bullmqEngine, type BullmqEngineOptions } from 'koa-taskflow/bullmq';
import { BasicTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { describe, expect, it } from 'vitest';
import { startNode } from './helpers/child.js';
import { inMemorySpans } from './helpers/otel.js';
import { startRedisServer } from './helpers/redis.js';
import { createManager, deferred, onCleanup, startApp, waitFor } from './helpers/server.js';

const exporter = inMemorySpans();

interface Started {
  id: string;
  attempt: number;
  worker: string;
  at: number;
}

/** What the tasks saw: starts, ends, and the reason a signal aborted with. */
const seen = { starts: [] as Started[], ends: [] as Started[], aborts: new Map<string, unknown>() };
/** Tasks that wait for their signal keep running until the test lets them go (or they are aborted). */
let hold = deferred();

function note(list: Started[], worker: string): void {
  const { id, attempt } = getTaskContext()!;
  list.push({ id, attempt, worker, at: Date.now() });
}

/** The same task functions, registered in every manager (a worker finds them by name). */
function register(manager: TaskManager, worker: string) {
  return {
    waitForSignal: manager.task(
      async function waitForSignal() {
        note(seen.starts, worker);
        const { id, signal } = getTaskContext()!;
        await new Promise<void>((resolve) => {
          signal.addEventListener('abort', () => (seen.aborts.set(id, signal.reason), resolve()));
          void hold.promise.then(resolve);
        });
        signal.throwIfAborted();
        note(seen.ends, worker);
      },
      { retries: 2 },
    ),
    quick: manager.task(async function quick() {
      note(seen.starts, worker);
      note(seen.ends, worker);
    }),
    oneAtATime: manager.task(
      async function oneAtATime() {
        note(seen.starts, worker);
        await sleep(40);
        note(seen.ends, worker);
      },
      { limit: { concurrency: 1 } },
    ),
    perTenant: manager.task(
      async function perTenant() {
        note(seen.starts, worker);
        await sleep(40);
        note(seen.ends, worker);
      },
      { limit: { by: 'tenant', concurrency: 1 } },
    ),
    twoPerSecond: manager.task(
      async function twoPerSecond() {
        note(seen.starts, worker);
        note(seen.ends, worker);
      },
      { limit: { rate: { max: 2, intervalMs: 1_000 } } },
    ),
    reporting: manager.task(async function reporting() {
      note(seen.starts, worker);
      // 500 reports in one turn: throttled to one job update, the latest.
      for (let i = 1; i <= 500; i++) taskProgress(i / 500, i === 500 ? { step: 'done' } : undefined);
      note(seen.ends, worker);
    }),
  };
}

async function startFleet(workers: number, extra: Partial<BullmqEngineOptions> = {}) {
  seen.starts.length = 0;
  seen.ends.length = 0;
  seen.aborts.clear();
  hold = deferred();
  onCleanup(() => hold.resolve());
  const redis = await startRedisServer();
  const connection = { host: '127.0.0.1', port: redis.port, maxRetriesPerRequest: null };
  const engine = (work: boolean) =>
    bullmqEngine({ connection, work, concurrency: 4, lockDurationMs: 2_000, stalledIntervalMs: 1_000, ...extra });
  const observer = new InMemoryObserver();
  const web = createManager({ engine: engine(false), observers: [observer], shutdownTimeoutMs: 500 });
  const tasks = register(web, 'web');
  const workerManagers = Array.from({ length: workers }, (_, i) => {
    const manager = createManager({
      engine: engine(true),
      shutdownTimeoutMs: 500,
      tracerProvider: new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }),
    });
    register(manager, `worker-${i}`);
    return manager;
  });
  await Promise.all([web, ...workerManagers].map((manager) => manager.start()));
  const queue = new Queue('tasks', { connection });
  onCleanup(() => queue.close());
  return { web, workers: workerManagers, tasks, queue, observer, connection };
}

const startsOf = (id: string) => seen.starts.filter((s) => s.id === id);

/** The attempts of `ids`, in start order; asserts that none started before the one before it had ended. */
function oneAfterAnother(ids: string[]): { start: Started; end: Started }[] {
  const spans = ids.map((id) => ({
    start: seen.starts.find((s) => s.id === id)!,
    end: seen.ends.find((s) => s.id === id)!,
  }));
  spans.sort((a, b) => a.start.at - b.start.at);
  for (let i = 1; i < spans.length; i++) expect(spans[i].start.at).toBeGreaterThanOrEqual(spans[i - 1].end.at);
  return spans;
}

describe('BullMQ engine: cancel, repeat, limit and progress', { timeout: 30_000 }, () => {
  it('manager.cancel(id): a delayed or waiting job ends cancelled without running; a running one is aborted in its worker; either way its job fails as cancelled, not retried, and reads back cancelled; from the web process or a worker, keyed tasks too', async () => {
    const { web, workers, tasks, queue, observer } = await startFleet(1);

    // Waiting in BullMQ (a job delayed a minute): marked and brought forward; the worker ends it cancelled at
    // once, without running it, and its job fails with the TaskCancelledError (read back as `cancelled`).
    const delayed = web.with({ startAfter: 60_000 }).add(tasks.quick);
    await waitFor(async () => (await queue.getJob(delayed)) !== undefined, 5_000, 'the delayed job');
    expect(await web.cancel(delayed, { reason: 'not needed' })).toBe(true);
    await waitFor(async () => (await web.get(delayed))?.status === 'cancelled', 5_000, 'the delayed task to end');
    expect((await queue.getJob(delayed))!.failedReason).toBe(
      'TaskCancelledError: task cancelled before it started (not needed)',
    );
    expect(startsOf(delayed)).toEqual([]);
    expect(await web.cancel(delayed)).toBe(false);

    // A keyed task (its job's id is the key's) is found by its task id.
    const keyed = web.with({ startAfter: 60_000, idempotencyKey: 'order:7' }).add(tasks.quick);
    await web.drain();
    expect(await web.cancel(keyed)).toBe(true);
    await waitFor(async () => (await web.get(keyed))?.status === 'cancelled', 5_000, 'the keyed task to end');
    expect((await queue.getJob('key=order%3A7'))!.failedReason).toMatch(/^TaskCancelledError: /);

    // Cancelled while its add to BullMQ is on the way: once added, its job is cancelled there too (marked, or
    // aborted in the worker that has taken it meanwhile): the task cannot finish first, it waits for its signal.
    const racing = web.add(tasks.waitForSignal);
    expect(await web.cancel(racing, { reason: 'changed my mind' })).toBe(true);
    await waitFor(
      async () => /^TaskCancelledError: .*\(changed my mind\)/.test((await queue.getJob(racing))?.failedReason ?? ''),
      5_000,
      'the racing job to be cancelled',
    );
    expect(observer.forTask(racing).filter((e) => e.type === 'lifecycle' && e.status === 'cancelled')).toHaveLength(1);

    // Running in the worker: its signal aborts with TaskCancelledError, and the job fails for good (retries: 2).
    const running = web.add(tasks.waitForSignal);
    await waitFor(() => startsOf(running).length === 1, 5_000, 'the task to start');
    expect(await web.cancel(running, { reason: 'user clicked stop' })).toBe(true);
    await waitFor(async () => (await queue.getJob(running))?.finishedOn !== undefined, 5_000, 'the job to end');
    const job = (await queue.getJob(running))!;
    expect(await job.getState()).toBe('failed');
    expect((await web.get(running))!.status).toBe('cancelled');
    expect(job.failedReason).toMatch(/task cancelled while it ran \(user clicked stop\)/);
    expect(seen.aborts.get(running)).toBeInstanceOf(TaskCancelledError);
    expect((seen.aborts.get(running) as TaskCancelledError).reason).toBe('user clicked stop');
    expect(startsOf(running)).toHaveLength(1);
    expect(await web.cancel(running)).toBe(false);

    // From a worker process, of a task its own worker runs.
    const other = web.add(tasks.waitForSignal);
    await waitFor(() => startsOf(other).length === 1, 5_000, 'the second task to start');
    expect(await workers[0].cancel(other)).toBe(true);
    await waitFor(async () => (await queue.getJob(other))?.finishedOn !== undefined, 5_000, 'the second job to end');
    expect(await (await queue.getJob(other))!.getState()).toBe('failed');
    expect(startsOf(other)).toHaveLength(1);

    // Finished and unknown tasks: false.
    const done = web.add(tasks.quick);
    await waitFor(async () => (await queue.getJob(done))?.finishedOn !== undefined, 5_000, 'the quick task');
    expect(await web.cancel(done)).toBe(false);
    expect(await web.cancel('00000000-0000-4000-8000-000000000000')).toBe(false);
  });

  it('manager.cancel(id) of a step of a request waiting for the one before: it never runs, and the next step still waits its turn', async () => {
    const { web, tasks, queue } = await startFleet(1);
    const { url } = await startApp((app) => {
      app.use((ctx) => {
        ctx.body = [tasks.waitForSignal, tasks.quick, tasks.quick, tasks.quick].map((task) => ctx.tasks.addTask(task));
      });
    }, web);
    const [first, second, third, last] = (await (await fetch(url)).json()) as string[];
    await waitFor(() => startsOf(first).length === 1, 5_000, 'the first step to start');
    expect(await (await queue.getJob(second))!.getState()).toBe('waiting-children');
    expect(await web.cancel(second, { reason: 'skip' })).toBe(true);
    expect(await web.cancel(last)).toBe(true);
    // The third step does not start beside the first while the first still runs (it would, were the second
    // removed from BullMQ): worker concurrency is 4 here, and the first is held until released below.
    await sleep(300);
    expect(startsOf(third)).toEqual([]);
    hold.resolve();
    await waitFor(async () => (await web.get(last))?.status === 'cancelled', 5_000, 'the last step to end');
    expect(startsOf(second)).toEqual([]);
    expect(startsOf(last)).toEqual([]);
    expect(startsOf(third)[0].at).toBeGreaterThanOrEqual(seen.ends.find((end) => end.id === first)!.at);
    const cancelled = (await queue.getJob(second))!;
    expect(await cancelled.getState()).toBe('failed');
    expect(cancelled.failedReason).toBe('TaskCancelledError: task cancelled before it started (skip)');
    expect(await (await queue.getJob(third))!.getState()).toBe('completed');
    expect((await web.get(second))!.status).toBe('cancelled');
  });

  it('manager.repeat(): one BullMQ job scheduler for all web processes, each tick run by a worker as the task with its attempt span; stop() removes the scheduler, shutdown() leaves it; cron with tz', async () => {
    const { web, tasks, queue, connection } = await startFleet(1);
    const other = createManager({ engine: bullmqEngine({ connection }) });
    const otherTasks = register(other, 'web-2');
    await other.start();
    const repeating = web.repeat(tasks.quick, { every: 200 });
    other.repeat(otherTasks.quick, { every: 200 });
    await web.drain();
    await other.drain();
    const schedulers = await queue.getJobSchedulers();
    expect(schedulers).toHaveLength(1);
    expect(schedulers[0]).toMatchObject({ key: 'quick', every: 200 });

    await waitFor(() => seen.ends.length >= 3, 10_000, 'three ticks');
    const ids = seen.ends.map((end) => end.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids.every((id) => id.startsWith('repeat:quick:'))).toBe(true);
    expect(seen.ends.every((end) => end.attempt === 1)).toBe(true);
    await waitFor(() => exporter.getFinishedSpans().length >= 3, 5_000, 'the ticks’ spans');
    const span = exporter.getFinishedSpans().find((s) => s.attributes['task.id'] === ids[0])!;
    expect(span.name).toBe('task quick');
    expect(span.attributes['task.tag.repeat']).toBe('every 200ms');

    // A web process shutting down leaves the fleet's schedule; stop() removes it.
    await other.shutdown();
    expect(await queue.getJobSchedulers()).toHaveLength(1);
    repeating.stop();
    await web.drain();
    expect(await queue.getJobSchedulers()).toEqual([]);
    const ran = seen.ends.length;
    await sleep(600);
    // At most the tick that was already due (its job was added before the scheduler went).
    expect(seen.ends.length).toBeLessThanOrEqual(ran + 1);

    // A cron pattern (6 fields: every second) in a time zone: BullMQ's scheduler, ticks on whole seconds.
    const before = seen.ends.length;
    const cron = web.repeat(tasks.quick, { cron: '* * * * * *', tz: 'Europe/Paris' });
    await waitFor(() => seen.ends.length > before, 5_000, 'a cron tick');
    expect(await queue.getJobSchedulers()).toMatchObject([
      { key: 'quick', pattern: '* * * * * *', tz: 'Europe/Paris' },
    ]);
    expect(Number(seen.ends.at(-1)!.id.split(':').at(-1)) % 1_000).toBe(0);
    cron.stop();
    await web.drain();
    expect(await queue.getJobSchedulers()).toEqual([]);
  });

  it('a worker starting drops cancel marks older than 7 days or unreadable (jobs BullMQ removed before any worker took them), and keeps the others', async () => {
    const redis = await startRedisServer();
    const client = new Redis(redis.port, '127.0.0.1');
    onCleanup(() => void client.disconnect());
    const marks = 'bull:tasks:taskflow:cancelled';
    const day = 24 * 3600 * 1000;
    await client.hset(marks, {
      fresh: JSON.stringify({ reason: 'user', at: Date.now() - day }),
      old: JSON.stringify({ reason: 'user', at: Date.now() - 8 * day }),
      garbage: '{not json',
    });
    const connection = { host: '127.0.0.1', port: redis.port, maxRetriesPerRequest: null };
    const worker = createManager({ engine: bullmqEngine({ connection, work: true }) });
    await worker.start();
    expect((await client.hkeys(marks)).sort()).toEqual(['fresh']);
  });

  it('limit: concurrency 1 across two workers: never two attempts of the key at once, none using a retry; per tenant (by); rate: at most max starts per interval', async () => {
    // A parked job waits lockDurationMs at most: 30 s here, so each must be woken by the attempt before it.
    const { web, tasks } = await startFleet(2, { lockDurationMs: 30_000 });
    const ids = Array.from({ length: 8 }, () => web.add(tasks.oneAtATime));
    await waitFor(() => ids.every((id) => seen.ends.some((end) => end.id === id)), 10_000, 'every limited task');
    const spans = oneAfterAnother(ids);
    // Each ran once, as attempt 1: going back delayed over the limit used up no attempt.
    expect(seen.starts.filter((s) => ids.includes(s.id))).toHaveLength(ids.length);
    expect(spans.every((s) => s.start.attempt === 1)).toBe(true);

    // Per tenant (limit.by): each tenant's tasks one at a time.
    const tenants = { a: [] as string[], b: [] as string[] };
    for (let i = 0; i < 3; i++)
      for (const tenant of ['a', 'b'] as const)
        tenants[tenant].push(web.with({ tags: { tenant } }).add(tasks.perTenant));
    const all = [...tenants.a, ...tenants.b];
    await waitFor(() => all.every((id) => seen.ends.some((end) => end.id === id)), 10_000, 'the tenants’ tasks');
    oneAfterAnother(tenants.a);
    oneAfterAnother(tenants.b);

    const rated = Array.from({ length: 3 }, () => web.add(tasks.twoPerSecond));
    await waitFor(() => rated.every((id) => seen.ends.some((end) => end.id === id)), 10_000, 'the rated tasks');
    const starts = rated.map((id) => seen.starts.find((s) => s.id === id)!.at).sort((a, b) => a - b);
    // Redis's clock counts whole ms: the third start is a full interval after the first, give or take one.
    expect(starts[2] - starts[0]).toBeGreaterThanOrEqual(999);
  });

  it('limit: the key a SIGKILLed worker held is free again once its hold lapses (lockDurationMs)', async () => {
    // This fleet's worker starts after the kill, and fails a stalled job instead of running it again
    // (maxStalledCount 0): only the lapse of the dead worker's hold can let the second task start.
    const { web, tasks, queue, connection } = await startFleet(0);
    const dead = startNode(fileURLToPath(new URL('./fixtures/bullmq-limit-worker.js', import.meta.url)), [], {
      REDIS_PORT: String(connection.port),
    });
    await dead.waitForLine(/^working$/, 20_000);
    const first = web.add(tasks.oneAtATime);
    await dead.waitForLine(new RegExp(`^started ${first}$`), 10_000);
    dead.process.kill('SIGKILL');
    await dead.exited;
    const second = web.add(tasks.oneAtATime);
    const worker = createManager({
      engine: bullmqEngine({
        connection,
        work: true,
        lockDurationMs: 1_000,
        stalledIntervalMs: 500,
        maxStalledCount: 0,
      }),
    });
    register(worker, 'after-the-kill');
    await worker.start();
    await waitFor(() => seen.ends.some((end) => end.id === second), 15_000, 'the second task to run');
    // The key's hold and the job's lock lapse apart: the stalled check (every 500 ms) may fail the first job
    // just after the second task has run.
    await waitFor(
      async () => (await (await queue.getJob(first))!.getState()) === 'failed',
      5_000,
      'the first job to fail as stalled',
    );
    expect(startsOf(first)).toEqual([]);
  });

  it('taskProgress() is the job’s progress in BullMQ, throttled like the span events', async () => {
    const { web, tasks, queue, connection } = await startFleet(1);
    const events = new QueueEvents('tasks', { connection });
    onCleanup(() => events.close());
    await events.waitUntilReady();
    const reports: unknown[] = [];
    const completed: string[] = [];
    events.on('progress', ({ data }) => reports.push(data));
    events.on('completed', ({ jobId }) => completed.push(jobId));
    const id = web.add(tasks.reporting);
    await waitFor(() => completed.includes(id) && reports.length >= 1, 5_000, 'the task and its progress');
    const job = await queue.getJob(id);
    expect(job!.progress).toEqual({ value: 1, step: 'done' });
    expect(reports).toEqual([{ value: 1, step: 'done' }]);
  });
});
