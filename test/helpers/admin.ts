import type { AdminMiddleware, AdminOptions, TaskManager, TaskManagerOptions } from 'koa-taskflow';
import { startApp, type Harness } from './server.js';

export const TOKEN = 'test-admin-token-0123456789';

export interface AdminHarness extends Harness {
  admin: AdminMiddleware;
  /** The admin API's base URL (`{url}/tasks`). */
  base: string;
  /** fetch under the admin prefix with the Bearer token (unless `headers` overrides `authorization`). */
  api: (path: string, init?: RequestInit & { headers?: Record<string, string> }) => Promise<Response>;
}

/** A real Koa server with the manager's middleware and `manager.admin(...)` (Bearer `TOKEN` unless `auth` is given). */
export async function startAdmin(
  adminOptions: Partial<AdminOptions> = {},
  managerOptions?: TaskManagerOptions | TaskManager,
  setup?: (manager: TaskManager) => void,
): Promise<AdminHarness> {
  let admin!: AdminMiddleware;
  const harness = await startApp((app, manager) => {
    setup?.(manager);
    admin = manager.admin({ auth: { token: TOKEN }, ...adminOptions });
    app.use(admin);
  }, managerOptions);
  const base = `${harness.url}${adminOptions.prefix ?? '/tasks'}`;
  return {
    ...harness,
    admin,
    base,
    api: (path, init = {}) =>
      fetch(base + path, { ...init, headers: { authorization: `Bearer ${TOKEN}`, ...init.headers } }),
  };
}

/** The JSON body, with the status checked first (the message shows the body when it is not the expected one). */
export async function expectJson<T = Record<string, unknown>>(response: Response, status: number): Promise<T> {
  const text = await response.text();
  if (response.status !== status) throw new Error(`expected HTTP ${status}, got ${response.status}: ${text}`);
  if (!response.headers.get('content-type')?.startsWith('application/json'))
    throw new Error(`expected JSON, got ${response.headers.get('content-type')}: ${text}`);
  return JSON.parse(text) as T;
}
