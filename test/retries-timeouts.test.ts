import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  getTaskContext,
  InMemoryObserver,
  TaskTimeoutError,
  type TaskHandle,
  type TaskOptions,
  type TaskRecord,
} from 'koa-taskflow';
import { createManager, deferred, startApp, waitFor } from './helpers/server.js';
import { retryDelay } from '../src/options.js';

describe('retryDelay', () => {
  const base = { delay: 100, backoff: 2, maxDelay: undefined, jitter: false };

  it('grows as delay * backoff^(n-1)', () => {
    expect([1, 2, 3, 4].map((n) => retryDelay(base, n))).toEqual([100, 200, 400, 800]);
  });

  it('is capped by maxDelay', () => {
    expect([1, 2, 3, 4].map((n) => retryDelay({ ...base, maxDelay: 250 }, n))).toEqual([100, 200, 250, 250]);
  });

  it('with full jitter draws uniformly below the computed wait', () => {
    expect(retryDelay({ ...base, jitter: true }, 3, () => 0.5)).toBe(200);
    expect(retryDelay({ ...base, jitter: true }, 3, () => 0)).toBe(0);
  });

  it('is capped at 2^31 − 1 ms, the longest Node timer, with or without jitter; a delay of 0 stays 0', () => {
    const huge = { ...base, delay: 1_000, backoff: 10 };
    expect([9, 400].map((n) => retryDelay(huge, n))).toEqual([2 ** 31 - 1, 2 ** 31 - 1]);
    expect(retryDelay({ ...huge, jitter: true }, 400, () => 0.5)).toBe((2 ** 31 - 1) / 2);
    expect(retryDelay({ ...huge, delay: 0 }, 400)).toBe(0);
  });

  it('is constant with the default backoff of 1', () => {
    expect([1, 2, 3].map((n) => retryDelay({ ...base, backoff: 1 }, n))).toEqual([100, 100, 100]);
  });
});

describe('retries', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('wait delay * backoff^(n-1) between attempts and stop at the first success', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    const manager = createManager();
    const attemptsAt: number[] = [];
    const start = Date.now();
    const flaky = manager.task(
      async function flaky() {
        attemptsAt.push(Date.now() - start);
        if (attemptsAt.length < 3) throw new Error(`failure ${attemptsAt.length}`);
      },
      { retries: 5, delay: 100, backoff: 3 },
    );
    const id = manager.add(flaky);
    await vi.advanceTimersByTimeAsync(2_000);
    expect(attemptsAt).toEqual([0, 100, 400]);
    const record = await manager.get(id);
    expect(record).toMatchObject({ status: 'success', attempts: 3, maxAttempts: 6 });
    expect(record!.error).toBeUndefined();
  });

  it('end failed after the last attempt, with the last error, and call onError once', async () => {
    const manager = createManager();
    const onError = vi.fn();
    const always = manager.task(
      async function always(n: number) {
        throw new RangeError(`bad ${n} at attempt ${getTaskContext()!.attempt}`);
      },
      { retries: 2, onError },
    );
    const id = manager.add(always, 1);
    await manager.drain();
    const record = await manager.get(id);
    expect(record).toMatchObject({
      status: 'failed',
      attempts: 3,
      error: { type: 'RangeError', message: 'bad 1 at attempt 3' },
    });
    expect(onError).toHaveBeenCalledTimes(1);
    expect(onError.mock.calls[0][0]).toBeInstanceOf(RangeError);
    expect((onError.mock.calls[0][1] as TaskRecord).status).toBe('failed');
  });

  it('report each failed attempt as running → pending with its error', async () => {
    const observer = new InMemoryObserver();
    const manager = createManager({ observers: [observer] });
    const twice = manager.task(
      function twice() {
        if (getTaskContext()!.attempt === 1) throw new Error('first');
      },
      { retries: 1 },
    );
    const id = manager.add(twice);
    await manager.drain();
    const statuses = observer.lifecycle
      .filter((e) => e.taskId === id)
      .map((e) => [e.previousStatus, e.status, e.attempt, e.error?.message]);
    expect(statuses).toEqual([
      [undefined, 'pending', 0, undefined],
      ['pending', 'running', 1, undefined],
      ['running', 'pending', 1, 'first'],
      ['pending', 'running', 2, undefined],
      ['running', 'success', 2, undefined],
    ]);
  });

  it('a rejecting onError never becomes an unhandled rejection', async () => {
    const manager = createManager();
    const id = manager
      .with({
        onError: async () => {
          throw new Error('handler broke');
        },
      })
      .add(() => {
        throw new Error('task broke');
      });
    await manager.drain();
    expect((await manager.get(id))!.status).toBe('failed');
    // test/setup.ts fails the file on any unhandled rejection.
    await new Promise((r) => setTimeout(r, 10));
  });
});

