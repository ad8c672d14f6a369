// Per-tenant limits: at most 2 imports of a tenant run at once, and at most 4 start in any 200 ms per tenant.
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
  { limit: { by: 'tenant', concurrency: 2, rate: { max: 4, intervalMs: 200 } } },
);

await manager.start();
for (let file = 1; file <= 6; file++) manager.with({ tags: { tenant: 'acme' } }).add(importFile, 'acme', file);
manager.with({ tags: { tenant: 'globex' } }).add(importFile, 'globex', 1);
// drain() waits for the imports held back by the rate too.
await manager.drain();
console.log(`most running at once: ${JSON.stringify(most)}`);
await manager.shutdown();
