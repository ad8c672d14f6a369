import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MemoryStore, TaskStoreUnavailableError, type TaskFilter, type TaskRecord } from 'koa-taskflow';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { expectJson, startAdmin, TOKEN } from './helpers/admin.js';
import { tempDir } from './helpers/files.js';
import { createManager } from './helpers/server.js';

interface Page {
  tasks: TaskRecord[];
  nextCursor: string | null;
}

const cursorOf = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');
const ID = '3f1c9a52-7d0e-4c1b-9a55-2b1a4f1e8c11';

/** An admin on a SqliteStore (the store that answered 500 to these queries) with a few finished tasks. */
async function sqliteAdmin() {
  const manager = createManager({ store: new SqliteStore({ path: join(tempDir(), 'tasks.db') }) });
  const job = manager.task(async function job(_n: number) {});
  const h = await startAdmin({}, manager);
  for (let n = 0; n < 5; n++) manager.with({ tags: { tenant: 'acme' } }).add(job, n);
  await manager.drain();
  return h;
}

/** The body of a 400: one `error` naming `parameter`, no stack. */
async function badRequest(response: Response, parameter: RegExp): Promise<string> {
  const body = await expectJson(response, 400);
  expect(Object.keys(body)).toEqual(['error']);
  expect(body.error).toMatch(parameter);
  expect(String(body.error)).not.toMatch(/\n\s+at /);
  return String(body.error);
}

describe('admin: hostile queries are 400s naming the parameter', () => {
  it('malformed, forged and over-long cursors', async () => {
    const { api } = await sqliteAdmin();
    const first = await expectJson<Page>(await api('?limit=2'), 200);
    const real = first.nextCursor!;
    const cursors = [
      cursorOf([Date.now(), ID, 1e300]),
      cursorOf([Date.now(), ID, -1]),
      cursorOf([Date.now(), ID, 1.5]),
      cursorOf([Date.now(), ID, '2']),
      cursorOf([Date.now(), ID, 2 ** 53]),
      cursorOf([1e300, ID, 0]),
      cursorOf([Date.now(), ID, 0, 'extra']),
      cursorOf({ createdAt: Date.now(), id: ID, offset: 0 }),
      cursorOf([Date.now(), 'not-a-uuid', 0]),
      `${real}!`,
      `${real}==`,
      `${real}${'A'.repeat(400)}`,
      'A'.repeat(10_000),
      '%00',
    ];
    for (const cursor of cursors)
      await badRequest(
        await api(`?limit=2&cursor=${encodeURIComponent(cursor)}`),
        /"cursor" is not a cursor from a previous page/,
      );
    await badRequest(await api(`?cursor=${real}&cursor=${real}`), /"cursor" given more than once/);
    // The real one still pages on.
    const second = await expectJson<Page>(await api(`?limit=2&cursor=${real}`), 200);
    expect(second.tasks).toHaveLength(2);
    expect(second.tasks.map((t) => t.id)).not.toContain(first.tasks[0].id);
  });

  it('a far-away offset in a cursor we made costs a bounded read, not an error', async () => {
    const { api } = await sqliteAdmin();
    const all = await expectJson<Page>(await api(''), 200);
    // Our own cursor shape with a large (safe) offset: the record is found by id all the same.
    const [createdAt, id] = [all.tasks[1].createdAt, all.tasks[1].id];
    const page = await expectJson<Page>(await api(`?cursor=${cursorOf([createdAt, id, 2 ** 52])}`), 200);
    expect(page.tasks.map((t) => t.id)).toEqual(all.tasks.slice(2).map((t) => t.id));
  });

  it('oversized filters: ~1000 tag filters, over-long names and values (every endpoint taking a filter)', async () => {
    const { api } = await sqliteAdmin();
    const many = Array.from({ length: 1_000 }, (_, i) => `tag.k${i}=v`).join('&');
    await badRequest(await api(`?${many}`), /"tag\.<key>": at most 20 tag filters/);
    await badRequest(await api(`/events?${many}`), /at most 20 tag filters/);
    await badRequest(await api(`/retry-failed?${many}`, { method: 'POST' }), /at most 20 tag filters/);
    // 20 is served (by SQLite): nothing matches them all.
    const twenty = Array.from({ length: 20 }, (_, i) => `tag.k${i}=v`).join('&');
    expect((await expectJson<Page>(await api(`?${twenty}`), 200)).tasks).toEqual([]);
    expect((await expectJson<Page>(await api('?tag.tenant=acme'), 200)).tasks).toHaveLength(5);
    const long = 'x'.repeat(1_025);
    await badRequest(await api(`?name=${long}`), /"name": the value is longer than 1024 characters/);
    await badRequest(await api(`?tag.tenant=${long}`), /"tag\.tenant": the value is longer than 1024 characters/);
    await badRequest(await api(`?tag.${long}=acme`), /"tag\.x+": the tag name is longer than 1024 characters/);
  });

  it('repeated parameters, unknown statuses, bad limits and odd ids', async () => {
    const { api } = await sqliteAdmin();
    await badRequest(await api('?limit=1&limit=2'), /"limit" given more than once/);
    await badRequest(await api('?since=1&since=2'), /"since" given more than once/);
    await badRequest(await api('?status=failed&status=bogus'), /"status": unknown status "bogus"/);
    await badRequest(await api('?status=failed,'), /"status": unknown status ""/);
    for (const limit of ['1e300', '-0', '0x10', '99999999999999999999', '%00'])
      await badRequest(await api(`?limit=${limit}`), /"limit" must be an integer/);
    for (const id of [`${ID}x`, `${ID}%20`, '%00', 'a'.repeat(5_000), '..%2F..', `${ID}%0A`]) {
      expect(await badRequest(await api(`/${id}`), /malformed task id/)).not.toContain('a'.repeat(100));
      await badRequest(await api(`/${id}/retry`, { method: 'POST' }), /malformed task id/);
    }
  });
});

