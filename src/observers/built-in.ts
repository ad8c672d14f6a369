import type { Reporter } from '../report.js';
import type { TaskLogger, TaskObserver } from '../types.js';
import { ObserverChain } from './chain.js';
import { pinoObserver } from './pino.js';

/**
 * The chain a TaskManager starts with: pino (with a logger), then the user's observers. Span events are not
 * an observer here: an attempt writes its `task.log` event on its own span (see TaskRun.log), first.
 */
export function builtInChain(
  options: { logger?: TaskLogger; observers?: TaskObserver[]; observerMaxInFlight?: number },
  timeoutMs: number,
  reporter: Reporter,
): ObserverChain {
  const observers = options.observers ?? [];
  return new ObserverChain(
    options.logger === undefined ? observers : [pinoObserver(options.logger), ...observers],
    (observer, stage, error) =>
      reporter.report(
        `observer ${observer.constructor?.name ?? 'Object'}.${stage} failed (reported once per observer)`,
        error,
      ),
    (label, why) =>
      reporter.warn(
        { observer: label },
        `koa-taskflow: observer ${label} is dropping events: ${why}; counted in metrics().observers (reported once per observer)`,
      ),
    { timeoutMs, maxInFlight: options.observerMaxInFlight },
  );
}
