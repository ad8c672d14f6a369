// One app, two roles: `node examples/bullmq.js web` only enqueues; `node examples/bullmq.js worker` runs the
// tasks (start as many as you like, on any host). REDIS_URL (default redis://127.0.0.1:6379), PORT (3000).
import Koa from 'koa';
import pino from 'pino';
import { TaskManager, taskLog, getTaskContext } from 'koa-taskflow';
import { bullmqEngine } from 'koa-taskflow/bullmq';

const role = process.argv[2] ?? 'web';
const redis = new URL(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
const logger = pino();
const manager = new TaskManager({
  logger,
  engine: bullmqEngine({
    connection: { host: redis.hostname, port: Number(redis.port || 6379), maxRetriesPerRequest: null },
    queue: 'tasks',
    work: role === 'worker',
  }),
});

// The same task, registered in both roles: the worker finds it by name.
const sendWelcome = manager.task(
  async function sendWelcome(email) {
    const { attempt, signal } = getTaskContext();
    taskLog('sending welcome mail', { email, attempt });
    signal.throwIfAborted();
  },
  { retries: 3, delay: 500, backoff: 2, jitter: true, timeout: 10_000 },
);

await manager.start();
if (role === 'web') {
  const app = new Koa();
  app.use(manager.middleware());
  app.use(async (ctx) => {
    ctx.body = { taskId: ctx.tasks.with({ tags: { tenant: 'acme' } }).addTask(sendWelcome, 'a@b.c') };
  });
  const server = app.listen(Number(process.env.PORT ?? 3000), () =>
    logger.info({ port: server.address().port }, 'listening'),
  );
  process.once('SIGTERM', () => server.close(() => void manager.shutdown()));
} else {
  logger.info('working');
  process.once('SIGTERM', () => void manager.shutdown());
}
