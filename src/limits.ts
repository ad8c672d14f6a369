import type { TaskLimit } from './options.js';
import type { TaskRun } from './task-run.js';

/** A limited run from the moment it enters its key until its attempt ends (waiting, admitted or running). */
interface Entry {
  run: TaskRun;
  key: LimitKey;
  priority: number;
  /** Order of arrival: equal priorities start first come, first served. */
  seq: number;
  /** In its key's queue, over the limit. */
  queued: boolean;
  started: boolean;
}

/**
 * One key's state: the task name, or the name and a value of tag `by`. `active` counts the attempts holding
 * the key (admitted to the runner's queue, or running); `admitted` the ones of them not started yet, which
 * count against the rate as if they had started (an admitted task starts as soon as a slot frees).
 */
class LimitKey {
  active = 0;
  admitted = 0;
  /** Start times still inside the rate window, oldest first, from `startsHead` on. */
  starts: number[] = [];
  startsHead = 0;
  intervalMs = 0;
  /** The tasks over the limit: a binary heap, higher priority first, then earlier arrival. */
  readonly waiting: Entry[] = [];
  /** Entries of `waiting` whose run ended there: skipped when reached, or compacted away (see Limiter.release). */
  dropped = 0;
  timer: NodeJS.Timeout | undefined;

  constructor(readonly id: string) {}

  get startsInWindow(): number {
    return this.starts.length - this.startsHead;
  }

  /** Forget starts that left the window (`intervalMs` before `now`). */
  trim(now: number): void {
    const starts = this.starts;
    let head = this.startsHead;
    while (head < starts.length && starts[head] <= now - this.intervalMs) head++;
    if (head === starts.length) {
      starts.length = 0;
      head = 0;
    } else if (head > 32 && head * 2 > starts.length) {
      starts.splice(0, head);
      head = 0;
    }
    this.startsHead = head;
  }
}

const before = (a: Entry, b: Entry): boolean => a.priority > b.priority || (a.priority === b.priority && a.seq < b.seq);

function heapPush(heap: Entry[], entry: Entry): void {
  let i = heap.push(entry) - 1;
  while (i > 0) {
    const parent = (i - 1) >> 1;
    if (!before(entry, heap[parent])) break;
    heap[i] = heap[parent];
    i = parent;
  }
  heap[i] = entry;
}

function heapPop(heap: Entry[]): Entry {
  const top = heap[0];
  const last = heap.pop()!;
  if (heap.length === 0) return top;
  let i = 0;
  for (;;) {
    const left = 2 * i + 1;
    if (left >= heap.length) break;
    const child = left + 1 < heap.length && before(heap[left + 1], heap[left]) ? left + 1 : left;
    if (!before(heap[child], last)) break;
    heap[i] = heap[child];
    i = child;
  }
  heap[i] = last;
  return top;
}

/**
 * The `limit` task option, per process. A task whose key is at its limit waits in that key's own queue, off
 * the runner's: it holds no concurrency slot and nothing behind it waits for it. A key's next task is offered
 * to the runner when one of its attempts ends or its rate window opens (a timer per key, armed only while
 * tasks wait on the rate), so dispatch never rescans waiting tasks.
 */
export class Limiter {
  readonly #keys = new Map<string, LimitKey>();
  readonly #entries = new Map<TaskRun, Entry>();
  /** Hands an admitted run to the runner: it starts when a slot is free and nothing ranks before it. */
  readonly #admit: (run: TaskRun) => void;
  #seq = 0;
  /** Runs waiting in a key's queue. */
  waiting = 0;
  /** Someone awaits `drain()`: rate timers keep the process alive until it resolves. */
  #keepAlive = false;

  constructor(admit: (run: TaskRun) => void) {
    this.#admit = admit;
  }

