// Per-tenant limits: at most 2 imports of a tenant run at once, and at most 10 start per second per tenant.
// One tenant's burst waits in its own queue, holding no slot; another tenant's import starts at once.
import { TaskManager } from 'koa-taskflow';

const manager = new TaskManager({ concurrency: 8 });
const running = {};
const most = {};

const importFile = manager.task(
  async function importFile(tenant, file) {
    running[tenant] = (running[tenant] ?? 0) + 1;
    most[tenant] = Math.max(most[tenant] ?? 0, running[tenant]);
    console.log(`${tenant} ${file} started`);
    await new Promise((resolve) => setTimeout(resolve, 20));
    running[tenant]--;
  },
  { limit: { by: 'tenant', concurrency: 2, rate: { max: 10, intervalMs: 1_000 } } },
);

await manager.start();
for (let file = 1; file <= 6; file++) manager.with({ tags: { tenant: 'acme' } }).add(importFile, 'acme', file);
manager.with({ tags: { tenant: 'globex' } }).add(importFile, 'globex', 1);
await manager.drain();
console.log(`most running at once: ${JSON.stringify(most)}`);
await manager.shutdown();
