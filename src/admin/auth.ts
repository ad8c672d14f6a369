import { createHash, timingSafeEqual } from 'node:crypto';
import type { Context } from 'koa';

/**
 * Who may use the admin endpoints. There is no default: an admin API open to anyone must be asked for
 * with the explicit string `'none'`.
 * - `{ token }`: `Authorization: Bearer <token>` (scripts, other services).
 * - `{ users: { name: password } }`: HTTP Basic (browsers: the dashboard works with it, see README).
 * - both in one object: either scheme is accepted.
 * - a function: your own check (a session cookie, an IP allow-list…); return `true` to let the request in.
 */
export type AdminAuth =
  | { token: string; users?: Readonly<Record<string, string>> }
  | { token?: string; users: Readonly<Record<string, string>> }
  | ((ctx: Context) => boolean | Promise<boolean>)
  | 'none';

/** `ok`: let in; `denied`: 401 with `challenge` as `WWW-Authenticate`. */
export type AuthResult = { ok: true } | { ok: false; challenge: string };

export type Authenticator = (ctx: Context) => Promise<AuthResult>;

const REALM = 'koa-taskflow admin';

// Hashing first makes both sides 32 bytes, so timingSafeEqual never throws on a length mismatch and the
// time taken does not depend on how much of the secret a guess got right (nor on its length).
function digest(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest();
}

function sameSecret(given: Buffer, expected: Buffer): boolean {
  return timingSafeEqual(given, expected);
}

function authError(message: string): TypeError {
  return new TypeError(
    `admin(): option "auth" ${message}. Pass { token }, { users: { name: password } }, a function (ctx) => ` +
      `boolean, or the string 'none' to serve the admin API without authentication`,
  );
}

function credentials(header: string | undefined, scheme: string): string | undefined {
  if (header === undefined) return undefined;
  const space = header.indexOf(' ');
  if (space < 0 || header.slice(0, space).toLowerCase() !== scheme) return undefined;
  return header.slice(space + 1).trim();
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * `user:password` from a Basic header's token, only when the token is exactly one base64 string of it
 * (Buffer.from skips what it does not understand and stops at padding, so "<right credentials>junk" or
 * "<right credentials> junk" would decode to the right credentials) and the bytes are UTF-8.
 */
function basicCredentials(token: string): [name: string, password: string] | undefined {
  const bytes = Buffer.from(token, 'base64');
  const canonical = bytes.toString('base64');
  if (token !== canonical && token !== canonical.replace(/=+$/, '')) return undefined;
  let decoded: string;
  try {
    decoded = utf8.decode(bytes);
  } catch {
    return undefined;
  }
  const colon = decoded.indexOf(':');
  return colon > 0 ? [decoded.slice(0, colon), decoded.slice(colon + 1)] : undefined;
}

/** Validates `auth` once, at construction, and returns the per-request check. */
export function createAuthenticator(auth: unknown): Authenticator {
  if (auth === undefined || auth === null) throw authError('is required');
  if (auth === 'none') return async () => ({ ok: true });
  if (typeof auth === 'string')
    throw authError(`must be an object, a function or 'none', got the string ${JSON.stringify(auth)}`);
  if (typeof auth === 'function') {
    const check = auth as (ctx: Context) => boolean | Promise<boolean>;
    return async (ctx) => {
      // Anything but `true` is a refusal, so a check that forgot to return cannot open the door.
      if ((await check(ctx)) === true) return { ok: true };
      return { ok: false, challenge: `Bearer realm="${REALM}"` };
    };
  }
  if (typeof auth !== 'object') throw authError(`must be an object, a function or 'none', got ${typeof auth}`);
  const { token, users, ...rest } = auth as { token?: unknown; users?: unknown };
  const unknown = Object.keys(rest);
  if (unknown.length > 0) throw authError(`has unknown key "${unknown[0]}" (known: token, users)`);
  if (token === undefined && users === undefined) throw authError('needs "token" or "users"');
  let tokenDigest: Buffer | undefined;
  if (token !== undefined) {
    if (typeof token !== 'string' || token.length === 0) throw authError('"token" must be a non-empty string');
    tokenDigest = digest(token);
  }
  let userDigests: { name: Buffer; password: Buffer }[] | undefined;
  if (users !== undefined) {
    if (users === null || typeof users !== 'object' || Array.isArray(users))
      throw authError('"users" must be an object { name: password }');
    const entries = Object.entries(users as Record<string, unknown>);
    if (entries.length === 0) throw authError('"users" must name at least one user');
    userDigests = entries.map(([name, password]) => {
      if (name === '' || name.includes(':'))
        throw authError(`"users" has an invalid user name ${JSON.stringify(name)} (non-empty, no ":")`);
      if (typeof password !== 'string' || password.length === 0)
        throw authError(`"users.${name}" must be a non-empty string password`);
      return { name: digest(name), password: digest(password) };
    });
  }
  const challenges = [
    userDigests && `Basic realm="${REALM}", charset="UTF-8"`,
    tokenDigest && `Bearer realm="${REALM}"`,
  ].filter(Boolean);
  const challenge = challenges.join(', ');

  return async (ctx) => {
    const header = ctx.get('authorization') || undefined;
    const bearer = tokenDigest && credentials(header, 'bearer');
    if (bearer !== undefined && tokenDigest !== undefined && sameSecret(digest(bearer), tokenDigest))
      return { ok: true };
    const basic = userDigests && credentials(header, 'basic');
    const pair = basic === undefined ? undefined : basicCredentials(basic);
    if (pair !== undefined && userDigests !== undefined) {
      const name = digest(pair[0]);
      const password = digest(pair[1]);
      // Every user is compared, with no early exit: the time does not tell which names exist.
      let ok = false;
      for (const user of userDigests) {
        const nameMatches = sameSecret(name, user.name);
        const passwordMatches = sameSecret(password, user.password);
        ok = (nameMatches && passwordMatches) || ok;
      }
      if (ok) return { ok: true };
    }
    return { ok: false, challenge };
  };
}
