// Cancelling: a running task's signal aborts with TaskCancelledError; the task ends `cancelled`, not retried.
import { TaskManager, getTaskContext } from 'koa-taskflow';

const manager = new TaskManager();
const exportReport = manager.task(
  async function exportReport() {
    const { signal } = getTaskContext();
    // A long step that honours the signal (fetch, stream.pipeline, timers/promises all take one).
    await new Promise((resolve, reject) => {
      signal.addEventListener('abort', () => {
        console.log(`cancelled: ${signal.reason.name}`);
        reject(signal.reason);
      });
    });
  },
  { retries: 3 },
);
await manager.start();
const id = manager.add(exportReport);
setTimeout(async () => {
  await manager.cancel(id, { reason: 'user clicked stop' }); // true: it was running
  console.log(`status: ${(await manager.get(id)).status}`);
  console.log(`again: ${await manager.cancel(id)}`); // false: it has ended
  await manager.shutdown();
}, 50);
