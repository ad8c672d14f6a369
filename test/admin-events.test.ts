import type { IncomingMessage, ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { describe, expect, it } from 'vitest';
import { InMemoryObserver, taskLog, type LifecycleEvent, type LogEvent, type TaskEvent } from 'koa-taskflow';
import { expectJson, startAdmin, TOKEN } from './helpers/admin.js';
import { openSse, type SseMessage } from './helpers/sse.js';
import { createManager, deferred, onCleanup, waitFor } from './helpers/server.js';

const auth = { authorization: `Bearer ${TOKEN}` };
const parsed = (messages: SseMessage[]): (LifecycleEvent | LogEvent)[] =>
  messages.map((m) => JSON.parse(m.data) as LifecycleEvent | LogEvent);

describe('admin: GET /tasks/events (server-sent events)', () => {
  it('streams lifecycle and log events of every task, in order, with increasing ids', async () => {
    const manager = createManager();
    const work = manager.task(async function work(n: number) {
      taskLog('step one', { n });
      taskLog('step two', { level: 'warn', n });
    });
    let fails = 1;
    const flaky = manager.task(
      async function flaky() {
        if (fails-- > 0) throw new Error('first attempt fails');
      },
      { retries: 1 },
    );
    const { base } = await startAdmin({}, manager);
    const stream = await openSse(`${base}/events`, auth);
    expect(stream.response.status).toBe(200);
    expect(stream.response.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
    expect(stream.response.headers.get('cache-control')).toBe('no-cache, no-transform');

    const id = manager.with({ tags: { tenant: 'acme' } }).add(work, 7);
    await manager.drain();
    const flakyId = manager.add(flaky);
    await manager.drain();
    await stream.until((m) =>
      parsed(m).some((e) => e.taskId === flakyId && e.type === 'lifecycle' && e.status === 'success'),
    );

    const events = parsed(stream.messages);
    const ofWork = events.filter((e) => e.taskId === id);
    expect(ofWork.map((e) => (e.type === 'log' ? `log:${e.message}` : e.status))).toEqual([
      'pending',
      'running',
      'log:step one',
      'log:step two',
      'success',
    ]);
    expect(ofWork.every((e) => e.name === 'work' && e.tags.tenant === 'acme')).toBe(true);
    expect(ofWork[3]).toMatchObject({ type: 'log', level: 'warn', fields: { n: 7 }, attempt: 1 });
    const ofFlaky = events.filter((e): e is LifecycleEvent => e.taskId === flakyId && e.type === 'lifecycle');
    expect(ofFlaky.map((e) => `${e.status}@${e.attempt}`)).toEqual([
      'pending@0',
      'running@1',
      'pending@1',
      'running@2',
      'success@2',
    ]);
    expect(ofFlaky[2].error?.message).toBe('first attempt fails');
    // The SSE event name is the event's type; ids grow by one per event sent.
    expect(stream.messages.every((m) => m.event === (JSON.parse(m.data) as TaskEvent).type)).toBe(true);
    const ids = stream.messages.map((m) => Number(m.id));
    expect(ids).toEqual(ids.map((_, i) => ids[0] + i));
  });

  it('filters the stream by name and tag.<key>=<value>', async () => {
    const manager = createManager();
    const job = manager.task(function job() {});
    const other = manager.task(function other() {});
    const { base } = await startAdmin({}, manager);
    const acme = await openSse(`${base}/events?tag.tenant=acme`, auth);
    const jobs = await openSse(`${base}/events?name=job`, auth);
    manager.with({ tags: { tenant: 'globex' } }).add(job);
    manager.with({ tags: { tenant: 'acme' } }).add(other);
    await manager.drain();
    const last = manager.with({ tags: { tenant: 'acme' } }).add(job);
    await manager.drain();
    const sawLastSuccess = (m: SseMessage[]) =>
      parsed(m).some((e) => e.taskId === last && e.type === 'lifecycle' && e.status === 'success');
    await acme.until(sawLastSuccess);
    await jobs.until(sawLastSuccess);
    // Everything before `last` was delivered before it: what is missing now was filtered out.
    expect(new Set(parsed(acme.messages).map((e) => e.tags.tenant))).toEqual(new Set(['acme']));
    expect(new Set(parsed(jobs.messages).map((e) => e.name))).toEqual(new Set(['job']));
    expect(parsed(jobs.messages).some((e) => e.tags.tenant === 'globex')).toBe(true);
    expect((await expectJson(await fetch(`${base}/events?status=failed`, { headers: auth }), 400)).error).toMatch(
      /unknown query parameter "status"/,
    );
  });

  it('needs auth like every endpoint', async () => {
    const { base } = await startAdmin();
    const response = await fetch(`${base}/events`);
    expect(response.status).toBe(401);
    expect(response.headers.get('content-type')).toMatch(/^application\/json/);
  });

  it('sends heartbeat comments on a quiet stream', async () => {
    const { base } = await startAdmin({ heartbeatMs: 20 });
    const stream = await openSse(`${base}/events`, auth);
    await waitFor(() => stream.comments.filter((c) => c === 'heartbeat').length >= 2, 5_000, 'two heartbeats');
    expect(stream.comments[0]).toBe('connected');
    expect(stream.messages).toEqual([]);
  });

  it('limits the number of clients (503 with Retry-After) and frees a slot when a client goes away', async () => {
    const { base, admin, manager } = await startAdmin({ maxSseClients: 2 });
    const first = await openSse(`${base}/events`, auth);
    await openSse(`${base}/events`, auth);
    expect(admin.sseClients).toBe(2);
    const refused = await fetch(`${base}/events`, { headers: auth });
    expect(refused.headers.get('retry-after')).toBe('10');
    expect((await expectJson(refused, 503)).error).toMatch(/too many event-stream clients/);

    first.close();
    await waitFor(() => admin.sseClients === 1, 5_000, 'the server to see the client leave');
    const third = await openSse(`${base}/events`, auth);
    expect(third.response.status).toBe(200);
    // The new client gets events; the one that left is gone without errors.
    const id = manager.add(function afterwards() {});
    await third.until((m) =>
      parsed(m).some((e) => e.taskId === id && e.type === 'lifecycle' && e.status === 'success'),
    );
  });

  it('close() ends every open stream (for a graceful server.close()); running tasks are not affected', async () => {
    const manager = createManager();
    const gate = deferred();
    const slow = manager.task(async function slow() {
      await gate.promise;
    });
    const { base, admin } = await startAdmin({}, manager);
    const a = await openSse(`${base}/events`, auth);
    const b = await openSse(`${base}/events`, auth);
    const id = manager.add(slow);
    await a.until((m) => parsed(m).some((e) => e.taskId === id && e.type === 'lifecycle' && e.status === 'running'));
    admin.close();
    await a.ended;
    await b.ended;
    expect(admin.sseClients).toBe(0);
    gate.resolve();
    await manager.drain();
    expect((await manager.get(id))?.status).toBe('success');
  });

  it('a burst of 2 500 tasks in one event-loop turn: a reading client stays connected and gets every event, or a resync in place of those it could not take', async () => {
    const manager = createManager();
    const gate = deferred();
    const job = manager.task(async function job(_n: number) {
      await gate.promise;
    });
    const everything = new InMemoryObserver();
    manager.subscribe(everything);
    const { base, admin, api } = await startAdmin({}, manager);
    const stream = await openSse(`${base}/events`, auth);
    const resyncs = (m: SseMessage[]) => m.filter((e) => e.event === 'resync').length;
    // ~1 KB per event: one turn writes far more than a socket takes at once.
    const tagged = manager.with({ tags: { blob: 'x'.repeat(1_000) } });
    for (let n = 0; n < 2_500; n++) tagged.add(job, n);
    await stream.until((m) => resyncs(m) > 0, 'a resync event');
    const first = stream.messages.find((e) => e.event === 'resync')!;
    expect(JSON.parse(first.data)).toEqual({ type: 'resync', missed: expect.any(Number) });
    expect(first.id).toBeUndefined();
    // What the dashboard does on a resync: re-read the API, which has the whole burst.
    expect(await expectJson(await api('/metrics'), 200)).toMatchObject({ total: 2_500 });
    gate.resolve();
    await manager.drain();
    // Once the client has caught up, a new task's events reach it (a resync stands for them otherwise).
    for (let tries = 0; ; tries++) {
      expect(tries).toBeLessThan(5);
      const marker = manager.add(function marker() {});
      const before = resyncs(stream.messages);
      const seen = (m: SseMessage[]) =>
        parsed(m.filter((e) => e.event !== 'resync')).some(
          (e) => e.taskId === marker && e.type === 'lifecycle' && e.status === 'success',
        );
      await stream.until((m) => seen(m) || resyncs(m) > before, 'the marker task or a resync');
      if (seen(stream.messages)) break;
    }
    expect(admin.sseClients).toBe(1);

    // Every event the manager emitted reached the client in order, or was missed and a resync came
    // after it (before the next event delivered).
    const key = (e: TaskEvent) =>
      `${e.taskId} ${e.type === 'lifecycle' ? `${e.status}@${e.attempt}` : e.type === 'log' ? e.message : e.value}`;
    const emitted = everything.events.map(key);
    let next = 0;
    let resynced = false;
    for (const message of stream.messages) {
      if (message.event === 'resync') {
        resynced = true;
        continue;
      }
      const delivered = key(parsed([message])[0]);
      const at = emitted.indexOf(delivered, next);
      expect(at, `${delivered} delivered out of order`).toBeGreaterThanOrEqual(next);
      if (at > next) expect(resynced, `${at - next} event(s) missed before ${delivered} with no resync`).toBe(true);
      next = at + 1;
      resynced = false;
    }
    if (next < emitted.length) expect(resynced).toBe(true);
  });

  it('a client that stops reading is dropped (its backlog stays put for two heartbeats); until then what is queued for it stays bounded', async () => {
    const manager = createManager();
    const big = 'x'.repeat(64 * 1_024);
    const job = manager.task(function job() {
      taskLog('a large log line', { big });
    });
    const { admin, url, server } = await startAdmin({ heartbeatMs: 100 }, manager);
    let response: ServerResponse | undefined;
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      if (req.url?.startsWith('/tasks/events')) response = res;
    });
    const { hostname, port } = new URL(url);
    const socket = connect(Number(port), hostname);
    onCleanup(() => void socket.destroy());
    let head = '';
    await new Promise<void>((resolve) => {
      socket.on('data', (chunk: Buffer) => {
        head += chunk.toString('latin1');
        if (head.includes('\r\n\r\n')) resolve();
      });
      socket.write(`GET /tasks/events HTTP/1.1\r\nHost: ${hostname}:${port}\r\nAuthorization: Bearer ${TOKEN}\r\n\r\n`);
    });
    // Headers in: the client stops reading. The kernel's buffers fill (~10 MB here), then the server's.
    socket.pause();
    await waitFor(() => admin.sseClients === 1 && response !== undefined, 5_000, 'the stream to open');
    // Tasks keep logging 64 KB lines until the server gives up on the client: kernel buffers take the
    // first ~10 MB, then the server's limit is reached and nothing more is queued for it.
    let queued = 0;
    let sent = 0;
    while (admin.sseClients === 1) {
      expect(sent, 'the client was never dropped').toBeLessThan(200 << 20);
      for (let n = 0; n < 40; n++) manager.add(job);
      sent += 40 * big.length;
      await manager.drain();
      queued = Math.max(queued, response!.writableLength);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    // The most the server ever held for it: its limit (1 MiB) and one event.
    expect(queued).toBeGreaterThan(1 << 20);
    expect(queued).toBeLessThan((1 << 20) + 100 * 1_024);
    expect(sent).toBeGreaterThan(4 * queued);
    await new Promise<void>((resolve) => {
      socket.once('close', () => resolve());
      socket.resume();
    });
    const fresh = await openSse(`${url}/tasks/events`, auth);
    expect(fresh.response.status).toBe(200);
  });
});
