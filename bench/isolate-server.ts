// A server of the isolate benchmark: `node bench/isolate-server.ts <bare|thread|in-process|by-hand>`. Prints
// `ready <port>`. `thread` and `in-process` add one 50 ms CPU task per request (after the response), run with
// `isolate: 'thread'` or on the event loop; `by-hand` sends the same work to one worker thread written by hand
// (no library: the floor of what a thread beside the event loop costs on this machine); `bare` is Koa alone.
// `GET /__stats` answers once every task has run (see lib.ts), with `ran` and the main thread's CPU time.
import Koa from 'koa';
import { TaskManager } from 'koa-taskflow';
import { ByHandWorker, render } from './cpu-task.ts';
import { serveBenchApp } from './lib.ts';

export const TASK_MS = 50;
/**
 * `GET /?warm` adds a task of 0 ms: the warm-up runs the same request, dispatch and answer code as a burst,
 * thousands of times in a few seconds, without 50 ms of CPU per request.
 */
const taskMs = (query: string): number => (query === 'warm' ? 0 : TASK_MS);

const variant = process.argv[2];
if (!['bare', 'thread', 'in-process', 'by-hand'].includes(variant)) throw new Error(`unknown variant ${variant}`);
const app = new Koa();
app.silent = true;
let ran = 0;
const manager = new TaskManager({ maxQueued: Infinity });
const task = manager.task(render, {
  isolate: variant === 'thread' ? 'thread' : 'none',
  module: new URL('./cpu-task.ts', import.meta.url),
  onError: (error) => console.error(error),
});
manager.subscribe({
  onLifecycle: (event) => {
    if (event.status === 'success') ran++;
  },
});
let drain = () => manager.drain();
if (variant === 'by-hand') {
  const worker = new ByHandWorker(() => ran++);
  drain = () => worker.idle();
  app.use((ctx) => {
    const ms = taskMs(ctx.querystring);
    ctx.res.once('finish', () => {
      worker.post(ms);
    });
    ctx.body = 'ok';
  });
} else {
  if (variant !== 'bare') app.use(manager.middleware());
  app.use((ctx) => {
    if (variant !== 'bare') ctx.tasks.addTask(task, taskMs(ctx.querystring));
    ctx.body = 'ok';
  });
}
await manager.start();
serveBenchApp(
  app,
  () => drain(),
  () => {
    // The main thread's CPU alone (process.cpuUsage() also counts the task threads'): what serving costs it.
    const { user, system } = process.threadCpuUsage();
    return { ran, mainCpuMicros: user + system };
  },
);
