// The `limit` task option: per task name, or per value of a tag, a concurrency cap and a rate.
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { TaskManager, TaskQueueFullError, type TaskOptions } from 'koa-taskflow';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { runShownExample } from './helpers/child.js';
import { getJson, untilReal } from './helpers/fake-clock.js';
import { tempDir } from './helpers/files.js';
import { createManager, deferred, onCleanup, startApp, waitFor } from './helpers/server.js';

/** Tasks that hold until the test lets them go, counting how many of each tenant run at once. */
function gatedWork() {
  const started: string[] = [];
  const running = new Map<string, number>();
  const most = new Map<string, number>();
  const gates: { label: string; release: () => void }[] = [];
  async function work(tenant: string, label: string): Promise<void> {
    started.push(label);
    const now = (running.get(tenant) ?? 0) + 1;
    running.set(tenant, now);
    most.set(tenant, Math.max(most.get(tenant) ?? 0, now));
    const gate = deferred();
    gates.push({ label, release: gate.resolve });
    try {
      await gate.promise;
    } finally {
      running.set(tenant, running.get(tenant)! - 1);
    }
  }
  /** Let the running task `label` end. */
  const release = (label: string) => {
    const i = gates.findIndex((g) => g.label === label);
    if (i < 0) throw new Error(`${label} is not running`);
    gates.splice(i, 1)[0].release();
  };
  /** A distinct function per registration (registering one function under two names is refused). */
  const fn = () => (tenant: string, label: string) => work(tenant, label);
  /** Let `label` end, and expect `next` to be the task that starts in its place. */
  const releaseThenNext = async (label: string, next: string) => {
    const count = started.length;
    release(label);
    await waitFor(() => started.length > count, 5_000, `the task after ${label}`);
    expect(started[count]).toBe(next);
  };
  return { work, fn, started, running, most, gates, release, releaseThenNext };
}

