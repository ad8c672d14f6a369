// koa-taskflow/bullmq as a team runs it: a web process that only enqueues and two worker processes
// (`manager.work()`), three OS processes of one app (test/fixtures/bullmq-app.js) under
// `node --import koa-taskflow/instrumentation`, a real redis-server, requests through the web process's Koa
// server, spans from all three through a real OTLP/HTTP receiver, and a worker SIGKILLed mid-task.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Queue } from 'bullmq';
import { TaskManager } from 'koa-taskflow';
import { bullmqEngine } from 'koa-taskflow/bullmq';
import { describe, expect, it } from 'vitest';
import { startNode, type Child } from './helpers/child.js';
import { tempDir } from './helpers/files.js';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from './helpers/otlp-receiver.js';
import { startRedisServer } from './helpers/redis.js';
import { onCleanup, waitFor } from './helpers/server.js';

const repo = fileURLToPath(new URL('..', import.meta.url));
const appScript = fileURLToPath(new URL('./fixtures/bullmq-app.js', import.meta.url));

interface Run {
  what: 'start' | 'end';
  id: string;
  attempt: number;
  pid: number;
}

interface Cluster {
  receiver: OtlpReceiver;
  web: Child;
  workers: Child[];
  url: string;
  queue: Queue;
  runs(): Run[];
  get(path: string, headers?: Record<string, string>): Promise<{ ids: string[]; traceId: string; spanId: string }>;
}

async function startCluster(): Promise<Cluster> {
  const [redis, receiver] = await Promise.all([startRedisServer(), startOtlpReceiver()]);
  const runsFile = join(tempDir('taskflow-bullmq-'), 'runs.jsonl');
  const base = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('OTEL_')));
  const start = (role: string, service: string) =>
    startNode(
      appScript,
      [],
      {
        ...base,
        ROLE: role,
        REDIS_PORT: String(redis.port),
        RUNS_FILE: runsFile,
        OTEL_SERVICE_NAME: service,
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        OTEL_BSP_SCHEDULE_DELAY: '100',
        OTEL_METRICS_EXPORTER: 'none',
      },
      { nodeArgs: ['--import', 'koa-taskflow/instrumentation'], cwd: repo },
    );
  const web = start('web', 'web');
  const workers = [start('worker', 'worker-a'), start('worker', 'worker-b')];
  const [listening] = await Promise.all([
    web.waitForLine(/"msg":"listening"/, 45_000),
    ...workers.map((worker) => worker.waitForLine(/"msg":"working"/, 45_000)),
  ]);
  const url = `http://127.0.0.1:${(JSON.parse(listening) as { port: number }).port}`;
  const queue = new Queue('tasks', { connection: { host: '127.0.0.1', port: redis.port } });
  onCleanup(() => queue.close());
  return {
    receiver,
    web,
    workers,
    url,
    queue,
    runs: () => {
      let text = '';
      try {
        text = readFileSync(runsFile, 'utf8');
      } catch {
        // No attempt has started yet.
      }
      return text
        .split('\n')
        .filter((line) => line !== '')
        .map((line) => JSON.parse(line) as Run);
    },
    async get(path, headers) {
      const response = await fetch(url + path, { headers });
      expect(response.status).toBe(200);
      return (await response.json()) as { ids: string[]; traceId: string; spanId: string };
    },
  };
}

const attemptSpans = (receiver: OtlpReceiver, id: string): ReceivedSpan[] =>
  receiver.spans
    .filter((span) => span.attributes['task.id'] === id)
    .sort((a, b) => Number(a.attributes['task.attempt']) - Number(b.attributes['task.attempt']));

const ended = (cluster: Cluster, id: string) => cluster.runs().some((run) => run.id === id && run.what === 'end');

