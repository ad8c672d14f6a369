import { TaskflowError } from './errors.js';
import { checkThreadTask } from './isolate.js';
import {
  mergeOptions,
  resolveOptions,
  validateTaskOptions,
  type ResolvedTaskOptions,
  type TaskOptions,
} from './options.js';
import type { TaskFunction, TaskRecord } from './types.js';

/** A function registered with `manager.task()`: found by name (recovery, retry) and by function (adds). */
export interface Registration {
  fn: TaskFunction;
  name: string;
  options: TaskOptions;
  resolved: ResolvedTaskOptions;
}

/** The options a record carries: what it was added with, as far as a record (or another process) can tell. */
export function recordedOptions(record: TaskRecord): TaskOptions {
  return {
    ...record.options,
    tags: record.tags,
    priority: record.priority,
    idempotencyKey: record.idempotencyKey,
    retries: Math.max(0, record.maxAttempts - 1),
  };
}

/** The registered tasks, and the resolved options of every add (manager defaults < `task()` < `with()`). */
export class TaskRegistry {
  readonly #defaults: TaskOptions;
  readonly #defaultResolved = new Map<string, ResolvedTaskOptions>();
  readonly #byName = new Map<string, Registration>();
  readonly #byFunction = new WeakMap<TaskFunction, Registration>();

  constructor(defaults: TaskOptions | undefined) {
    this.#defaults = mergeOptions({}, defaults);
  }

  register<F extends TaskFunction>(fn: F, options: TaskOptions): F {
    if (typeof fn !== 'function') throw new TypeError(`task(): argument "fn" must be a function, got ${typeof fn}`);
    validateTaskOptions('task()', options);
    const name = options.name ?? fn.name;
    if (!name) throw new TypeError('task(): a task needs a name: pass a named function or option "name"');
    const existing = this.#byName.get(name);
    if (existing !== undefined && existing.fn !== fn) {
      throw new TaskflowError(
        `task(): the name "${name}" is already registered to another function; pass a distinct option "name"`,
        { code: 'ERR_TASK_NAME_TAKEN' },
      );
    }
    const merged = mergeOptions(this.#defaults, options);
    const registration: Registration = { fn, name, options: merged, resolved: resolveOptions('task()', merged, name) };
    if (registration.resolved.isolate === 'thread') checkThreadTask('task()', name, registration.resolved.module);
    this.#byName.set(name, registration);
    this.#byFunction.set(fn, registration);
    return fn;
  }

  named(name: string): Registration | undefined {
    return this.#byName.get(name);
  }

  of(fn: TaskFunction): Registration | undefined {
    return this.#byFunction.get(fn);
  }

  /** The options an add of `fn` runs with. */
  optionsFor(where: string, fn: TaskFunction, overrides: TaskOptions | undefined): ResolvedTaskOptions {
    const registration = this.#byFunction.get(fn);
    if (registration !== undefined) {
      if (overrides === undefined) return registration.resolved;
      return isolatable(where, resolveOptions(where, mergeOptions(registration.options, overrides), registration.name));
    }
    const fallbackName = fn.name || 'anonymous';
    if (overrides === undefined) {
      // Unregistered functions with no overrides share one resolved object per name.
      let resolved = this.#defaultResolved.get(fallbackName);
      if (resolved === undefined) {
        resolved = resolveOptions(where, this.#defaults, fallbackName);
        if (this.#defaultResolved.size < 1_000) this.#defaultResolved.set(fallbackName, resolved);
      }
      return resolved;
    }
    return isolatable(where, resolveOptions(where, mergeOptions(this.#defaults, overrides), fallbackName));
  }
}

/** Options that turn `isolate: 'thread'` on at an add are checked there too. */
function isolatable(where: string, resolved: ResolvedTaskOptions): ResolvedTaskOptions {
  if (resolved.isolate === 'thread') checkThreadTask(where, resolved.name, resolved.module);
  return resolved;
}
