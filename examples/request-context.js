// The app's own AsyncLocalStorage in after-response tasks: each task sees its request's store (here a request
// id, as a request-scoped logger would read it), also when it waited for a slot behind other requests' tasks.
import { AsyncLocalStorage } from 'node:async_hooks';
import { createServer } from 'node:http';
import Koa from 'koa';
import { TaskManager } from 'koa-taskflow';

const requestId = new AsyncLocalStorage();
const manager = new TaskManager({ concurrency: 2 });
const sendReceipt = manager.task(async function sendReceipt(order) {
  await new Promise((resolve) => setTimeout(resolve, 10));
  console.log(`order ${order}: request ${requestId.getStore()}`);
});

const app = new Koa();
app.use(manager.middleware());
app.use((ctx) => {
  ctx.tasks.addTask(sendReceipt, ctx.query.order);
  ctx.status = 202;
});
// The whole request, response included, inside the store: what HTTP instrumentation does with its span.
const handle = app.callback();
const server = createServer((req, res) => requestId.run(req.headers['x-request-id'], handle, req, res));
await manager.start();
server.listen(0, '127.0.0.1');
await new Promise((resolve) => server.once('listening', resolve));
const url = `http://127.0.0.1:${server.address().port}/`;

// Six orders at once: two tasks run, the other four wait for a slot.
await Promise.all(
  [1, 2, 3, 4, 5, 6].map((order) => fetch(`${url}?order=${order}`, { headers: { 'x-request-id': `req-${order}` } })),
);
await manager.drain();
server.close();
await manager.shutdown();