describe('limit: concurrency per tag value', () => {
  it("one tenant's burst waits in its own queue: the other tenant's tasks start at once, each tenant runs at most its share", async () => {
    const w = gatedWork();
    const { url, manager } = await startApp(
      (app, manager) => {
        const work = manager.task(w.work, { name: 'work', limit: { by: 'tenant', concurrency: 2 } });
        app.use((ctx) => {
          const [, tenant, count] = ctx.path.split('/');
          const ids: string[] = [];
          // After the route, all at once (after-response tasks of one request run one after another).
          const first = Number(ctx.query.first ?? 1);
          for (let i = first; i < first + Number(count); i++)
            ids.push(ctx.tasks.with({ tags: { tenant } }).afterRoute.schedule(work, tenant, `${tenant}${i}`).id);
          ctx.body = { ids };
        });
      },
      { concurrency: 4 },
    );
    const burst = (await (await fetch(`${url}/acme/20`)).json()) as { ids: string[] };
    await waitFor(() => w.started.length === 2, 5_000, 'acme at its limit');
    await (await fetch(`${url}/globex/2`)).json();
    await waitFor(() => w.started.length === 4, 5_000, 'both globex tasks started');
    // globex did not wait behind acme's 18 waiting tasks, although they were added first.
    expect(w.started).toEqual(['acme1', 'acme2', 'globex1', 'globex2']);
    // The waiting tasks are queued and pending; they hold no slot (4 slots, 4 running, 18 waiting).
    expect(manager.running).toBe(4);
    expect(manager.queued).toBe(18);
    expect(await manager.get(burst.ids[2])).toMatchObject({ status: 'pending', attempts: 0 });

    // A third globex task waits for its own key only; acme's next one takes acme's freed place.
    await (await fetch(`${url}/globex/1?first=3`)).json();
    await w.releaseThenNext('acme1', 'acme3');
    await w.releaseThenNext('globex1', 'globex3');
    // Drain the rest as they come.
    while (w.started.length < 23 || w.gates.length > 0) {
      await waitFor(() => w.gates.length > 0, 5_000, 'a running task');
      w.release(w.gates[0].label);
      await new Promise((resolve) => setImmediate(resolve));
    }
    await manager.drain();
    expect(Object.fromEntries(w.most)).toEqual({ acme: 2, globex: 2 });
    expect((await manager.metrics()).byStatus.success).toBe(23);
  });

  it('without `by` the limit is per task name; a task lacking the `by` tag shares one key with the others lacking it', async () => {
    const w = gatedWork();
    const manager = createManager({ concurrency: 10 });
    const byName = manager.task(w.fn(), { name: 'byName', limit: { concurrency: 1 } });
    const byTenant = manager.task(w.fn(), { name: 'byTenant', limit: { by: 'tenant', concurrency: 1 } });
    await manager.start();
    manager.with({ tags: { tenant: 'a' } }).add(byName, 'n', 'n1');
    manager.with({ tags: { tenant: 'b' } }).add(byName, 'n', 'n2');
    manager.add(byTenant, 'none', 'x1');
    manager.add(byTenant, 'none', 'x2');
    manager.with({ tags: { tenant: '' } }).add(byTenant, 'empty', 'e1');
    await waitFor(() => w.started.length === 3, 5_000, 'one task of each key');
    expect(w.started).toEqual(['n1', 'x1', 'e1']);
    w.release('n1');
    w.release('x1');
    await waitFor(() => w.started.length === 5, 5_000, 'the second of each key');
    expect(w.started.slice(3).sort()).toEqual(['n2', 'x2']);
    w.release('n2');
    w.release('x2');
    w.release('e1');
    await manager.drain();
  });

  it('within a key higher priority starts first (then first come, first served); a waiting task never holds a global slot, and the next runnable task of another key takes it', async () => {
    const w = gatedWork();
    const manager = createManager({ concurrency: 2 });
    const limited = manager.task(w.work, { name: 'limited', limit: { concurrency: 1 } });
    const other = manager.task(w.fn(), { name: 'other' });
    await manager.start();
    manager.add(limited, 'L', 'L1');
    manager.with({ priority: 2 }).add(limited, 'L', 'L-low');
    manager.with({ priority: 10 }).add(limited, 'L', 'L-high');
    manager.with({ priority: 10 }).add(limited, 'L', 'L-high2');
    manager.add(limited, 'L', 'L-mid');
    manager.add(other, 'O', 'O1');
    manager.with({ priority: 1 }).add(other, 'O', 'O2');
    manager.with({ priority: 1 }).add(other, 'O', 'O3');
    await waitFor(() => w.started.length === 2, 5_000, 'two slots busy');
    expect(w.started).toEqual(['L1', 'O1']);
    expect(manager.queued).toBe(6);

    // O1's slot: the waiting priority-10 limited tasks cannot run (L1 holds their key), so O2 (priority 1) gets it.
    await w.releaseThenNext('O1', 'O2');

    // L1's slot: its key's best task joins the queue by its priority, ahead of O3.
    await w.releaseThenNext('L1', 'L-high');
    for (const label of ['L-high', 'L-high2', 'L-mid']) {
      w.release(label);
      await waitFor(() => w.gates.some((g) => g.label !== 'O2' && g.label !== 'O3'), 5_000, 'the next limited task');
    }
    expect(w.started.filter((l) => l.startsWith('L'))).toEqual(['L1', 'L-high', 'L-high2', 'L-mid', 'L-low']);
    expect(w.most.get('L')).toBe(1);
    for (const g of [...w.gates]) w.release(g.label);
    await waitFor(() => w.started.length === 8, 5_000, 'O3');
    w.release('O3');
    await manager.drain();
  });

  it('waiting tasks count against maxQueued; shutdown cancels them like queued tasks and drain() waits for them', async () => {
    const w = gatedWork();
    const manager = new TaskManager({ concurrency: 4, maxQueued: 3 });
    const work = manager.task(w.work, { name: 'work', limit: { concurrency: 1 } });
    await manager.start();
    const ids = [1, 2, 3].map((i) => manager.add(work, 'w', `w${i}`));
    await waitFor(() => w.started.length === 1, 5_000, 'the first task');
    expect(manager.queued).toBe(2);
    manager.add(work, 'w', 'w4');
    expect(() => manager.add(work, 'w', 'w5')).toThrow(TaskQueueFullError);
    let drained = false;
    const drain = manager.drain().then(() => (drained = true));
    w.release('w1');
    await waitFor(() => w.started.length === 2, 5_000, 'the second task');
    expect(drained).toBe(false);
    await manager.shutdown({ timeoutMs: 20 });
    await drain;
    expect(await manager.get(ids[0])).toMatchObject({ status: 'success' });
    expect(await manager.get(ids[1])).toMatchObject({ status: 'interrupted', reason: 'shutdown' });
    expect(await manager.get(ids[2])).toMatchObject({ status: 'cancelled', reason: 'shutdown', attempts: 0 });
    expect(w.started).toEqual(['w1', 'w2']);
  });
});

