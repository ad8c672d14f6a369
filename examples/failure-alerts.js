// A custom observer: a Slack-style alert when a task of a paying tenant finally fails, and a debugging
// observer that only sees one task's warnings. Observers are plain objects; filterObserver narrows them.
//
//   ALERT_WEBHOOK_URL=http://127.0.0.1:9000/hook node examples/failure-alerts.js
import { TaskManager, filterObserver, taskLog } from 'koa-taskflow';

const webhook = process.env.ALERT_WEBHOOK_URL;

/** Posts `{ text }` like a Slack incoming webhook. A slow or failing webhook never affects the tasks. */
const slackAlert = {
  async onLifecycle(event) {
    const text = `:rotating_light: task *${event.name}* failed after ${event.attempt} attempt(s) for tenant ${event.tags.tenant}: ${event.error?.type}: ${event.error?.message} (trace ${event.traceId ?? 'n/a'})`;
    if (!webhook) return void console.log(`[alert] ${text}`);
    await fetch(webhook, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ text, taskId: event.taskId }),
    });
  },
};

const warnings = [];
const manager = new TaskManager({
  observers: [
    // Only final failures of tasks tagged plan=pro reach the alert.
    filterObserver({ tags: { plan: 'pro' }, statuses: ['failed'] }, slackAlert),
    // Only warn-and-above logs of one task name reach this one.
    filterObserver(
      { names: ['syncInvoices'], minLevel: 'warn' },
      { onLog: (e) => void warnings.push(`${e.level}: ${e.message}`) },
    ),
  ],
});

const syncInvoices = manager.task(
  async function syncInvoices(account) {
    taskLog('fetching invoices', { account }); // info: filtered out of `warnings`
    taskLog('rate limited, backing off', { account, level: 'warn' });
    throw new Error(`billing API answered 503 for ${account}`);
  },
  { retries: 1, delay: 10 },
);

manager.with({ tags: { tenant: 'acme', plan: 'pro' } }).add(syncInvoices, 'acct-1'); // alerts
manager.with({ tags: { tenant: 'hobby', plan: 'free' } }).add(syncInvoices, 'acct-2'); // fails quietly
await manager.drain();
await manager.shutdown(); // waits (bounded) for the webhook call to finish
console.log(`warnings seen by the debugging observer: ${JSON.stringify(warnings)}`);
