import type { Reporter } from '../report.js';
import type { TaskLogger, TaskObserver } from '../types.js';
import { ObserverChain } from './chain.js';
import { pinoObserver } from './pino.js';
import { spanEventObserver } from './span-events.js';

/** The chain a TaskManager starts with: span events, pino (with a logger), then the user's observers. */
export function builtInChain(
  options: { logger?: TaskLogger; observers?: TaskObserver[]; observerMaxInFlight?: number },
  timeoutMs: number,
  reporter: Reporter,
): ObserverChain {
  const builtIn: TaskObserver[] = [spanEventObserver()];
  if (options.logger !== undefined) builtIn.push(pinoObserver(options.logger));
  return new ObserverChain(
    [...builtIn, ...(options.observers ?? [])],
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
