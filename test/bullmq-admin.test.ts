// The admin API over BullMQ's own data: a web process (enqueue only, admin mounted) and a worker
// (manager.work()) as two TaskManagers on one real redis-server, requests through the web process's Koa
// server. What the web process answers is what the worker did: list, filters, get, metrics, retry, events.
import { getTaskContext, type LifecycleEvent, type TaskManager, type TaskRecord } from 'koa-taskflow';
import { bullmqEngine } from 'koa-taskflow/bullmq';
import { setTimeout } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { chromium } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import { expectJson, startAdmin, TOKEN } from './helpers/admin.js';
import { startRedisServer } from './helpers/redis.js';
import { createManager, onCleanup, waitFor } from './helpers/server.js';
import { openSse } from './helpers/sse.js';

interface Page {
  tasks: TaskRecord[];
  nextCursor: string | null;
}

/** The same tasks, registered by the web process and the worker alike (the worker finds them by name). */
function register(manager: TaskManager, health: { ok: boolean }) {
  return {
    welcome: manager.task(async function welcome(email: string) {
      return email;
    }),
    charge: manager.task(async function charge() {
      if (!health.ok) throw new TypeError('card declined');
    }),
    // Runs until its signal aborts.
    hold: manager.task(async function hold() {
      const { signal } = getTaskContext()!;
      await new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason as Error)));
    }),
  };
}

/** A web process with the admin and, unless `work` is false, a worker: two managers on one redis-server. */
async function startFleet(queue: string, work = true) {
  const redis = await startRedisServer();
  const connection = { host: '127.0.0.1', port: redis.port, maxRetriesPerRequest: null };
  const health = { ok: false };
  const web = createManager({ engine: bullmqEngine({ connection, queue }) });
  const tasks = register(web, health);
  const harness = await startAdmin({}, web);
  const worker = createManager({ engine: bullmqEngine({ connection, queue, work, concurrency: 4 }) });
  register(worker, health);
  await worker.start();
  const client = new Redis(redis.port, '127.0.0.1');
  onCleanup(() => void client.disconnect());
  return { ...harness, web, worker, tasks, health, client };
}

