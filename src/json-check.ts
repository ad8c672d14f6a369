/**
 * Throws a TypeError naming the argument when `args` would not come back the same from JSON: a restarted
 * process runs the task with what the store kept, so anything JSON would change or drop is refused now,
 * while the caller can still fix it, rather than silently after a crash.
 */
export function assertPersistable(where: string, name: string, args: readonly unknown[]): void {
  for (let i = 0; i < args.length; i++) {
    const problem = jsonProblem(args[i], new Set(), 0);
    if (problem !== undefined) {
      throw new TypeError(
        `${where}: argument ${i + 1} of task "${name}" is not JSON-serialisable (${problem}); a persisted task's args are stored as JSON ` +
          `to run it again after a restart: pass plain data (ids, strings, numbers, plain objects/arrays), or option "persist: false"`,
      );
    }
  }
}

function jsonProblem(value: unknown, ancestors: Set<object>, depth: number): string | undefined {
  switch (typeof value) {
    case 'string':
    case 'boolean':
    case 'undefined':
      return undefined;
    case 'number':
      return Number.isFinite(value) ? undefined : `${value} becomes null`;
    case 'bigint':
      return 'a bigint; pass it as a string';
    case 'function':
      return 'a function';
    case 'symbol':
      return 'a symbol';
  }
  if (value === null) return undefined;
  const object = value as object;
  if (depth > 64) return 'nested deeper than 64 levels';
  if (ancestors.has(object)) return 'a circular reference';
  if (Array.isArray(object)) {
    ancestors.add(object);
    for (let i = 0; i < object.length; i++) {
      if (object[i] === undefined) return `undefined at index ${i} becomes null`;
      const inner = jsonProblem(object[i], ancestors, depth + 1);
      if (inner !== undefined) return `[${i}]: ${inner}`;
    }
    ancestors.delete(object);
    return undefined;
  }
  const proto: unknown = Object.getPrototypeOf(object);
  if (proto !== Object.prototype && proto !== null) {
    const kind = (object as { constructor?: { name?: string } }).constructor?.name ?? 'object';
    return kind === 'Date'
      ? 'a Date; pass date.toISOString() or date.getTime()'
      : `an instance of ${kind}; pass plain data`;
  }
  ancestors.add(object);
  for (const [key, inner] of Object.entries(object)) {
    const problem = jsonProblem(inner, ancestors, depth + 1);
    if (problem !== undefined) return `.${key}: ${problem}`;
  }
  ancestors.delete(object);
  return undefined;
}
