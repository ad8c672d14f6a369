import { types } from 'node:util';

export const REDACTED = '[redacted]';
/** Replaces what is nested deeper than MAX_REDACT_DEPTH: it was not searched for secrets, so it does not leave. */
export const TOO_DEEP = '[too deep]';
/** Replaces a reference back to an object that contains it. */
export const CIRCULAR = '[circular]';
/** Replaces a value that cannot be read (a getter or a Proxy trap throws). */
export const UNREADABLE = '[unreadable]';
/** Objects nested deeper than this (in args, log fields) are replaced by TOO_DEEP wherever they leave a task. */
export const MAX_REDACT_DEPTH = 64;

/** Key names that look secret, matched anywhere in the name, at any depth. */
export const DEFAULT_SECRET_KEY =
  /passw(or)?d|secret|token|authori[sz]ation|api[-_]?key|cookie|private[-_]?key|credential/i;

export type RedactOption = string[] | false;

const NOT_BUILT_IN = Symbol('not built in');

/** Tags a Redactor masked → the tags it masked: a filter compares the values the task was given. */
const maskedFrom = new WeakMap<object, Readonly<Record<string, string>>>();

/**
 * The value of tag `key` as the task was given it, also when `tags` are the masked ones its events carry: a
 * filter on a secret-named tag matches as `list()`'s does, not against "[redacted]".
 */
export function givenTag(tags: Readonly<Record<string, string>>, key: string): string | undefined {
  return (maskedFrom.get(tags) ?? tags)[key];
}

export interface Redactor {
  /** Args or log fields as they may leave a task: secrets masked, cycles and over-deep parts replaced. */
  <T>(value: T): T;
  /** Tags as they may leave a task: the value of a tag whose name looks secret is masked. */
  tags(tags: Readonly<Record<string, string>>): Readonly<Record<string, string>>;
}

/**
 * Builds the function that masks secrets wherever args, log fields or tags leave a task. An entry with a
 * dot is a path from the top of each argument / fields object (`card.number`, `*` matches any key); one
 * without a dot is a key name matched at any depth. Answers a copy, every object and array in it copied too:
 * what leaves is the value as it was then, not what its owner makes of it later. Nothing passes through
 * unsearched: a part nested deeper than MAX_REDACT_DEPTH, a cycle or an unreadable value is replaced by a
 * marker, and the walk is bounded (no stack overflow, no exponential walk of shared parts).
 */
