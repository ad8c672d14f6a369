import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it, vi } from 'vitest';
import { startNode } from './helpers/child.js';
import { startOtlpReceiver, type ReceivedMetric } from './helpers/otlp-receiver.js';

const run = promisify(execFile);

/** `node examples/demo.js --once` with 3 requests, no colours, no export unless `env` sets one. */
async function demoOnce(env: Record<string, string> = {}): Promise<string> {
  const { stdout } = await run(process.execPath, ['examples/demo.js', '--once'], {
    env: { ...process.env, NO_COLOR: '1', DEMO_REQUESTS: '3', DEMO_LIVE: '0', OTEL_EXPORTER_OTLP_ENDPOINT: '', ...env },
    timeout: 30_000,
  });
  return stdout;
}

interface Row {
  line: string;
  /** The span's bar: 24 columns, `·` idle, `░` waiting, `█` running. */
  bar: string;
  offsetMs: number;
  durationMs: number;
}
interface Attempt extends Row {
  ok: boolean;
  name: string;
  attempt: number;
}

const header =
  /^▶ POST \/signup {2}202 +▕([·░█]{24})▏ +\+([\d.]+) ms +([\d.]+) ms {2}tenant=\w+ {2}trace [0-9a-f]{32}$/;
const attemptLine =
  /^ {2}[├└]─ ([✔✘]) task (\w+) +attempt (\d)\/\d ▕([·░█]{24})▏ +\+([\d.]+) ms +([\d.]+) ms {2}trace [0-9a-f]{12}…/;

/** The printed trees: each request header with the attempt rows below it. */
function trees(stdout: string): { request: Row; attempts: Attempt[] }[] {
  const out: { request: Row; attempts: Attempt[] }[] = [];
  for (const line of stdout.split('\n')) {
    const h = header.exec(line);
    if (h) out.push({ request: { line, bar: h[1], offsetMs: Number(h[2]), durationMs: Number(h[3]) }, attempts: [] });
    const a = attemptLine.exec(line);
    if (a)
      out.at(-1)!.attempts.push({
        line,
        ok: a[1] === '✔',
        name: a[2],
        attempt: Number(a[3]),
        bar: a[4],
        offsetMs: Number(a[5]),
        durationMs: Number(a[6]),
      });
  }
  return out;
}
const running = (bar: string) => ({ from: bar.indexOf('█'), to: bar.lastIndexOf('█') });

