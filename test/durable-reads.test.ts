// A process reads its own writes with a durable store: what it has decided about a task (its end, a cancel)
// is what get(), list(), metrics(), retry() and the admin API answer at once, not what the store has until the
// lazy group commit lands up to 50 ms later. And a by-id call with an alias (an id that lost its idempotency
// key's claim to a task of another instance) acts on the holder, as get() answers the holder's record.
import { describe, expect, it } from 'vitest';
import { getTaskContext, type TaskHandle, type TaskManagerOptions } from 'koa-taskflow';
import { expectJson, startAdmin } from './helpers/admin.js';
import { createManager, deferred, startApp, waitFor } from './helpers/server.js';
import { sharedStores } from './helpers/shared-stores.js';

const stores = sharedStores('reads');

/** Settles once `signal` aborts: a task body that honours its signal. */
function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
}

describe.each(stores)('%s: a process reads its own writes', (_, open) => {
  async function manager(options: TaskManagerOptions = {}) {
    const store = await open();
    const m = createManager({ store: store(), ...options });
    const started: string[] = [];
    const gate = deferred();
    const job = m.task(
      async function job(label: string) {
        started.push(label);
        if (label === 'fails') throw new Error('boom');
        if (label === 'quick') return;
        await Promise.race([aborted(getTaskContext()!.signal), gate.promise]);
      },
      { retries: 3 },
    );
    await m.start();
    return { m, job, started, gate };
  }

  it('get() and list() answer cancelled right after cancel() of a running, a delayed and a slot-waiting task', async () => {
    const { m, job, started } = await manager({ concurrency: 1 });
    const running = m.add(job, 'running');
    const waiting = m.add(job, 'waiting');
    const delayed = m.with({ startAfter: 60_000 }).add(job, 'delayed');
    await waitFor(async () => (await m.get(running))?.status === 'running', 5_000, 'the running task');

    for (const [id, reason] of [
      // The slot-waiting one first: cancelling the running one frees the slot it waits for.
      [waiting, 'not needed'],
      [delayed, 'too late'],
      [running, 'stop it'],
    ]) {
      expect(await m.cancel(id, { reason })).toBe(true);
      expect(await m.get(id)).toMatchObject({ id, status: 'cancelled', reason });
    }
    const cancelled = await m.list({ status: 'cancelled' });
    expect(cancelled.map((r) => r.id).sort()).toEqual([running, waiting, delayed].sort());
    expect(await m.list({ status: ['pending', 'running'] })).toEqual([]);
    expect((await m.metrics()).byStatus).toMatchObject({ cancelled: 3, pending: 0, running: 0 });
    expect(started).toEqual(['running']);
  });

  it("get() answers a task's end right after its handle's done, after a failure, which retry() takes at once, and after drain()", async () => {
    const { m, job } = await manager();
    let handle: TaskHandle | undefined;
    const { url } = await startApp((app) => {
      app.use((ctx) => {
        handle = ctx.tasks.schedule(job, 'quick');
        ctx.body = 'ok';
      });
    }, m);
    await (await fetch(url)).text();
    const done = await handle!.done;
    expect(done.status).toBe('success');
    expect(await m.get(handle!.id)).toMatchObject({ status: 'success', attempts: 1 });

    const failing = m.with({ retries: 0 }).add(job, 'fails');
    await waitFor(() => m.unfinished === 0, 5_000, 'the failing task to end');
    expect(await m.get(failing)).toMatchObject({ status: 'failed', error: { message: 'boom' } });
    expect((await m.list({ status: 'failed' })).map((r) => r.id)).toEqual([failing]);
    const again = await m.retry(failing);
    expect(await m.get(again)).toMatchObject({ retryOf: failing });

    await m.drain();
    expect(await m.get(again)).toMatchObject({ status: 'failed', retryOf: failing });
  });

  it("the admin API's cancel answers cancelled, and GET /:id shows it, right after the cancel", async () => {
    const store = await open();
    const admin = await startAdmin({}, { store: store() });
    const job = admin.manager.task(async function held() {
      await aborted(getTaskContext()!.signal);
    });
    const id = admin.manager.add(job);
    await waitFor(async () => (await admin.manager.get(id))?.status === 'running', 5_000, 'the running task');
    const accepted = await expectJson(
      await admin.api(`/${id}/cancel`, { method: 'POST', headers: { 'sec-fetch-site': 'same-origin' } }),
      202,
    );
    expect(accepted).toEqual({ id, status: 'cancelled' });
    expect(await expectJson(await admin.api(`/${id}`), 200)).toMatchObject({ id, status: 'cancelled' });
  });
});

describe.each(stores)('%s: an alias id acts on the holder of its idempotency key', (_, open) => {
  /** Instances A and B on one store: `add(0)` adds a task with key K on A, `add(1)` on B. */
  async function aliased() {
    const store = await open();
    const managers = [0, 1].map(() => createManager({ store: store(), leaseMs: 1_500 }));
    // true: the task fails; false: it succeeds; it ends cancelled when its signal aborts before.
    const outcome = deferred<boolean>();
    const jobs = managers.map((m) =>
      m.task(async function keyed() {
        const signal = getTaskContext()!.signal;
        if (await Promise.race([aborted(signal).then(() => false), outcome.promise])) throw new Error('holder failed');
      }),
    );
    const [a, b] = managers;
    for (const m of managers) await m.start();
    const add = (m: number) => managers[m].with({ idempotencyKey: 'K' }).add(jobs[m]);
    // The holder runs on A; B's add with its key gets an alias of it.
    const holder = add(0);
    await waitFor(async () => (await b.get(holder))?.status === 'running', 5_000, 'the holder running in the store');
    const alias = add(1);
    expect(alias).not.toBe(holder);
    await waitFor(async () => (await b.get(alias))?.id === holder, 5_000, "the alias answering the holder's record");
    return { a, b, outcome, holder, alias };
  }

  it('cancel(alias) from the instance running the holder cancels it at once', async () => {
    const { a, holder, alias } = await aliased();
    expect(await a.cancel(alias, { reason: 'via the alias' })).toBe(true);
    expect(await a.get(holder)).toMatchObject({ status: 'cancelled', reason: 'via the alias' });
    expect(await a.cancel(alias)).toBe(false);
  });

  it('cancel(alias) from another instance reaches the holder within a lease renewal', async () => {
    const { a, b, holder, alias } = await aliased();
    expect(await b.cancel(alias, { reason: 'via the alias' })).toBe(true);
    // B reads the store: A's end lands there with A's next group commit.
    await waitFor(async () => (await b.get(alias))?.status === 'cancelled', 5_000, 'the holder cancelled by A');
    expect(await a.get(holder)).toMatchObject({ status: 'cancelled', reason: 'via the alias' });
    expect(await b.cancel(alias)).toBe(false);
  });

  it('retry(alias) of a holder that failed retries the holder', async () => {
    const { a, b, outcome, holder, alias } = await aliased();
    outcome.resolve(true);
    await a.drain();
    expect(await b.get(alias)).toMatchObject({ id: holder, status: 'failed' });
    const retry = await b.retry(alias);
    await waitFor(async () => (await b.get(retry))?.status !== undefined, 5_000, 'the retry stored');
    expect(await b.get(retry)).toMatchObject({ retryOf: holder });
  });
});
