// manager.cancel(id, { reason? }): pending, delayed, limit-waiting and running tasks, from any instance
// sharing a durable store, and the admin route POST {prefix}/:id/cancel.
import { join } from 'node:path';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import {
  getTaskContext,
  InMemoryObserver,
  MemoryStore,
  TaskCancelledError,
  TaskManager,
  type TaskHandle,
  type TaskRecord,
} from 'koa-taskflow';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { BasicTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { expectJson, startAdmin, TOKEN } from './helpers/admin.js';
import { runShownExample } from './helpers/child.js';
import { tempDir } from './helpers/files.js';
import { inMemorySpans } from './helpers/otel.js';
import { sharedStores } from './helpers/shared-stores.js';
import { openSse } from './helpers/sse.js';
import { createManager, deferred, onCleanup, startApp, waitFor } from './helpers/server.js';

const exporter = inMemorySpans();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });

/** Resolves with the reason once `signal` aborts: a task body that honours its signal. */
function aborted(signal: AbortSignal): Promise<unknown> {
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(signal.reason), { once: true }));
}

describe('manager.cancel(id) in one process', () => {
  it('a task waiting for a slot, a delayed one and one over its limit end cancelled and never start', async () => {
    const started: string[] = [];
    const release = deferred();
    const observer = new InMemoryObserver();
    const manager = createManager({ concurrency: 1, observers: [observer] });
    const job = manager.task(async function job(label: string) {
      started.push(label);
      if (label === 'blocker') await release.promise;
    });
    const limited = manager.task(
      async function limited(label: string) {
        started.push(label);
        await release.promise;
      },
      { limit: { concurrency: 1 } },
    );
    await manager.start();
    manager.add(job, 'blocker');
    const queued = manager.add(job, 'queued');
    const delayed = manager.with({ startAfter: 60_000 }).add(job, 'delayed');
    // The second limited task waits on its key, not on the (busy) slot.
    manager.with({ priority: 10 }).add(limited, 'limit-holder');
    const overLimit = manager.add(limited, 'over-limit');
    await waitFor(() => started.includes('blocker'), 2_000, 'the blocker');

    expect(await manager.cancel(queued)).toBe(true);
    expect(await manager.cancel(delayed, { reason: 'user asked' })).toBe(true);
    expect(await manager.cancel(overLimit)).toBe(true);
    for (const [id, reason] of [
      [queued, 'cancelled'],
      [delayed, 'user asked'],
      [overLimit, 'cancelled'],
    ])
      expect(await manager.get(id)).toMatchObject({
        status: 'cancelled',
        attempts: 0,
        reason,
        error: { type: 'TaskCancelledError', message: `task cancelled before it started (${reason})` },
      });
    release.resolve();
    await manager.drain();
    expect(started.sort()).toEqual(['blocker', 'limit-holder']);
    const event = observer.lifecycle.find((e) => e.taskId === delayed && e.status === 'cancelled');
    expect(event).toMatchObject({ previousStatus: 'pending', reason: 'user asked' });
  });

  it("a running attempt's signal aborts with TaskCancelledError; the task ends cancelled, not retried; the span ends with error.type TaskCancelledError; observers see it", async () => {
    const observer = new InMemoryObserver();
    const manager = createManager({ tracerProvider: provider, observers: [observer] });
    let reason: unknown;
    const job = manager.task(
      async function longJob() {
        const { signal } = getTaskContext()!;
        reason = await aborted(signal);
        signal.throwIfAborted();
      },
      { retries: 3 },
    );
    await manager.start();
    let handle!: TaskHandle;
    const { url } = await startApp((app) => {
      app.use((ctx) => {
        handle = ctx.tasks.schedule(job);
        ctx.body = { id: handle.id };
      });
    }, manager);
    await fetch(url);
    await handle.started;
    expect(await manager.cancel(handle.id, { reason: 'stop' })).toBe(true);
    const record = await handle.done;
    expect(reason).toBeInstanceOf(TaskCancelledError);
    expect(reason).toMatchObject({ code: 'ERR_TASK_CANCELLED', reason: 'stop' });
    expect(record).toMatchObject({
      status: 'cancelled',
      attempts: 1,
      reason: 'stop',
      error: {
        type: 'TaskCancelledError',
        message: expect.stringContaining('cancelled while it ran (stop)') as string,
      },
    });
    await manager.drain();
    expect((await manager.get(handle.id))!.attempts).toBe(1);
    const spans = exporter.getFinishedSpans().filter((s) => s.name === 'task longJob');
    expect(spans).toHaveLength(1);
    expect(spans[0].attributes['error.type']).toBe('TaskCancelledError');
    expect(spans[0].status.code).toBe(2);
    const statuses = observer.forTask(handle.id).map((e) => (e.type === 'lifecycle' ? e.status : e.type));
    expect(statuses).toEqual(['pending', 'running', 'cancelled']);
    expect(observer.lifecycle.at(-1)).toMatchObject({ previousStatus: 'running', reason: 'stop' });
  });

  it('a task that ignores its signal ends cancelled at once and frees its slot; what it does later is ignored', async () => {
    const finish = deferred();
    const ran: string[] = [];
    const manager = createManager({ concurrency: 1 });
    const stubborn = manager.task(async function stubborn() {
      await finish.promise;
      ran.push('stubborn returned');
    });
    const next = manager.task(function next() {
      ran.push('next');
    });
    await manager.start();
    const id = manager.add(stubborn);
    manager.add(next);
    await waitFor(async () => (await manager.get(id))?.status === 'running', 2_000, 'the stubborn task to run');
    expect(await manager.cancel(id)).toBe(true);
    expect(await manager.get(id)).toMatchObject({ status: 'cancelled', attempts: 1 });
    await waitFor(() => ran.includes('next'), 2_000, 'the next task, in the freed slot');
    finish.resolve();
    await waitFor(() => ran.includes('stubborn returned'), 2_000, 'the stubborn body to return');
    expect(await manager.get(id)).toMatchObject({ status: 'cancelled', attempts: 1 });
  });

  it('cancelling twice is harmless, an unknown id resolves false, a finished task stays as it was; bad arguments throw at the call', async () => {
    const manager = createManager();
    const gate = deferred();
    const job = manager.task(async function job(wait: boolean) {
      if (wait) await gate.promise;
    });
    await manager.start();
    const done = manager.add(job, false);
    await manager.drain();
    const pending = manager.with({ startAfter: 60_000, idempotencyKey: 'report-7' }).add(job, true);
    expect(await manager.cancel(pending)).toBe(true);
    // A cancelled task keeps its idempotency key, as a successful one does (docs/api.md, Cancelling).
    expect(manager.with({ idempotencyKey: 'report-7' }).add(job, false)).toBe(pending);
    const cancelled = await manager.get(pending);
    expect(await manager.cancel(pending, { reason: 'again' })).toBe(false);
    expect(await manager.get(pending)).toEqual(cancelled);
    expect(await manager.cancel('00000000-0000-4000-8000-000000000000')).toBe(false);
    const before = await manager.get(done);
    expect(before!.status).toBe('success');
    expect(await manager.cancel(done)).toBe(false);
    expect(await manager.get(done)).toEqual(before);
    expect(() => manager.cancel(42 as unknown as string)).toThrow(/cancel: "id" must be a string/);
    expect(() => manager.cancel(done, { reason: '' })).toThrow(/option "reason" must be a non-empty string/);
    expect(() => manager.cancel(done, null as unknown as object)).toThrow(/argument "options" must be an object/);
  });

  it('cancelling one tick of a repeat cancels that run only; the next tick runs', async () => {
    const manager = createManager();
    const ticks: string[] = [];
    const job = manager.task(async function ticking() {
      const { tickAt, signal } = getTaskContext()!;
      ticks.push(tickAt!.toISOString());
      if (ticks.length === 1) await aborted(signal);
    });
    await manager.start();
    manager.repeat(job, { every: 100 });
    await waitFor(() => ticks.length === 1, 2_000, 'the first tick');
    const [first] = await manager.list({ name: 'ticking', status: 'running' });
    expect(await manager.cancel(first.id)).toBe(true);
    await waitFor(() => ticks.length >= 2, 2_000, 'the next tick');
    await manager.drain();
    const records = await manager.list({ name: 'ticking' });
    expect(records.find((r) => r.id === first.id)!.status).toBe('cancelled');
    expect(records.filter((r) => r.id !== first.id).every((r) => r.status === 'success')).toBe(true);
  });
});

