// The soak: a real server process on SqliteStore under a bounded, steady load of tasks that succeed, fail,
// time out and kill their own process, itself SIGKILLed and SIGTERMed by the test between rounds and
// restarted each time. At the end every acknowledged task must be accounted for (success, failed with a
// reason, or cancelled), none stuck, none run more often than its retries and maxStalls allow.
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import type { TaskRecord } from 'koa-taskflow';
import { startNode, type Child } from './helpers/child.js';
import { durableFiles, openSqliteStore, readTaskLog } from './helpers/durable-app.js';

const script = fileURLToPath(new URL('./fixtures/soak-app.js', import.meta.url));

/** The fixture's task options: `retries: 1` and the default `maxStalls: 1`. */
const RETRIES = 1;
const MAX_STALLS = 1;
/**
 * Starts a task may make: its attempts, one more per stall allowed, and one more for a process that died
 * within the write interval of the task's very first start, before `running` was on disk (README →
 * "The guarantee: at-least-once").
 */
const MAX_STARTS = RETRIES + 1 + MAX_STALLS + 1;

/** One request in 150 adds a task that kills its process; the rest mostly succeed. */
function kindOf(n: number): string {
  if (n % 150 === 37) return 'crash';
  const r = n % 20;
  if (r < 2) return 'flaky';
  if (r < 4) return 'fail';
  if (r < 6) return 'timeout';
  return 'ok';
}

const alive = (app: Child) => app.process.exitCode === null && app.process.signalCode === null;

async function start(env: Record<string, string>): Promise<{ app: Child; url: string }> {
  const app = startNode(script, [], env);
  const line = await app.waitForLine(/"listening"/, 15_000);
  return { app, url: `http://127.0.0.1:${(JSON.parse(line) as { listening: number }).listening}` };
}