describe('admin: library errors keep their meaning', () => {
  it('a store that is unavailable is a 503 with its message and a Retry-After, not a 500', async () => {
    let down = false;
    class FlakyStore extends MemoryStore {
      override async get(id: string) {
        if (down) throw new TaskStoreUnavailableError('the disk holding the task store is gone');
        return super.get(id);
      }
      override async list(filter?: TaskFilter) {
        if (down) throw new TaskStoreUnavailableError('the disk holding the task store is gone');
        return super.list(filter);
      }
    }
    const manager = createManager({ store: new FlakyStore() });
    const fails = manager.task(async function fails() {
      throw new Error('no');
    });
    const { api } = await startAdmin({}, manager);
    const id = manager.add(fails);
    await manager.drain();
    down = true;
    for (const response of [
      await api(''),
      await api('/metrics'),
      await api(`/${id}/retry`, { method: 'POST' }),
      await api('/retry-failed', { method: 'POST' }),
    ]) {
      expect(response.headers.get('retry-after')).toBe('5');
      expect(await expectJson(response, 503)).toEqual({ error: 'the disk holding the task store is gone' });
    }
    down = false;
    await expectJson(await api(`/${id}/retry`, { method: 'POST' }), 202);
  });
});

describe('admin: exact credentials and origins', () => {
  const basic = (pair: string): string => Buffer.from(pair).toString('base64');

  it('Basic: the right credentials followed by anything are refused; the scheme is case-insensitive', async () => {
    const { api } = await startAdmin({ auth: { users: { alice: 'alice-pw' } } });
    const right = basic('alice:alice-pw');
    const refused = [
      `Basic ${right}junk`,
      `Basic ${right} junk`,
      `Basic ${right}==`,
      `Basic ${right}!!`,
      `Basic ${right}\tx`,
      `Basic ${basic('alice:alice-pw\0')}`,
      `Basic ${right.replace(/=+$/, '')}Zm9v`,
      `Basic ${basic('alice:alice-pw').replace('+', '-')}x`,
      `Basic ${Buffer.from([0x61, 0x3a, 0xff]).toString('base64')}`,
    ];
    for (const authorization of refused)
      expect((await api('/metrics', { headers: { authorization } })).status, authorization).toBe(401);
    for (const authorization of [
      `Basic ${right}`,
      `basic ${right}`,
      `BASIC  ${right}`,
      `Basic ${right.replace(/=+$/, '')}`,
    ]) {
      await expectJson(await api('/metrics', { headers: { authorization } }), 200);
    }
  });

  it('a POST from the same host over another scheme is cross-site; behind a proxy the forwarded scheme counts', async () => {
    const { api, base, app } = await startAdmin();
    const host = new URL(base).host;
    const post = (headers: Record<string, string>) => api('/retry-failed', { method: 'POST', headers });
    const crossSite: Record<string, string>[] = [
      { origin: `https://${host}` },
      { origin: `http://${host.replace(/:\d+$/, '')}` },
      { referer: `https://${host}/tasks/dashboard` },
      { referer: 'http://evil.example/' },
      { origin: 'http://evil.example', referer: `http://${host}/tasks/dashboard` },
    ];
    for (const headers of crossSite) {
      expect((await expectJson(await post(headers), 403)).error).toMatch(/cross-site request refused/);
    }
    await expectJson(await post({ origin: `http://${host}` }), 200);
    await expectJson(await post({ origin: `HTTP://${host.toUpperCase()}` }), 200);
    await expectJson(await post({ referer: `http://${host}/tasks/dashboard` }), 200);

    // Koa behind a TLS-terminating proxy: the request's own origin is https.
    app.proxy = true;
    await expectJson(await post({ origin: `https://${host}`, 'x-forwarded-proto': 'https' }), 200);
    expect((await post({ origin: `http://${host}`, 'x-forwarded-proto': 'https' })).status).toBe(403);
    await expectJson(
      await post({
        origin: 'https://admin.example',
        'x-forwarded-proto': 'https',
        'x-forwarded-host': 'admin.example',
      }),
      200,
    );
    expect(
      (await post({ origin: `https://${host}`, 'x-forwarded-proto': 'https', 'x-forwarded-host': 'admin.example' }))
        .status,
    ).toBe(403);
  });

  it('Bearer: the token followed by anything is refused; the scheme is case-insensitive', async () => {
    const { api } = await startAdmin();
    for (const authorization of [`Bearer ${TOKEN} junk`, `Bearer ${TOKEN}junk`, `Bearer ${TOKEN},x`])
      expect((await api('', { headers: { authorization } })).status).toBe(401);
    await expectJson(await api('', { headers: { authorization: `bearer ${TOKEN}` } }), 200);
  });
});
