import type { TaskManager } from 'koa-taskflow';
import { deferred } from './server.js';

/**
 * Run a task named `endless` that never ends on its own, then shut the manager down without waiting:
 * its attempt ends interrupted (TaskInterruptedError).
 */
export async function interruptEndlessTask(manager: TaskManager): Promise<void> {
  const running = deferred();
  manager.add(async function endless() {
    running.resolve();
    await new Promise(() => {});
  });
  await running.promise;
  await manager.shutdown({ timeoutMs: 0 });
}
