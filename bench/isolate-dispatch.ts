// The main thread's CPU per isolated task (issue #20): `node bench/isolate-dispatch.ts [tasks] [variant]`. Adds `tasks`
// tasks (2 ms of CPU in a thread, none in process) in batches of 10 (the bench's clumps), once with `isolate: 'thread'`, once in process, and
// once as a plain postMessage to one worker thread written by hand that spins 2 ms (the floor: what crossing to
// a thread costs),
// and prints the main thread's CPU time (process.threadCpuUsage) per task of each: the dispatch alone (the adds
// of a batch up to the next check phase, what a clump of requests waits behind) and in all (with the answer). The
// threads' own CPU is not counted: what a task takes from the event loop serving requests is the point.
// TASKFLOW_ENTRY=<path of another build's index.js> measures that build instead (before/after a change).
import type { TaskManager as Manager } from 'koa-taskflow';
import { ByHandWorker, render } from './cpu-task.ts';
import { median } from './lib.ts';

const { TaskManager } = (await import(process.env.TASKFLOW_ENTRY ?? 'koa-taskflow')) as {
  TaskManager: typeof Manager;
};
const TASKS = Number(process.argv[2] ?? 1000);
const BATCH = 10;
const ROUNDS = 5;

function mainCpuUs(): number {
  const { user, system } = process.threadCpuUsage();
  return user + system;
}

interface Variant {
  /** Adds BATCH tasks; resolves when they have run. */
  dispatch(): Promise<void>;
  stop(): Promise<unknown>;
}

/** Runs batches until TASKS ran; µs of main-thread CPU per task: [dispatch, in all]. */
async function perTask(variant: Variant): Promise<[number, number]> {
  let dispatch = 0;
  const before = mainCpuUs();
  for (let done = 0; done < TASKS; done += BATCH) {
    const start = mainCpuUs();
    const ran = variant.dispatch();
    // Until the check phase: every attempt of the batch has been handed over (a thread's task takes 2 ms, so
    // no answer is read in between).
    await new Promise((resolve) => setImmediate(resolve));
    dispatch += mainCpuUs() - start;
    await ran;
  }
  return [dispatch / TASKS, (mainCpuUs() - before) / TASKS];
}

async function managerBatch(isolate: 'thread' | 'none', ms: number): Promise<Variant> {
  const manager = new TaskManager({ maxQueued: Infinity, concurrency: BATCH, threads: { maxThreads: 1 } });
  const task = manager.task(render, { isolate, module: new URL('./cpu-task.ts', import.meta.url) });
  await manager.start();
  return {
    dispatch: () => {
      for (let i = 0; i < BATCH; i++) manager.add(task, ms);
      return manager.drain();
    },
    stop: () => manager.shutdown(),
  };
}

function byHandBatch(): Variant {
  const worker = new ByHandWorker();
  return {
    dispatch: () => {
      for (let i = 0; i < BATCH; i++) worker.post(2);
      return worker.idle();
    },
    stop: () => worker.terminate(),
  };
}

const variants = {
  thread: () => managerBatch('thread', 2),
  'in-process': () => managerBatch('none', 0),
  'by-hand': async () => byHandBatch(),
};
const results = new Map<string, [number, number][]>();
const only = process.argv[3];
for (const [name, make] of Object.entries(variants)) {
  if (only !== undefined && name !== only) continue;
  const variant = await make();
  await perTask(variant); // warm-up: the thread starts, the JIT settles
  const samples: [number, number][] = [];
  for (let round = 0; round < ROUNDS; round++) samples.push(await perTask(variant));
  await variant.stop();
  results.set(name, samples);
}
for (const [name, samples] of results) {
  const [dispatch, all] = [0, 1].map((i) =>
    median(samples.map((s) => s[i]))
      .toFixed(1)
      .padStart(6),
  );
  console.log(
    `${name.padEnd(10)} main-thread CPU per task, µs: dispatch ${dispatch}, in all ${all} (median of ${ROUNDS} × ${TASKS})`,
  );
}