describe('limit: rate (fake clock)', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('starts at most `max` attempts in any `intervalMs` window per key; tasks of other keys and names do not wait; a delayed task enters its limit when due', async () => {
    const starts: { label: string; at: number }[] = [];
    const { url } = await startApp(
      (app, manager) => {
        const send = manager.task(
          function send(label: string) {
            starts.push({ label, at: Date.now() });
          },
          { limit: { by: 'tenant', rate: { max: 3, intervalMs: 1_000 } } },
        );
        const free = manager.task(function free(label: string) {
          starts.push({ label, at: Date.now() });
        });
        app.use((ctx) => {
          for (let i = 1; i <= 10; i++) ctx.tasks.with({ tags: { tenant: 'a' } }).afterRoute.schedule(send, `a${i}`);
          ctx.tasks.with({ tags: { tenant: 'b' } }).afterRoute.schedule(send, 'b1');
          ctx.tasks.afterRoute.schedule(free, 'free');
          ctx.tasks.with({ tags: { tenant: 'b' }, startAfter: 1_500 }).afterRoute.schedule(send, 'b-delayed');
          ctx.body = {};
        });
      },
      { concurrency: 2 },
    );
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    const t0 = Date.now();
    await getJson(url);
    await untilReal(() => starts.length === 5, 'the first window');
    // b1 and free do not wait behind a4..a10, which hold no slot while they wait.
    expect(starts.map((s) => s.label).sort()).toEqual(['a1', 'a2', 'a3', 'b1', 'free']);
    await vi.advanceTimersByTimeAsync(999);
    expect(starts).toHaveLength(5);
    await vi.advanceTimersByTimeAsync(1);
    await untilReal(() => starts.length === 8, 'the second window');
    await vi.advanceTimersByTimeAsync(500);
    await untilReal(() => starts.length === 9, 'the delayed task');
    expect(starts[8]).toEqual({ label: 'b-delayed', at: t0 + 1_500 });
    await vi.advanceTimersByTimeAsync(2_000);
    await untilReal(() => starts.length === 13, 'every task');

    const a = starts.filter((s) => s.label.startsWith('a'));
    expect(a.map((s) => s.label)).toEqual(['a1', 'a2', 'a3', 'a4', 'a5', 'a6', 'a7', 'a8', 'a9', 'a10']);
    expect(a.map((s) => s.at - t0)).toEqual([0, 0, 0, 1_000, 1_000, 1_000, 2_000, 2_000, 2_000, 3_000]);
    for (const s of a) expect(a.filter((o) => o.at > s.at - 1_000 && o.at <= s.at).length).toBeLessThanOrEqual(3);
  });
});