describe('retry waits end to end (fake clock)', () => {
  afterEach(() => {
    vi.useRealTimers();
    vi.restoreAllMocks();
  });

  /** Waits between the attempts of a task that always fails: delay 100, backoff 3, maxDelay 500 unless overridden. */
  async function retryWaits({ timeoutStep, ...options }: TaskOptions & { timeoutStep?: number[] }): Promise<number[]> {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    const manager = createManager();
    const attemptsAt: number[] = [];
    const id = manager
      .with({ retries: 4, delay: 100, backoff: 3, maxDelay: 500, ...options })
      .add(function alwaysDown() {
        attemptsAt.push(Date.now());
        throw new Error('down');
      });
    // In steps: a timer that fired early (after 1 ms) shows as a short wait between two attempts.
    for (const step of timeoutStep ?? [10_000]) await vi.advanceTimersByTimeAsync(step);
    expect(await manager.get(id)).toMatchObject({ status: 'failed', attempts: (options.retries ?? 4) + 1 });
    return attemptsAt.slice(1).map((at, i) => at - attemptsAt[i]);
  }

  // Uncapped the waits would be 100, 300, 900, 2700.
  const capped = [100, 300, 500, 500];

  it('are capped by maxDelay', async () => {
    expect(await retryWaits({})).toEqual(capped);
  });

  it('with jitter stay within [0, capped wait], drawn per retry', async () => {
    const waits = await retryWaits({ jitter: true });
    waits.forEach((wait, i) => {
      expect(wait).toBeGreaterThanOrEqual(0);
      expect(wait).toBeLessThanOrEqual(capped[i]);
    });
    vi.spyOn(Math, 'random').mockReturnValue(0.5);
    expect(await retryWaits({ jitter: true })).toEqual(capped.map((wait) => wait / 2));
  });

  // 2^31 − 1 ms (24.8 days), the longest wait a Node timer keeps: Node fires a longer one after 1 ms.
  const MAX_TIMER = 2 ** 31 - 1;

  it('without maxDelay are capped at 2^31 − 1 ms instead of turning into 1 ms, with and without jitter', async () => {
    // delay 2^30 with backoff 4: the second retry would wait 2^32 ms.
    expect(
      await retryWaits({
        delay: 2 ** 30,
        backoff: 4,
        maxDelay: undefined,
        retries: 2,
        timeoutStep: [2 ** 30, 60_000, MAX_TIMER],
      }),
    ).toEqual([2 ** 30, MAX_TIMER]);
    vi.spyOn(Math, 'random').mockReturnValue(0.999);
    const waits = await retryWaits({
      delay: 2 ** 30,
      backoff: 4,
      maxDelay: undefined,
      retries: 2,
      jitter: true,
      timeoutStep: [2 ** 30, 60_000, MAX_TIMER],
    });
    expect(waits[1]).toBe(Math.floor(0.999 * MAX_TIMER));
  });
});

