// Repeating tasks: two instances share one SQLite file, and each tick runs once, on one of them.
import { TaskManager, getTaskContext } from 'koa-taskflow';
import { SqliteStore } from 'koa-taskflow/sqlite';

const path = process.env.TASKS_DB ?? 'tasks.db';
const instances = [];
for (const instance of ['a', 'b']) {
  const manager = new TaskManager({ store: new SqliteStore({ path }) });
  const heartbeat = manager.task(function heartbeat() {
    console.log(`tick ${getTaskContext().tickAt.toISOString()} ran on ${instance}`);
  });
  const nightlyReport = manager.task(function nightlyReport() {}); // yours: build and mail the report
  await manager.start();
  manager.repeat(heartbeat, { every: 200 }); // on each multiple of 200 ms
  manager.repeat(nightlyReport, { cron: '0 3 * * *', tz: 'Europe/Paris' }, { retries: 2 });
  instances.push(manager);
}
// Repeat timers do not keep the process alive: this one does, for a second.
setTimeout(() => Promise.all(instances.map((manager) => manager.shutdown())), 1_000);
