import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { startNode } from './helpers/child.js';

const run = promisify(execFile);

describe('npm run demo', () => {
  it('serves, sends its own burst and prints each request with its linked task attempts and log events', async () => {
    const { stdout } = await run(process.execPath, ['examples/demo.js', '--once'], {
      env: { ...process.env, NO_COLOR: '1', DEMO_REQUESTS: '3', OTEL_EXPORTER_OTLP_ENDPOINT: '' },
      timeout: 30_000,
    });
    expect(stdout).toMatch(/koa-taskflow demo on http:\/\/127\.0\.0\.1:\d+/);
    const requests = stdout.match(/^▶ POST \/signup {2}202 {2}[\d.]+ ms {2}trace [0-9a-f]{32}/gm) ?? [];
    expect(requests).toHaveLength(3);
    // The first attempt of chargeCard fails, the second is linked to it and succeeds.
    expect(stdout).toMatch(/├─ ✘ task chargeCard +attempt 1\/3 .*Error: card processor timed out/);
    expect(stdout).toMatch(/├─ ✔ task chargeCard +attempt 2\/3 .*linked to previous attempt/);
    expect(stdout).toMatch(/└─ ✔ task buildReport +attempt 1\/1/);
    expect(stdout).toMatch(/info welcome mail sent email=user\d@example\.com provider=smtp/);
    expect(stdout).toMatch(/tasks: success 9/);
    const pinoLine = JSON.parse(stdout.trim().split('\n').at(-1)!) as Record<string, unknown>;
    expect(pinoLine).toMatchObject({ msg: 'welcome mail sent', trace_flags: '01', task: { name: 'sendWelcome', attempt: 1 } });
    expect(pinoLine.trace_id).toMatch(/^[0-9a-f]{32}$/);
  });
});

describe('npm run demo (interactive)', () => {
  it('keeps serving with the dashboard behind the printed credentials, and Ctrl-C shuts it down gracefully', async () => {
    const demo = startNode('examples/demo.js', [], { NO_COLOR: '1', DEMO_REQUESTS: '2', OTEL_EXPORTER_OTLP_ENDPOINT: '' });
    const line = await demo.waitForLine(/^dashboard: /);
    const [, url, password] = /^dashboard: (\S+) {2}\(user admin, password (\S+)\)$/.exec(line)!;
    await demo.waitForLine(/^serving on /, 20_000);
    expect((await fetch(url)).status).toBe(401);
    const page = await fetch(url, { headers: { authorization: `Basic ${Buffer.from(`admin:${password}`).toString('base64')}` } });
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('<html');
    demo.process.kill('SIGINT');
    expect(await demo.exited).toBe(0);
    expect(demo.lines.some((l) => l.includes('shutting down'))).toBe(true);
  });
});
