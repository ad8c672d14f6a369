// The durable-store part of `npm run bench` (`--only durable`, or `npm run bench:durable`): one durable task per
// request through each store, against bare Koa, measured by the HTTP part's method (bench/http.ts: both servers
// side by side, paired bursts) with the servers of bench/durable-server.ts. Its own section of results.json and
// its own table (docs/durable-stores.md → Cost), so the stores are compared in one run, SQLite's two
// `synchronous` settings and a store that writes nothing (the durable path's floor) included.
import { VARIANTS, type Variant } from './http.ts';

const fromHttp = (name: string): Variant => VARIANTS.find((v) => v.name === name)!;

export const DURABLE_VARIANTS: readonly Variant[] = [
  fromHttp('bare'),
  {
    name: 'null-durable',
    label: 'a durable store that writes nothing (the durable path alone)',
    baseline: 'bare',
    tasks: true,
    script: 'durable-server.ts',
  },
  fromHttp('sqlite'),
  {
    name: 'sqlite-full',
    label: '1 durable task/request: SqliteStore (WAL, synchronous=FULL)',
    baseline: 'bare',
    tasks: true,
    script: 'durable-server.ts',
  },
  fromHttp('redis'),
];
