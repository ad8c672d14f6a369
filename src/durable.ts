import type { TaskOptions } from './options.js';
import type { PersistedTaskOptions } from './types.js';

/** Lease defaults: a crashed process's tasks are taken over within about `leaseMs` (plus one check interval). */
export const DEFAULT_LEASE_MS = 30_000;

const PERSISTED_KEYS = [
  'delay',
  'backoff',
  'maxDelay',
  'jitter',
  'timeout',
  'shield',
  'persist',
  'requeueOnInterrupt',
  'maxStalls',
  'trace',
  'limit',
  'isolate',
] as const;

/** The part of a task's `with()` overrides that a restarted process needs; undefined when there is none. */
export function persistedOptions(overrides: TaskOptions | undefined): PersistedTaskOptions | undefined {
  if (overrides === undefined) return undefined;
  let out: Record<string, unknown> | undefined;
  for (const key of PERSISTED_KEYS) {
    if (overrides[key] !== undefined) (out ??= {})[key] = overrides[key];
  }
  return out;
}