describe('tasks cancelled while they wait for a slot or for their limit', () => {
  // The two places a task waits in line: behind busy slots, and behind its `limit` key.
  const waits = [
    { where: 'a slot', options: {}, concurrency: 1 },
    { where: 'its limit', options: { limit: { concurrency: 1 } }, concurrency: 16 },
  ];

  it.each(waits)(
    'behind $where: they never run, and the rest start in priority order, first come first served, however many were cancelled',
    async ({ options, concurrency }) => {
      const started: string[] = [];
      const release = deferred();
      const manager = createManager({ concurrency, store: new MemoryStore({ maxRecords: 10 }) });
      const job = manager.task(async function job(label: string) {
        started.push(label);
        if (label === 'holder') await release.promise;
      }, options);
      await manager.start();
      manager.add(job, 'holder');
      await waitFor(() => started.includes('holder'), 2_000, 'the holder');
      const kept: string[] = [];
      for (let i = 0; i < 300; i++) {
        const priority = i % 3 === 0 ? 8 : 5;
        const id = manager.with({ priority }).add(job, `t${i}`);
        // Two of every three cancelled, enough to make the line compact itself several times.
        if (i % 3 === 1) kept.push(`t${i}`);
        else if (i % 3 === 2 || i % 9 !== 0) expect(await manager.cancel(id)).toBe(true);
        else kept.push(`t${i}`);
      }
      expect(manager.queued).toBe(kept.length);
      release.resolve();
      await manager.drain();
      const byPriority = [
        ...kept.filter((l) => Number(l.slice(1)) % 3 === 0),
        ...kept.filter((l) => Number(l.slice(1)) % 3 === 1),
      ];
      expect(started).toEqual(['holder', ...byPriority]);
      expect(manager.queued).toBe(0);
      await manager.shutdown();
    },
  );

  it.each(waits)(
    'behind $where: their arguments are let go, however many are added and cancelled',
    async ({ options, concurrency }) => {
      v8.setFlagsFromString('--expose-gc');
      const gc = runInNewContext('gc') as () => void;
      const release = deferred();
      const manager = createManager({ concurrency, store: new MemoryStore({ maxRecords: 10 }) });
      const job = manager.task(async function job(_payload?: object) {
        await release.promise;
      }, options);
      await manager.start();
      manager.add(job);
      const refs: WeakRef<object>[] = [];
      for (let i = 0; i < 2_000; i++) {
        const payload = { blob: 'x'.repeat(100) + i };
        refs.push(new WeakRef(payload));
        await manager.cancel(manager.add(job, payload));
      }
      // A WeakRef's target is kept until the job that made or read it ends.
      await new Promise((resolve) => setTimeout(resolve, 10));
      gc();
      // Before the fix every one stayed in the line until a slot (or the key) freed; some may stay until the
      // line next compacts itself.
      expect(refs.filter((ref) => ref.deref() !== undefined).length).toBeLessThan(200);
      expect(manager.queued).toBe(0);
      release.resolve();
      await manager.shutdown();
    },
  );
});