// Three instrumented processes start per test: generous on a loaded two-core machine.
describe('BullMQ engine: a web process and two workers', { timeout: 90_000 }, () => {
  it("each attempt in a worker is a task span linked to the web request across processes (taskLog: span event, pino line, job log); retries and a worker's graceful shutdown link to the previous attempt; trace: 'child'; idempotencyKey → jobId; startAfter → a delayed job; per-request order", async () => {
    const cluster = await startCluster();
    const { receiver } = cluster;
    const welcome = await cluster.get('/sendWelcome?arg=a@b.c');
    const flaky = await cluster.get('/flaky');
    const child = await cluster.get('/sendWelcome?arg=c@d.e&trace=child');
    const steps = (await cluster.get('/step?count=4')).ids;
    // idempotencyKey → jobId: a second add with the key (another request) is the same job, run once.
    const keyed = (await cluster.get('/sendWelcome?arg=k@x.y&key=order:42')).ids[0];
    const again = (await cluster.get('/sendWelcome?arg=k@x.y&key=order:42')).ids[0];
    // startAfter → a delayed job.
    const later = (await cluster.get('/sendWelcome?arg=later@x.y&after=500')).ids[0];
    // A request whose trace the caller did not sample (parent-based sampler): the task runs and logs in a
    // worker, and its attempt follows the request's decision (checked at the end, once later spans of both
    // workers are in).
    const unsampledTrace = 'a1'.repeat(16);
    const unsampled = await cluster.get('/sendWelcome?arg=unsampled@x.y', {
      traceparent: `00-${unsampledTrace}-${'b2'.repeat(8)}-00`,
    });
    expect(unsampled.traceId).toBe(unsampledTrace);
    const [welcomeId, flakyId, childId] = [welcome.ids[0], flaky.ids[0], child.ids[0]];
    await waitFor(() => [welcomeId, flakyId, childId].every((id) => ended(cluster, id)), 30_000, 'the tasks to run');
    await waitFor(
      () =>
        attemptSpans(receiver, welcomeId).length === 1 &&
        attemptSpans(receiver, flakyId).length === 2 &&
        attemptSpans(receiver, childId).length === 1 &&
        [welcome, flaky, child].every((r) => receiver.spans.some((span) => span.spanId === r.spanId)),
      30_000,
      'the spans of both processes',
    );

    // The request's span comes from the web process, the attempt's from a worker: linked, in a new trace.
    const requestSpan = receiver.spans.find((span) => span.spanId === welcome.spanId)!;
    expect(requestSpan.service).toBe('web');
    const [attempt] = attemptSpans(receiver, welcomeId);
    expect(attempt.name).toBe('task sendWelcome');
    expect(['worker-a', 'worker-b']).toContain(attempt.service);
    expect(attempt.kind).toBe(5);
    expect(attempt.traceId).not.toBe(welcome.traceId);
    expect(attempt.links).toEqual([{ traceId: welcome.traceId, spanId: welcome.spanId }]);
    expect(attempt.status.code).toBe(1);
    expect(attempt.events).toContainEqual({
      name: 'task.log',
      attributes: { 'log.message': 'sending welcome mail', 'log.level': 'info', email: 'a@b.c' },
    });
    // BullMQ's own telemetry is off: the attempt is the only span of the job.
    expect(receiver.spans.filter((span) => span.scope.toLowerCase().includes('bullmq'))).toEqual([]);

    // The worker's pino line of taskLog carries the attempt's ids and the request's.
    const ownLine = (l: string) => l.includes('sending welcome mail') && l.includes(welcomeId);
    const worker = cluster.workers.find((w) => w.lines.some(ownLine))!;
    const line = JSON.parse(worker.lines.find(ownLine)!) as Record<string, unknown>;
    expect(line).toMatchObject({
      trace_id: attempt.traceId,
      span_id: attempt.spanId,
      request_trace_id: welcome.traceId,
      request_span_id: welcome.spanId,
      task: { id: welcomeId, name: 'sendWelcome', attempt: 1 },
      email: 'a@b.c',
    });
    // …and BullMQ's job log has it too (the job's id is the task's).
    const { logs } = await cluster.queue.getJobLogs(welcomeId);
    expect(logs).toEqual(['[info] sending welcome mail {"email":"a@b.c"}']);

    // A retry is BullMQ's next attempt of the job: linked to the request and to the failed attempt.
    const [first, second] = attemptSpans(receiver, flakyId);
    expect([first.attributes['task.attempt'], second.attributes['task.attempt']]).toEqual([1, 2]);
    expect(first.attributes['task.max_attempts']).toBe(3);
    expect(first.status.code).toBe(2);
    expect(second.status.code).toBe(1);
    expect(second.links).toEqual([
      { traceId: flaky.traceId, spanId: flaky.spanId },
      { traceId: first.traceId, spanId: first.spanId },
    ]);
    const job = await cluster.queue.getJob(flakyId);
    expect(await job!.getState()).toBe('completed');
    // BullMQ counts the attempt that succeeded too.
    expect(job!.attemptsMade).toBe(2);

    // trace: 'child': the attempt is a child of the request's span, in its trace.
    const [childAttempt] = attemptSpans(receiver, childId);
    expect(childAttempt.traceId).toBe(child.traceId);
    expect(childAttempt.parentSpanId).toBe(child.spanId);

    // Graceful shutdown of a worker (SIGTERM; shutdownTimeoutMs 300 in the fixture) running a task: the
    // attempt is aborted and its job goes back to the queue without using a retry (it has none), and the
    // other worker runs it as attempt 2, linked to the interrupted one.
    const slowId = (await cluster.get('/slow?arg=2000')).ids[0];
    await waitFor(() => cluster.runs().some((run) => run.id === slowId), 15_000, 'the slow task to start');
    const firstPid = cluster.runs().find((run) => run.id === slowId)!.pid;
    const stopping = cluster.workers.find((w) => w.process.pid === firstPid)!;
    stopping.process.kill('SIGTERM');
    await waitFor(() => ended(cluster, slowId), 15_000, 'the slow task to run again');
    expect(cluster.runs().filter((run) => run.id === slowId && run.what === 'end')).toEqual([
      expect.objectContaining({ attempt: 2, pid: cluster.workers.find((w) => w !== stopping)!.process.pid }),
    ]);
    const slowJob = await cluster.queue.getJob(slowId);
    expect(await slowJob!.getState()).toBe('completed');
    await waitFor(() => attemptSpans(receiver, slowId).length === 2, 30_000, 'both attempts of the slow task');
    const [interrupted, resumed] = attemptSpans(receiver, slowId);
    expect(interrupted.status.code).toBe(2);
    expect(interrupted.attributes['error.type']).toBe('TaskInterruptedError');
    expect(resumed.links[1]).toEqual({ traceId: interrupted.traceId, spanId: interrupted.spanId });

    await waitFor(() => ended(cluster, keyed) && ended(cluster, later), 15_000, 'the keyed and the delayed task');
    const keyedJob = await cluster.queue.getJob('key=order%3A42');
    expect((keyedJob!.data as { id: string }).id).toBe(keyed);
    // The same web process answers the holder's id, as in-process; another one's add BullMQ drops.
    expect(again).toBe(keyed);
    expect(await cluster.queue.getJobCountByTypes('completed')).toBeGreaterThan(0);
    expect(cluster.runs().filter((run) => run.what === 'start' && (run.id === keyed || run.id === again))).toHaveLength(
      1,
    );
    expect((await cluster.queue.getJob(later))!.opts.delay).toBeGreaterThan(0);

    // A request's after-response tasks ran one after another in the order added, across the two workers.
    await waitFor(() => steps.every((id) => ended(cluster, id)), 15_000, 'the steps to run');
    const order = cluster
      .runs()
      .filter((run) => steps.includes(run.id))
      .map((run) => `${run.what} ${steps.indexOf(run.id)}`);
    expect(order).toEqual(['start 0', 'end 0', 'start 1', 'end 1', 'start 2', 'end 2', 'start 3', 'end 3']);

    // The unsampled request's task ran and logged in a worker (its pino line unsampled, with the request's
    // trace), yet no process exported a span of it: neither the request's nor any attempt's.
    const unsampledId = unsampled.ids[0];
    expect(ended(cluster, unsampledId)).toBe(true);
    const unsampledLine = cluster.workers
      .flatMap((w) => w.lines)
      .find((l) => l.includes('sending welcome mail') && l.includes(unsampledId));
    expect(JSON.parse(unsampledLine!)).toMatchObject({ trace_flags: '00', request_trace_id: unsampledTrace });
    expect(receiver.spans.filter((span) => span.traceId === unsampledTrace)).toEqual([]);
    expect(attemptSpans(receiver, unsampledId)).toEqual([]);
  });

  it('a worker SIGKILLed mid-task: no acknowledged task is lost, and none runs more often than maxStalls allows', async () => {
    // Stalls are found within about 3.5 s (lockDurationMs 3 000, stalledIntervalMs 500 in the fixture: a lock
    // renewed every 1.5 s, so a loaded machine does not stall a live worker's job).
    const cluster = await startCluster();
    const ids: string[] = [];
    // One request per task: each acknowledged (200) before the kill.
    for (let i = 0; i < 6; i++) ids.push(...(await cluster.get('/slow?arg=800')).ids);
    const [victim] = cluster.workers;
    const victimPid = victim.process.pid!;
    await waitFor(
      () => cluster.runs().some((run) => run.pid === victimPid && run.what === 'start'),
      10_000,
      'the worker to start a task',
    );
    victim.process.kill('SIGKILL');
    await victim.exited;
    const killedMidTask = cluster
      .runs()
      .filter((run) => run.pid === victimPid && run.what === 'start' && !ended(cluster, run.id))
      .map((run) => run.id);
    expect(killedMidTask.length).toBeGreaterThan(0);

    await waitFor(() => ids.every((id) => ended(cluster, id)), 20_000, 'every task to end');
    const runs = cluster.runs();
    for (const id of ids) {
      const starts = runs.filter((run) => run.id === id && run.what === 'start');
      const ends = runs.filter((run) => run.id === id && run.what === 'end');
      expect(ends).toHaveLength(1);
      // retries 0, maxStalls 1: at most one start beyond the first, and only for a task whose worker died.
      expect(starts.length).toBeLessThanOrEqual(killedMidTask.includes(id) ? 2 : 1);
    }
    for (const id of killedMidTask) {
      const job = await cluster.queue.getJob(id);
      expect(await job!.getState()).toBe('completed');
      // The attempt after the stall is attempt 2, run by the surviving worker.
      expect(runs.find((run) => run.id === id && run.what === 'end')!.attempt).toBe(2);
    }
  });

  it('examples/bullmq.js is exactly the snippet of docs/bullmq.md, and runs as a web process and a worker', async () => {
    const example = readFileSync('examples/bullmq.js', 'utf8');
    const doc = readFileSync('docs/bullmq.md', 'utf8');
    expect(doc.slice(doc.indexOf('<!-- section:bullmq -->'), doc.indexOf('<!-- /section:bullmq -->'))).toContain(
      '```js\n' + example + '```',
    );
    const redis = await startRedisServer();
    const env = { REDIS_URL: redis.url, PORT: '0' };
    const web = startNode('examples/bullmq.js', ['web'], env);
    const worker = startNode('examples/bullmq.js', ['worker'], env);
    const [listening] = await Promise.all([
      web.waitForLine(/"msg":"listening"/, 30_000),
      worker.waitForLine(/"msg":"working"/, 30_000),
    ]);
    const { port } = JSON.parse(listening) as { port: number };
    const { taskId } = (await (await fetch(`http://127.0.0.1:${port}/`)).json()) as { taskId: string };
    const line = JSON.parse(await worker.waitForLine(new RegExp(taskId), 15_000)) as Record<string, unknown>;
    expect(line).toMatchObject({
      msg: 'sending welcome mail',
      email: 'a@b.c',
      attempt: 1,
      tags: { tenant: 'acme' },
      task: { id: taskId, name: 'sendWelcome' },
    });
  });

  it('refuses bad input at the call, naming the option', async () => {
    const connection = { host: '127.0.0.1', port: 1 };
    expect(() => new TaskManager({ engine: {} as never })).toThrow(/option "engine"/);
    expect(() => bullmqEngine({} as never)).toThrow(/option "connection" is required/);
    expect(() => bullmqEngine({ connection, concurrency: 0 })).toThrow(RangeError);
    expect(() => bullmqEngine({ connection, queue: 'a:b' })).toThrow(/option "queue"/);
    expect(() => bullmqEngine({ connection, workers: 2 } as never)).toThrow(/unknown option "workers"/);
    const engine = bullmqEngine({ connection });
    const manager = new TaskManager({ engine });
    expect(() => new TaskManager({ engine })).toThrow(/already the engine of another TaskManager/);
    await expect(new TaskManager().work()).rejects.toMatchObject({ code: 'ERR_NO_ENGINE' });
    // A worker finds a task by its registered name and reads its args as JSON: checked at the add.
    expect(() => manager.add(function unregistered() {})).toThrow(/register "unregistered" with manager.task/);
    const registered = manager.task(function registered(when: unknown) {
      return when;
    });
    expect(() => manager.add(registered, new Map())).toThrow(TypeError);
  });
});
