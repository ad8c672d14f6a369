// Task logs as pino NDJSON on stdout, for several tenants. Every line carries `tags`, so plain output can
// be filtered with jq:
//
//   node examples/tenant-logs.js | jq -c 'select(.tags.tenant == "acme")'
//
// and the same lines shipped to Loki (see README) with LogQL `{service_name="koa-taskflow-app"} | json | tags_tenant="acme"`.
import pino from 'pino';
import { TaskManager, taskLog } from 'koa-taskflow';

const manager = new TaskManager({ logger: pino({ level: 'info' }) });

const importContacts = manager.task(async function importContacts(file) {
  taskLog('import started', { file });
  await new Promise((resolve) => setTimeout(resolve, 5));
  taskLog('import finished', { file, rows: file.length * 10 });
});

for (const tenant of ['acme', 'globex', 'acme', 'initech']) {
  manager.with({ tags: { tenant } }).add(importContacts, `${tenant}-contacts.csv`);
}
await manager.drain();
await manager.shutdown();