describe('manager.cancel(id) across instances sharing a durable store', () => {
  const stores = sharedStores('cancel');

  it.each(stores)(
    '%s: a running task and one pending in the queue of instance A, cancelled from instance B; A stops them within a lease renewal',
    async (_, open) => {
      const store = await open();
      // Renewed every 500 ms; the lease itself would expire only after 1.5 s.
      const leaseMs = 1_500;
      const started: string[] = [];
      let reason: unknown;
      let abortedAt = 0;
      const a = createManager({ store: store(), leaseMs, concurrency: 1 });
      const job = a.task(async function job(label: string) {
        started.push(label);
        reason = await aborted(getTaskContext()!.signal);
        abortedAt = performance.now();
      });
      const { url } = await startApp((app) => {
        app.use((ctx) => {
          const running = ctx.tasks.schedule(job, 'running').id;
          const queued = ctx.tasks.addTask(job, 'queued');
          ctx.body = { running, queued };
        });
      }, a);
      const { running, queued } = (await (await fetch(url)).json()) as { running: string; queued: string };
      await waitFor(() => started.includes('running'), 2_000, 'the running task');

      const b = createManager({ store: store(), leaseMs });
      b.task(job);
      await b.start();
      const seen = async (id: string): Promise<TaskRecord | undefined> => b.get(id);
      await waitFor(async () => (await seen(running))?.status === 'running', 2_000, 'the running status in the store');
      expect(await b.cancel(queued, { reason: 'from b' })).toBe(true);
      expect(await b.cancel(running, { reason: 'from b' })).toBe(true);
      const requestedAt = performance.now();
      // Harmless a second time while the request waits for A.
      expect(await b.cancel(running)).toBe(true);
      await waitFor(
        async () => (await seen(running))?.status === 'cancelled' && (await seen(queued))?.status === 'cancelled',
        5_000,
        'both cancelled by A',
      );
      expect(reason).toBeInstanceOf(TaskCancelledError);
      // The bound the issue states: within one renewal interval (500 ms), measured with as much again for a
      // loaded machine; still short of the 1.5 s lease, so it is the renewal that carried the request.
      expect(abortedAt - requestedAt).toBeLessThan(1_000);
      expect(started).toEqual(['running']);
      expect(await seen(running)).toMatchObject({ attempts: 1, reason: 'from b' });
      expect(await seen(queued)).toMatchObject({ attempts: 0, reason: 'from b' });
      await a.drain();
      // Ended: later requests from either instance answer false.
      expect(await b.cancel(running)).toBe(false);
      expect(await a.cancel(queued)).toBe(false);
    },
  );

  it('SQLite: a task handed back to the store at shutdown and cancelled meanwhile ends cancelled when the next instance claims it, without running', async () => {
    const path = join(tempDir('taskflow-cancel-'), 'tasks.db');
    const ran: string[] = [];
    const first = new TaskManager({ store: new SqliteStore({ path }) });
    const job = first.task(function job(label: string) {
      ran.push(label);
    });
    await first.start();
    const id = first.with({ startAfter: 60_000 }).add(job, 'late');
    await first.shutdown({ timeoutMs: 0 });

    const other = createManager({ store: new SqliteStore({ path }), requeuePending: false });
    await other.start();
    expect(await other.cancel(id, { reason: 'no longer needed' })).toBe(true);
    await other.shutdown();

    const next = createManager({ store: new SqliteStore({ path }) });
    next.task(job);
    await next.start();
    await next.drain();
    expect(await next.get(id)).toMatchObject({ status: 'cancelled', reason: 'no longer needed', attempts: 0 });
    expect(ran).toEqual([]);
  });
});

