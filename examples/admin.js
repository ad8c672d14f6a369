import Koa from 'koa';
import { TaskManager, taskLog } from 'koa-taskflow';

const manager = new TaskManager({ redact: ['card.number'] }); // plus password, token, apiKey… by default

const chargeCard = manager.task(
  async function chargeCard(order) {
    taskLog('charging', { amount: order.amount, card: order.card }); // card.number leaves as "[redacted]"
  },
  { retries: 2, delay: 500 },
);

const admin = manager.admin({
  prefix: '/tasks',
  // Browsers use Basic (the dashboard's live stream re-uses it); scripts may send the Bearer token.
  // A missing password throws here, naming the option: the admin API is never open by accident.
  auth: { users: { ops: process.env.ADMIN_PASSWORD }, token: process.env.ADMIN_TOKEN },
  traceUrl: 'http://localhost:16686/trace/{traceId}', // Jaeger; or a Grafana Explore URL
});

const app = new Koa();
app.use(admin);
app.use(manager.middleware());
app.use(async (ctx) => {
  const order = { amount: 4200, card: { number: '4111111111111111', expiry: '12/29' } };
  ctx.body = { taskId: ctx.tasks.with({ tags: { tenant: 'acme' } }).addTask(chargeCard, order) };
});

await manager.start();
const server = app.listen(Number(process.env.PORT ?? 3000), () => {
  console.log(`dashboard on http://localhost:${server.address().port}/tasks/dashboard`);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, async () => {
    admin.close(); // ends open event streams: server.close() would wait for them
    server.close();
    await manager.shutdown();
  });
}
