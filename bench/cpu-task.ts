// The CPU-heavy task of the isolate benchmarks (bench/isolate.ts, bench/isolate-dispatch.ts): a thread imports
// this module by URL. Also their floor: the same work posted to one worker thread written by hand.
import { Worker } from 'node:worker_threads';

/** Burns `ms` of CPU without yielding, as an image resize or a PDF render would. */
export function render(ms: number): number {
  const end = performance.now() + ms;
  let x = 0;
  while (performance.now() < end) x += Math.sqrt(x + 1);
  return x;
}

/** One worker thread written by hand, no library: `post(ms)` runs `render(ms)` there; `idle()` waits for all. */
export class ByHandWorker {
  readonly #worker = new Worker(
    `const { parentPort } = require('node:worker_threads');
     const render = ${render.toString()};
     parentPort.on('message', (ms) => parentPort.postMessage(render(ms)));`,
    { eval: true },
  );
  #pending = 0;
  #idle: (() => void) | undefined;

  constructor(onAnswer: () => void = () => {}) {
    this.#worker.on('message', () => {
      onAnswer();
      if (--this.#pending === 0) this.#idle?.();
    });
  }

  post(ms: number): void {
    this.#pending++;
    this.#worker.postMessage(ms);
  }

  idle(): Promise<void> {
    return this.#pending === 0 ? Promise.resolve() : new Promise((resolve) => (this.#idle = resolve));
  }

  terminate(): Promise<number> {
    return this.#worker.terminate();
  }
}
