// Tasks outside requests (a startup job, a periodic job) and a graceful shutdown on SIGTERM/SIGINT:
// running tasks get `SHUTDOWN_TIMEOUT_MS` to finish, then are aborted through their AbortSignal; a
// `shield`ed task (the ledger flush) is always waited for.
import { TaskManager, getTaskContext, taskLog } from 'koa-taskflow';

const manager = new TaskManager({ shutdownTimeoutMs: Number(process.env.SHUTDOWN_TIMEOUT_MS ?? 200) });
const print = (text) => console.log(text);

const warmCache = manager.task(async function warmCache() {
  await new Promise((resolve) => setTimeout(resolve, 10));
  print('warmCache done');
});

let page = 0;
const crawl = manager.task(async function crawl() {
  const { signal } = getTaskContext(); // and tickAt: the tick this run is for
  print(`crawl ${++page} started`);
  // A long job that honours its signal: shutdown aborts it after the timeout.
  await new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, 60_000);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(signal.reason);
    });
  });
});

const flushLedger = manager.task(
  async function flushLedger() {
    print('flushLedger started');
    await new Promise((resolve) => setTimeout(resolve, 400)); // longer than the shutdown timeout
    taskLog('ledger flushed');
    print('flushLedger finished');
  },
  { shield: true },
);

await manager.start();
manager.add(warmCache); // a startup job
// A periodic job: one run per tick, and with a shared durable store once per tick across all instances.
manager.repeat(crawl, { every: 50 }, { tags: { source: 'repeat' } });
manager.add(flushLedger);
print('ready');

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.once(signal, async () => {
    print(`${signal}: shutting down`);
    await manager.shutdown(); // stops the repeat too
    const counts = (await manager.metrics()).byStatus;
    print(`stopped: ${JSON.stringify(counts)}`);
  });
}
