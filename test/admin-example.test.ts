import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { REDACTED, type TaskRecord } from 'koa-taskflow';
import { expectJson } from './helpers/admin.js';
import { startNode } from './helpers/child.js';
import { openSse } from './helpers/sse.js';
import { waitFor } from './helpers/server.js';

describe('examples/admin.js', () => {
  it('is exactly the admin snippet of docs/admin.md', () => {
    const doc = readFileSync('docs/admin.md', 'utf8');
    const section = doc.slice(doc.indexOf('<!-- section:admin -->'), doc.indexOf('<!-- /section:admin -->'));
    expect(section).toContain('```js\n' + readFileSync('examples/admin.js', 'utf8') + '```');
  });

  it('serves the admin API with Basic or Bearer, redacts the card number, and exits on SIGTERM with an event stream open', async () => {
    const app = startNode('examples/admin.js', [], {
      PORT: '0',
      ADMIN_PASSWORD: 'example-pw',
      ADMIN_TOKEN: 'example-token',
    });
    const dashboard = (await app.waitForLine(/^dashboard on /)).replace('dashboard on ', '');
    const base = dashboard.replace(/\/dashboard$/, '');
    const { taskId } = await expectJson<{ taskId: string }>(await fetch(new URL('/', base)), 200);
    const basic = { authorization: `Basic ${Buffer.from('ops:example-pw').toString('base64')}` };
    expect((await fetch(`${base}/${taskId}`)).status).toBe(401);
    let record: TaskRecord | undefined;
    await waitFor(
      async () =>
        (record = await expectJson<TaskRecord>(await fetch(`${base}/${taskId}`, { headers: basic }), 200)).status ===
        'success',
    );
    expect(record!.args).toEqual([{ amount: 4200, card: { number: REDACTED, expiry: '12/29' } }]);
    expect(record!.logs[0].fields).toEqual({ amount: 4200, card: { number: REDACTED, expiry: '12/29' } });
    await expectJson(await fetch(`${base}/metrics`, { headers: { authorization: 'Bearer example-token' } }), 200);
    expect((await fetch(dashboard, { headers: basic })).headers.get('content-type')).toBe('text/html; charset=utf-8');

    const stream = await openSse(`${base}/events`, basic);
    expect(stream.response.status).toBe(200);
    app.process.kill('SIGTERM');
    await stream.ended;
    expect(await app.exited).toBe(0);
  });

  it('refuses to start without a password (auth is never open by accident)', async () => {
    const app = startNode('examples/admin.js', [], { PORT: '0', ADMIN_PASSWORD: '' });
    expect(await app.exited).not.toBe(0);
  });
});