describe('admin POST {prefix}/:id/cancel', () => {
  it('needs auth and a same-origin request; 404 unknown, 400 malformed, 409 finished, 202 cancels a running task; the SSE stream sees it', async () => {
    const admin = await startAdmin();
    const { manager, base } = admin;
    const gate = deferred();
    const job = manager.task(async function job() {
      await gate.promise;
    });
    const quick = manager.task(function quick() {});
    const running = manager.add(job);
    const finished = manager.add(quick);
    await waitFor(async () => (await manager.get(running))?.status === 'running', 2_000, 'the running task');
    await waitFor(async () => (await manager.get(finished))?.status === 'success', 2_000, 'the quick task');
    const sse = await openSse(`${base}/events`, { authorization: `Bearer ${TOKEN}` });
    onCleanup(() => sse.close());

    expect((await fetch(`${base}/${running}/cancel`, { method: 'POST' })).status).toBe(401);
    const crossSite = await admin.api(`/${running}/cancel`, {
      method: 'POST',
      headers: { 'sec-fetch-site': 'cross-site' },
    });
    await expectJson(crossSite, 403);
    expect((await admin.api(`/${running}/cancel`)).status).toBe(405);
    await expectJson(await admin.api('/00000000-0000-4000-8000-000000000000/cancel', { method: 'POST' }), 404);
    await expectJson(await admin.api('/not-a-uuid/cancel', { method: 'POST' }), 400);
    const conflict = await expectJson(await admin.api(`/${finished}/cancel`, { method: 'POST' }), 409);
    expect(conflict).toMatchObject({
      error: expect.stringContaining('already ended (success)') as string,
      status: 'success',
    });
    expect(await manager.get(running)).toMatchObject({ status: 'running' });

    const accepted = await expectJson(
      await admin.api(`/${running}/cancel?reason=${encodeURIComponent('by admin')}`, {
        method: 'POST',
        headers: { 'sec-fetch-site': 'same-origin' },
      }),
      202,
    );
    expect(accepted).toEqual({ id: running, status: 'cancelled' });
    expect(await manager.get(running)).toMatchObject({ status: 'cancelled', reason: 'by admin' });
    await sse.until(
      (messages) =>
        messages.some((m) => {
          const data = JSON.parse(m.data) as { taskId?: string; status?: string };
          return data.taskId === running && data.status === 'cancelled';
        }),
      'the cancelled lifecycle event',
    );
    await expectJson(await admin.api(`/${running}/cancel`, { method: 'POST' }), 409);
    gate.resolve();
  });
});

describe("docs/api.md's Cancelling", () => {
  it('is exactly examples/cancel.js, which runs and prints what the docs say', async () => {
    expect(await runShownExample('docs/api.md', 'examples/cancel.js')).toEqual([
      'cancelled: TaskCancelledError',
      'status: cancelled',
      'again: false',
    ]);
  });
});
