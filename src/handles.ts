import { TaskCancelledError } from './errors.js';
import { resolveOptions, type ResolvedTaskOptions } from './options.js';
import { recordedOptions } from './registry.js';
import type { Runner } from './runner.js';
import { NO_LOGS, type TaskRun } from './task-run.js';
import { FINAL_STATUSES, type TaskRecord, type TaskStore } from './types.js';

export interface TaskHandle<A extends unknown[] = unknown[]> {
  readonly id: string;
  readonly name: string;
  readonly options: Readonly<ResolvedTaskOptions>;
  readonly args: A;
  /** Resolves when the first attempt starts; rejects with `TaskCancelledError` if the task never starts. */
  readonly started: Promise<void>;
  /** Resolves with the final record (`success`, `failed`, `cancelled`, `interrupted`). Never rejects. */
  readonly done: Promise<TaskRecord>;
}

/** What following a task that may live in another process needs. */
export interface FollowSource {
  readonly runner: Runner;
  readonly store: TaskStore;
  /** The record as `manager.get(id)` answers it. */
  get(id: string): Promise<TaskRecord | undefined>;
  /** Shutdown has begun: polling stops at the latest record seen. */
  readonly closing: boolean;
}

/** The handle of a task accepted here. */
export function handleOf(run: TaskRun, args: unknown[]): TaskHandle {
  const { started, done } = run.signals();
  return { id: run.id, name: run.name, options: run.options, args, started, done };
}

/**
 * The handle of an idempotency-key hit: it follows task `id`, which holds the key. Live here, that task's
 * own handle; else (it ended here, or lives in another process sharing the store) its record answers.
 */
export function followingHandle(source: FollowSource, id: string, args: unknown[]): TaskHandle {
  const live = source.runner.live(id);
  if (live !== undefined) return handleOf(live, args);
  // Stores answer asynchronously, so `name` and `options` are the holder's once its record is read (before
  // that: '' and defaults).
  let name = '';
  let options = resolveOptions('handle', {}, '');
  const first = source.get(id).then(
    (record) => {
      if (record === undefined) return undefined;
      name = record.name;
      options = resolveOptions('handle', recordedOptions(record), record.name);
      return record;
    },
    () => undefined,
  );
  // The record is gone (evicted, past retention, store unreachable): `done` still gets a final record, never undefined.
  const gone = (): TaskRecord => {
    const now = Date.now();
    const message = `duplicate of task ${id}, whose record is no longer in the store`;
    return {
      id,
      name,
      status: 'cancelled',
      args,
      tags: {},
      attempts: 0,
      maxAttempts: 1,
      createdAt: now,
      endedAt: now,
      error: { type: 'TaskCancelledError', message },
      reason: 'duplicate',
      logs: NO_LOGS,
    };
  };
  const done = first.then((record) => (record === undefined ? gone() : follow(source, id, record)));
  // Resolves once the holder is known to have started; rejects like any handle's when it never did.
  const started = first.then(async (record) => {
    if (record !== undefined && record.attempts > 0) return;
    const final = await done;
    if (final.attempts === 0) throw new TaskCancelledError(final.reason ?? 'duplicate');
  });
  started.catch(() => {});
  return {
    id,
    args,
    started,
    done,
    get name() {
      return name;
    },
    get options() {
      return options;
    },
  };
}

/** The final record of task `id`, wherever it runs: live here, or polled from the shared store. */
export async function follow(source: FollowSource, id: string, fallback: TaskRecord): Promise<TaskRecord> {
  const live = source.runner.live(id);
  if (live !== undefined) return live.signals().done;
  let last: TaskRecord | undefined;
  for (let wait = 25; ; wait = Math.min(wait * 2, 1_000)) {
    last = (await source.store.get(id).catch(() => undefined)) ?? last;
    if (last !== undefined && FINAL_STATUSES.has(last.status)) return source.runner.snapshot(last);
    if (source.closing) return source.runner.snapshot(last ?? fallback);
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
}
