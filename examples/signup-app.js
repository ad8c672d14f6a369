// The quick-start app: a signup endpoint that answers at once and does its slow work after the response.
import Koa from 'koa';
import { TaskManager, getTaskContext, taskLog } from 'koa-taskflow';

/** Build the app. `fail` decides which card charges fail (so the demo shows retries). */
export function createSignupApp({ logger, observers = [], fail = (attempt) => attempt === 1, adminAuth } = {}) {
  const manager = new TaskManager({ logger, observers, concurrency: 4 });

  const sendWelcome = manager.task(async function sendWelcome(email) {
    taskLog('rendering welcome mail', { email });
    await sleep(5 + Math.random() * 10, getTaskContext().signal);
    taskLog('welcome mail sent', { email, provider: 'smtp' });
  });

  const chargeCard = manager.task(
    async function chargeCard(email, cents) {
      const { attempt } = getTaskContext();
      taskLog('charging card', { email, cents, attempt });
      await sleep(3, getTaskContext().signal);
      if (fail(attempt)) throw new Error('card processor timed out');
      taskLog('card charged', { email, cents });
    },
    { retries: 2, delay: 20, backoff: 2 },
  );

  const buildReport = manager.task(
    async function buildReport(email) {
      taskLog('building usage report', { email, level: 'debug' });
      await sleep(8, getTaskContext().signal);
    },
    { priority: 2, timeout: 1_000 },
  );

  const app = new Koa();
  // The admin API and dashboard under /tasks, when credentials are given.
  const admin = adminAuth
    ? manager.admin({ auth: adminAuth, traceUrl: 'http://localhost:16686/trace/{traceId}' })
    : undefined;
  if (admin) app.use(admin);
  app.use(manager.middleware());
  app.use(async (ctx) => {
    if (ctx.path !== '/signup') ctx.throw(404);
    const email = String(ctx.query.email ?? '');
    if (!email.includes('@')) ctx.throw(400, 'email is required');
    const tenant = String(ctx.query.tenant ?? 'acme');
    const tasks = ctx.tasks.with({ tags: { tenant } });
    const ids = [
      tasks.addTask(sendWelcome, email),
      tasks.addTask(chargeCard, email, 1_900),
      tasks.addTask(buildReport, email),
    ];
    ctx.status = 202;
    ctx.body = { ok: true, tasks: ids };
  });
  return { app, manager, admin };
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(signal.reason);
    });
  });
}