describe('admin over BullMQ', { timeout: 60_000 }, () => {
  it("list, filters, get and metrics answer what the worker did; a failed task's retry runs again in the worker; bad filters are 400", async () => {
    const fleet = await startFleet('admin');
    const { web, api, tasks } = fleet;
    // One millisecond apart: the list's order (newest first) is then the order added.
    const add = async (adding: () => string) => {
      const id = adding();
      await setTimeout(2);
      return id;
    };
    const done = [
      await add(() => web.with({ tags: { tenant: 'acme' } }).add(tasks.welcome, 'a@b.c')),
      await add(() => web.add(tasks.welcome, 'x@y.z')),
    ];
    const failed = await add(() => web.with({ tags: { tenant: 'acme' } }).add(tasks.charge));
    const waiting = await add(() =>
      web.with({ startAfter: 60_000, tags: { tenant: 'zeta' } }).add(tasks.welcome, 'later@x.y'),
    );
    await web.drain();
    await waitFor(
      async () => (await web.get(failed))?.status === 'failed' && (await web.get(done[1]))?.status === 'success',
      20_000,
      'the worker to run the tasks',
    );

    const all = await expectJson<Page>(await api(''), 200);
    expect(all.tasks.map((t) => t.id)).toEqual([waiting, failed, ...done.toReversed()]);
    const ok = all.tasks.find((t) => t.id === done[0])!;
    expect(ok).toMatchObject({ name: 'welcome', status: 'success', args: ['a@b.c'], tags: { tenant: 'acme' } });
    expect(ok.attempts).toBe(1);
    expect(ok.durationMs).toBeGreaterThanOrEqual(0);
    const dead = await expectJson<TaskRecord>(await api(`/${failed}`), 200);
    expect(dead).toMatchObject({ status: 'failed', attempts: 1, maxAttempts: 1 });
    expect(dead.error).toMatchObject({ type: 'TypeError', message: 'card declined' });
    expect(dead.error!.stack).toContain('card declined');
    expect((await expectJson<TaskRecord>(await api(`/${waiting}`), 200)).status).toBe('pending');

    // Filters: status, name, tag (all must match), and keyset pages.
    const ids = async (query: string) => (await expectJson<Page>(await api(query), 200)).tasks.map((t) => t.id);
    expect(await ids('?status=failed')).toEqual([failed]);
    expect(await ids('?status=success')).toEqual(done.toReversed());
    expect(await ids('?status=pending&name=welcome')).toEqual([waiting]);
    expect(await ids('?tag.tenant=acme')).toEqual([failed, done[0]]);
    expect(await ids('?tag.tenant=acme&status=success')).toEqual([done[0]]);
    expect(await ids('?name=charge')).toEqual([failed]);
    expect(await ids(`?since=${dead.createdAt}`)).toEqual([waiting, failed]);
    const first = await expectJson<Page>(await api('?limit=2'), 200);
    expect(first.tasks.map((t) => t.id)).toEqual([waiting, failed]);
    expect(await ids(`?limit=2&cursor=${first.nextCursor}`)).toEqual(done.toReversed());
    for (const bad of ['?status=done', '?limit=0', '?tag.=x', '?cursor=nope', '?color=red'])
      expect((await api(bad)).status, bad).toBe(400);
    expect((await api('/0b8e6a38-3f5d-4c1e-9a57-1d2f3c4b5a69')).status).toBe(404);

    const metrics = await expectJson<{ byStatus: Record<string, number>; byName: Record<string, unknown> }>(
      await api('/metrics'),
      200,
    );
    expect(metrics.byStatus).toMatchObject({ success: 2, failed: 1, pending: 1, running: 0 });
    expect(metrics.byName).toMatchObject({ welcome: { total: 3 }, charge: { total: 1, successRate: 0 } });

    // Retry: BullMQ's job.retry(), the same task under its id, run again by the worker.
    fleet.health.ok = true;
    const retried = await expectJson<{ id: string; retryOf: string }>(
      await api(`/${failed}/retry`, { method: 'POST' }),
      202,
    );
    expect(retried).toEqual({ id: failed, retryOf: failed });
    // Cancel of a job BullMQ holds goes to the engine's cancel (a 409 naming the status while it has none).
    const cancel = await api(`/${waiting}/cancel`, { method: 'POST' });
    expect([202, 409]).toContain(cancel.status);
    if (cancel.status === 409) expect(await cancel.json()).toMatchObject({ status: 'pending' });
    else await waitFor(async () => (await web.get(waiting))?.status === 'cancelled', 20_000, 'the cancel');
    await waitFor(async () => (await web.get(failed))?.status === 'success', 20_000, 'the retry to run');
    expect((await api(`/${failed}/retry`, { method: 'POST' })).status).toBe(409);
    expect(await ids('?status=failed')).toEqual([]);
  });

  it('retry-failed runs every failed job again in place; a second call finds none', async () => {
    const { web, api, tasks, health } = await startFleet('retry-failed');
    const failed = [web.add(tasks.charge), web.add(tasks.charge)];
    await waitFor(
      async () => (await web.list({ status: 'failed' })).length === 2,
      20_000,
      'both tasks to fail in the worker',
    );
    health.ok = true;
    const body = await expectJson<{ retried: { id: string; newId: string }[] }>(
      await api('/retry-failed', { method: 'POST' }),
      200,
    );
    expect(body.retried.map((r) => r.id).sort()).toEqual(failed.toSorted());
    expect(body.retried.every((r) => r.newId === r.id)).toBe(true);
    await waitFor(
      async () => (await web.list({ status: 'success' })).length === 2,
      20_000,
      'both retries to run in the worker',
    );
    expect(
      (await expectJson<{ retried: unknown[] }>(await api('/retry-failed', { method: 'POST' }), 200)).retried,
    ).toEqual([]);
  });

  it("a task running in the worker is running in the admin; interrupted by the worker's shutdown (requeueOnInterrupt: false), it is interrupted", async () => {
    const fleet = await startFleet('interrupt');
    const { web, worker, api, tasks } = fleet;
    const id = web.with({ requeueOnInterrupt: false }).add(tasks.hold);
    await waitFor(async () => (await web.get(id))?.status === 'running', 20_000, 'the task to start in the worker');
    const running = await expectJson<Page>(await api('?status=running'), 200);
    expect(running.tasks.map((t) => t.id)).toEqual([id]);
    // The web process writes its index up to 20 ms after an add: a task already running in a worker before
    // then is listed by status all the same (BullMQ's active list is read, not the index).
    await fleet.client.del('bull:interrupt:tf:all');
    const unindexed = await expectJson<Page>(await api('?status=running'), 200);
    expect(unindexed.tasks.map((t) => t.id)).toEqual([id]);
    await worker.shutdown({ timeoutMs: 50 });
    const record = await expectJson<TaskRecord>(await api(`/${id}`), 200);
    expect(record).toMatchObject({
      status: 'interrupted',
      reason: 'shutdown',
      error: { type: 'TaskInterruptedError' },
    });
    expect((await web.metrics()).byStatus).toMatchObject({ interrupted: 1, running: 0 });
  });

  it('the dead letters list over a failed set of 200 000 jobs (more ids than one call takes as arguments)', async () => {
    const { web, tasks, client } = await startFleet('deadletters');
    const failed = [web.add(tasks.charge), web.add(tasks.charge)];
    await waitFor(
      async () => (await web.list({ status: 'failed' })).length === 2,
      20_000,
      'the worker to fail both tasks',
    );
    // Failed jobs BullMQ no longer holds, older than ours in the index: what a busy queue's failed set becomes.
    await client.eval(
      `for i = 1, 200000 do
         redis.call('ZADD', KEYS[1], 0, 'gone' .. i)
         redis.call('ZADD', KEYS[2], 1, 'gone' .. i)
       end`,
      2,
      'bull:deadletters:failed',
      'bull:deadletters:tf:all',
    );
    const deadLetters = await web.list({ status: 'failed', limit: 2 });
    expect(deadLetters.map((r) => r.id).sort()).toEqual(failed.toSorted());
  });

  it('the event stream shows a task of the worker going pending → running → success', async () => {
    const { web, base, tasks } = await startFleet('events');
    const stream = await openSse(`${base}/events`, { authorization: `Bearer ${TOKEN}` });
    expect(stream.response.status).toBe(200);
    // The stream reads BullMQ's events from the moment it is open: give its reader a moment to subscribe.
    await waitFor(async () => (await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).ok);
    const id = web.with({ tags: { tenant: 'acme' } }).add(tasks.welcome, 'a@b.c');
    const events = () =>
      stream.messages
        .filter((m) => m.event === 'lifecycle')
        .map((m) => JSON.parse(m.data) as LifecycleEvent)
        .filter((e) => e.taskId === id);
    await stream.until(() => events().some((e) => e.status === 'success'), 'the task to succeed');
    expect(events().map((e) => e.status)).toEqual(['pending', 'running', 'success']);
    expect(events()[2]).toMatchObject({
      name: 'welcome',
      tags: { tenant: 'acme' },
      attempt: 1,
      previousStatus: 'running',
    });
  });

  it('a tag filter reads only the jobs holding the tag (INFO commandstats), and drops entries of jobs BullMQ removed', async () => {
    const { web, tasks, client } = await startFleet('tags', false);
    const many = Array.from({ length: 300 }, (_, i) =>
      web.with({ tags: { tenant: 'big' } }).add(tasks.welcome, `${i}`),
    );
    const few = [1, 2, 3].map((i) => web.with({ tags: { tenant: 'small' } }).add(tasks.welcome, `s${i}`));
    await web.drain();
    const reads = async () => Number(/cmdstat_hgetall:calls=(\d+)/.exec(await client.info('commandstats'))?.[1] ?? 0);
    const before = await reads();
    const small = await web.list({ tags: { tenant: 'small' } });
    expect(small.map((r) => r.id).sort()).toEqual(few.toSorted());
    expect((await reads()) - before).toBe(3);
    expect(many).toHaveLength(300);

    // An entry whose job BullMQ has removed (removeOnComplete/removeOnFail) is skipped and dropped as read.
    const index = 'bull:tags:tf:tag:tenant=small';
    await client.zadd(index, Date.now() - 3_600_000, 'removed-job');
    expect((await web.list({ tags: { tenant: 'small' } })).map((r) => r.id).sort()).toEqual(few.toSorted());
    expect(await client.zscore(index, 'removed-job')).toBeNull();
    expect(await client.zcard(index)).toBe(3);

    // A task with an idempotencyKey is the job `key=<key>`: get() by the task's id still finds it.
    const keyed = web.with({ idempotencyKey: 'order:42', tags: { tenant: 'small' } }).add(tasks.welcome, 'k');
    await web.drain();
    expect(await web.get(keyed)).toMatchObject({ id: keyed, status: 'pending', idempotencyKey: 'order:42' });
    expect((await web.list({ tags: { tenant: 'small' }, limit: 1 }))[0].id).toBe(keyed);
  });

  it('the dashboard loads over BullMQ: the rows and counts of what the worker did, a task added later shown live', async () => {
    const { web, base, tasks } = await startFleet('dashboard');
    const failed = web.add(tasks.charge);
    web.add(tasks.welcome, 'a@b.c');
    await waitFor(async () => (await web.metrics()).byStatus.failed === 1, 20_000, 'the worker to run the tasks');
    await waitFor(async () => (await web.metrics()).byStatus.success === 1, 20_000, 'the worker to run the tasks');
    const browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox'],
    });
    onCleanup(() => browser.close());
    const page = await browser.newPage({ extraHTTPHeaders: { authorization: `Bearer ${TOKEN}` } });
    const problems: string[] = [];
    page.on('console', (message) => {
      if (message.type() === 'error') problems.push(message.text());
    });
    page.on('pageerror', (error) => problems.push(error.message));
    expect((await page.goto(`${base}/dashboard`))?.status()).toBe(200);
    await page.waitForSelector('#conn.live');
    await page.waitForFunction(() => document.querySelectorAll('#tasks tbody tr[data-id]').length === 2);
    expect(await page.textContent('#count-failed')).toBe('1');
    await page.waitForSelector(`#tasks tr[data-id="${failed}"][data-status="failed"]`);
    const late = web.add(tasks.welcome, 'late@x.y');
    await page.waitForSelector(`#tasks tr[data-id="${late}"][data-status="success"]`);
    expect(problems).toEqual([]);
  });
});