describe('soak', () => {
  it(
    'under steady load with failing, timing-out and process-killing tasks and restarts, every acknowledged task ends, none twice beyond its allowance',
    { timeout: 180_000 },
    async () => {
      const { db, log } = durableFiles('taskflow-soak-');
      const env = { DB: db, TASK_LOG: log };
      const acknowledged = new Map<string, string>();
      let sent = 0;
      let refused = 0;
      const ends = { crashedByTask: 0, sigkill: 0, sigterm: 0 };

      // Load: one request every ~10 ms, in rounds. The test ends the first rounds itself, SIGKILL and SIGTERM
      // (graceful) in turn, each after 1 s; then a last round runs to the end of the load (at least 15 s in
      // all). A task may kill the process first, and recovered ones do at the next start: that round is then
      // played again. Bounded: 45 s at most.
      const plan: ('sigkill' | 'sigterm' | 'last')[] = ['sigkill', 'sigterm', 'sigkill', 'sigterm', 'last'];
      const loadStarted = Date.now();
      const minimumEnd = loadStarted + 15_000;
      const hardEnd = loadStarted + 45_000;
      while (Date.now() < hardEnd && (plan.length > 1 || Date.now() < minimumEnd)) {
        const step = plan[0];
        const { app, url } = await start(env);
        const roundEnds = step === 'last' ? minimumEnd : Date.now() + 1_000;
        while (alive(app) && Date.now() < roundEnds) {
          const n = sent++;
          const kind = kindOf(n);
          try {
            const response = await fetch(`${url}/add?kind=${kind}&n=${n}`);
            if (response.status === 200) acknowledged.set(((await response.json()) as { id: string }).id, kind);
            else refused++;
          } catch {
            refused++; // the process died under the request: not acknowledged
          }
          await sleep(10);
        }
        let replay = false;
        if (!alive(app)) {
          ends.crashedByTask++;
        } else if (step === 'sigkill') {
          app.process.kill('SIGKILL');
          ends.sigkill++;
        } else {
          app.process.kill('SIGTERM');
          const code = await app.exited;
          // A crash task still running during the graceful shutdown (shutdown lets running tasks finish)
          // SIGKILLs the process first; the test only ever sends SIGTERM here, so SIGKILL is the task's.
          if (app.process.signalCode === 'SIGKILL') {
            ends.crashedByTask++;
            replay = true; // the graceful stop did not happen: play this round again
          } else {
            expect(code).toBe(0);
            ends.sigterm++;
          }
        }
        await app.exited;
        if (!replay && plan.length > 1 && Date.now() >= roundEnds) plan.shift();
      }

      // Recovery: processes are started (again, while tasks still kill them) until every acknowledged task has
      // ended, read from the database by a store in this process.
      const store = openSqliteStore(db);
      const recoveryStarted = Date.now();
      const records = new Map<string, TaskRecord | undefined>();
      const unfinished = async () => {
        let open = 0;
        for (const id of acknowledged.keys()) {
          const record = await store.get(id);
          records.set(id, record);
          if (record === undefined || record.status === 'pending' || record.status === 'running') open++;
        }
        return open;
      };
      let recoveryProcesses = 0;
      while ((await unfinished()) > 0) {
        expect(Date.now() - recoveryStarted, 'time to recover').toBeLessThan(60_000);
        const { app } = await start(env);
        recoveryProcesses++;
        while (alive(app) && (await unfinished()) > 0) await sleep(100);
        if (alive(app)) {
          app.process.kill('SIGTERM');
          await app.exited;
        }
      }
      const timeToRecoverMs = Date.now() - recoveryStarted;

      // Every acknowledged task is there and ended, with a reason when it did not succeed.
      const byStatus: Record<string, number> = {};
      for (const [id, kind] of acknowledged) {
        const record = records.get(id);
        expect(record, `record of ${kind} task ${id}`).toBeDefined();
        byStatus[record!.status] = (byStatus[record!.status] ?? 0) + 1;
        expect(['success', 'failed', 'cancelled']).toContain(record!.status);
        if (record!.status !== 'success')
          expect(record!.error?.type ?? record!.reason, `why ${id} (${kind}) ended ${record!.status}`).toBeTruthy();
        if (kind === 'crash') expect(record).toMatchObject({ status: 'failed', error: { type: 'TaskStalledError' } });
        if (kind === 'fail') expect(record!.status).toBe('failed');
        if (kind === 'timeout' && record!.status === 'failed')
          expect(['TaskTimeoutError', 'TaskStalledError']).toContain(record!.error?.type);
      }

      // None ran more often than its retries and stalls allow.
      const starts = new Map<string, number>();
      for (const entry of readTaskLog(log))
        if (entry.event === 'start') starts.set(entry.id, (starts.get(entry.id) ?? 0) + 1);
      for (const [id, kind] of acknowledged) {
        const lines = () =>
          readTaskLog(log)
            .filter((entry) => entry.id === id)
            .map((entry) => JSON.stringify(entry))
            .join('\n');
        expect(
          starts.get(id) ?? 0,
          `starts of ${kind} task ${id}; record ${JSON.stringify(records.get(id))}; its lines:\n${lines()}`,
        ).toBeLessThanOrEqual(MAX_STARTS);
      }
      const okTasks = [...acknowledged].filter(([, kind]) => kind === 'ok');
      const duplicates = okTasks.filter(([id]) => (starts.get(id) ?? 0) > 1).length;

      // The load really did what it is meant to: tasks of every kind acknowledged, the process killed by its
      // tasks and by the test, and gracefully stopped.
      expect(new Set(acknowledged.values())).toEqual(new Set(['ok', 'flaky', 'fail', 'timeout', 'crash']));
      expect(ends.crashedByTask + recoveryProcesses).toBeGreaterThan(1);
      expect(ends.sigkill).toBeGreaterThan(0);
      expect(ends.sigterm).toBeGreaterThan(0);
      console.log(
        `soak: ${sent} requests, ${acknowledged.size} acknowledged, ${refused} refused or cut off; ` +
          `process ends: ${ends.crashedByTask} by a task, ${ends.sigkill} SIGKILL, ${ends.sigterm} SIGTERM; ` +
          `${recoveryProcesses} recovery process(es), ${timeToRecoverMs} ms to recover; final ${JSON.stringify(byStatus)}; ` +
          `lost 0; ${duplicates} of ${okTasks.length} plain tasks ran twice (cut by a crash)`,
      );
    },
  );
});
