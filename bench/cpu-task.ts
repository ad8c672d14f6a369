// The CPU-heavy task of the isolate benchmark (bench/isolate.ts): a thread imports this module by URL.

/** Burns `ms` of CPU without yielding, as an image resize or a PDF render would. */
export function render(ms: number): number {
  const end = performance.now() + ms;
  let x = 0;
  while (performance.now() < end) x += Math.sqrt(x + 1);
  return x;
}
