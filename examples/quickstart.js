import Koa from 'koa';
import pino from 'pino';
import { TaskManager, taskLog, getTaskContext } from 'koa-taskflow';

const manager = new TaskManager({ logger: pino() });

// Stands in for your mail client: slow, honours an AbortSignal.
const mailer = {
  send: (email, { signal }) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(resolve, 50);
      signal.addEventListener('abort', () => reject(signal.reason), { once: true });
      signal.addEventListener('abort', () => clearTimeout(timer), { once: true });
    }),
};

// A registered task: gets retries and defaults; can be retried by id.
const sendWelcome = manager.task(
  async function sendWelcome(email) {
    taskLog('sending welcome mail', { email }); // span event + pino line + LogEvent
    const { signal } = getTaskContext();
    await mailer.send(email, { signal });
  },
  { retries: 3, delay: 200, backoff: 2, timeout: 10_000 },
);

const app = new Koa();
app.use(manager.middleware());
app.use(async (ctx) => {
  const id = ctx.tasks.with({ tags: { tenant: 'acme' } }).addTask(sendWelcome, 'a@b.c');
  ctx.body = { taskId: id }; // the client has its answer before the mail is sent
});

await manager.start();
const server = app.listen(Number(process.env.PORT ?? 3000), () => {
  console.log(`listening on http://localhost:${server.address().port}`);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, async () => {
    server.close();
    await manager.shutdown(); // waits for running tasks, then aborts what is left
  });
}
