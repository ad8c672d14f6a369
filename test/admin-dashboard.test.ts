import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { BasicTracerProvider } from '@opentelemetry/sdk-trace-base';
import { chromium, type Browser } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import { getTaskContext, MemoryStore, REDACTED, taskLog, taskProgress, type TaskRecord } from 'koa-taskflow';
import { expectJson, startAdmin } from './helpers/admin.js';
import { interruptEndlessTask } from './helpers/interrupt.js';
import { createManager, deferred, onCleanup, waitFor } from './helpers/server.js';

// Debian's chromium (CI installs it: .ci/run SYSTEM_PACKAGES); the machine is offline, so nothing may
// phone home.
const CHROMIUM = '/usr/bin/chromium';
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const USER = { username: 'ops', password: 'dashboard-pw' };
// `DASHBOARD_SCREENSHOT=1 npx vitest run test/admin-dashboard.test.ts` refreshes the README's picture.
const SCREENSHOT = process.env.DASHBOARD_SCREENSHOT
  ? fileURLToPath(new URL('../docs/dashboard.png', import.meta.url))
  : undefined;

async function launch(): Promise<Browser> {
  if (!existsSync(CHROMIUM))
    throw new Error(`${CHROMIUM} is missing: apt-get install chromium (bash .ci/run installs it)`);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
  onCleanup(() => browser.close());
  return browser;
}

