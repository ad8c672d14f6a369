import { checkKnownKeys, checkTags, describeValue } from '../options.js';
import {
  LOG_LEVELS,
  TASK_STATUSES,
  type LifecycleEvent,
  type LogEvent,
  type LogLevel,
  type ProgressEvent,
  type TaskObserver,
  type TaskStatus,
  type Tags,
} from '../types.js';

export interface ObserverFilter {
  /** Every given tag must be present on the task with this value. */
  tags?: Record<string, string>;
  /** Task names to pass. */
  names?: string[];
  /** Log events below this level are dropped (lifecycle events are not affected). */
  minLevel?: LogLevel;
  /** Lifecycle statuses to pass (log events are not affected). */
  statuses?: TaskStatus[];
}

const WHERE = 'filterObserver';
const FILTER_OPTIONS = new Set(['tags', 'names', 'minLevel', 'statuses']);

/** Passes to `inner` only the events that match every given criterion. */
export function filterObserver(filter: ObserverFilter, inner: TaskObserver): TaskObserver {
  if (filter === null || typeof filter !== 'object') throw new TypeError(`${WHERE}: filter must be an object`);
  if (inner === null || typeof inner !== 'object')
    throw new TypeError(`${WHERE}: the second argument must be an observer object`);
  checkKnownKeys(WHERE, filter, FILTER_OPTIONS);
  checkTags(WHERE, filter.tags);
  if (filter.names !== undefined && (!Array.isArray(filter.names) || filter.names.some((n) => typeof n !== 'string'))) {
    throw new TypeError(`${WHERE}: option "names" must be an array of strings`);
  }
  if (filter.minLevel !== undefined && !LOG_LEVELS.includes(filter.minLevel)) {
    throw new RangeError(
      `${WHERE}: option "minLevel" must be one of ${LOG_LEVELS.join(', ')}, got ${describeValue(filter.minLevel)}`,
    );
  }
  if (
    filter.statuses !== undefined &&
    (!Array.isArray(filter.statuses) || filter.statuses.some((s) => !TASK_STATUSES.includes(s)))
  ) {
    throw new RangeError(`${WHERE}: option "statuses" must be an array of ${TASK_STATUSES.join(', ')}`);
  }
  const tagEntries = Object.entries(filter.tags ?? {});
  const names = filter.names && new Set(filter.names);
  const minRank = filter.minLevel === undefined ? 0 : LOG_LEVELS.indexOf(filter.minLevel);
  const statuses = filter.statuses && new Set(filter.statuses);
  const matchesTask = (name: string, tags: Tags): boolean =>
    (names === undefined || names.has(name)) && tagEntries.every(([key, value]) => tags[key] === value);

  const observer: TaskObserver = {};
  // Named after the observer it wraps, in metrics().observers and reports.
  const name = inner.name ?? (inner.constructor !== Object ? inner.constructor?.name : undefined);
  if (name) observer.name = name;
  if (inner.onLog) {
    observer.onLog = (event: LogEvent) => {
      if (matchesTask(event.name, event.tags) && LOG_LEVELS.indexOf(event.level) >= minRank) return inner.onLog!(event);
    };
  }
  if (inner.onLifecycle) {
    observer.onLifecycle = (event: LifecycleEvent) => {
      if (matchesTask(event.name, event.tags) && (statuses === undefined || statuses.has(event.status)))
        return inner.onLifecycle!(event);
    };
  }
  // Progress events pass on name and tags (neither `minLevel` nor `statuses` applies to them).
  if (inner.onProgress) {
    observer.onProgress = (event: ProgressEvent) => {
      if (matchesTask(event.name, event.tags)) return inner.onProgress!(event);
    };
  }
  if (inner.onLifecycle) {
    observer.wantsLifecycle = (status, retrying) =>
      (statuses === undefined || statuses.has(status)) &&
      (typeof inner.wantsLifecycle !== 'function' || inner.wantsLifecycle(status, retrying));
  }
  if (inner.onLog) {
    observer.wantsLog = (level) =>
      LOG_LEVELS.indexOf(level) >= minRank && (typeof inner.wantsLog !== 'function' || inner.wantsLog(level));
  }
  if (inner.startup) observer.startup = () => inner.startup!();
  if (inner.close) observer.close = () => inner.close!();
  return observer;
}
