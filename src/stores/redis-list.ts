import type { Redis } from 'ioredis';
import type { CompiledFilter } from './filter.js';

/**
 * How `RedisStore.list(filter)` finds its ids, newest first, from the sorted sets by creation time (scores
 * are createdAt; ties in reverse id order, as ZREVRANGEBYSCORE gives them):
 *   - the sets the filter requires (one status, the name, each tag): the smallest is walked, and each id
 *     is checked against the others with pipelined ZSCOREs, a chunk at a time;
 *   - several statuses (the dead letters): their sets are walked together, merged in order;
 *   - none: p:created.
 * Every walk goes by score bounds, never an offset: a page after `filter.before` starts where that record
 * sorts (even if it is gone), and each further chunk where the last one ended. So a page costs about its
 * own size, however deep in the history, plus what the required sets reject.
 */
export interface IndexPlan {
  /** Sets walked together (their union), newest first. */
  walked: string[];
  /** Sets every id must also be in. */
  required: string[];
}

export async function planIndexes(
  client: Redis,
  prefix: string,
  f: CompiledFilter,
  tagKey: (key: string, value: string) => string,
): Promise<IndexPlan> {
  const required: string[] = [];
  if (f.statuses?.size === 1) required.push(`${prefix}:s:${[...f.statuses][0]}`);
  if (f.name !== undefined) required.push(`${prefix}:n:${f.name}`);
  for (const [key, value] of f.tags) required.push(tagKey(key, value));
  if (f.statuses !== undefined && f.statuses.size > 1)
    return { walked: [...f.statuses].map((s) => `${prefix}:s:${s}`), required };
  if (required.length === 0) return { walked: [`${prefix}:created`], required };
  if (required.length === 1) return { walked: required, required: [] };
  const pipeline = client.pipeline();
  for (const key of required) pipeline.zcard(key);
  const sizes = ((await pipeline.exec()) ?? []).map(([error, size]) => {
    if (error !== null) throw error;
    return Number(size);
  });
  let smallest = 0;
  for (let i = 1; i < sizes.length; i++) if (sizes[i] < sizes[smallest]) smallest = i;
  return { walked: [required[smallest]], required: required.filter((_, i) => i !== smallest) };
}

/** One sorted set read newest first, a chunk at a time, from a score bound (and how many ties at it were read). */
class IndexWalk {
  #max: string;
  #skip = 0;
  #buffer: { id: string; score: number }[] = [];
  #at = 0;
  #done = false;

  constructor(
    private readonly client: Redis,
    private readonly key: string,
    private readonly min: string,
    private readonly chunk: number,
    private readonly before: CompiledFilter['before'],
  ) {
    this.#max = before === undefined ? '+inf' : String(before.createdAt);
  }

  /** The next id in order, without taking it; undefined at the end. */
  async peek(): Promise<{ id: string; score: number } | undefined> {
    while (this.#at === this.#buffer.length && !this.#done) await this.#read();
    return this.#buffer[this.#at];
  }

  take(): void {
    this.#at++;
  }

  async #read(): Promise<void> {
    const flat = await this.client.zrevrangebyscore(
      this.key,
      this.#max,
      this.min,
      'WITHSCORES',
      'LIMIT',
      this.#skip,
      this.chunk,
    );
    const read: { id: string; score: number }[] = [];
    for (let i = 0; i < flat.length; i += 2) read.push({ id: flat[i], score: Number(flat[i + 1]) });
    if (read.length < this.chunk) this.#done = true;
    if (read.length > 0) {
      // The next chunk starts at the last score read, past the ties at it already read.
      const last = read[read.length - 1].score;
      const ties = read.filter((r) => r.score === last).length;
      this.#skip = String(last) === this.#max ? this.#skip + ties : ties;
      this.#max = String(last);
    }
    const { before } = this;
    // Ties with the `before` record sort by id, descending: those from its id up came before it.
    this.#buffer = before === undefined ? read : read.filter((r) => r.score < before.createdAt || r.id < before.id);
    this.#at = 0;
  }
}

/** Ids from the walked sets merged newest first (ties: the greater id first), `count` at most. */
export class MergedWalk {
  readonly #walks: IndexWalk[];

  constructor(client: Redis, keys: string[], f: CompiledFilter, chunk: number) {
    const min = f.since === undefined ? '-inf' : String(f.since);
    this.#walks = keys.map((key) => new IndexWalk(client, key, min, chunk, f.before));
  }

  async next(count: number): Promise<string[]> {
    const ids: string[] = [];
    while (ids.length < count) {
      let best: { walk: IndexWalk; id: string; score: number } | undefined;
      for (const walk of this.#walks) {
        const head = await walk.peek();
        if (head === undefined) continue;
        if (best === undefined || head.score > best.score || (head.score === best.score && head.id > best.id))
          best = { walk, ...head };
      }
      if (best === undefined) break;
      best.walk.take();
      // A record changing status between two reads may be met in two status sets: once is enough.
      if (ids[ids.length - 1] !== best.id) ids.push(best.id);
    }
    return ids;
  }
}

/** The ids of `ids` that are in every one of `required` (one pipelined ZSCORE each). */
export async function inEvery(client: Redis, ids: string[], required: string[]): Promise<string[]> {
  if (required.length === 0 || ids.length === 0) return ids;
  const pipeline = client.pipeline();
  for (const id of ids) for (const key of required) pipeline.zscore(key, id);
  const results = (await pipeline.exec()) ?? [];
  return ids.filter((_, i) =>
    results.slice(i * required.length, (i + 1) * required.length).every(([error, score]) => {
      if (error !== null) throw error;
      return score !== null;
    }),
  );
}
