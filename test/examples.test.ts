import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { runShownExample, startNode } from './helpers/child.js';
import { onCleanup } from './helpers/server.js';

const run = promisify(execFile);

describe('examples/quickstart.js', () => {
  it('is exactly the quick start shown in the README', () => {
    const readme = readFileSync('README.md', 'utf8');
    const example = readFileSync('examples/quickstart.js', 'utf8');
    expect(readme).toContain('```js\n' + example + '```');
  });

  it('answers with a task id, runs the task after the response, and shuts down on SIGTERM', async () => {
    const app = startNode('examples/quickstart.js', [], { PORT: '0' });
    const url = (await app.waitForLine(/^listening on /)).replace('listening on ', '');
    const response = await fetch(url);
    const { taskId } = (await response.json()) as { taskId: string };
    expect(taskId).toMatch(/^[0-9a-f-]{36}$/);
    const log = JSON.parse(await app.waitForLine(/"msg":"sending welcome mail"/)) as Record<string, unknown>;
    expect(log).toMatchObject({
      email: 'a@b.c',
      task: { id: taskId, name: 'sendWelcome', attempt: 1 },
      tags: { tenant: 'acme' },
    });
    app.process.kill('SIGTERM');
    expect(await app.exited).toBe(0);
  });
});

describe('examples/request-context.js', () => {
  it("is shown in docs/api.md, and each order's task sees its own request id, the four that waited for a slot too", async () => {
    const lines = await runShownExample('docs/api.md', 'examples/request-context.js');
    expect(lines.sort()).toEqual([1, 2, 3, 4, 5, 6].map((n) => `order ${n}: request req-${n}`));
  });
});

describe('examples/failure-alerts.js', () => {
  it('posts one Slack-style alert for the paying tenant only, and the debugging observer sees only warnings', async () => {
    const posts: { text: string; taskId: string }[] = [];
    const hook = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        posts.push(JSON.parse(body) as { text: string; taskId: string });
        res.end('ok');
      });
    });
    await new Promise<void>((resolve) => hook.listen(0, '127.0.0.1', resolve));
    onCleanup(() => new Promise<void>((resolve) => hook.close(() => resolve())));
    const { port } = hook.address() as AddressInfo;
    const app = startNode('examples/failure-alerts.js', [], { ALERT_WEBHOOK_URL: `http://127.0.0.1:${port}/hook` });
    expect(await app.exited).toBe(0);
    expect(posts).toHaveLength(1);
    expect(posts[0].text).toMatch(
      /task \*syncInvoices\* failed after 2 attempt\(s\) for tenant acme: Error: billing API answered 503 for acct-1/,
    );
    const warnings = app.lines.find((l) => l.startsWith('warnings seen'))!;
    expect(JSON.parse(warnings.replace(/^[^[]*/, ''))).toEqual(Array(4).fill('warn: rate limited, backing off'));
  });
});

describe('examples/tenant-logs.js', () => {
  it("pino lines filter by tenant with the README's jq one-liner", async () => {
    const { stdout } = await run('bash', [
      '-c',
      `"${process.execPath}" examples/tenant-logs.js | jq -c 'select(.tags.tenant == "acme")'`,
    ]);
    const lines = stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { msg: string; tags: { tenant: string }; file?: string });
    expect(lines.length).toBeGreaterThanOrEqual(4);
    expect(new Set(lines.map((l) => l.tags.tenant))).toEqual(new Set(['acme']));
    expect(lines.filter((l) => l.msg === 'import finished').map((l) => l.file)).toEqual([
      'acme-contacts.csv',
      'acme-contacts.csv',
    ]);
    expect(readFileSync('examples/README.md', 'utf8')).toContain(
      `node examples/tenant-logs.js | jq -c 'select(.tags.tenant == "acme")'`,
    );
  });
});

describe('examples/outside-requests.js', () => {
  it('runs startup and periodic jobs; SIGTERM aborts the long job after the timeout and waits for the shielded one', async () => {
    const app = startNode('examples/outside-requests.js', [], { SHUTDOWN_TIMEOUT_MS: '100' });
    await app.waitForLine(/^crawl 1 started$/);
    app.process.kill('SIGTERM');
    expect(await app.exited).toBe(0);
    const out = app.lines;
    expect(out).toContain('warmCache done');
    expect(out.indexOf('flushLedger finished')).toBeGreaterThan(out.indexOf('SIGTERM: shutting down'));
    const counts = JSON.parse(out.find((l) => l.startsWith('stopped: '))!.slice('stopped: '.length)) as Record<
      string,
      number
    >;
    expect(counts.interrupted).toBeGreaterThanOrEqual(1);
    expect(counts.success).toBe(2);
    expect(counts.running + counts.pending).toBe(0);
  });
});
