export const REDACTED = '[redacted]';

/** Key names that look secret, matched anywhere in the name, at any depth. */
export const DEFAULT_SECRET_KEY = /passw(or)?d|secret|token|authori[sz]ation|api[-_]?key|cookie|private[-_]?key|credential/i;

export type RedactOption = string[] | false;

export type Redactor = <T>(value: T) => T;

const identity: Redactor = (value) => value;

/**
 * Builds the function that masks secrets wherever args or log fields leave a task. An entry with a dot
 * is a path from the top of each argument / fields object (`card.number`, `*` matches any key); one
 * without a dot is a key name matched at any depth. Copies only what it changes.
 */
export function createRedactor(option: RedactOption | undefined): Redactor {
  if (option === false) return identity;
  if (option !== undefined && (!Array.isArray(option) || option.some((p) => typeof p !== 'string' || p === ''))) {
    throw new TypeError('TaskManager: option "redact" must be an array of key names or dotted paths, or false');
  }
  const names = new Set<string>();
  const paths: string[][] = [];
  for (const entry of option ?? []) {
    if (entry.includes('.')) paths.push(entry.split('.'));
    else names.add(entry.toLowerCase());
  }
  // Log fields and args use the same few key names over and over: each name is judged once (the regular
  // expression and the lower-casing are the cost of a log call otherwise), up to a bound against made-up keys.
  const judged = new Map<string, boolean>();
  const secretKey = (key: string): boolean => {
    let secret = judged.get(key);
    if (secret === undefined) {
      secret = DEFAULT_SECRET_KEY.test(key) || names.has(key.toLowerCase());
      if (judged.size < 4_096) judged.set(key, secret);
    }
    return secret;
  };

  function walk(value: unknown, depth: number, pathsHere: string[][]): unknown {
    if (value === null || typeof value !== 'object' || depth > 32) return value;
    if (Array.isArray(value)) return mapCopyOnWrite(value, (item) => walk(item, depth + 1, pathsHere));
    if (value instanceof Date) return value;
    let copy: Record<string, unknown> | undefined;
    const source = value as Record<string, unknown>;
    for (const key of Object.keys(source)) {
      const child = source[key];
      const childPaths = pathsHere.length === 0 ? pathsHere : pathsHere.filter((p) => p[0] === key || p[0] === '*');
      let next: unknown;
      if (secretKey(key) || childPaths.some((p) => p.length === 1)) {
        next = REDACTED;
      } else {
        next = walk(child, depth + 1, childPaths.length === 0 ? childPaths : childPaths.map((p) => p.slice(1)));
      }
      if (next !== child) (copy ??= { ...source })[key] = next;
    }
    return copy ?? value;
  }

  // Paths start at each argument, so the argument list itself is walked item by item.
  return (<T>(value: T): T =>
    (Array.isArray(value) ? mapCopyOnWrite(value, (item) => walk(item, 0, paths)) : walk(value, 0, paths)) as T) as Redactor;
}

function mapCopyOnWrite(items: readonly unknown[], map: (item: unknown) => unknown): readonly unknown[] {
  let copy: unknown[] | undefined;
  for (let i = 0; i < items.length; i++) {
    const next = map(items[i]);
    if (next !== items[i]) (copy ??= items.slice())[i] = next;
  }
  return copy ?? items;
}
