import { describe, expect, it } from 'vitest';
import type { TaskRecord, TaskStatus } from 'koa-taskflow';
import { RedisStore } from 'koa-taskflow/redis';
import { taskRecord as record } from './helpers/durable-app.js';
import { recountMetrics } from './helpers/recount.js';
import { startRedisServer, type RedisServer } from './helpers/redis.js';
import { createManager, onCleanup, waitFor } from './helpers/server.js';

const DAY = 86_400_000;

function openStore(redis: RedisServer, retentionDays: number): RedisStore {
  const store = new RedisStore({ url: redis.url }, { prefix: 'ret', retentionDays });
  onCleanup(() => store.close());
  return store;
}

/** `count` finished records named `name`, ended at `endedAt`, of the given statuses in turn (integer durations: sums are exact). */
function history(
  name: string,
  count: number,
  endedAt: number,
  statuses: readonly TaskStatus[] = ['success', 'cancelled'],
): TaskRecord[] {
  return Array.from({ length: count }, (_, i) => {
    const status = statuses[i % statuses.length];
    return record(`${name}-${i}`, {
      name,
      status,
      attempts: 1,
      createdAt: endedAt - 10,
      endedAt,
      durationMs: status === 'success' ? i % 700 : undefined,
      tags: { batch: name, n: String(i % 3) },
      idempotencyKey: `${name}:${i}`,
    });
  });
}

async function saveAll(store: RedisStore, records: TaskRecord[]): Promise<void> {
  for (let i = 0; i < records.length; i += 1_000) await store.save(records.slice(i, i + 1_000));
}

/** How many records Redis holds: one hash per task. */
async function held(store: RedisStore): Promise<number> {
  return store.client.zcard(`${store.prefix}:created`);
}

/**
 * metrics() against a recount of the records. The store's own retention timer may delete records between
 * the two reads: a pair of reads with the number held changing meanwhile is read again.
 */
async function expectCountsMatchRecords(store: RedisStore): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const heldBefore = await held(store);
    const [metrics, records] = [await store.metrics(), await store.list()];
    if (attempt < 20 && (await held(store)) !== heldBefore) continue;
    expect(records).toHaveLength(heldBefore);
    expect(metrics).toEqual(recountMetrics(records));
    return;
  }
}

describe('RedisStore retention keeps up with any rate', () => {
  it('one pass deletes every expired record, successes and dead letters, with their indexes, keys and counts; a longer pass finishes in the background', async () => {
    const redis = await startRedisServer();
    const store = openStore(redis, 2);
    const now = Date.now();
    // 5 000 past retention: successes and cancellations 3 days old, dead letters 5 days old (kept 4).
    await saveAll(store, history('old', 4_000, now - 3 * DAY));
    await saveAll(store, history('dead', 1_000, now - 5 * DAY, ['failed', 'interrupted']));
    const kept = [...history('recent', 30, now - DAY), ...history('young-dead', 20, now - 3 * DAY, ['failed'])];
    await saveAll(store, kept);
    expect(await held(store)).toBe(5_050);

    await store.claimOrphans('cleaner', 1_000);
    expect((await store.list()).map((r) => r.id).sort()).toEqual(kept.map((r) => r.id).sort());
    expect(await held(store)).toBe(50);
    expect(await store.list({ tags: { batch: 'old' } })).toEqual([]);
    expect(await store.client.exists('ret:k:old:3999', 'ret:k:dead:0', 'ret:k:recent:0')).toBe(1);
    expect(await store.client.zcard('ret:ended')).toBe(30);
    expect(await store.client.zcard('ret:dead')).toBe(20);
    await expectCountsMatchRecords(store);

    // 15 000 more, swept by another instance: claimOrphans() waits for part of the pass only; the rest
    // follows without another call.
    await saveAll(store, history('older', 15_000, now - 3 * DAY));
    const other = openStore(redis, 2);
    await other.claimOrphans('other', 1_000);
    await waitFor(async () => (await held(other)) === 50, 10_000, 'the rest of the pass');
    await expectCountsMatchRecords(other);
  });

  it('under a steady load above 500 records a pass, with a one-second retention, the records held stay bounded', async () => {
    const redis = await startRedisServer();
    // One second: a pass is due every half second, when the orphan check runs.
    const store = openStore(redis, 1 / 86_400);
    const perRound = 1_500;
    const heldAfterPass: number[] = [];
    for (let round = 0; round < 6; round++) {
      await saveAll(store, history(`r${round}`, perRound, Date.now()));
      // Rounds at least 0.6 s apart: a pass keeps at most the records of the last second, two rounds.
      await new Promise((resolve) => setTimeout(resolve, 600));
      await store.claimOrphans('cleaner', 1_000);
      heldAfterPass.push(await held(store));
    }
    for (const count of heldAfterPass) expect(count).toBeLessThanOrEqual(2 * perRound);
    await expectCountsMatchRecords(store);
  });

  it('sweeps on its own timer: an instance that never claims orphans (requeuePending: false) still deletes what expired', async () => {
    const redis = await startRedisServer();
    // One second: a pass is due every half second.
    const store = openStore(redis, 1 / 86_400);
    const manager = createManager({ store, requeuePending: false });
    await manager.start();
    await saveAll(store, history('expired', 2_000, Date.now() - 10_000));
    await saveAll(store, history('fresh', 10, Date.now() + 60_000));
    await waitFor(async () => (await held(store)) === 10, 5_000, "a pass of the store's own timer");
    expect((await store.list()).map((r) => r.name)).toEqual(Array(10).fill('fresh'));
    await expectCountsMatchRecords(store);
  });
});
