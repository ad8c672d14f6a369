import { Writable } from 'node:stream';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { type AdminOptions, type TaskMetrics, type TaskRecord } from 'koa-taskflow';
import { expectJson, startAdmin, TOKEN } from './helpers/admin.js';
import { createManager } from './helpers/server.js';

interface Page {
  tasks: TaskRecord[];
  nextCursor: string | null;
}

const basic = (user: string, password: string): string =>
  `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

describe('admin: authentication', () => {
  it('Bearer token: 401 with WWW-Authenticate without or with a wrong token, 200 with the right one', async () => {
    const { api } = await startAdmin();
    for (const authorization of [
      undefined,
      'Bearer wrong-token',
      `Bearer ${TOKEN}x`,
      `Basic ${TOKEN}`,
      TOKEN,
      'Bearer ',
    ]) {
      const response = await api('', {
        headers: authorization === undefined ? { authorization: '' } : { authorization },
      });
      expect(await expectJson(response, 401)).toEqual({ error: 'authentication required' });
      expect(response.headers.get('www-authenticate')).toBe('Bearer realm="koa-taskflow admin"');
    }
    expect(await expectJson<Page>(await api(''), 200)).toEqual({ tasks: [], nextCursor: null });
  });

  it('Basic users: wrong user, wrong password and a malformed header are 401; each user gets in', async () => {
    const { api } = await startAdmin({ auth: { users: { alice: 'alice-pw', bob: 'b:o:b' } } });
    for (const authorization of [
      '',
      basic('alice', 'bob'),
      basic('mallory', 'alice-pw'),
      basic('alice', ''),
      'Basic !!!',
      'Basic ' + Buffer.from('alice').toString('base64'),
      `Bearer ${TOKEN}`,
    ]) {
      const response = await api('/metrics', { headers: { authorization } });
      expect(response.status).toBe(401);
      expect(response.headers.get('www-authenticate')).toBe('Basic realm="koa-taskflow admin", charset="UTF-8"');
    }
    await expectJson(await api('/metrics', { headers: { authorization: basic('alice', 'alice-pw') } }), 200);
    // A password may contain ':' (only the first one separates the user name).
    await expectJson(await api('/metrics', { headers: { authorization: basic('bob', 'b:o:b') } }), 200);
  });

  it('token and users together accept either scheme and challenge with both', async () => {
    const { api } = await startAdmin({ auth: { token: TOKEN, users: { ops: 'ops-pw' } } });
    const denied = await api('', { headers: { authorization: '' } });
    expect(denied.status).toBe(401);
    expect(denied.headers.get('www-authenticate')).toBe(
      'Basic realm="koa-taskflow admin", charset="UTF-8", Bearer realm="koa-taskflow admin"',
    );
    await expectJson(await api(''), 200);
    await expectJson(await api('', { headers: { authorization: basic('ops', 'ops-pw') } }), 200);
  });

  it('a function decides; only `true` lets in; a throwing check is a 500 that shows nothing of the error', async () => {
    const seen: string[] = [];
    const lines: string[] = [];
    const logger = pino(
      new Writable({ write: (chunk: Buffer, _encoding, done) => (lines.push(chunk.toString()), done()) }),
    );
    const { api } = await startAdmin(
      {
        auth: (ctx) => {
          seen.push(ctx.path);
          if (ctx.get('x-role') === 'explode') throw new Error('db password is hunter2 at /srv/app/auth.js');
          return Promise.resolve(ctx.get('x-role') === 'admin');
        },
      },
      { logger },
    );
    expect((await api('', { headers: { 'x-role': 'guest' } })).status).toBe(401);
    await expectJson(await api('', { headers: { 'x-role': 'admin' } }), 200);
    const failed = await api('', { headers: { 'x-role': 'explode' } });
    const body = await expectJson(failed, 500);
    expect(JSON.stringify(body)).not.toMatch(/hunter2|auth\.js|\bat /);
    expect(seen).toEqual(['/tasks', '/tasks', '/tasks']);
    // The operator sees it in the server log instead.
    expect(lines.join('')).toMatch(/hunter2.*koa-taskflow: admin request failed/);
  });

  it("'none' serves without credentials", async () => {
    const { api } = await startAdmin({ auth: 'none' });
    await expectJson(await api('', { headers: { authorization: '' } }), 200);
  });

  it('every path under the prefix is behind auth, even unknown ones; other paths pass through', async () => {
    const { api, url } = await startAdmin({}, undefined);
    for (const path of ['/nope/nope', '/dashboard', '/events', '/00000000-0000-4000-8000-000000000000']) {
      expect((await api(path, { headers: { authorization: '' } })).status).toBe(401);
    }
    // Not the admin's: Koa's own 404 (no admin JSON).
    const outside = await fetch(`${url}/tasksx`);
    expect(outside.status).toBe(404);
    expect(await outside.text()).toBe('Not Found');
  });

  it('construction without auth, or with a malformed one, throws naming the option', () => {
    const manager = createManager();
    const bad: unknown[] = [
      undefined,
      null,
      '',
      'None',
      42,
      {},
      { token: '' },
      { token: 5 },
      { users: {} },
      { users: { alice: '' } },
      { users: { 'a:b': 'x' } },
      { token: 'x', extra: 1 },
    ];
    for (const auth of bad) {
      expect(() => manager.admin({ auth } as unknown as AdminOptions), JSON.stringify(auth)).toThrow(/option "auth"/);
    }
    expect(() => manager.admin(undefined as unknown as AdminOptions)).toThrow(/"auth"/);
    expect(() => manager.admin({ auth: 'none', prefix: '/' })).toThrow(/option "prefix"/);
    expect(() => manager.admin({ auth: 'none', prefix: 'tasks/' })).toThrow(/option "prefix"/);
    expect(() => manager.admin({ auth: 'none', traceUrl: 'javascript:alert({traceId})' })).toThrow(/option "traceUrl"/);
    expect(() => manager.admin({ auth: 'none', traceUrl: 'http://jaeger/trace/' })).toThrow(/option "traceUrl"/);
    expect(() => manager.admin({ auth: 'none', maxSseClients: 0 })).toThrow(RangeError);
    expect(() => manager.admin({ auth: 'none', colour: 'red' } as unknown as AdminOptions)).toThrow(
      /unknown option "colour"/,
    );
  });
});

describe('admin: reading tasks', () => {
  async function seeded() {
    const manager = createManager();
    let fail = true;
    const send = manager.task(async function send(_to: string) {});
    const charge = manager.task(async function charge(_amount: number) {
      if (fail) throw new Error('card declined');
    });
    const h = await startAdmin({}, manager);
    const ids = {
      acmeSend: manager.with({ tags: { tenant: 'acme', region: 'eu' } }).add(send, 'a@acme'),
      globexSend: manager.with({ tags: { tenant: 'globex', region: 'eu' } }).add(send, 'b@globex'),
      acmeCharge: manager.with({ tags: { tenant: 'acme', region: 'us' } }).add(charge, 10),
      plainSend: manager.add(send, 'c@plain'),
    };
    await manager.drain();
    return { ...h, ids, setFail: (v: boolean) => (fail = v) };
  }

  const idsOf = (page: Page): string[] => page.tasks.map((t) => t.id);

  it('GET /tasks lists newest first; filters by status, name, tag.<key>=<value> (all must match), since', async () => {
    const { api, ids } = await seeded();
    expect(idsOf(await expectJson<Page>(await api(''), 200))).toEqual([
      ids.plainSend,
      ids.acmeCharge,
      ids.globexSend,
      ids.acmeSend,
    ]);
    expect(idsOf(await expectJson<Page>(await api('?status=failed'), 200))).toEqual([ids.acmeCharge]);
    expect(idsOf(await expectJson<Page>(await api('?status=success,failed&name=charge'), 200))).toEqual([
      ids.acmeCharge,
    ]);
    expect(idsOf(await expectJson<Page>(await api('?status=success&status=pending'), 200))).toEqual([
      ids.plainSend,
      ids.globexSend,
      ids.acmeSend,
    ]);
    expect(idsOf(await expectJson<Page>(await api('?name=send'), 200))).toEqual([
      ids.plainSend,
      ids.globexSend,
      ids.acmeSend,
    ]);
    expect(idsOf(await expectJson<Page>(await api('?tag.tenant=acme'), 200))).toEqual([ids.acmeCharge, ids.acmeSend]);
    expect(idsOf(await expectJson<Page>(await api('?tag.tenant=acme&tag.region=eu'), 200))).toEqual([ids.acmeSend]);
    expect(idsOf(await expectJson<Page>(await api('?tag.region=eu&name=send&status=success'), 200))).toEqual([
      ids.globexSend,
      ids.acmeSend,
    ]);
    expect(idsOf(await expectJson<Page>(await api('?tag.tenant=initech'), 200))).toEqual([]);
    const all = (await expectJson<Page>(await api(''), 200)).tasks;
    const since = all[1].createdAt;
    const recent = (await expectJson<Page>(await api(`?since=${since}`), 200)).tasks;
    expect(recent.length).toBeGreaterThanOrEqual(2);
    expect(recent.every((t) => t.createdAt >= since)).toBe(true);
    expect(
      idsOf(await expectJson<Page>(await api(`?since=${encodeURIComponent(new Date(since).toISOString())}`), 200)),
    ).toEqual(idsOf({ tasks: recent, nextCursor: null }));
  });

  it('limit and cursor page through everything once, even with tasks added between pages', async () => {
    const { api, ids, manager } = await seeded();
    const first = await expectJson<Page>(await api('?limit=2'), 200);
    expect(idsOf(first)).toEqual([ids.plainSend, ids.acmeCharge]);
    expect(first.nextCursor).toEqual(expect.any(String));
    // Newer tasks arrive while the client reads on: they must not shift the next page.
    manager.add(function later() {});
    manager.add(function later() {});
    await manager.drain();
    const second = await expectJson<Page>(await api(`?limit=2&cursor=${first.nextCursor}`), 200);
    expect(idsOf(second)).toEqual([ids.globexSend, ids.acmeSend]);
    expect(second.nextCursor).toBeNull();
    // Filters apply to every page.
    const sendsPage1 = await expectJson<Page>(await api('?name=send&limit=1'), 200);
    const sendsPage2 = await expectJson<Page>(await api(`?name=send&limit=1&cursor=${sendsPage1.nextCursor}`), 200);
    const sendsPage3 = await expectJson<Page>(await api(`?name=send&limit=1&cursor=${sendsPage2.nextCursor}`), 200);
    expect([...idsOf(sendsPage1), ...idsOf(sendsPage2), ...idsOf(sendsPage3)]).toEqual([
      ids.plainSend,
      ids.globexSend,
      ids.acmeSend,
    ]);
    expect(sendsPage3.nextCursor).toBeNull();
  });

  it('limit is bounded: default page size, maxLimit, and 400 outside 1..maxLimit', async () => {
    const manager = createManager();
    const { api } = await startAdmin({ defaultLimit: 3, maxLimit: 5 }, manager);
    for (let i = 0; i < 7; i++) manager.add(function filler() {});
    await manager.drain();
    expect((await expectJson<Page>(await api(''), 200)).tasks).toHaveLength(3);
    expect((await expectJson<Page>(await api('?limit=5'), 200)).tasks).toHaveLength(5);
    for (const limit of ['0', '6', '-1', '2.5', 'ten', '', '1e3']) {
      const body = await expectJson(await api(`?limit=${limit}`), 400);
      expect(body.error).toMatch(/"limit" must be an integer from 1 to 5/);
    }
  });

  it('malformed queries are 400 with a JSON { error } and no stack', async () => {
    const { api } = await seeded();
    const cases: [string, RegExp][] = [
      ['?status=done', /unknown status "done"/],
      ['?colour=red', /unknown query parameter "colour"/],
      ['?tag.=x', /tag name is missing/],
      ['?name=', /"name" is empty/],
      ['?name=a&name=b', /"name" given more than once/],
      ['?tag.tenant=a&tag.tenant=b', /"tag.tenant" given more than once/],
      ['?cursor=not-a-cursor', /"cursor" is not a cursor/],
      [`?cursor=${Buffer.from('[1,"x",0]').toString('base64url')}`, /"cursor" is not a cursor/],
      ['?since=yesterday', /"since" must be/],
    ];
    for (const [query, message] of cases) {
      const body = await expectJson(await api(query), 400);
      expect(Object.keys(body)).toEqual(['error']);
      expect(body.error).toMatch(message);
      expect(String(body.error)).not.toMatch(/\n\s+at /);
    }
  });

  it('GET /tasks/:id: the record; 404 for an unknown id, 400 for a malformed one', async () => {
    const { api, ids } = await seeded();
    const record = await expectJson<TaskRecord>(await api(`/${ids.acmeCharge}`), 200);
    expect(record).toMatchObject({
      id: ids.acmeCharge,
      name: 'charge',
      status: 'failed',
      args: [10],
      tags: { tenant: 'acme', region: 'us' },
      attempts: 1,
    });
    expect(record.error).toMatchObject({ type: 'Error', message: 'card declined' });
    await expectJson(await api(`/${ids.acmeCharge.toUpperCase()}`), 200);
    expect(await expectJson(await api('/3f1c9a52-7d0e-4c1b-9a55-2b1a4f1e8c11'), 404)).toEqual({
      error: 'no task with id 3f1c9a52-7d0e-4c1b-9a55-2b1a4f1e8c11',
    });
    expect((await expectJson(await api('/not-an-id'), 400)).error).toMatch(/malformed task id/);
    expect((await expectJson(await api(`/${ids.acmeCharge}/logs`), 404)).error).toMatch(/no admin endpoint/);
  });

  it('GET /tasks/metrics: counts by status and name', async () => {
    const { api } = await seeded();
    const metrics = await expectJson<TaskMetrics>(await api('/metrics'), 200);
    expect(metrics.total).toBe(4);
    expect(metrics.byStatus).toMatchObject({ success: 3, failed: 1, pending: 0 });
    expect(metrics.byName.charge.byStatus.failed).toBe(1);
    expect(metrics.byName.send.total).toBe(3);
  });

  it('wrong methods are 405 with Allow', async () => {
    const { api, ids } = await seeded();
    const post = await api('', { method: 'POST' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD');
    const get = await api(`/${ids.acmeCharge}/retry`);
    expect(get.status).toBe(405);
    expect(get.headers.get('allow')).toBe('POST');
    expect((await api('/retry-failed', { method: 'PUT' })).status).toBe(405);
    expect((await api(`/${ids.acmeCharge}`, { method: 'DELETE' })).status).toBe(405);
  });

  it('responses are not cacheable and carry no CORS headers', async () => {
    const { api } = await seeded();
    const response = await api('', { headers: { origin: 'http://elsewhere.example' } });
    expect(response.headers.get('cache-control')).toBe('no-store');
    expect(response.headers.get('access-control-allow-origin')).toBeNull();
    const preflight = await api('/retry-failed', {
      method: 'OPTIONS',
      headers: { origin: 'http://elsewhere.example', 'access-control-request-method': 'POST' },
    });
    expect(preflight.status).toBe(405);
    expect(preflight.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('POST /tasks/:id/retry runs a failed task again as a new task that succeeds; a second retry of it is 409', async () => {
    const { api, ids, manager, setFail } = await seeded();
    setFail(false);
    const body = await expectJson<{ id: string; retryOf: string }>(
      await api(`/${ids.acmeCharge}/retry`, { method: 'POST' }),
      202,
    );
    expect(body.retryOf).toBe(ids.acmeCharge);
    expect(body.id).not.toBe(ids.acmeCharge);
    await manager.drain();
    const retried = await expectJson<TaskRecord>(await api(`/${body.id}`), 200);
    expect(retried).toMatchObject({
      name: 'charge',
      status: 'success',
      args: [10],
      tags: { tenant: 'acme', region: 'us' },
      retryOf: ids.acmeCharge,
    });
    expect((await expectJson<TaskRecord>(await api(`/${ids.acmeCharge}`), 200)).status).toBe('failed');
    const again = await expectJson(await api(`/${ids.acmeCharge}/retry`, { method: 'POST' }), 409);
    expect(again).toEqual({ error: expect.stringMatching(/already retried/), retriedAs: body.id });
    expect((await expectJson<Page>(await api('?name=charge'), 200)).tasks).toHaveLength(2);
  });

  it('retry: 409 for a task that did not fail, 404 for an unknown id, 400 for a malformed one', async () => {
    const { api, ids } = await seeded();
    expect((await expectJson(await api(`/${ids.acmeSend}/retry`, { method: 'POST' }), 409)).error).toMatch(
      /is success; only failed or interrupted/,
    );
    expect(
      (await expectJson(await api('/3f1c9a52-7d0e-4c1b-9a55-2b1a4f1e8c11/retry', { method: 'POST' }), 404)).error,
    ).toMatch(/no task with id/);
    expect((await expectJson(await api('/42/retry', { method: 'POST' }), 400)).error).toMatch(/malformed task id/);
  });

  it('POST /tasks/retry-failed retries each failed task once (filters apply), oldest first', async () => {
    const manager = createManager();
    let fail = true;
    const flaky = manager.task(async function flaky(_n: number) {
      if (fail) throw new Error('down');
    });
    const other = manager.task(async function other() {
      if (fail) throw new Error('down');
    });
    const { api } = await startAdmin({}, manager);
    const a = manager.with({ tags: { tenant: 'acme' } }).add(flaky, 1);
    const b = manager.with({ tags: { tenant: 'acme' } }).add(flaky, 2);
    const c = manager.with({ tags: { tenant: 'globex' } }).add(flaky, 3);
    const d = manager.with({ tags: { tenant: 'acme' } }).add(other);
    await manager.drain();
    fail = false;
    const first = await expectJson<{ retried: { id: string; newId: string }[]; errors: unknown[] }>(
      await api('/retry-failed?name=flaky&tag.tenant=acme', { method: 'POST' }),
      200,
    );
    expect(first.retried.map((r) => r.id)).toEqual([a, b]);
    expect(first.errors).toEqual([]);
    await manager.drain();
    for (const { newId } of first.retried) expect((await manager.get(newId))?.status).toBe('success');
    // Already retried: not again. The rest now.
    const second = await expectJson<{ retried: { id: string }[] }>(await api('/retry-failed', { method: 'POST' }), 200);
    expect(second.retried.map((r) => r.id)).toEqual([c, d]);
    await manager.drain();
    const third = await expectJson<{ retried: unknown[] }>(await api('/retry-failed', { method: 'POST' }), 200);
    expect(third.retried).toEqual([]);
    expect((await api('/retry-failed?status=failed', { method: 'POST' })).status).toBe(400);
  });

  it('cross-site POSTs are refused (Origin, Sec-Fetch-Site); same-origin ones and non-browser clients pass', async () => {
    const { api, ids, base, setFail } = await seeded();
    setFail(false);
    const host = new URL(base).host;
    const refused: Record<string, string>[] = [
      { origin: 'http://evil.example' },
      { origin: 'null' },
      { origin: `http://${host}.evil.example` },
      { 'sec-fetch-site': 'cross-site' },
      { 'sec-fetch-site': 'same-site' },
      { 'sec-fetch-site': 'none', origin: `http://${host}` },
    ];
    for (const headers of refused) {
      for (const path of [`/${ids.acmeCharge}/retry`, '/retry-failed']) {
        const body = await expectJson(await api(path, { method: 'POST', headers }), 403);
        expect(body.error).toMatch(/cross-site request refused/);
      }
    }
    expect((await expectJson<Page>(await api('?name=charge'), 200)).tasks).toHaveLength(1);
    await expectJson(
      await api(`/${ids.acmeCharge}/retry`, {
        method: 'POST',
        headers: { origin: `http://${host}`, 'sec-fetch-site': 'same-origin' },
      }),
      202,
    );
    await expectJson(await api('/retry-failed', { method: 'POST' }), 200);
  });

  it('a custom prefix, with or without a trailing slash; the default prefix is then free', async () => {
    const manager = createManager();
    const { api, url } = await startAdmin({ prefix: '/ops/jobs' }, manager);
    manager.add(function job() {});
    await manager.drain();
    expect((await expectJson<Page>(await api(''), 200)).tasks).toHaveLength(1);
    expect((await expectJson<Page>(await api('/'), 200)).tasks).toHaveLength(1);
    expect((await fetch(`${url}/tasks`, { headers: { authorization: `Bearer ${TOKEN}` } })).status).toBe(404);
  });
});
