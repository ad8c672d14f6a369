import { get } from 'node:http';

/** GET through node:http (fetch's own timers would run on the fake clock); resolves with the parsed body. */
export function getJson<T = unknown>(url: string): Promise<T> {
  return new Promise((resolve, reject) => {
    get(url, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve(JSON.parse(body) as T));
    }).on('error', reject);
  });
}

/** Turns of the real event loop (setImmediate is not faked) until `check` holds. */
export async function untilReal(check: () => boolean, what: string): Promise<void> {
  for (let turn = 0; !check(); turn++) {
    if (turn > 10_000) throw new Error(`never saw ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}