describe('retries and timeouts of tasks added through ctx.tasks', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('an after-response task fails twice, waits delay * backoff^(n-1), succeeds on attempt 3; the response went out first', async () => {
    const gate = deferred();
    const attemptsAt: number[] = [];
    const { url, manager } = await startApp((app, manager) => {
      const charge = manager.task(async function charge(orderId: string) {
        await gate.promise;
        attemptsAt.push(Date.now());
        if (attemptsAt.length < 3) throw new Error(`card declined for ${orderId}`);
      });
      app.use(async (ctx) => {
        ctx.body = { id: ctx.tasks.with({ retries: 4, delay: 100, backoff: 3 }).addTask(charge, 'o-7') };
      });
    });
    const response = await fetch(url);
    expect(response.status).toBe(200);
    const { id } = (await response.json()) as { id: string };
    await waitFor(() => manager.running === 1, 5_000, 'the first attempt started after the response');
    // HTTP ran on real timers; the retry waits run on a fake clock from here.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    gate.resolve();
    await vi.advanceTimersByTimeAsync(1_000);
    expect(attemptsAt.map((at) => at - attemptsAt[0])).toEqual([0, 100, 400]);
    expect(await manager.get(id)).toMatchObject({
      status: 'success',
      attempts: 3,
      maxAttempts: 5,
      args: ['o-7'],
      error: undefined,
    });
  });

  it('a scheduled task whose attempt times out sees its signal abort with TaskTimeoutError, and its retry succeeds', async () => {
    const abortReasons: unknown[] = [];
    let handle: TaskHandle | undefined;
    const { url } = await startApp((app) => {
      app.use(async (ctx) => {
        handle = ctx.tasks.with({ timeout: 20, retries: 1 }).schedule(async function lookup() {
          const { signal, attempt } = getTaskContext()!;
          if (attempt > 1) return;
          await new Promise((_, reject) =>
            signal.addEventListener('abort', () => {
              abortReasons.push(signal.reason);
              reject(signal.reason);
            }),
          );
        });
        ctx.body = { id: handle.id };
      });
    });
    const { id } = (await (await fetch(url)).json()) as { id: string };
    const record = await handle!.done;
    expect(abortReasons).toHaveLength(1);
    expect(abortReasons[0]).toBeInstanceOf(TaskTimeoutError);
    expect(record).toMatchObject({ id, name: 'lookup', status: 'success', attempts: 2 });
  });
});

describe('timeout', () => {
  it('aborts the attempt signal and fails the attempt with TaskTimeoutError', async () => {
    const manager = createManager();
    let reason: unknown;
    const hangs = manager.task(
      async function hangs() {
        const { signal } = getTaskContext()!;
        await new Promise((_, reject) => {
          signal.addEventListener('abort', () => {
            reason = signal.reason;
            reject(signal.reason);
          });
        });
      },
      { timeout: 20 },
    );
    const id = manager.add(hangs);
    await manager.drain();
    expect(reason).toBeInstanceOf(TaskTimeoutError);
    expect(await manager.get(id)).toMatchObject({ status: 'failed', error: { type: 'TaskTimeoutError' } });
  });

  it('fails the attempt on time even when the task ignores its signal, and retries it', async () => {
    const manager = createManager();
    let attempts = 0;
    const stubborn = manager.task(
      async function stubborn() {
        attempts++;
        if (attempts === 1) await new Promise((r) => setTimeout(r, 60_000).unref());
      },
      { timeout: 20, retries: 1 },
    );
    const id = manager.add(stubborn);
    await manager.drain();
    expect(attempts).toBe(2);
    expect(await manager.get(id)).toMatchObject({ status: 'success', attempts: 2 });
  });

  it('each attempt gets a fresh, unaborted signal', async () => {
    const manager = createManager();
    const abortedAtStart: boolean[] = [];
    const fn = manager.task(
      async function freshSignal() {
        const { signal, attempt } = getTaskContext()!;
        abortedAtStart.push(signal.aborted);
        if (attempt === 1) await new Promise((r) => signal.addEventListener('abort', r));
      },
      { timeout: 15, retries: 1 },
    );
    manager.add(fn);
    await manager.drain();
    expect(abortedAtStart).toEqual([false, false]);
  });
});
