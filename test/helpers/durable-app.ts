import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type Koa from 'koa';
import { expect } from 'vitest';
import type { TaskManager, TaskRecord, TaskStore } from 'koa-taskflow';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { startNode, type Child } from './child.js';
import { tempDir } from './files.js';
import { deferred, onCleanup, startApp, waitFor } from './server.js';

const script = fileURLToPath(new URL('../fixtures/durable-app.js', import.meta.url));

export interface DurableApp {
  child: Child;
  url: string;
  /** Add one task through a request; resolves with its id once the response (the acknowledgement) is in. */
  add(n: number): Promise<string>;
  /** The task's record as the app's `manager.get(id)` answers it. */
  record(id: string): Promise<TaskRecord | { missing: true }>;
}

/** A fresh temp dir's database file and task log for the app. */
export function durableFiles(prefix = 'taskflow-recovery-'): { db: string; log: string } {
  const dir = tempDir(prefix);
  return { db: join(dir, 'tasks.db'), log: join(dir, 'tasks.log') };
}

/** A SqliteStore on `db` in the test process (to read what the app left), closed after the test. */
export function openSqliteStore(
  db: string,
  options: Partial<ConstructorParameters<typeof SqliteStore>[0]> = {},
): SqliteStore {
  const store = new SqliteStore({ path: db, ...options });
  onCleanup(() => store.close());
  return store;
}

/** A task record as a store holds it, with `fields` over the defaults (a pending task of 'job' created now). */
export function taskRecord(id: string, fields: Partial<TaskRecord> = {}): TaskRecord {
  return {
    id,
    name: 'job',
    status: 'pending',
    args: [],
    tags: {},
    attempts: 0,
    maxAttempts: 1,
    createdAt: Date.now(),
    logs: [],
    ...fields,
  };
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
    async record(id) {
      return (await (await fetch(`${url}/task?id=${id}`)).json()) as TaskRecord | { missing: true };
    },
  };
}

export interface TaskLogEntry {
  id: string;
  /** `start`, `done` or `onError`. */
  event: string;
  pid: string;
  /** `start` lines: the attempt number, its span id, the span ids it links to and when it started (epoch ms). */
  attempt?: number;
  at?: number;
  span?: string;
  links?: string[];
  /** `onError` lines: the error's name. */
  error?: string;
}

/** The task log's lines, parsed. */
export function readTaskLog(path: string): TaskLogEntry[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [id, event, ...rest] = line.split(' ');
      const entry: TaskLogEntry = { id, event, pid: rest[rest.length - 1] };
      const fields = new Map(rest.slice(0, -1).map((field) => field.split('=') as [string, string]));
      if (event === 'start') {
        entry.attempt = Number(fields.get('attempt'));
        entry.span = fields.get('span');
        entry.links = fields.get('links')?.split(',').filter(Boolean) ?? [];
        entry.at = Number(fields.get('at'));
      }
      if (event === 'onError') entry.error = rest[0];
      return entry;
    });
}

/** How many times each id logged `event`. */
export function countBy(path: string, event: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const entry of readTaskLog(path))
    if (entry.event === event) counts.set(entry.id, (counts.get(entry.id) ?? 0) + 1);
  return counts;
}

/**
 * Two TaskManagers on `stores` (sharing one database), `count` concurrent requests split between them,
 * each adding the same task with one idempotency key (held until every request has been answered):
 * every request is acknowledged, the task runs once, and every id handed out leads to it: to its record
 * (`aliases`, stores whose save() reports the losers), or to a `cancelled` duplicate naming it (stores that
 * answer save() with nothing: the manager claims the keys with claimKey after the write).
 */
export async function expectOneExecutionAcrossInstances(
  stores: [TaskStore, TaskStore],
  count: number,
  { aliases = true } = {},
): Promise<void> {
  let runs = 0;
  const gate = deferred();
  const setup = (app: Koa, m: TaskManager) => {
    const charge = m.task(async function charge(order: number) {
      runs++;
      await gate.promise;
      return order;
    });
    app.use(async (ctx) => {
      ctx.body = { id: ctx.tasks.with({ idempotencyKey: 'order-42' }).addTask(charge, 42) };
    });
  };
  const one = await startApp(setup, { store: stores[0] });
  const two = await startApp(setup, { store: stores[1] });
  const statuses: number[] = [];
  const ids = await Promise.all(
    Array.from({ length: count }, async (_, i) => {
      const response = await fetch(i % 2 ? one.url : two.url);
      statuses.push(response.status);
      return ((await response.json()) as { id: string }).id;
    }),
  );
  await waitFor(() => runs > 0, 5_000, 'the task to start');
  gate.resolve();
  await Promise.all([one.manager.drain(), two.manager.drain()]);
  const resolved = await Promise.all(ids.map((id) => two.manager.get(id)));
  expect(runs).toBe(1);
  expect(new Set(statuses)).toEqual(new Set([200]));
  const winner = resolved.find((r) => r?.status === 'success');
  expect(winner).toBeDefined();
  for (const record of resolved) {
    if (aliases || record?.id === winner!.id) expect(record).toMatchObject({ id: winner!.id, status: 'success' });
    else
      expect(record).toMatchObject({
        status: 'cancelled',
        reason: 'duplicate',
        error: { message: expect.stringContaining(`duplicate of ${winner!.id}`) },
      });
  }
}
