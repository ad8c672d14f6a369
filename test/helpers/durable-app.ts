import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { startNode, type Child } from './child.js';

const script = fileURLToPath(new URL('../fixtures/durable-app.js', import.meta.url));

export interface DurableApp {
  child: Child;
  url: string;
  /** Add one task through a request; resolves with its id once the response (the acknowledgement) is in. */
  add(n: number): Promise<string>;
}

/** Start test/fixtures/durable-app.js with `env` and wait until it listens. */
export async function startDurableApp(env: Record<string, string>): Promise<DurableApp> {
  const child = startNode(script, [], env);
  const line = await child.waitForLine(/"listening"/, 15_000);
  const url = `http://127.0.0.1:${(JSON.parse(line) as { listening: number }).listening}`;
  return {
    child,
    url,
    async add(n) {
      const response = await fetch(`${url}/add?n=${n}`);
      if (response.status !== 200) throw new Error(`add answered ${response.status}`);
      return ((await response.json()) as { id: string }).id;
    },
  };
}

/** The task log's lines as `{ id, event, pid }` (event: `start` or `done`). */
export function readTaskLog(path: string): { id: string; event: string; pid: string }[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [id, event, ...rest] = line.split(' ');
      return { id, event, pid: rest[rest.length - 1] };
    });
}

/** How many times each id logged `event`. */
export function countBy(path: string, event: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const entry of readTaskLog(path)) if (entry.event === event) counts.set(entry.id, (counts.get(entry.id) ?? 0) + 1);
  return counts;
}
