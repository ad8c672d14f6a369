// Crash recovery with a real process: a Koa server on a SQLite file is killed after acknowledging tasks,
// and a new process on the same file runs every one of them.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { countBy, readTaskLog, startDurableApp } from './helpers/durable-app.js';
import { tempDir } from './helpers/files.js';
import { onCleanup, waitFor } from './helpers/server.js';

const N = 12;
const CONCURRENCY = 3;

function setup() {
  const dir = tempDir('taskflow-recovery-');
  return { db: join(dir, 'tasks.db'), log: join(dir, 'tasks.log') };
}

async function statuses(db: string, ids: string[]): Promise<string[]> {
  const store = new SqliteStore({ path: db });
  onCleanup(() => store.close());
  return Promise.all(ids.map(async (id) => (await store.get(id))?.status ?? 'missing'));
}

describe('SQLite crash recovery', () => {
  it('SIGKILL after acknowledging tasks (some running, some pending): a new process runs every acknowledged task', async () => {
    const { db, log } = setup();
    const first = await startDurableApp({ DB: db, TASK_LOG: log, MODE: 'hold', CONCURRENCY: String(CONCURRENCY), LEASE_MS: '600', ORPHAN_MS: '100' });
    const acknowledged = await Promise.all(Array.from({ length: N }, (_, n) => first.add(n)));
    await waitFor(() => readTaskLog(log).length === CONCURRENCY, 5_000, 'the first tasks to be running');
    first.child.process.kill('SIGKILL');
    await first.child.exited;
    const runningAtKill = readTaskLog(log).map((e) => e.id);
    expect(runningAtKill).toHaveLength(CONCURRENCY);

    const second = await startDurableApp({ DB: db, TASK_LOG: log, MODE: 'fast', CONCURRENCY: '16', LEASE_MS: '600', ORPHAN_MS: '100' });
    await waitFor(() => countBy(log, 'done').size === N, 10_000, 'every acknowledged task to be done');
    const done = countBy(log, 'done');
    for (const id of acknowledged) expect(done.get(id), `task ${id}`).toBe(1);
    // The ones cut short by the kill ran again: at-least-once.
    for (const id of runningAtKill) expect(countBy(log, 'start').get(id)).toBe(2);
    second.child.process.kill('SIGTERM');
    await second.child.exited;
    expect(await statuses(db, acknowledged)).toEqual(acknowledged.map(() => 'success'));
  });

  it('SIGTERM: running tasks finish, pending ones are handed back and resumed at once by the next process, none twice', async () => {
    const { db, log } = setup();
    // A long lease: the next process can only be quick if the shutdown handed the work back.
    const lease = { LEASE_MS: '60000', ORPHAN_MS: '60000' };
    const first = await startDurableApp({ DB: db, TASK_LOG: log, MODE: 'slow', SLOW_MS: '150', CONCURRENCY: '2', ...lease });
    const acknowledged = await Promise.all(Array.from({ length: N }, (_, n) => first.add(n)));
    await waitFor(() => readTaskLog(log).some((e) => e.event === 'start'), 5_000, 'tasks to be running');
    first.child.process.kill('SIGTERM');
    await first.child.waitForLine(/"stopped"/);
    expect(await first.child.exited).toBe(0);
    const doneByFirst = countBy(log, 'done').size;
    expect(doneByFirst).toBeGreaterThan(0);
    expect(doneByFirst).toBeLessThan(N);

    const second = await startDurableApp({ DB: db, TASK_LOG: log, MODE: 'fast', CONCURRENCY: '16', ...lease });
    await waitFor(() => countBy(log, 'done').size === N, 10_000, 'every acknowledged task to be done');
    second.child.process.kill('SIGTERM');
    await second.child.exited;
    const starts = countBy(log, 'start');
    const done = countBy(log, 'done');
    for (const id of acknowledged) {
      expect(starts.get(id), `starts of ${id}`).toBe(1);
      expect(done.get(id), `completions of ${id}`).toBe(1);
    }
    expect(await statuses(db, acknowledged)).toEqual(acknowledged.map(() => 'success'));
  });
});
