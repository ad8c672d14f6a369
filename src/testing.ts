/**
 * `koa-taskflow/testing`: the conformance suite every `TaskStore` runs, the built-in ones and yours. It
 * registers its tests through the `describe`/`it` you pass (vitest, jest, node:test, mocha…) and asserts
 * with `node:assert`, so it depends on no test runner. See docs/api.md, "Writing a store".
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { metricsFrom } from './metrics.js';
import { DURATION_BUCKETS } from './otel.js';
import type { ArgsCipher, NameMetrics, TaskFilter, TaskRecord, TaskStatus, TaskStore } from './types.js';

/** How the suite gets the stores it tests. */
export interface TaskStoreHarness<S extends TaskStore = TaskStore> {
  /** A new, empty store (each test makes its own and closes it). */
  create: () => S | Promise<S>;
  /**
   * Another instance over the same data as `store` (what a second process, or a restart, opens), called
   * while `store` is open (two claimers) and after it was closed (durability). Required for a durable store.
   */
  reopen?: (store: S) => S | Promise<S>;
  /** After each test, once its stores are closed: delete the file, flush the prefix… */
  cleanup?: (store: S) => void | Promise<void>;
  /** What the store promises beyond what it declares on itself. */
  capabilities?: TaskStoreCapabilities;
}

export interface TaskStoreCapabilities {
  /**
   * The store deletes finished records `retentionDays` after they ended (failed and interrupted ones after
   * `failedRetentionDays`, default twice that) at the latest when an instance opens and claims orphans.
   */
  retention?: { retentionDays: number; failedRetentionDays?: number };
}

/** The two functions of a test runner the suite needs (vitest's, jest's, node:test's and mocha's fit). */
export interface TestFunctions {
  describe: (name: string, body: () => void) => unknown;
  it: (name: string, body: () => Promise<void>) => unknown;
}

const DAY_MS = 86_400_000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** A record as JSON carries it (absent and `undefined` fields are the same record). */
const plain = <T>(value: T): T => JSON.parse(JSON.stringify(value)) as T;
const ids = (records: readonly TaskRecord[]) => records.map((r) => r.id);
/** Records in id order, to compare sets of them. */
const sorted = (records: TaskRecord[]) => plain(records).sort((a, b) => a.id.localeCompare(b.id));

/**
 * Registers the conformance tests of one store under `describe(name)`. Tests of something the store does
 * not declare (`durable`, `attach`/`renewLease`/`release`, `metrics`, `encryptsArgs`, a `retention`
 * capability) check what a store without it must do, or pass without checking.
 */
