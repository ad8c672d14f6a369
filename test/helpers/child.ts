import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { expect } from 'vitest';
import { onCleanup } from './server.js';

export interface Child {
  process: ChildProcess;
  /** Everything written to stdout so far, line by line. */
  lines: string[];
  /** Resolves with the first stdout line matching `pattern`. */
  waitForLine(pattern: RegExp, timeoutMs?: number): Promise<string>;
  exited: Promise<number | null>;
}

/**
 * Start `node <script>` on this Node (the project's Node 24); killed after the test if still running.
 * `nodeArgs` go before the script (`--import …`); `cwd` is where bare specifiers in them resolve from.
 */
export function startNode(
  script: string,
  args: string[] = [],
  env: Record<string, string> = {},
  options: { nodeArgs?: string[]; cwd?: string } = {},
): Child {
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), script, ...args], {
    cwd: options.cwd,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const listeners = new Set<() => void>();
  let buffer = '';
  child.stdout.on('data', (chunk: Buffer) => {
    buffer += chunk.toString();
    const parts = buffer.split('\n');
    buffer = parts.pop()!;
    lines.push(...parts);
    for (const listener of listeners) listener();
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  onCleanup(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return {
    process: child,
    lines,
    exited,
    waitForLine(pattern, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const line = lines.find((l) => pattern.test(l));
          if (line === undefined) return false;
          listeners.delete(check);
          clearTimeout(timer);
          resolve(line);
          return true;
        };
        const timer = setTimeout(() => {
          listeners.delete(check);
          reject(
            new Error(
              `no line matching ${pattern} within ${timeoutMs} ms; stdout:\n${lines.join('\n')}\nstderr:\n${stderr}`,
            ),
          );
        }, timeoutMs);
        if (!check()) listeners.add(check);
      });
    },
  };
}

/**
 * A documented example: `doc` shows `example` byte for byte in a js block, and `node <example>` exits 0.
 * Resolves with its stdout lines.
 */
export async function runShownExample(
  doc: string,
  example: string,
  env: Record<string, string> = {},
): Promise<string[]> {
  expect(readFileSync(doc, 'utf8')).toContain('```js\n' + readFileSync(example, 'utf8') + '```');
  const child = startNode(example, [], env);
  expect(await child.exited).toBe(0);
  return child.lines;
}