describe('limit: options', () => {
  const bad: [unknown, RegExp, typeof TypeError | typeof RangeError][] = [
    ['2', /option "limit" must be an object/, TypeError],
    [null, /option "limit" must be an object/, TypeError],
    [[], /option "limit" must be an object/, TypeError],
    [{}, /option "limit" must set "concurrency" or "rate"/, TypeError],
    [{ by: 'tenant' }, /option "limit" must set "concurrency" or "rate"/, TypeError],
    [{ concurrency: 0 }, /option "limit.concurrency" must be an integer >= 1, got 0/, RangeError],
    [{ concurrency: 1.5 }, /option "limit.concurrency" must be an integer >= 1/, RangeError],
    [{ concurrency: Infinity }, /option "limit.concurrency" must be an integer >= 1/, RangeError],
    [{ concurrency: '2' }, /option "limit.concurrency" must be a number/, TypeError],
    [{ by: '', concurrency: 1 }, /option "limit.by" must be a non-empty string/, TypeError],
    [{ by: 3, concurrency: 1 }, /option "limit.by" must be a non-empty string/, TypeError],
    [
      { concurrency: 1, group: 'x' },
      /unknown option "limit.group"; known options are by, concurrency, rate/,
      TypeError,
    ],
    [{ rate: 5 }, /option "limit.rate" must be an object/, TypeError],
    [{ rate: { max: 5 } }, /option "limit.rate.intervalMs" must be a number/, TypeError],
    [{ rate: { intervalMs: 1_000 } }, /option "limit.rate.max" must be an integer >= 1/, TypeError],
    [{ rate: { max: 0, intervalMs: 1_000 } }, /option "limit.rate.max" must be an integer >= 1, got 0/, RangeError],
    [{ rate: { max: 2.5, intervalMs: 1_000 } }, /option "limit.rate.max" must be an integer >= 1/, RangeError],
    [{ rate: { max: 1, intervalMs: 0 } }, /option "limit.rate.intervalMs" must be a number from 1 to/, RangeError],
    [{ rate: { max: 1, intervalMs: -5 } }, /option "limit.rate.intervalMs"/, RangeError],
    [
      { rate: { max: 1, intervalMs: 2 ** 31 } },
      /option "limit.rate.intervalMs" must be a number from 1 to/,
      RangeError,
    ],
    [
      { rate: { max: 1, intervalMs: 10, burst: 2 } },
      /unknown option "limit.rate.burst"; known options are max, intervalMs/,
      TypeError,
    ],
  ];

  it.each(bad)('limit: %j is refused at the call, naming the option', (limit, message, Kind) => {
    const manager = createManager();
    const options = { limit } as TaskOptions;
    const fn = () => {};
    for (const call of [
      () => manager.task(fn, { name: 'job', ...options }),
      () => manager.with(options),
      () => new TaskManager({ defaults: options }),
    ]) {
      expect(call).toThrow(Kind);
      expect(call).toThrow(message);
    }
  });

  it('ctx.tasks.with({ limit }) refuses a bad limit in the request (the handler answers 400 with its message), and a later level replaces the limit as a whole', async () => {
    const w = gatedWork();
    const { url } = await startApp(
      (app, manager) => {
        const work = manager.task(w.work, { name: 'work', limit: { by: 'tenant', concurrency: 5 } });
        app.use((ctx) => {
          if (ctx.path === '/bad') {
            try {
              ctx.tasks.with({ limit: { concurrency: -1 } });
            } catch (error) {
              ctx.status = 400;
              ctx.body = { error: (error as Error).message };
            }
            return;
          }
          // No `by` here: the per-call limit (per name, 1 at a time) replaces the registered per-tenant one.
          for (const tenant of ['a', 'b'])
            ctx.tasks.with({ tags: { tenant }, limit: { concurrency: 1 } }).afterRoute.schedule(work, tenant, tenant);
          ctx.body = {};
        });
      },
      { concurrency: 4 },
    );
    const refused = await fetch(`${url}/bad`);
    expect(refused.status).toBe(400);
    expect(((await refused.json()) as { error: string }).error).toMatch(
      /option "limit.concurrency" must be an integer >= 1, got -1/,
    );
    await fetch(`${url}/ok`);
    await waitFor(() => w.started.length === 1, 5_000, 'the first task');
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(w.started).toEqual(['a']);
    w.release('a');
    await waitFor(() => w.started.length === 2, 5_000, 'the second task');
    w.release('b');
  });
});

describe('limit: durable stores', () => {
  it('SQLite keeps a with() limit on the record: after a restart the resumed tasks still run within it', async () => {
    const path = join(tempDir(), 'tasks.db');
    const limit = { by: 'tenant', concurrency: 1 };
    const register = (m: TaskManager, w: ReturnType<typeof gatedWork>) => m.task(w.work, { name: 'work' });
    const first = new TaskManager({ store: new SqliteStore({ path }), concurrency: 4 });
    const w1 = gatedWork();
    const work1 = register(first, w1);
    await first.start();
    const ids = [1, 2, 3].map((i) => first.with({ tags: { tenant: 't' }, limit }).add(work1, 't', `t${i}`));
    await waitFor(() => w1.started.length === 1, 5_000, 'the first task');
    // Waiting tasks are handed back to the store at shutdown with their limit, like queued ones.
    w1.release('t1');
    await waitFor(() => w1.started.length === 2, 5_000, 'the second task');
    await first.shutdown({ timeoutMs: 0 });
    const store = new SqliteStore({ path });
    onCleanup(() => store.close());
    for (const id of ids.slice(1)) expect(await store.get(id)).toMatchObject({ status: 'pending', options: { limit } });

    const second = createManager({ store: new SqliteStore({ path }), concurrency: 4 });
    const w2 = gatedWork();
    register(second, w2);
    await second.start();
    await waitFor(() => w2.started.length === 1, 5_000, 'a resumed task');
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(w2.started).toHaveLength(1);
    w2.release(w2.started[0]);
    await waitFor(() => w2.started.length === 2, 5_000, 'the other resumed task');
    w2.release(w2.started[1]);
    await second.drain();
    expect(w2.most.get('t')).toBe(1);
    expect((await second.get(ids[2]))?.status).toBe('success');
  });
});

describe('docs/api.md Limits', () => {
  it('shows examples/tenant-limits.js byte for byte, and running it keeps each tenant within its limit while the other starts at once', async () => {
    const lines = await runShownExample('docs/api.md', 'examples/tenant-limits.js');
    expect(lines.slice(0, 3)).toEqual(['acme 1 started', 'acme 2 started', 'globex 1 started']);
    expect(lines.filter((l) => l.endsWith('started'))).toHaveLength(7);
    expect(lines.at(-1)).toBe('most running at once: {"acme":2,"globex":1}');
  });
});