export function describeTaskStore<S extends TaskStore>(
  name: string,
  harness: TaskStoreHarness<S>,
  { describe, it }: TestFunctions,
): void {
  /** Runs `body` with a new store and a way to open more over its data; closes them all and cleans up. */
  const using =
    (body: (store: S, reopen: () => Promise<S>) => Promise<void>): (() => Promise<void>) =>
    async () => {
      const store = await harness.create();
      const opened: S[] = [store];
      const reopen = async () => {
        assert.ok(harness.reopen, `${name} is durable: the harness must give reopen(store)`);
        const other = await harness.reopen(store);
        opened.push(other);
        return other;
      };
      try {
        await body(store, reopen);
      } finally {
        for (const s of opened) await s.close().catch(() => {});
        await harness.cleanup?.(store);
      }
    };
  const durable = (store: TaskStore) => store.durable === true;
  const leased = (store: TaskStore) =>
    durable(store) && typeof store.attach === 'function' && typeof store.renewLease === 'function';

  // Creation times a second apart from an hour ago: `since` and the order never hinge on a millisecond.
  let clock = Date.now() - 3_600_000;
  const record = (fields: Partial<TaskRecord> = {}): TaskRecord => ({
    id: randomUUID(),
    name: 'conformance',
    status: 'pending',
    args: [],
    tags: {},
    attempts: 0,
    maxAttempts: 1,
    createdAt: (clock += 1_000),
    logs: [],
    ...fields,
  });
  /** The same task, later in its life (a new object: a store may keep the one it was given). */
  const next = (r: TaskRecord, fields: Partial<TaskRecord>): TaskRecord => ({ ...plain(r), ...fields });
  const ended = (status: TaskStatus, fields: Partial<TaskRecord> = {}): TaskRecord => {
    const createdAt = (clock += 1_000);
    return record({ status, attempts: 1, createdAt, startedAt: createdAt, endedAt: createdAt + 5, ...fields });
  };
  const expectRecords = (actual: (TaskRecord | undefined)[], expected: TaskRecord[]) =>
    assert.deepStrictEqual(plain(actual), plain(expected));

  /** Exact counts and success rate, the mean to a rounding, the p95 in the task.duration bucket of the exact one. */
  const expectRecount = (actual: NameMetrics, expected: NameMetrics, what: string) => {
    assert.deepStrictEqual(
      { total: actual.total, byStatus: actual.byStatus, successRate: actual.successRate },
      { total: expected.total, byStatus: expected.byStatus, successRate: expected.successRate },
      what,
    );
    if (expected.avgDurationMs === null) {
      assert.equal(actual.avgDurationMs, null, `${what}: avgDurationMs`);
      assert.equal(actual.p95DurationMs, null, `${what}: p95DurationMs`);
      return;
    }
    assert.ok(Math.abs(actual.avgDurationMs! - expected.avgDurationMs) < 1e-6, `${what}: avgDurationMs`);
    const bounds = [0, ...DURATION_BUCKETS.map((s) => s * 1000), Infinity];
    const i = bounds.findIndex((b) => expected.p95DurationMs! <= b);
    const p95 = actual.p95DurationMs!;
    assert.ok(
      p95 >= bounds[Math.max(0, i - 1)] && p95 <= bounds[i],
      `${what}: p95DurationMs ${p95} is in the bucket of ${expected.p95DurationMs}`,
    );
  };

  describe(name, () => {
    describe('records', () => {
      it(
        'save() then get(): every field comes back as saved (args, tags, error, logs, progress, runAt, ' +
          'stalls…); an unknown id is undefined',
        using(async (store) => {
          const full = record({
            name: 'sendInvoice',
            status: 'pending',
            args: [{ order: 'A-1', lines: [1, 2.5, null, true], note: 'ünïcödé ✓ "quoted"' }, 'x', 0],
            tags: { tenant: 'acme', 'region=eu': 'a:b=c' },
            attempts: 2,
            maxAttempts: 4,
            priority: 7,
            idempotencyKey: 'invoice-A-1',
            startedAt: clock + 10,
            error: { type: 'Error', message: 'billing API answered 503', stack: 'Error: billing…\n    at charge' },
            logs: [{ time: clock + 11, attempt: 2, level: 'warn', message: 'rate limited', fields: { retryIn: 200 } }],
            traceId: 'a'.repeat(32),
            spanId: 'b'.repeat(16),
            requestTraceId: 'c'.repeat(32),
            requestSpanId: 'd'.repeat(16),
            requestTraceFlags: 1,
            stalls: 1,
            progress: 0.5,
            retryOf: randomUUID(),
            runAt: clock + 60_000,
            options: { timeout: 1_000, delay: 200, backoff: 2, requeueOnInterrupt: false, maxStalls: 3 },
          });
          const others = (['running', 'success', 'failed', 'interrupted', 'cancelled'] as const).map((status) =>
            ended(status, {
              durationMs: 5,
              reason: status === 'cancelled' ? 'request_failed' : undefined,
              error: status === 'failed' ? { type: 'TaskTimeoutError', message: 'timed out' } : undefined,
            }),
          );
          const saved = plain([full, ...others]);
          await store.save([full, ...others]);
          expectRecords(await Promise.all(saved.map((r) => store.get(r.id))), saved);
          assert.equal(await store.get(randomUUID()), undefined);
          await store.save([]);
        }),
      );

      it(
        'save() of a stored id replaces it: get() and list() answer the latest version, once',
        using(async (store) => {
          const accepted = record({ tags: { tenant: 'acme' } });
          await store.save([accepted]);
          const running = next(accepted, { status: 'running', attempts: 1, startedAt: accepted.createdAt + 1 });
          await store.save([running]);
          const done = next(running, {
            status: 'success',
            endedAt: accepted.createdAt + 9,
            durationMs: 8,
            progress: 1,
          });
          await store.save([done]);
          expectRecords([await store.get(accepted.id)], [done]);
          expectRecords(await store.list(), [done]);
          expectRecords(await store.list({ status: 'success' }), [done]);
          assert.deepStrictEqual(await store.list({ status: 'pending' }), []);
        }),
      );
    });

    describe('list(filter)', () => {
      // Saved in the order they were created, as the TaskManager saves them.
      const fill = async (store: TaskStore) => {
        const records = [
          record({ name: 'mail', status: 'success', tags: { tenant: 'acme', plan: 'pro' } }),
          record({ name: 'mail', status: 'failed', tags: { tenant: 'acme' } }),
          record({ name: 'sms', status: 'pending', tags: { tenant: 'acme', plan: 'pro' } }),
          record({ name: 'mail', status: 'running', tags: { tenant: 'globex', plan: 'pro' } }),
          record({ name: 'sms', status: 'interrupted', tags: {} }),
          record({ name: 'mail', status: 'pending', tags: { tenant: 'acme', plan: 'pro' } }),
        ];
        for (const r of records) await store.save([r]);
        return plain(records).reverse();
      };

      /** What list(filter) must answer, from every record newest first: TaskFilter as docs/api.md defines it. */
      const expectList = async (store: TaskStore, newest: TaskRecord[], filters: TaskFilter[]) => {
        for (const filter of filters) {
          const statuses = filter.status === undefined ? undefined : [filter.status].flat();
          const since = filter.since instanceof Date ? filter.since.getTime() : filter.since;
          const expected = newest.filter(
            (r) =>
              (statuses?.includes(r.status) ?? true) &&
              (filter.name ?? r.name) === r.name &&
              r.createdAt >= (since ?? -Infinity) &&
              Object.entries(filter.tags ?? {}).every(([key, value]) => r.tags[key] === value),
          );
          assert.deepStrictEqual(
            plain(await store.list(filter)),
            plain(expected.slice(0, filter.limit ?? expected.length)),
            `list(${JSON.stringify(filter)})`,
          );
        }
      };

      it(
        'no filter: every record, newest first',
        using(async (store) => {
          await expectList(store, await fill(store), [{}, { limit: undefined }]);
          assert.equal((await store.list()).length, 6);
        }),
      );

      it(
        'status: one status, or an array of them (any matches)',
        using(async (store) => {
          await expectList(store, await fill(store), [
            { status: 'pending' },
            { status: ['failed', 'interrupted'] },
            { status: 'cancelled' },
          ]);
        }),
      );

      it(
        'name, and name with status',
        using(async (store) => {
          await expectList(store, await fill(store), [
            { name: 'sms' },
            { name: 'mail', status: ['pending', 'running'] },
            { name: 'nothing' },
          ]);
        }),
      );

      it(
        'tags: every given tag must match (keys and values with "=" and ":" included)',
        using(async (store) => {
          const newest = await fill(store);
          const odd = record({ tags: { 'a=b': 'c', a: 'b=c', 'k:1': 'v:2' } });
          await store.save([odd]);
          await expectList(
            store,
            [odd, ...newest],
            [
              { tags: { tenant: 'acme' } },
              { tags: { tenant: 'acme', plan: 'pro' } },
              { tags: { tenant: 'acme', plan: 'free' } },
              { tags: { a: 'b=c' } },
              { tags: { 'a=b': 'c', 'k:1': 'v:2' } },
              { tags: { 'a=b': 'b=c' } },
            ],
          );
        }),
      );

      it(
        'limit: at most that many, newest first, with any other filter; 0 answers none',
        using(async (store) => {
          await expectList(store, await fill(store), [
            { limit: 2 },
            { name: 'mail', limit: 3 },
            { tags: { plan: 'pro' }, limit: 1 },
            { status: ['pending', 'failed'], limit: 2 },
            { limit: 100 },
            { limit: 0 },
          ]);
        }),
      );

      it(
        'since: records created at or after a Date or epoch ms, alone and with every other field',
        using(async (store) => {
          const newest = await fill(store);
          const at = newest[2].createdAt;
          await expectList(store, newest, [
            { since: at },
            { since: new Date(at) },
            { since: at, tags: { tenant: 'acme' }, status: 'pending', name: 'mail', limit: 5 },
            { since: clock + 1 },
          ]);
        }),
      );

      it(
        'before: pages of a few hundred records, each after the last of the previous one, alone and with ' +
          'filters: newest first, no record twice, none skipped (records of one millisecond across a page edge too)',
        using(async (store) => {
          const since = clock;
          // Three records per millisecond, so pages of 25 end inside a millisecond.
          const records = Array.from({ length: 300 }, (_, i) => {
            const createdAt = since + 1_000 + Math.floor(i / 3);
            return i % 4 === 0
              ? ended('failed', { createdAt, startedAt: createdAt, endedAt: createdAt + 5, tags: { tenant: 'acme' } })
              : record({ createdAt, name: i % 2 === 0 ? 'mail' : 'sms', tags: i % 3 === 0 ? { tenant: 'acme' } : {} });
          });
          await store.save(records);
          const filters: [TaskFilter, (r: TaskRecord) => boolean][] = [
            [{}, () => true],
            [{ tags: { tenant: 'acme' } }, (r) => r.tags.tenant === 'acme'],
            [{ status: 'pending', name: 'mail' }, (r) => r.status === 'pending' && r.name === 'mail'],
          ];
          for (const [filter, matches] of filters) {
            const what = `list(${JSON.stringify(filter)}) in pages of 25`;
            const expected = records.filter(matches);
            const paged: TaskRecord[] = [];
            let page = await store.list({ ...filter, limit: 25 });
            // A store that ignores `before` answers the first page again: the loop stops all the same.
            for (let pages = 1; page.length > 0 && pages <= expected.length / 25 + 1; pages++) {
              paged.push(...page);
              page = await store.list({ ...filter, limit: 25, before: page[page.length - 1] });
            }
            assert.equal(new Set(ids(paged)).size, paged.length, `${what}: no record twice`);
            assert.deepStrictEqual(sorted(paged), sorted(expected), `${what}: every matching record, none other`);
            for (let i = 1; i < paged.length; i++)
              assert.ok(paged[i - 1].createdAt >= paged[i].createdAt, `${what}: newest first`);
            assert.deepStrictEqual(ids(paged), ids(await store.list(filter)), `${what}: the order of one list()`);
          }
        }),
      );
    });

    describe('idempotency keys: claimKey(key, id)', () => {
      /** A task saved with `key` that then claimed it, as the TaskManager does. */
      const holding = async (store: TaskStore, key: string) => {
        const holder = record({ idempotencyKey: key });
        await store.save([holder]);
        assert.equal(await store.claimKey(key, holder.id), undefined, 'a free key is taken');
        return holder;
      };

      it(
        'a free key is taken (undefined) and the same id may claim it again; held by a task that has not ' +
          'failed, whatever its status, it answers the holder’s id',
        using(async (store) => {
          let holder = await holding(store, 'k');
          assert.equal(await store.claimKey('k', holder.id), undefined, 'the same id twice');
          for (const status of ['pending', 'running', 'success', 'cancelled', 'interrupted'] as const) {
            holder = next(holder, { status });
            await store.save([holder]);
            assert.equal(await store.claimKey('k', randomUUID()), holder.id, `held while ${status}`);
          }
        }),
      );

      it(
        'a key whose holder failed is free: the next claim takes it and holds it',
        using(async (store) => {
          const first = await holding(store, 'k');
          await store.save([next(first, { status: 'failed', attempts: 1, endedAt: first.createdAt + 1 })]);
          const second = await holding(store, 'k');
          assert.equal(await store.claimKey('k', randomUUID()), second.id);
        }),
      );

      it(
        'ten concurrent claims of one key (two instances when durable): exactly one wins, the others get its id',
        using(async (store, reopen) => {
          const other = durable(store) ? await reopen() : store;
          const contenders = Array.from({ length: 10 }, () => record({ idempotencyKey: 'race' }));
          // Saved without the key first claimed (as the manager saves before claiming), by either instance.
          const plainOnes = contenders.map((r) => ({ ...r, idempotencyKey: undefined }));
          await store.save(plainOnes.slice(0, 5));
          await other.save(plainOnes.slice(5));
          const answers = await Promise.all(
            contenders.map((r, i) => (i % 2 === 0 ? store : other).claimKey('race', r.id)),
          );
          const winners = contenders.filter((_, i) => answers[i] === undefined);
          assert.equal(winners.length, 1, `one winner, got ${winners.length}`);
          for (const answer of answers) if (answer !== undefined) assert.equal(answer, winners[0].id);
        }),
      );

      it(
        'capabilities.claimsKeysOnSave: save() answers a map; a new record whose key is held loses, and get(loser) answers the holder',
        using(async (store) => {
          const holder = record({ idempotencyKey: 'order-7' });
          const first = await store.save([holder]);
          const loser = record({ idempotencyKey: 'order-7' });
          const result = await store.save([loser]);
          // A store that does not declare claimsKeysOnSave leaves the keys to claimKey (checked above).
          if (store.capabilities?.claimsKeysOnSave !== true) return;
          assert.ok(result instanceof Map, 'a store that claims keys on save() answers the records that lost');
          assert.ok(!(first instanceof Map) || first.size === 0, 'the first record with a key does not lose');
          assert.deepStrictEqual([...result], [[loser.id, holder.id]]);
          assert.equal((await store.get(loser.id))?.id, holder.id);
          assert.deepStrictEqual(ids(await store.list()), [holder.id]);
        }),
      );
    });

    describe('leases and orphans: attach, claimOrphans, renewLease, release', () => {
      const unfinishedSet = () => [
        record({ status: 'pending' }),
        record({ status: 'running', attempts: 1, startedAt: clock }),
        record({ status: 'pending', attempts: 1, runAt: clock + 60_000 }),
      ];
      /**
       * A test of a store with leases: `store` attached as `owner-a` with `leaseMs` (the TaskManager attaches its
       * store once, when it is made), and `claim(ownerId)`: claimOrphans by another instance attached as `ownerId`.
       */
      const leaseTest = (
        title: string,
        leaseMs: number,
        body: (store: S, claim: (ownerId: string) => Promise<TaskRecord[]>) => Promise<void>,
      ) =>
        it(
          title,
          using(async (store, reopen) => {
            if (!leased(store)) return;
            store.attach!({ ownerId: 'owner-a', leaseMs });
            const claimers = new Map<string, Promise<S>>();
            const claim = async (ownerId: string) => {
              let claimer = claimers.get(ownerId);
              if (claimer === undefined) {
                claimer = reopen().then((other) => (other.attach!({ ownerId, leaseMs: 60_000 }), other));
                claimers.set(ownerId, claimer);
              }
              return (await claimer).claimOrphans(ownerId, 60_000);
            };
            await body(store, claim);
          }),
        );

      it(
        'a store that keeps nothing past the process has no orphans',
        using(async (store) => {
          if (durable(store)) return;
          await store.save(unfinishedSet());
          assert.deepStrictEqual(await store.claimOrphans(randomUUID(), 30_000), []);
        }),
      );

      leaseTest(
        'records owned by a live lease are not claimed; finished ones never are',
        60_000,
        async (store, claim) => {
          await store.save([...unfinishedSet(), ended('success'), ended('failed')]);
          assert.deepStrictEqual(await claim('owner-b'), []);
        },
      );

      leaseTest(
        'once the owner’s lease expired, its unfinished records are claimed as saved, each by exactly one ' +
          'of two concurrent claimers, and then belong to it',
        150,
        async (store, claim) => {
          const orphans = unfinishedSet();
          const finishing = record();
          await store.save([...orphans, finishing, ended('success'), ended('cancelled')]);
          // A record that was unfinished when first saved and has ended since is no orphan.
          await store.save([next(finishing, { status: 'success', attempts: 1, endedAt: clock, durationMs: 1 })]);
          await sleep(400);
          const [byB, byC] = await Promise.all([claim('owner-b'), claim('owner-c')]);
          const both = ids(byB).filter((id) => ids(byC).includes(id));
          assert.deepStrictEqual(both, [], 'no record is claimed twice');
          assert.deepStrictEqual(sorted([...byB, ...byC]), sorted(orphans));
          assert.deepStrictEqual(await claim('owner-d'), [], 'the claimers’ leases are live');
        },
      );

      leaseTest(
        'renewLease() keeps the owner’s records its own past leaseMs; without renewals they become orphans',
        400,
        async (store, claim) => {
          const orphans = unfinishedSet();
          await store.save(orphans);
          for (let i = 0; i < 3; i++) {
            await sleep(160);
            await store.renewLease!();
          }
          // Past the first lease (3 × 160 ms after the save, against 400 ms), but just after the last renewal.
          assert.deepStrictEqual(await claim('owner-b'), []);
          await sleep(600);
          assert.deepStrictEqual(sorted(await claim('owner-b')), sorted(orphans));
        },
      );

      leaseTest(
        'release(records) hands them back: the next claimOrphans takes them at once, though the owner’s lease is live',
        60_000,
        async (store, claim) => {
          if (typeof store.release !== 'function') return;
          const [kept, handedBack] = [record(), record({ status: 'pending', attempts: 1 })];
          await store.save([kept, handedBack]);
          await store.release([handedBack]);
          assert.deepStrictEqual(plain(await claim('owner-b')), plain([handedBack]));
        },
      );

      leaseTest(
        'requestCancel(id, reason): recorded only on an unfinished task, kept through the owner’s later writes, answered by its renewLease() and carried by claimOrphans()',
        200,
        async (store, claim) => {
          if (typeof store.requestCancel !== 'function') return;
          const [running, pending, done] = [
            record({ status: 'running', attempts: 1, startedAt: clock }),
            record(),
            ended('success'),
          ];
          await store.save([running, pending, done]);
          assert.strictEqual(await store.requestCancel(running.id, 'stop it'), true);
          assert.strictEqual(await store.requestCancel(running.id, 'again'), true, 'twice is harmless');
          assert.strictEqual(await store.requestCancel(done.id, 'too late'), false, 'a finished task');
          assert.strictEqual(await store.requestCancel(randomUUID(), 'who'), false, 'an unknown id');
          assert.strictEqual(await store.requestCancel(pending.id, 'not needed'), true);
          // The owner writes the running record again (a retry wait): the request stays.
          await store.save([next(running, { status: 'pending', runAt: clock + 60_000 })]);
          const answered = (await store.renewLease!()) ?? [];
          assert.deepStrictEqual(
            [...answered].sort((a, b) => a.id.localeCompare(b.id)),
            [
              { id: running.id, reason: 'stop it' },
              { id: pending.id, reason: 'not needed' },
            ].sort((a, b) => a.id.localeCompare(b.id)),
          );
          // The owner ends one: it is no longer answered, and cannot be cancelled any more.
          await store.save([next(pending, { status: 'cancelled', endedAt: clock, reason: 'not needed' })]);
          assert.deepStrictEqual(await store.renewLease!(), [{ id: running.id, reason: 'stop it' }]);
          assert.strictEqual(await store.requestCancel(pending.id, 'again'), false);
          await sleep(500);
          const claimed = await claim('owner-b');
          assert.deepStrictEqual(
            claimed.map((r) => [r.id, r.cancelRequested]),
            [[running.id, 'stop it']],
          );
        },
      );

      leaseTest(
        'close() gives the lease up: the owner’s unfinished records are claimed at once',
        60_000,
        async (store, claim) => {
          const orphans = unfinishedSet();
          await store.save(orphans);
          await store.close();
          assert.deepStrictEqual(sorted(await claim('owner-b')), sorted(orphans));
        },
      );
    });

    describe('metrics()', () => {
      it(
        'counts by status and name, success rate, mean and p95 match a recount of list(), also after records change status',
        using(async (store) => {
          if (typeof store.metrics !== 'function') return;
          const durations = [1, 3, 7, 12, 30, 45, 80, 120, 260, 900, 1_500];
          const mail = durations.map((ms) => ended('success', { name: 'mail', durationMs: ms }));
          const unfinished = [record({ name: 'sms' }), record({ name: 'mail', status: 'running', attempts: 1 })];
          await store.save([
            ...mail,
            ...unfinished,
            ended('failed', { name: 'mail', durationMs: 4 }),
            ended('interrupted', { name: 'sms' }),
            ended('cancelled', { name: 'sms', attempts: 0 }),
          ]);
          const recount = async (when: string) => {
            const expected = metricsFrom(
              (await store.list()).map((r) => ({ name: r.name, status: r.status, count: 1 })),
              (await store.list({ status: 'success' })).map((r) => ({ name: r.name, duration: r.durationMs! })),
            );
            const actual = await store.metrics!();
            expectRecount(actual, expected, `${when}: all`);
            assert.deepStrictEqual(Object.keys(actual.byName).sort(), Object.keys(expected.byName).sort());
            for (const n of Object.keys(expected.byName))
              expectRecount(actual.byName[n], expected.byName[n], `${when}: ${n}`);
          };
          await recount('saved');
          await store.save([
            next(unfinished[0], { status: 'success', attempts: 1, endedAt: clock, durationMs: 20 }),
            next(unfinished[1], { status: 'failed', endedAt: clock, durationMs: 2 }),
            next(mail[0], { durationMs: 2 }),
          ]);
          await recount('after status changes');
        }),
      );
    });

    describe('large saves', () => {
      it(
        'a save of N records settles, whatever N: three concurrent saves of 5 000 (merged by a group commit, written in batches) all resolve, every record is readable after, metrics() matches a recount',
        using(async (store) => {
          const statuses: TaskStatus[] = ['success', 'success', 'failed', 'cancelled', 'pending', 'running'];
          // Times of their own (a millisecond apart, two hours ago): the suite's clock is left as it is.
          let at = Date.now() - 7_200_000;
          const many = (count: number, name: string): TaskRecord[] =>
            Array.from({ length: count }, (_, i) => {
              const status = statuses[i % statuses.length];
              const createdAt = at++;
              const finished = status !== 'pending' && status !== 'running';
              return {
                id: randomUUID(),
                name,
                status,
                args: [i],
                tags: { batch: name },
                attempts: status === 'pending' ? 0 : 1,
                maxAttempts: 1,
                createdAt,
                ...(finished ? { endedAt: createdAt + 1, durationMs: i % 700 } : {}),
                logs: [],
              };
            });
          const concurrent = ['bulk-a', 'bulk-b', 'bulk-c'].map((batch) => many(5_000, batch));
          const outcomes = await Promise.allSettled(concurrent.map((records) => store.save(records)));
          for (const outcome of outcomes)
            assert.equal(
              outcome.status,
              'fulfilled',
              `a concurrent save() of 5 000 records: ${String((outcome as PromiseRejectedResult).reason)}`,
            );
          const saved = concurrent.flat();
          // A store may bound what it keeps (MemoryStore's maxRecords): the unfinished records, at least, stay.
          const expected = durable(store)
            ? saved
            : saved.filter((r) => r.status === 'pending' || r.status === 'running');
          const all = await store.list();
          const held = new Set(ids(all));
          const missing = expected.filter((r) => !held.has(r.id));
          assert.equal(missing.length, 0, `${missing.length} of ${expected.length} saved records are not listed`);
          for (const r of [expected[0], expected[expected.length >> 1], expected[expected.length - 1]])
            expectRecords([await store.get(r.id)], [r]);
          if (typeof store.metrics !== 'function') return;
          const recount = metricsFrom(
            all.map((r) => ({ name: r.name, status: r.status, count: 1 })),
            all.filter((r) => r.status === 'success').map((r) => ({ name: r.name, duration: r.durationMs! })),
          );
          const metrics = await store.metrics();
          expectRecount(metrics, recount, 'after the large saves: all');
          for (const n of Object.keys(recount.byName)) expectRecount(metrics.byName[n], recount.byName[n], n);
        }),
      );
    });

    describe('retention', () => {
      it(
        'finished records past retentionDays are deleted (dead letters past failedRetentionDays) with their ' +
          'keys; unfinished and recent ones stay',
        using(async (store, reopen) => {
          const retention = harness.capabilities?.retention;
          if (retention === undefined) return;
          const { retentionDays, failedRetentionDays = 2 * retentionDays } = retention;
          const longAgo = (days: number) => Date.now() - days * DAY_MS - 60_000;
          const old = (status: TaskStatus, days: number, fields: Partial<TaskRecord> = {}) =>
            ended(status, { createdAt: longAgo(days) - 10, endedAt: longAgo(days), ...fields });
          const expired = [
            old('success', retentionDays, { idempotencyKey: 'expired-key' }),
            old('cancelled', retentionDays),
            old('failed', failedRetentionDays),
            old('interrupted', failedRetentionDays),
          ];
          const kept = [
            old('failed', retentionDays),
            old('interrupted', retentionDays),
            ended('success'),
            record({ createdAt: longAgo(failedRetentionDays) }),
          ];
          await store.save([...expired, ...kept]);
          await store.close();
          // Retention runs when an instance opens and claims orphans (as TaskManager.start() does).
          const after = await reopen();
          after.attach?.({ ownerId: 'owner-retention', leaseMs: 60_000 });
          await after.claimOrphans('owner-retention', 60_000);
          const gone = () => after.list().then((left) => expired.every((r) => !ids(left).includes(r.id)));
          for (const deadline = Date.now() + 10_000; !(await gone()); await sleep(50))
            assert.ok(Date.now() < deadline, 'expired records still there 10 s after the instance opened');
          assert.deepStrictEqual(sorted(await after.list()), sorted(kept));
          assert.equal(await after.claimKey('expired-key', randomUUID()), undefined);
        }),
      );
    });

    describe('durability', () => {
      it(
        'what was saved survives close() and reopening: the latest version of every record, and the keys held',
        using(async (store, reopen) => {
          if (!durable(store)) return;
          const keyed = record({ idempotencyKey: 'survives', args: [{ to: 'a@b.c' }], tags: { tenant: 'acme' } });
          const others = [ended('failed', { error: { type: 'Error', message: 'no' } }), record({ progress: 0.25 })];
          await store.save([keyed, ...others]);
          assert.equal(await store.claimKey('survives', keyed.id), undefined);
          const running = next(keyed, { status: 'running', attempts: 1, startedAt: keyed.createdAt + 1 });
          await store.save([running]);
          await store.close();
          const after = await reopen();
          expectRecords(await Promise.all([running, ...others].map((r) => after.get(r.id))), [running, ...others]);
          assert.deepStrictEqual(
            ids(await after.list()),
            ids([keyed, ...others].sort((a, b) => b.createdAt - a.createdAt)),
          );
          assert.equal(await after.claimKey('survives', randomUUID()), keyed.id);
        }),
      );
    });

    describe('encryptsArgs', () => {
      it(
        'with an argsCipher attached, args are written through seal() and read back through open(), on every read',
        using(async (store, reopen) => {
          if (store.encryptsArgs !== true || typeof store.attach !== 'function') return;
          const sealed = new Map<string, string>();
          const opened: string[] = [];
          const cipher: ArgsCipher = {
            seal: (taskId, argsJson) => {
              const text = `test-sealed:${Buffer.from(argsJson).toString('base64')}`;
              sealed.set(taskId, text);
              return text;
            },
            open: (taskId, text) => {
              assert.equal(text, sealed.get(taskId), 'open() gets what seal() gave for that task');
              opened.push(taskId);
              return Buffer.from(text.slice('test-sealed:'.length), 'base64').toString();
            },
          };
          store.attach({ ownerId: 'owner-a', leaseMs: 60_000, argsCipher: cipher });
          const r = record({ args: [{ card: '4242' }, 'x'] });
          await store.save([r]);
          assert.ok(sealed.has(r.id), 'seal() was called for the record');
          expectRecords([await store.get(r.id)], [r]);
          expectRecords(await store.list(), [r]);
          assert.ok(opened.includes(r.id), 'open() was called to read it');
          await store.close();
          const after = await reopen();
          after.attach!({ ownerId: 'owner-b', leaseMs: 60_000, argsCipher: cipher });
          expectRecords(await after.claimOrphans('owner-b', 60_000), [r]);
        }),
      );
    });

    describe('a closed store', () => {
      it(
        'close() may be called twice',
        using(async (store) => {
          await store.save([record()]);
          await store.close();
          await store.close();
        }),
      );

      it(
        'a durable store refuses every call after close() with code ERR_STORE_UNAVAILABLE (the middleware answers 503)',
        using(async (store) => {
          if (!durable(store)) return;
          const r = record({ idempotencyKey: 'k' });
          await store.save([r]);
          await store.close();
          const calls: [string, () => Promise<unknown>][] = [
            ['save', () => store.save([record()])],
            ['get', () => store.get(r.id)],
            ['list', () => store.list()],
            ['claimKey', () => store.claimKey('k2', randomUUID())],
            ['claimOrphans', () => store.claimOrphans('owner-x', 60_000)],
          ];
          for (const [call, run] of calls) {
            await assert.rejects(
              Promise.resolve().then(run),
              (error: { code?: unknown }) => error.code === 'ERR_STORE_UNAVAILABLE',
              `${call}() after close()`,
            );
          }
        }),
      );
    });
  });
}