describe('admin: the dashboard in a real Chromium', () => {
  it('loads without console errors, shows tasks added later live, filters by tag, shows a redacted detail with its trace link, retries', async () => {
    const manager = createManager({ tracerProvider: new BasicTracerProvider(), redact: ['card.number'] });
    let declines = true;
    const sendWelcome = manager.task(async function sendWelcome(email: string) {
      taskLog('rendering template', { template: 'welcome-v2' });
      taskLog('mail queued', { email, provider: 'smtp' });
    });
    const chargeCard = manager.task(async function chargeCard(order: {
      amount: number;
      card: { number: string; expiry: string };
    }) {
      taskLog('charging card', { amount: order.amount, card: order.card });
      if (declines) throw new Error('card declined by issuer (code 51)');
      taskLog('charged', { amount: order.amount });
    });
    const hold = deferred();
    const halfway = deferred();
    const resizeImage = manager.task(async function resizeImage(_key: string) {
      taskLog('resizing', { attempt: getTaskContext()!.attempt });
      taskProgress(0.25);
      await halfway.promise;
      taskProgress(0.5);
      await hold.promise;
    });
    const syncCrm = manager.task(
      async function syncCrm(_account: string) {
        throw new Error('CRM unavailable (503)');
      },
      { retries: 2, delay: 60_000 },
    );
    onCleanup(() => hold.resolve());
    onCleanup(() => halfway.resolve());

    const { base, url, api } = await startAdmin(
      { auth: { users: { [USER.username]: USER.password } }, traceUrl: 'http://localhost:16686/trace/{traceId}' },
      manager,
    );
    const asUser = { authorization: `Basic ${Buffer.from(`${USER.username}:${USER.password}`).toString('base64')}` };
    const acme = manager.with({ tags: { tenant: 'acme' } });
    const globex = manager.with({ tags: { tenant: 'globex', plan: 'pro' } });
    acme.add(sendWelcome, 'ana@acme.test');
    globex.add(sendWelcome, 'bo@globex.test');
    const failedId = acme.add(chargeCard, { amount: 4200, card: { number: '4111111111111111', expiry: '12/29' } });
    globex.add(sendWelcome, 'cy@globex.test');
    acme.add(syncCrm, 'acct-17');
    globex.add(resizeImage, 'avatars/bo.png');
    // Not drain(): resizeImage is held and syncCrm waits a minute for its retry.
    await waitFor(
      async () => {
        const metrics = await manager.metrics();
        return (
          metrics.byStatus.success === 3 &&
          metrics.byStatus.failed === 1 &&
          metrics.byStatus.running === 1 &&
          (await manager.list({ name: 'syncCrm' }))[0]?.attempts === 1
        );
      },
      5_000,
      'the seeded tasks to settle',
    );
    const seeded = (await expectJson<{ tasks: TaskRecord[] }>(await api('', { headers: asUser }), 200)).tasks;
    expect(seeded).toHaveLength(6);

    const browser = await launch();
    // Without credentials the page is not served (headless Chromium answers the Basic challenge with nothing).
    const anonymous = await browser.newPage();
    await expect(anonymous.goto(`${base}/dashboard`)).rejects.toThrow(/ERR_INVALID_AUTH_CREDENTIALS/);
    await anonymous.close();

    const context = await browser.newContext({ httpCredentials: USER, viewport: { width: 1360, height: 860 } });
    const page = await context.newPage();
    const problems: string[] = [];
    page.on('console', (message) => {
      if (message.type() === 'error' || message.type() === 'warning')
        problems.push(`${message.type()}: ${message.text()}`);
    });
    page.on('pageerror', (error) => problems.push(`pageerror: ${error.message}`));
    const response = await page.goto(`${base}/dashboard`);
    expect(response?.status()).toBe(200);
    await page.waitForSelector('#conn.live');
    await page.waitForFunction(
      (n) => document.querySelectorAll('#tasks tbody tr[data-id]').length === n,
      seeded.length,
    );
    expect(await page.textContent('#count-failed')).toBe('1');
    expect(await page.textContent('#count-running')).toBe('1');
    // The running task's progress: a bar in its row, moved by the event stream.
    expect(await page.getAttribute('#tasks tr[data-status="running"] progress.bar', 'value')).toBe('0.25');
    halfway.resolve();
    await page.waitForFunction(
      () => document.querySelector<HTMLProgressElement>('#tasks tr[data-status="running"] progress.bar')?.value === 0.5,
    );

    // Live: a task added after the page opened appears, and reaches success, without a reload.
    const lateId = manager.with({ tags: { tenant: 'initech' } }).add(sendWelcome, 'late@initech.test');
    await page.waitForSelector(`#tasks tr[data-id="${lateId}"][data-status="success"]`);
    await page.waitForFunction(() => document.querySelector('#count-success')?.textContent === '4');

    // Filter by tag: only globex rows remain.
    await page.fill('#f-tag', 'tenant=globex');
    const globexIds = seeded.filter((t) => t.tags.tenant === 'globex').map((t) => t.id);
    await page.waitForFunction((ids) => {
      const rows = Array.from(document.querySelectorAll<HTMLElement>('#tasks tbody tr[data-id]'), (r) => r.dataset.id);
      return rows.length === ids.length && ids.every((id) => rows.includes(id));
    }, globexIds);
    expect(await page.locator(`#tasks tr[data-id="${lateId}"]`).count()).toBe(0);
    await page.fill('#f-tag', '');
    await page.waitForSelector(`#tasks tr[data-id="${failedId}"]`);

    // Detail of the failed task: error, logs, redacted args, link to its trace.
    await page.click(`#tasks tr[data-id="${failedId}"]`);
    await page.waitForSelector(`#detail[data-id="${failedId}"]`);
    const detail = (await page.textContent('#detail')) ?? '';
    expect(detail).toContain('card declined by issuer (code 51)');
    expect(detail).toContain('charging card');
    expect(detail).toContain(REDACTED);
    expect(detail).toContain('12/29');
    expect(detail).not.toContain('4111111111111111');
    const failed = await expectJson<TaskRecord>(await api(`/${failedId}`, { headers: asUser }), 200);
    expect(failed.traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(await page.getAttribute('#detail a[target="_blank"]', 'href')).toBe(
      `http://localhost:16686/trace/${failed.traceId}`,
    );
    if (SCREENSHOT) await page.screenshot({ path: SCREENSHOT, fullPage: true });

    // Retry from the page: a new task, which now succeeds, is selected.
    declines = false;
    await page.click('#retry');
    await page.waitForFunction((id) => {
      const shown = document.querySelector<HTMLElement>('#detail')?.dataset.id;
      return shown !== undefined && shown !== id && document.querySelector('#detail .badge')?.textContent === 'success';
    }, failedId);
    const retryId = await page.getAttribute('#detail', 'data-id');
    expect(await expectJson<TaskRecord>(await api(`/${retryId}`, { headers: asUser }), 200)).toMatchObject({
      status: 'success',
      retryOf: failedId,
    });

    expect(problems).toEqual([]);
    expect(new URL(page.url()).origin).toBe(url);
  });

  it('lists a delayed task as pending with the time it is due, in its row and its detail', async () => {
    const manager = createManager();
    const dueAt = Date.UTC(2031, 0, 2, 3, 4, 5);
    const id = manager.with({ runAt: new Date(dueAt) }).add(function sendReminder() {});
    const { base } = await startAdmin({ auth: { users: { [USER.username]: USER.password } } }, manager);
    const browser = await launch();
    const page = await (await browser.newContext({ httpCredentials: USER })).newPage();
    await page.goto(`${base}/dashboard`);
    await page.waitForSelector(`#tasks tr[data-id="${id}"][data-status="pending"] .due`);
    const iso = new Date(dueAt).toISOString();
    expect(await page.getAttribute(`#tasks tr[data-id="${id}"] .due`, 'title')).toBe(iso);
    expect(await page.textContent(`#tasks tr[data-id="${id}"] .due`)).toMatch(/^ due \S/);
    await page.click(`#tasks tr[data-id="${id}"]`);
    await page.waitForSelector(`#detail[data-id="${id}"]`);
    expect(await page.textContent('#detail')).toContain(`due${iso}`);
  });

  it('the Cancel button of a running task aborts its signal and the row turns cancelled; a finished task has no Cancel button', async () => {
    const manager = createManager();
    let aborted: unknown;
    const exportReport = manager.task(async function exportReport() {
      const { signal } = getTaskContext()!;
      aborted = await new Promise((resolve) => signal.addEventListener('abort', () => resolve(signal.reason)));
    });
    const done = manager.add(function quick() {});
    const id = manager.add(exportReport);
    const { base } = await startAdmin({ auth: { users: { [USER.username]: USER.password } } }, manager);
    const browser = await launch();
    const page = await (await browser.newContext({ httpCredentials: USER })).newPage();
    const problems: string[] = [];
    page.on('pageerror', (error) => problems.push(`pageerror: ${error.message}`));
    await page.goto(`${base}/dashboard`);
    await page.waitForSelector('#conn.live');
    await page.click(`#tasks tr[data-id="${done}"][data-status="success"]`);
    await page.waitForSelector(`#detail[data-id="${done}"]`);
    expect(await page.locator('#cancel').count()).toBe(0);
    await page.click(`#tasks tr[data-id="${id}"][data-status="running"]`);
    await page.waitForSelector(`#detail[data-id="${id}"] #cancel`);
    await page.click('#cancel');
    await page.waitForSelector(`#tasks tr[data-id="${id}"][data-status="cancelled"]`);
    expect((aborted as Error).name).toBe('TaskCancelledError');
    expect(await manager.get(id)).toMatchObject({ status: 'cancelled', attempts: 1 });
    await page.waitForFunction(() => document.querySelector('#detail .badge')?.textContent === 'cancelled');
    expect(await page.locator('#cancel').count()).toBe(0);
    expect(problems).toEqual([]);
  });

  it('the Failed view lists the dead letters past many successes with their error, retries one per row, and the rest of the failed ones with "Retry all failed"', async () => {
    const store = new MemoryStore({ maxRecords: 12 });
    // An interrupted task (its process shut down under it) in the same store, from an earlier manager.
    await interruptEndlessTask(createManager({ store }));
    const manager = createManager({ store });
    manager.task(async function endless() {});
    let down = true;
    const syncCrm = manager.task(async function syncCrm(account: string) {
      if (down) throw new Error(`CRM unavailable for ${account}`);
    });
    const { base, api } = await startAdmin({ auth: { users: { [USER.username]: USER.password } } }, manager);
    const asUser = { authorization: `Basic ${Buffer.from(`${USER.username}:${USER.password}`).toString('base64')}` };
    const failures = ['acct-1', 'acct-2', 'acct-3'].map((account) => manager.add(syncCrm, account));
    await manager.drain();
    down = false;
    for (let n = 0; n < 30; n++) manager.add(syncCrm, `ok-${n}`);
    await manager.drain();
    const [interrupted] = await manager.list({ status: 'interrupted' });
    const deadLetters = [interrupted.id, ...failures];

    const browser = await launch();
    const context = await browser.newContext({ httpCredentials: USER });
    const page = await context.newPage();
    const problems: string[] = [];
    page.on('console', (message) => {
      if (message.type() === 'error' || message.type() === 'warning')
        problems.push(`${message.type()}: ${message.text()}`);
    });
    page.on('pageerror', (error) => problems.push(`pageerror: ${error.message}`));
    await page.goto(`${base}/dashboard`);
    await page.waitForSelector('#conn.live');
    await page.waitForFunction(() => document.querySelector('#failed-count')?.textContent === '4');
    await page.click('#view-failed');
    const shown = () =>
      page.$$eval('#failed tbody tr[data-id]', (rows) =>
        rows.map((r) => [(r as HTMLElement).dataset.id, (r as HTMLElement).dataset.status]),
      );
    await page.waitForFunction(() => document.querySelectorAll('#failed tbody tr[data-id]').length === 4);
    expect(await shown()).toEqual([...failures.map((id) => [id, 'failed']).reverse(), [interrupted.id, 'interrupted']]);
    expect(await page.isVisible('#tasks')).toBe(false);
    expect(await page.textContent(`#failed tr[data-id="${failures[1]}"] td.error`)).toBe(
      'Error: CRM unavailable for acct-2',
    );
    expect(new URL(page.url()).hash).toBe('#failed');

    // Retry one from its row: a new task runs, the dead letter stays listed and says by which task it was retried.
    await page.click(`#failed tr[data-id="${failures[0]}"] button.retry-one`);
    await page.waitForSelector(`#failed tr[data-id="${failures[0]}"] td.action a`);
    const retryOf = async (id: string) => (await manager.list()).find((r) => r.retryOf === id);
    await waitFor(async () => (await retryOf(failures[0]))?.status === 'success', 5_000, 'the retry to succeed');
    expect(await page.getAttribute(`#failed tr[data-id="${failures[0]}"] td.action a`, 'title')).toBe(
      (await retryOf(failures[0]))!.id,
    );

    // "Retry all failed": the other two failed ones; the interrupted one (it may have done part of its work) keeps its own button.
    await page.click('#retry-failed');
    for (const id of failures.slice(1)) await page.waitForSelector(`#failed tr[data-id="${id}"] td.action a`);
    expect(await page.locator(`#failed tr[data-id="${interrupted.id}"] button.retry-one`).count()).toBe(1);
    await manager.drain();
    for (const id of failures) expect((await retryOf(id))?.status).toBe('success');
    expect(await retryOf(interrupted.id)).toBeUndefined();
    const listed = await expectJson<{ tasks: TaskRecord[] }>(
      await api('?status=failed,interrupted', { headers: asUser }),
      200,
    );
    expect(listed.tasks.map((t) => t.id).sort()).toEqual([...deadLetters].sort());

    // A page opened on #failed starts in the Failed view.
    const again = await context.newPage();
    await again.goto(`${base}/dashboard#failed`);
    await again.waitForFunction(() => document.querySelectorAll('#failed tbody tr[data-id]').length === 4);
    expect(await again.isVisible('#failed-view')).toBe(true);
    expect(problems).toEqual([]);
  });
});