describe('npm run demo', () => {
  it('serves, sends its own burst and prints each request with its linked task attempts as a waterfall, with their log events', async () => {
    const stdout = await demoOnce();
    expect(stdout).toMatch(/koa-taskflow demo on http:\/\/127\.0\.0\.1:\d+/);
    expect(stdout).not.toMatch(/\r|\x1b/);
    const printed = trees(stdout);
    expect(printed).toHaveLength(3);
    for (const { request, attempts } of printed) {
      // The request's own bar starts the timeline.
      expect(request.offsetMs).toBe(0);
      expect(request.bar).toMatch(/^█+·*$/);
      // Its after-response tasks in the order added; the first chargeCard attempt fails, the second is linked to it.
      expect(attempts.map((a) => `${a.ok ? '✔' : '✘'} ${a.name} ${a.attempt}`)).toEqual([
        '✔ sendWelcome 1',
        '✘ chargeCard 1',
        '✔ chargeCard 2',
        '✔ buildReport 1',
      ]);
      const [welcome, charge1, charge2, report] = attempts;
      expect(charge1.line).toMatch(/Error: card processor timed out$/);
      expect(charge2.line).toMatch(/↳ linked to previous attempt$/);
      // Offsets and durations are on the request's timeline: one task after another, and the 20 ms retry delay
      // between the two card attempts. Span start times have millisecond resolution, durations do not: 1.1 ms slack.
      expect(welcome.offsetMs).toBeGreaterThanOrEqual(request.offsetMs);
      expect(charge1.offsetMs).toBeGreaterThanOrEqual(welcome.offsetMs + welcome.durationMs - 1.1);
      expect(charge2.offsetMs).toBeGreaterThanOrEqual(charge1.offsetMs + charge1.durationMs + 18);
      expect(report.offsetMs).toBeGreaterThanOrEqual(charge2.offsetMs + charge2.durationMs - 1.1);
      // The bars draw those numbers: 24 columns from the request's start to the last attempt's end, the █ run
      // where the attempt ran (±1 column of rounding), and a retry's wait (░) from the failed attempt's end.
      const end = Math.max(request.durationMs, ...attempts.map((a) => a.offsetMs + a.durationMs));
      for (const a of attempts) {
        expect(a.bar, a.line).toMatch(/^·*░*█+·*$/);
        expect(Math.abs(running(a.bar).from - (a.offsetMs / end) * 24), a.line).toBeLessThanOrEqual(1.5);
        expect(Math.abs(running(a.bar).to + 1 - ((a.offsetMs + a.durationMs) / end) * 24), a.line).toBeLessThanOrEqual(
          1.5,
        );
      }
      expect(running(charge2.bar).from).toBeGreaterThan(running(charge1.bar).to);
      expect(charge2.bar.slice(running(charge1.bar).to + 1, running(charge2.bar).from)).toMatch(/^░*$/);
      expect(report.bar.endsWith('█')).toBe(true);
    }
    expect(stdout).toMatch(/^ {2}│ {4}└ \+[\d.]+ ms info welcome mail sent email=user\d@example\.com provider=smtp$/m);
    expect(stdout).toMatch(/tasks: success 9/);
    const pinoLine = JSON.parse(stdout.trim().split('\n').at(-1)!) as Record<string, unknown>;
    expect(pinoLine).toMatchObject({
      msg: 'welcome mail sent',
      trace_flags: '01',
      task: { name: 'sendWelcome', attempt: 1 },
    });
    expect(pinoLine.trace_id).toMatch(/^[0-9a-f]{32}$/);
  });

  it('in a terminal keeps a status line of queued, running, retrying and finished tasks below the trees', async () => {
    const stdout = await demoOnce({ DEMO_LIVE: '1' });
    // A frame is never followed by a newline: it is erased (\r, erase line) before the next printed line or frame.
    const frames = stdout.split(/\r\x1b\[2K|\n/).filter((part) => part.startsWith('● '));
    expect(stdout).not.toMatch(/● [^\r\n]*\n/);
    const counts = frames.map((f) =>
      /^● requests (\d+) {2}│ {2}queued (\d+) {2}running (\d+)(?: \([\w, ]+\))? {2}retrying (\d+) {2}│ {2}success (\d+) {2}failed (\d+)$/.exec(
        f,
      ),
    );
    expect(counts.every(Boolean), frames.join('\n')).toBe(true);
    const success = counts.map((c) => Number(c![5]));
    expect(success[0]).toBe(0);
    expect(success).toEqual([...success].sort((a, b) => a - b));
    expect(frames.at(-1)).toBe('● requests 3  │  queued 0  running 0  retrying 0  │  success 9  failed 0');
    expect(new Set(frames).size).toBeGreaterThan(1);
    // Without the frames the output is the same line-based trees.
    expect(trees(stdout.replace(/(● [^\r\n]*)?\r\x1b\[2K/g, ''))).toHaveLength(3);
    expect(stdout.endsWith('\r\x1b[2K')).toBe(true);
  });

  it('with OTEL_EXPORTER_OTLP_ENDPOINT exports request and task spans, linked, and the task metrics over OTLP/HTTP', async () => {
    const receiver = await startOtlpReceiver();
    const stdout = await demoOnce({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url });
    expect(stdout).toContain(`exporting spans and metrics over OTLP/HTTP to ${receiver.url}`);
    expect(trees(stdout)).toHaveLength(3);
    expect(new Set(receiver.requests.map((r) => `${r.path} ${r.contentType}`))).toEqual(
      new Set(['/v1/traces application/json', '/v1/metrics application/json']),
    );

    const requestSpans = receiver.spans.filter((s) => s.name === 'POST /signup');
    expect(requestSpans).toHaveLength(3);
    expect(requestSpans.every((s) => s.kind === 2 && s.service === 'koa-taskflow-demo')).toBe(true);
    const taskSpans = receiver.spans.filter((s) => s.name.startsWith('task '));
    expect(taskSpans.map((s) => s.name).sort()).toEqual(
      [
        ...Array<string>(3).fill('task buildReport'),
        ...Array<string>(6).fill('task chargeCard'),
        ...Array<string>(3).fill('task sendWelcome'),
      ].sort(),
    );
    for (const span of taskSpans) {
      expect(span.kind).toBe(5);
      expect(span.parentSpanId).toBeUndefined();
      const request = requestSpans.find((r) => r.spanId === span.links[0]?.spanId);
      expect(request, `${span.name} links to a request span`).toBeDefined();
      expect(span.links[0].traceId).toBe(request!.traceId);
      expect(span.traceId).not.toBe(request!.traceId);
      expect(request!.events.filter((e) => e.name === 'task.enqueued').map((e) => e.attributes['task.id'])).toContain(
        span.attributes['task.id'],
      );
    }
    for (const retry of taskSpans.filter((s) => s.attributes['task.attempt'] === 2)) {
      const previous = taskSpans.find((s) => s.spanId === retry.links[1]?.spanId);
      expect(previous?.attributes).toMatchObject({ 'task.id': retry.attributes['task.id'], 'task.attempt': 1 });
      expect(previous?.status.code).toBe(2);
    }

    // Cumulative metrics: the last export of each instrument holds the totals.
    const last = (name: string): ReceivedMetric =>
      receiver.metrics.filter((m) => m.name === name && m.scope === 'koa-taskflow').at(-1)!;
    const byNameAndStatus = (metric: ReceivedMetric) =>
      Object.fromEntries(
        metric.points.map((p) => [
          `${String(p.attributes['task.name'])} ${String(p.attributes['task.status'])}`,
          p.value,
        ]),
      );
    expect(byNameAndStatus(last('task.attempts'))).toEqual({
      'sendWelcome success': 3,
      'chargeCard failed': 3,
      'chargeCard success': 3,
      'buildReport success': 3,
    });
    const duration = last('task.duration');
    expect(duration.unit).toBe('s');
    const histograms = byNameAndStatus(duration) as Record<string, { count: number; sum: number }>;
    expect(Object.keys(histograms).sort()).toEqual([
      'buildReport success',
      'chargeCard failed',
      'chargeCard success',
      'sendWelcome success',
    ]);
    for (const [key, { count, sum }] of Object.entries(histograms)) {
      expect(count, key).toBe(3);
      expect(sum, key).toBeGreaterThan(0);
      expect(sum, key).toBeLessThan(30);
    }
    expect(last('task.active').points.every((p) => p.value === 0)).toBe(true);
  });
});

describe('npm run demo (interactive)', () => {
  it('keeps serving (resending its burst with --every) with the dashboard behind the printed credentials, and Ctrl-C shuts it down gracefully', async () => {
    const demo = startNode('examples/demo.js', ['--every', '0.2'], {
      NO_COLOR: '1',
      DEMO_REQUESTS: '2',
      DEMO_LIVE: '0',
      OTEL_EXPORTER_OTLP_ENDPOINT: '',
    });
    // Within the test's timeout, and at once if the demo exits: the helper's error then carries its stdout and stderr.
    const printed = (pattern: RegExp) =>
      Promise.race([demo.waitForLine(pattern, 15_000), demo.exited.then(() => demo.waitForLine(pattern, 1))]);
    const line = await printed(/^dashboard: /);
    const [, url, password] = /^dashboard: (\S+) {2}\(user admin, password (\S+)\)$/.exec(line)!;
    await printed(/^serving on /);
    expect((await fetch(url)).status).toBe(401);
    const page = await fetch(url, {
      headers: { authorization: `Basic ${Buffer.from(`admin:${password}`).toString('base64')}` },
    });
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('<html');
    // Later bursts print their trees too; Ctrl-C comes while they keep coming.
    await vi.waitFor(
      () => expect(demo.lines.filter((l) => l.startsWith('▶ POST /signup')).length).toBeGreaterThanOrEqual(4),
      { timeout: 10_000 },
    );
    demo.process.kill('SIGINT');
    expect(await demo.exited).toBe(0);
    expect(demo.lines.some((l) => l.includes('shutting down'))).toBe(true);
  });
});