export function createRedactor(option: RedactOption | undefined): Redactor {
  // `false` masks nothing; what leaves is still a copy, with its cycles and unreadable parts replaced.
  const masking = option !== false;
  if (
    masking &&
    option !== undefined &&
    (!Array.isArray(option) || option.some((p) => typeof p !== 'string' || p === ''))
  ) {
    throw new TypeError('TaskManager: option "redact" must be an array of key names or dotted paths, or false');
  }
  const names = new Set<string>();
  const paths: string[][] = [];
  for (const entry of masking ? (option ?? []) : []) {
    if (entry.includes('.')) paths.push(entry.split('.'));
    else names.add(entry.toLowerCase());
  }
  // Log fields and args use the same few key names over and over: each name is judged once (the regular
  // expression and the lower-casing are the cost of a log call otherwise), up to a bound against made-up keys.
  const judged = new Map<string, boolean>();
  const secretKey = (key: string): boolean => {
    let secret = judged.get(key);
    if (secret === undefined) {
      secret = masking && (DEFAULT_SECRET_KEY.test(key) || names.has(key.toLowerCase()));
      if (judged.size < 4_096) judged.set(key, secret);
    }
    return secret;
  };

  // The objects being walked, outermost first: meeting one of them again is a cycle. Shared by every walk,
  // which is synchronous; one started inside another (a getter that logs) leaves it as it found it.
  const ancestors: object[] = [];
  // Objects walked by the current call, and their results once it has walked many: parts shared within a
  // value (a → b twice, b → c twice, … 60 levels) are then walked once each instead of 2^60 times.
  let visited = 0;
  let walkedOnce: Map<object, unknown> | undefined;

  function walk(value: unknown, depth: number, pathsHere: string[][], key: string): unknown {
    if (value === null || typeof value !== 'object') return value;
    if (depth >= MAX_REDACT_DEPTH) return TOO_DEEP;
    if (ancestors.includes(value)) return CIRCULAR;
    const reusable = pathsHere.length === 0;
    if (reusable && walkedOnce !== undefined) {
      const earlier = walkedOnce.get(value);
      if (earlier !== undefined) return earlier;
    }
    if (++visited > 1_000) walkedOnce ??= new Map();
    ancestors.push(value);
    let result: unknown;
    try {
      result = walkObject(value, depth, pathsHere, key);
    } catch {
      // A Proxy whose traps throw, a throwing getter, a revoked proxy: what cannot be read does not leave.
      result = UNREADABLE;
    } finally {
      ancestors.pop();
    }
    if (reusable) walkedOnce?.set(value, result);
    return result;
  }

  function walkObject(value: object, depth: number, pathsHere: string[][], key: string): unknown {
    if (Array.isArray(value)) {
      const copy = new Array<unknown>(value.length);
      for (let i = 0; i < copy.length; i++) copy[i] = walk(value[i], depth + 1, pathsHere, String(i));
      return copy;
    }
    // Most objects in args and log fields are plain: only the others can be one of the kinds copied apart.
    const proto: unknown = Object.getPrototypeOf(value);
    if (proto !== Object.prototype && proto !== null) {
      const copy = walkBuiltIn(value, depth, pathsHere);
      if (copy !== NOT_BUILT_IN) return copy;
    }
    // JSON (the admin API, pino, span attributes) writes what toJSON() returns, not the object's own keys:
    // that is what is searched. One that throws is unreadable.
    const toJSON = (value as { toJSON?: unknown }).toJSON;
    if (typeof toJSON === 'function') {
      const json: unknown = toJSON.call(value, key);
      if (json !== value) return walk(json, depth + 1, pathsHere, key);
    }
    const copy = (proto === Object.prototype ? {} : Object.create(proto as object | null)) as Record<string, unknown>;
    const source = value as Record<string, unknown>;
    for (const name of Object.keys(source)) {
      const pathsBelow = below(name, pathsHere);
      setOwn(copy, name, pathsBelow === undefined ? REDACTED : walk(source[name], depth + 1, pathsBelow, name));
    }
    return copy;
  }

  /** A copy of a built-in kind that is not walked by its keys (an error, a Map, a Date…); NOT_BUILT_IN otherwise. */
  function walkBuiltIn(value: object, depth: number, pathsHere: string[][]): unknown {
    if (types.isDate(value)) return new Date(value.getTime());
    if (ArrayBuffer.isView(value)) return copyView(value);
    // Immutable, or holding nothing JSON or the console writes: kept as they are.
    if (types.isRegExp(value) || types.isBoxedPrimitive(value) || types.isPromise(value) || isWeak(value)) return value;
    if (value instanceof Error || types.isNativeError(value)) return walkError(value, depth, pathsHere);
    if (types.isMap(value)) {
      const copy = new Map<unknown, unknown>();
      for (const [name, child] of value) {
        const pathsBelow = below(typeof name === 'string' ? name : '', pathsHere);
        copy.set(
          walk(name, depth + 1, [], ''),
          pathsBelow === undefined ? REDACTED : walk(child, depth + 1, pathsBelow, String(name)),
        );
      }
      return copy;
    }
    if (types.isSet(value)) {
      const copy = new Set<unknown>();
      for (const item of value) copy.add(walk(item, depth + 1, pathsHere, ''));
      return copy;
    }
    // Written out by the console (and by util.inspect) entry by entry: their values are strings.
    if (value instanceof Headers || value instanceof URLSearchParams) {
      const copy = value instanceof Headers ? new Headers() : new URLSearchParams();
      value.forEach((text: string, name: string) =>
        copy.append(name, below(name, pathsHere) === undefined ? REDACTED : text),
      );
      return copy;
    }
    return NOT_BUILT_IN;
  }

  /**
   * An error stays an error (its prototype, so its type; its message, stack, code, cause, an AggregateError's
   * errors: every own property, enumerable or not, searched), with only its secrets masked. Its JSON (the
   * admin API, a field other than pino's `err`) is `errorJson`'s, not an own toJSON() of its class, which
   * would write what was not searched.
   */
  function walkError(value: Error, depth: number, pathsHere: string[][]): Error {
    const copy = Object.create(Object.getPrototypeOf(value) as object | null) as Record<string, unknown>;
    const source = value as unknown as Record<string, unknown>;
    for (const name of Object.getOwnPropertyNames(value)) {
      const pathsBelow = below(name, pathsHere);
      Object.defineProperty(copy, name, {
        value: pathsBelow === undefined ? REDACTED : walk(source[name], depth + 1, pathsBelow, name),
        enumerable: Object.prototype.propertyIsEnumerable.call(value, name),
        writable: true,
        configurable: true,
      });
    }
    Object.defineProperty(copy, 'toJSON', { value: errorJson, writable: true, configurable: true });
    return copy as unknown as Error;
  }

  /**
   * The paths that continue below the key `name`, or undefined when its value is masked: a secret is masked
   * without being read (its getter may be what throws).
   */
  function below(name: string, pathsHere: string[][]): string[][] | undefined {
    if (secretKey(name)) return undefined;
    if (pathsHere.length === 0) return pathsHere;
    const childPaths = pathsHere.filter((p) => p[0] === name || p[0] === '*');
    if (childPaths.some((p) => p.length === 1)) return undefined;
    return childPaths.length === 0 ? childPaths : childPaths.map((p) => p.slice(1));
  }

  /**
   * Log fields are most often a flat object of a few scalars under keys already judged: nothing to mask and
   * nothing nested, so a shallow copy is all it takes and the walk (its ancestors, its markers) is skipped.
   * Only for a plain object (not a Proxy, whose traps the walk guards) whose every value is a scalar under a
   * key that is not secret (a function may be its toJSON()); anything else, or a getter that throws, is left
   * to the walk.
   */
  const flatAndClean = (value: object): boolean => {
    if (paths.length > 0 || types.isProxy(value) || Object.getPrototypeOf(value) !== Object.prototype) return false;
    try {
      for (const key in value) {
        if (secretKey(key)) return false;
        const child = (value as Record<string, unknown>)[key];
        if (child !== null && (typeof child === 'object' || typeof child === 'function')) return false;
      }
    } catch {
      return false;
    }
    return true;
  };

  // Paths start at each argument, so the argument list itself is walked item by item.
  const redact = <T>(value: T): T => {
    if (value !== null && typeof value === 'object' && !Array.isArray(value) && flatAndClean(value))
      return { ...value };
    const outerVisited = visited;
    const outerWalked = walkedOnce;
    visited = 0;
    walkedOnce = undefined;
    try {
      if (Array.isArray(value)) {
        const copy = new Array<unknown>(value.length);
        for (let i = 0; i < copy.length; i++) copy[i] = walk(value[i], 0, paths, String(i));
        return copy as T;
      }
      const result = walk(value, 0, paths, '');
      // Log fields that cannot be read at all are not logged (taskLog never throws; its caller catches this).
      if (result === UNREADABLE && value !== UNREADABLE) throw new TypeError('the value cannot be read');
      return result as T;
    } finally {
      visited = outerVisited;
      walkedOnce = outerWalked;
    }
  };
  const tags = (tagMap: Readonly<Record<string, string>>): Readonly<Record<string, string>> => {
    let copy: Record<string, string> | undefined;
    for (const key in tagMap) if (secretKey(key)) (copy ??= { ...tagMap })[key] = REDACTED;
    if (copy === undefined) return tagMap;
    maskedFrom.set(copy, tagMap);
    return copy;
  };
  return Object.assign(redact, { tags });
}

/** The JSON of an error that left a task: what pino's `err` shows (type, message, stack), then its own fields. */
function errorJson(this: Error & Record<string, unknown>): Record<string, unknown> {
  const json: Record<string, unknown> = { type: this.name, message: this.message, stack: this.stack };
  for (const name of Object.keys(this)) setOwn(json, name, this[name]);
  if (this.cause !== undefined) json.cause = this.cause;
  if (Array.isArray(this.errors)) json.errors = this.errors;
  return json;
}

/** An own property, also one named `__proto__` (an assignment would set the prototype instead). */
function setOwn(target: Record<string, unknown>, name: string, value: unknown): void {
  if (name === '__proto__')
    Object.defineProperty(target, name, { value, enumerable: true, writable: true, configurable: true });
  else target[name] = value;
}

/** A copy of binary data, of the same kind: what leaves is what it held when it left. */
function copyView(view: ArrayBufferView): ArrayBufferView {
  if (Buffer.isBuffer(view)) return Buffer.from(view);
  if (types.isTypedArray(view)) return view.slice();
  return new DataView(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength));
}

function isWeak(value: object): boolean {
  return types.isWeakMap(value) || types.isWeakSet(value) || value instanceof WeakRef;
}
