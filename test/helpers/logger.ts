import type { TaskLogger } from 'koa-taskflow';

/**
 * A TaskLogger that keeps each `error` line as `<message> <the err field's message or name>` and drops the
 * rest: what tests assert the library reported.
 */
export function recordingLogger(part: 'message' | 'name' = 'message'): { errors: string[]; logger: TaskLogger } {
  const errors: string[] = [];
  const noop = () => {};
  const logger = {
    trace: noop,
    debug: noop,
    info: noop,
    warn: noop,
    fatal: noop,
    error: (obj: object, msg?: string) => void errors.push(`${msg} ${(obj as { err?: Error }).err?.[part]}`),
  };
  return { errors, logger };
}