  /**
   * A run of a limited task wants to start an attempt. True: it holds its key and goes on to the runner's
   * queue. False: it waits here and is admitted later.
   */
  enter(run: TaskRun, limit: TaskLimit, priority: number): boolean {
    const id = limitKey(run, limit);
    let key = this.#keys.get(id);
    if (key === undefined) this.#keys.set(id, (key = new LimitKey(id)));
    const entry: Entry = { run, key, priority, seq: this.#seq++, queued: false, started: false };
    this.#entries.set(run, entry);
    if (key.waiting.length === 0 && this.#fits(key, limit)) {
      this.#hold(entry);
      return true;
    }
    entry.queued = true;
    heapPush(key.waiting, entry);
    this.waiting++;
    return false;
  }

  /** An admitted run's attempt starts now: it counts in its key's rate window from here. */
  started(run: TaskRun): void {
    const entry = this.#entries.get(run);
    if (entry === undefined || entry.started) return;
    entry.started = true;
    const key = entry.key;
    key.admitted--;
    if (run.options.limit?.rate === undefined) return;
    const now = Date.now();
    key.starts.push(now);
    // Tasks waiting on a window full of admitted tasks (see #fits) can be timed from the oldest start now.
    if (key.waiting.length > 0) this.#wake(key, key.starts[key.startsHead] + key.intervalMs - now);
  }

  /** The run's attempt has ended, or the run ended while admitted: its key's next task may go. */
  release(run: TaskRun): void {
    const entry = this.#entries.get(run);
    if (entry === undefined) return;
    this.#entries.delete(run);
    const key = entry.key;
    if (entry.queued) {
      // It ended while waiting in its key's queue: skipped when the key reaches it, and the queue compacted once
      // such entries are half of it, so that tasks added and cancelled behind a busy key cannot pile up.
      entry.queued = false;
      this.waiting--;
      if (++key.dropped > 32 && key.dropped * 2 > key.waiting.length) {
        // In place (a pump under way holds the array): sorted, the rest is a heap.
        const kept = key.waiting.filter((e) => e.queued).sort((a, b) => (before(a, b) ? -1 : 1));
        key.waiting.length = 0;
        for (const e of kept) key.waiting.push(e);
        key.dropped = 0;
      }
      return;
    }
    key.active--;
    if (!entry.started) key.admitted--;
    this.#pump(key);
  }

  /**
   * Rate timers do not keep the process alive (a server does), except while someone awaits `drain()`: a script
   * that adds rate-limited tasks and awaits drain() must not exit with them still waiting.
   */
  keepAlive(on: boolean): void {
    if (this.#keepAlive === on) return;
    this.#keepAlive = on;
    for (const key of this.#keys.values()) {
      if (on) key.timer?.ref();
      else key.timer?.unref();
    }
  }

  /** Stop every rate timer (shutdown: nothing waits any more). */
  clear(): void {
    for (const key of this.#keys.values()) clearTimeout(key.timer);
  }

  #hold(entry: Entry): void {
    entry.key.active++;
    entry.key.admitted++;
  }

  /** Whether one more attempt of this key may be admitted now; when the rate stops it, its timer is armed. */
  #fits(key: LimitKey, limit: TaskLimit): boolean {
    if (limit.concurrency !== undefined && key.active >= limit.concurrency) return false;
    const rate = limit.rate;
    if (rate === undefined) return true;
    const now = Date.now();
    key.intervalMs = rate.intervalMs;
    key.trim(now);
    if (key.startsInWindow + key.admitted < rate.max) return true;
    // Full with admitted tasks that have not started yet: `started` arms the timer once they have.
    if (key.startsInWindow > 0) this.#wake(key, key.starts[key.startsHead] + key.intervalMs - now);
    return false;
  }

  #wake(key: LimitKey, waitMs: number): void {
    if (key.timer !== undefined) return;
    // intervalMs is at most MAX_TIMER_MS (validated), so is the wait. A timer that fires a little early finds the
    // window still full and is armed again.
    key.timer = setTimeout(
      () => {
        key.timer = undefined;
        this.#pump(key);
      },
      Math.max(1, waitMs),
    );
    // The timer that forgets an idle key holds nothing anyone waits for.
    if (!this.#keepAlive || (key.waiting.length === 0 && key.active === 0)) key.timer.unref();
  }

  /** Admit the key's next tasks while its limit allows; forget the key once nothing needs it. */
  #pump(key: LimitKey): void {
    const heap = key.waiting;
    while (heap.length > 0) {
      const head = heap[0];
      if (!head.queued) {
        heapPop(heap);
        key.dropped--;
        continue;
      }
      if (head.run.isFinal) {
        // Ended and not released yet (its end is being told): released now, as dropped.
        heapPop(heap);
        head.queued = false;
        this.waiting--;
        this.#entries.delete(head.run);
        continue;
      }
      if (!this.#fits(key, head.run.options.limit!)) break;
      heapPop(heap);
      this.waiting--;
      head.queued = false;
      this.#hold(head);
      this.#admit(head.run);
    }
    if (heap.length > 0 || key.active > 0) return;
    key.trim(Date.now());
    // Starts still in the window must be remembered (a task arriving now must not exceed the rate); the key is
    // forgotten once they have left it, so keys of tenants seen once do not pile up.
    if (key.startsInWindow > 0) this.#wake(key, key.starts[key.startsHead] + key.intervalMs - Date.now());
    else {
      clearTimeout(key.timer);
      this.#keys.delete(key.id);
    }
  }
}

/** The key a run is limited under: its name, or its name and the value of tag `by` (absent: a key of its own). */
function limitKey(run: TaskRun, limit: TaskLimit): string {
  if (limit.by === undefined) return run.name;
  const value = run.tags[limit.by];
  return value === undefined ? `${run.name}\u0000` : `${run.name}\u0000=${value}`;
}
