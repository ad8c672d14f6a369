// The main thread's CPU per isolated task (issue #20): `node bench/isolate-dispatch.ts [tasks] [variant]`. Adds `tasks`
// zero-work tasks in batches of 10 (the bench's clumps), once with `isolate: 'thread'`, once in process, and
// once as a plain postMessage to one worker thread written by hand (the floor: what crossing to a thread costs),
// and prints the main thread's CPU time (process.threadCpuUsage) per task of each. The threads' own CPU is not
// counted: what a dispatch takes from the event loop serving requests is the point.
import { Worker } from 'node:worker_threads';
import { TaskManager } from 'koa-taskflow';
import { render } from './cpu-task.ts';
import { median } from './lib.ts';

const TASKS = Number(process.argv[2] ?? 4000);
const BATCH = 10;
const ROUNDS = 5;

function mainCpuUs(): number {
  const { user, system } = process.threadCpuUsage();
  return user + system;
}

/** Runs `batch` (which adds BATCH tasks and resolves when they have run) until TASKS ran; µs of main-thread CPU per task. */
async function perTask(batch: () => Promise<void>): Promise<number> {
  const before = mainCpuUs();
  for (let done = 0; done < TASKS; done += BATCH) await batch();
  return (mainCpuUs() - before) / TASKS;
}

async function managerBatch(
  isolate: 'thread' | 'none',
): Promise<{ run: () => Promise<void>; stop: () => Promise<void> }> {
  const manager = new TaskManager({ maxQueued: Infinity, concurrency: BATCH, threads: { maxThreads: 1 } });
  const task = manager.task(render, { isolate, module: new URL('./cpu-task.ts', import.meta.url) });
  await manager.start();
  return {
    run: async () => {
      for (let i = 0; i < BATCH; i++) manager.add(task, 0);
      await manager.drain();
    },
    stop: () => manager.shutdown(),
  };
}

function byHandBatch(): { run: () => Promise<void>; stop: () => Promise<number> } {
  const worker = new Worker(
    `const { parentPort } = require('node:worker_threads');
     parentPort.on('message', (ms) => parentPort.postMessage(ms));`,
    { eval: true },
  );
  let pending = 0;
  let idle: (() => void) | undefined;
  worker.on('message', () => {
    if (--pending === 0) idle?.();
  });
  return {
    run: () =>
      new Promise<void>((resolve) => {
        idle = resolve;
        for (let i = 0; i < BATCH; i++) {
          pending++;
          worker.postMessage(0);
        }
      }),
    stop: () => worker.terminate(),
  };
}

const variants = {
  thread: () => managerBatch('thread'),
  'in-process': () => managerBatch('none'),
  'by-hand': async () => byHandBatch(),
};
const results = new Map<string, number[]>();
const only = process.argv[3];
for (const [name, make] of Object.entries(variants)) {
  if (only !== undefined && name !== only) continue;
  const variant = await make();
  await perTask(variant.run); // warm-up: the thread starts, the JIT settles
  const samples: number[] = [];
  for (let round = 0; round < ROUNDS; round++) samples.push(await perTask(variant.run));
  await variant.stop();
  results.set(name, samples);
}
for (const [name, samples] of results)
  console.log(
    `${name.padEnd(10)} ${median(samples).toFixed(1).padStart(6)} µs of main-thread CPU per task (median of ${ROUNDS} × ${TASKS})`,
  );
