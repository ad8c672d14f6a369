import { createHash, randomBytes } from 'node:crypto';
import { Redis, type RedisOptions } from 'ioredis';
import { TaskStoreUnavailableError } from '../errors.js';
import { metricsFromBuckets, type DurationBucket, type StatusCount } from '../metrics.js';
import { DURATION_BUCKETS } from '../otel.js';
import type {
  CancelRequest,
  SaveResult,
  StoreMetrics,
  TaskFilter,
  TaskRecord,
  TaskStatus,
  TaskStore,
} from '../types.js';
import { checkKnownKeys, optionError } from '../options.js';
import { compileFilter, matchesFilter } from './filter.js';
import { GroupCommittedStore, type OrphanBatch } from './durable-store.js';
import type { WriteBatch } from './group-commit.js';
import { inEvery, MergedWalk, planIndexes } from './redis-list.js';
import {
  retentionCutoff,
  serialiseRecord,
  unreadableRecord,
  validateFailedRetentionDays,
  validateRetentionDays,
} from './records.js';

/** How to reach Redis: a URL (the store makes and closes its own client) or a client you own. */
export type RedisConnection = ({ url: string } & RedisOptions) | { client: Redis };

const REDIS_STORE_OPTIONS = new Set(['prefix', 'retentionDays', 'failedRetentionDays']);

export interface RedisStoreOptions {
  /** Prefix of every key. Default `taskflow`. Instances sharing work must use the same prefix. */
  prefix?: string;
  /** Days finished records (and their idempotency keys) are kept. Default 7. */
  retentionDays?: number;
  /** Days failed and interrupted records (the dead letters) are kept; at least `retentionDays`. Default twice `retentionDays`. */
  failedRetentionDays?: number;
}

// Keys (all under the prefix `p`):
//   p:t:<id>        hash: status, owner (unfinished only), record (JSON), cancel (the reason of a cancel request)
//   p:cancels       set of ids with a cancel request whose task has not been seen finished by a lease renewal
//   p:created       zset of every id by createdAt; p:s:<status>, p:n:<name>, p:g:<len>:<key>=<value> the same per filter
//   p:ended         zset of finished ids by endedAt (retention); p:dead the same for failed and interrupted ones
//                   (kept failedRetentionDays)
//   p:k:<key>       the id holding an idempotency key;  p:a:<id>  alias of an id that lost a claim (expires)
//   p:x:<batch>     a save batch or orphan claim its caller gave up on (no answer in time): its script does
//                   nothing if it comes later (expires); a task hash's field b names the batch that created it,
//                   y the claim that took it, f:<batch> a batch answered with it (see SETTLE)
//   p:o:<owner>     an owner's lease (expires unless renewed); p:owners  set of owners; p:u:<owner> their unfinished ids
//                   (p:u: with no owner: work handed back at shutdown)
//   p:counts        hash kept by the scripts that write records, for metrics(): s:<status>:<name> how many records,
//                   c:<le>:<name> and d:<le>:<name> how many successes in a task.duration bucket (le: its upper
//                   bound in ms, or inf) and the sum of their durations; a task hash's field c says it is counted
//   p:counts:v      set once every record is counted (records written before counts existed: see #counted())
// Every write is one Lua script: Redis runs it atomically, so claims of keys and orphans never interleave.

// The bucket bounds (ms) of the task.duration histogram, and count(): a record in (by 1) or out (by -1) of
// p:counts. A field that reaches 0 is removed, so names that are gone leave nothing behind.
const COUNT = `
local BOUNDS = {${DURATION_BUCKETS.map((seconds) => Math.round(seconds * 1000)).join(', ')}}
local function count(p, name, status, ms, by)
  local h = p .. ':counts'
  local f = 's:' .. status .. ':' .. name
  if redis.call('HINCRBY', h, f, by) <= 0 then redis.call('HDEL', h, f) end
  if status ~= 'success' or type(ms) ~= 'number' then return end
  local le = 'inf'
  for _, bound in ipairs(BOUNDS) do
    if ms <= bound then
      le = tostring(bound)
      break
    end
  end
  if redis.call('HINCRBY', h, 'c:' .. le .. ':' .. name, by) <= 0 then
    redis.call('HDEL', h, 'c:' .. le .. ':' .. name, 'd:' .. le .. ':' .. name)
  else
    redis.call('HINCRBYFLOAT', h, 'd:' .. le .. ':' .. name, string.format('%.17g', by * ms))
  end
end
local function durationIn(json)
  local ok, r = pcall(cjson.decode, json or '')
  if ok and type(r) == 'table' and type(r.durationMs) == 'number' then return r.durationMs end
  return nil
end
`;

const SAVE = `${COUNT}
local p, me, lease, aliasTtl, batch = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
-- Its writer got no answer in time and has settled it already (SETTLE): a late copy writes nothing.
if redis.call('EXISTS', p .. ':x:' .. batch) == 1 then return {} end
-- The first write to an empty prefix: every record from here on is counted as it is written, so there is
-- no older history to count (metrics() would otherwise walk all of it once, the first time it is called).
if redis.call('ZCARD', p .. ':created') == 0 then redis.call('SET', p .. ':counts:v', '1') end
if me ~= '' then
  redis.call('SET', p .. ':o:' .. me, '1', 'PX', lease)
  redis.call('SADD', p .. ':owners', me)
end
local dups = {}
local i = 6
while i <= #ARGV do
  local id, status, created, ended, name, ikey, tags, released, json, ms =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], tonumber(ARGV[i + 9])
  i = i + 10
  local tk = p .. ':t:' .. id
  local prev = redis.call('HMGET', tk, 'status', 'owner', 'c')
  local prevStatus, prevOwner, counted = prev[1], prev[2], prev[3]
  local skip = false
  if not prevStatus then
    if ikey ~= '' then
      local kk = p .. ':k:' .. ikey
      local holder = redis.call('GET', kk)
      if holder and holder ~= id then
        local held = redis.call('HGET', p .. ':t:' .. holder, 'status')
        if held and held ~= 'failed' then
          redis.call('SET', p .. ':a:' .. id, holder, 'PX', aliasTtl)
          -- The holder answers another batch's add (f:<batch>): SETTLE does not take it back from under it.
          local hk = p .. ':t:' .. holder
          if held == 'pending' and redis.call('HGET', hk, 'b') ~= batch then redis.call('HSET', hk, 'f:' .. batch, '1') end
          dups[#dups + 1] = id
          dups[#dups + 1] = holder
          skip = true
        end
      end
      if not skip then redis.call('SET', kk, id) end
    end
    if not skip then
      redis.call('HSET', tk, 'b', batch)
      redis.call('ZADD', p .. ':created', created, id)
      redis.call('ZADD', p .. ':n:' .. name, created, id)
      for k, v in pairs(cjson.decode(tags)) do
        redis.call('ZADD', p .. ':g:' .. string.len(k) .. ':' .. k .. '=' .. v, created, id)
      end
    end
  end
  if not skip then
    -- The counts move from what this record was (if counted) to what it is now.
    local prevMs = nil
    if counted and prevStatus == 'success' then prevMs = durationIn(redis.call('HGET', tk, 'record')) end
    if not counted then
      count(p, name, status, ms, 1)
    elseif prevStatus ~= status or prevMs ~= ms then
      count(p, name, prevStatus, prevMs, -1)
      count(p, name, status, ms, 1)
    end
    if prevStatus ~= status then
      if prevStatus then redis.call('ZREM', p .. ':s:' .. prevStatus, id) end
      redis.call('ZADD', p .. ':s:' .. status, created, id)
    end
    if status == 'pending' or status == 'running' then
      local owner = me
      if released == '1' then owner = '' end
      if prevOwner ~= owner then
        if prevOwner then redis.call('SREM', p .. ':u:' .. prevOwner, id) end
        redis.call('SADD', p .. ':u:' .. owner, id)
      end
      redis.call('HSET', tk, 'status', status, 'owner', owner, 'record', json, 'c', '1')
    else
      if prevOwner then
        redis.call('SREM', p .. ':u:' .. prevOwner, id)
        redis.call('HDEL', tk, 'owner')
      end
      redis.call('HSET', tk, 'status', status, 'record', json, 'c', '1')
      if ended ~= '' then
        if status == 'failed' or status == 'interrupted' then
          redis.call('ZADD', p .. ':dead', ended, id)
        else
          redis.call('ZADD', p .. ':ended', ended, id)
        end
      end
    end
  end
end
return dups
`;

const CLAIM_KEY = `
local p, key, id = ARGV[1], ARGV[2], ARGV[3]
local kk = p .. ':k:' .. key
local holder = redis.call('GET', kk)
if holder and holder ~= id then
  local held = redis.call('HGET', p .. ':t:' .. holder, 'status')
  if held and held ~= 'failed' then return holder end
end
redis.call('SET', kk, id)
return false
`;

// At most ARGV[4] task ids are taken (popped) from the dead owners' sets per call; an owner is forgotten once
// its set is empty. Returns {ids taken, claimed}: fewer taken than the limit means none is left.
const CLAIM_ORPHANS = `
local p, me, lease, limit, batch = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
-- Its caller got no answer in time and has settled it already (SETTLE): a late copy claims nothing.
if redis.call('EXISTS', p .. ':x:' .. batch) == 1 then return {0, {}} end
redis.call('SET', p .. ':o:' .. me, '1', 'PX', lease)
redis.call('SADD', p .. ':owners', me)
local claimed = {}
local taken = 0
local owners = redis.call('SMEMBERS', p .. ':owners')
-- A task key that is not a hash (written by something else) is returned as {id, false, its type} and left
-- as it is: recovery skips it rather than failing every claim.
owners[#owners + 1] = ''
for _, owner in ipairs(owners) do
  if taken >= limit then break end
  if owner == '' or (owner ~= me and redis.call('EXISTS', p .. ':o:' .. owner) == 0) then
    local set = p .. ':u:' .. owner
    local ids = redis.call('SPOP', set, limit - taken)
    taken = taken + #ids
    for _, id in ipairs(ids) do
      local tk = p .. ':t:' .. id
      local kind = redis.call('TYPE', tk).ok
      if kind == 'hash' then
        local status = redis.call('HGET', tk, 'status')
        if status == 'pending' or status == 'running' then
          redis.call('HSET', tk, 'owner', me, 'y', batch)
          redis.call('SADD', p .. ':u:' .. me, id)
          local held = redis.call('HMGET', tk, 'record', 'cancel')
          claimed[#claimed + 1] = {id, held[1], kind, held[2]}
        end
      elseif kind ~= 'none' then
        claimed[#claimed + 1] = {id, false, kind}
      end
    end
    if owner ~= '' and redis.call('EXISTS', set) == 0 then redis.call('SREM', p .. ':owners', owner) end
  end
end
return {taken, claimed}
`;

// A cancel request on an unfinished task: its reason in the hash (the first one stays; the holder's writes
// leave the field alone) and its id in p:cancels for the lease renewals. 1 if the task is unfinished, else 0.
const REQUEST_CANCEL = `
local p, id, reason = ARGV[1], ARGV[2], ARGV[3]
local tk = p .. ':t:' .. id
if redis.call('TYPE', tk).ok ~= 'hash' then return 0 end
local status = redis.call('HGET', tk, 'status')
if status ~= 'pending' and status ~= 'running' then return 0 end
redis.call('HSETNX', tk, 'cancel', reason)
redis.call('SADD', p .. ':cancels', id)
return 1
`;

// The lease renewal, answering the cancel requests on tasks this owner holds ({id, reason, ...}); a request
// whose task has ended (or is gone) leaves p:cancels here. p:cancels holds only requests not yet applied.
const RENEW_LEASE = `
local p, me, lease = ARGV[1], ARGV[2], ARGV[3]
redis.call('SET', p .. ':o:' .. me, '1', 'PX', lease)
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', p .. ':cancels')) do
  local tk = p .. ':t:' .. id
  local held = redis.call('TYPE', tk).ok == 'hash' and redis.call('HMGET', tk, 'status', 'owner', 'cancel')
  if not held or (held[1] ~= 'pending' and held[1] ~= 'running') then
    redis.call('SREM', p .. ':cancels', id)
  elseif held[2] == me then
    out[#out + 1] = id
    out[#out + 1] = held[3]
  end
end
return out
`;

// {id, record or false, the key's type} of the task or of the task holding its idempotency key; false if none.
const GET = `
local p, id = ARGV[1], ARGV[2]
local function read(id)
  local tk = p .. ':t:' .. id
  local kind = redis.call('TYPE', tk).ok
  if kind == 'none' then return false end
  if kind ~= 'hash' then return {id, false, kind} end
  return {id, redis.call('HGET', tk, 'record'), kind}
end
local found = read(id)
if found then return found end
local holder = redis.call('GET', p .. ':a:' .. id)
if holder then return read(holder) end
return false
`;

// delete(p, id, r): a task's hash (r its decoded record) with its index entries, its counts and its key if it holds it.
const DELETE = `${COUNT}
local function delete(p, id, r)
  local tk = p .. ':t:' .. id
  local held = redis.call('HMGET', tk, 'status', 'c')
  if held[2] and type(r.name) == 'string' then count(p, r.name, held[1], r.durationMs, -1) end
  redis.call('ZREM', p .. ':created', id)
  if type(r.status) == 'string' then redis.call('ZREM', p .. ':s:' .. r.status, id) end
  if type(r.name) == 'string' then redis.call('ZREM', p .. ':n:' .. r.name, id) end
  if type(r.tags) == 'table' then
    for k, v in pairs(r.tags) do
      if type(k) == 'string' and type(v) == 'string' then redis.call('ZREM', p .. ':g:' .. string.len(k) .. ':' .. k .. '=' .. v, id) end
    end
  end
  if type(r.idempotencyKey) == 'string' and redis.call('GET', p .. ':k:' .. r.idempotencyKey) == id then
    redis.call('DEL', p .. ':k:' .. r.idempotencyKey)
  end
  redis.call('DEL', p .. ':t:' .. id)
end
`;

// One batch of a retention pass: up to SWEEP_BATCH expired ids of each of p:ended and p:dead. Successes past
// their cutoff are deleted; a dead letter found among them (a record that ended before p:dead existed) moves
// to p:dead with its end time, to be deleted at the older failed cutoff. Returns 1 if a set gave a full
// batch (more may be expired), 0 when both are done.
const CLEANUP = `${DELETE}
local p, cutoff, failedCutoff, batch = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local more = 0
for _, set in ipairs({ 'ended', 'dead' }) do
  local key = p .. ':' .. set
  local ids = redis.call('ZRANGEBYSCORE', key, '-inf', set == 'dead' and failedCutoff or cutoff, 'WITHSCORES', 'LIMIT', 0, batch)
  for i = 1, #ids, 2 do
    local id = ids[i]
    local tk = p .. ':t:' .. id
    -- A record that cannot be decoded (or a key that is not a hash) must not stop the sweep of the others:
    -- it leaves the sweep and is left as it is (list() skips it and reports it).
    local json = redis.call('TYPE', tk).ok == 'hash' and redis.call('HGET', tk, 'record')
    local ok, r = false, nil
    if json then ok, r = pcall(cjson.decode, json) end
    if ok and type(r) == 'table' then
      if set == 'ended' and (r.status == 'failed' or r.status == 'interrupted') then
        redis.call('ZADD', p .. ':dead', ids[i + 1], id)
      else
        delete(p, id, r)
      end
    end
    redis.call('ZREM', key, id)
  end
  if #ids / 2 >= batch then more = 1 end
end
return more
`;

// A save batch whose writer got no answer (a timeout, a lost connection: Redis may have run it, or may run it
// still) and refused its tasks: ARGV[4..] are groups {batch, n, the n ids it wrote}, every such batch of this
// owner; n = -1 for an orphan claim that got no answer, whose tasks (field y) are handed back, unowned. Each
// is marked given up on (p:x:, so a copy of it that reaches Redis later does nothing), and each task a batch
// created (field b) still pending with this owner is deleted with its key, as if the write had never happened;
// unless an add of another batch that was not given up on was answered with it (the same idempotency key,
// another instance, while Redis ran the late batch): that one was acknowledged, so the task is handed back,
// unowned, for the next orphan check to run.
const SETTLE = `${DELETE}
local p, me, ttl = ARGV[1], ARGV[2], ARGV[3]
local batches = {}
local i = 4
local mine = p .. ':u:' .. me
while i <= #ARGV do
  local batch, n = ARGV[i], tonumber(ARGV[i + 1])
  redis.call('SET', p .. ':x:' .. batch, '1', 'PX', ttl)
  if n < 0 then
    -- What the claim took is this owner's, unknown to it: the next orphan check (of any instance) takes it.
    for _, id in ipairs(redis.call('SMEMBERS', mine)) do
      local tk = p .. ':t:' .. id
      if redis.call('TYPE', tk).ok == 'hash' and redis.call('HGET', tk, 'y') == batch then
        redis.call('SREM', mine, id)
        redis.call('SADD', p .. ':u:', id)
        redis.call('HSET', tk, 'owner', '')
      end
    end
    n = 0
  else
    batches[#batches + 1] = {batch, i + 2, i + 1 + n}
  end
  -- A given-up add answered with an existing task does not keep that task.
  for j = i + 2, i + 1 + n do
    local holder = redis.call('GET', p .. ':a:' .. ARGV[j])
    if holder then redis.call('HDEL', p .. ':t:' .. holder, 'f:' .. batch) end
  end
  i = i + 2 + n
end
for _, b in ipairs(batches) do
  local batch = b[1]
  for j = b[2], b[3] do
    local id = ARGV[j]
    local tk = p .. ':t:' .. id
    if redis.call('TYPE', tk).ok == 'hash' then
      local held = redis.call('HMGET', tk, 'status', 'owner', 'b', 'record')
      local ok, r = pcall(cjson.decode, held[4] or '')
      if held[1] == 'pending' and held[2] == me and held[3] == batch and ok and type(r) == 'table' then
        local followed = false
        for _, field in ipairs(redis.call('HKEYS', tk)) do
          if string.sub(field, 1, 2) == 'f:' then followed = true end
        end
        redis.call('SREM', mine, id)
        if followed then
          redis.call('HSET', tk, 'owner', '')
          redis.call('SADD', p .. ':u:', id)
        else
          delete(p, id, r)
        end
      end
    end
  end
end
return 0
`;

// Counts the given records that are not counted yet (written before p:counts existed); see #counted().
const COUNT_RECORDS = `${COUNT}
local p = ARGV[1]
for i = 2, #ARGV do
  local tk = p .. ':t:' .. ARGV[i]
  if redis.call('TYPE', tk).ok == 'hash' then
    local held = redis.call('HMGET', tk, 'status', 'c', 'record')
    local ok, r = pcall(cjson.decode, held[3] or '')
    if held[1] and not held[2] and ok and type(r) == 'table' and type(r.name) == 'string' then
      count(p, r.name, held[1], r.durationMs, 1)
      redis.call('HSET', tk, 'c', '1')
    end
  end
end
return 0
`;

class Script {
  readonly sha: string;
  constructor(readonly source: string) {
    this.sha = createHash('sha1').update(source).digest('hex');
  }
}

const scripts = {
  save: new Script(SAVE),
  claimKey: new Script(CLAIM_KEY),
  claimOrphans: new Script(CLAIM_ORPHANS),
  get: new Script(GET),
  cleanup: new Script(CLEANUP),
  settle: new Script(SETTLE),
  countRecords: new Script(COUNT_RECORDS),
  requestCancel: new Script(REQUEST_CANCEL),
  renewLease: new Script(RENEW_LEASE),
};

const CLEANUP_EVERY_MS = 60_000;
/** Expired records of each kind deleted per script call: 5–10 ms of Redis time measured on a busy 2-core machine (SLOWLOG). */
const SWEEP_BATCH = 200;
/** claimOrphans() waits for this many batches of a pass at most; a longer pass goes on in the background. */
const SWEEP_AWAITED_BATCHES = 50;
const DAY_MS = 86_400_000;
/**
 * How long a settled batch is remembered (p:x:): longer than a copy of it can take to reach Redis (a packet the
 * kernel still retransmits after the client gave up, for minutes at most).
 */
const GIVEN_UP_MS = 3_600_000;

/**
 * A durable store shared by many instances through one Redis (not Redis Cluster). Records are JSON in a
 * hash per task, with sorted sets by creation time per status, name and tag for `list()`; idempotency
 * claims and orphan claims are Lua scripts, atomic across instances. Writes are group-committed: one
 * script call per event-loop turn.
 */
export class RedisStore extends GroupCommittedStore implements TaskStore {
  readonly prefix: string;
  readonly retentionDays: number;
  readonly failedRetentionDays: number;
  readonly client: Redis;
  readonly #ownsClient: boolean;
  #cleanedAt = -Infinity;
  readonly #sweepEveryMs: number;
  readonly #retentionTimer: NodeJS.Timeout;
  /** The retention pass in flight, if any (one at a time per store). */
  #sweeping: Promise<void> | undefined;
  #triedToConnect = false;
  /** Settles once every record in Redis is counted in p:counts (see #counted()). */
  #counting: Promise<void> | undefined;
  /** Save batches and orphan claims sent that got no answer: settled (SETTLE) before this store sends anything else. */
  readonly #unanswered: { batch: string; ids: string[] | undefined }[] = [];
  #settling: Promise<void> | undefined;
  /** Save batches and orphan claims are named by this store's prefix and a count (fields b and y of tasks). */
  readonly #batchPrefix = randomBytes(6).toString('base64url');
  #batches = 0;

  constructor(connection: RedisConnection, options: RedisStoreOptions = {}) {
    super();
    const where = 'RedisStore';
    if (connection === null || typeof connection !== 'object')
      throw new TypeError(`${where}: the first argument must be { url } or { client }`);
    if (options === null || typeof options !== 'object') throw new TypeError(`${where}: options must be an object`);
    checkKnownKeys(where, options, REDIS_STORE_OPTIONS);
    const { prefix = 'taskflow' } = options;
    if (typeof prefix !== 'string' || prefix === '') throw optionError(where, 'prefix', 'a non-empty string', prefix);
    this.prefix = prefix;
    this.retentionDays = validateRetentionDays(where, options.retentionDays);
    this.failedRetentionDays = validateFailedRetentionDays(where, options.failedRetentionDays, this.retentionDays);
    if ('client' in connection) {
      if (
        connection.client === null ||
        typeof connection.client !== 'object' ||
        typeof connection.client.evalsha !== 'function'
      ) {
        throw new TypeError(`${where}: option "client" must be an ioredis client`);
      }
      this.client = connection.client;
      this.#ownsClient = false;
    } else {
      const { url, ...redisOptions } = connection;
      if (typeof url !== 'string' || url === '') throw optionError(where, 'url', 'a redis:// URL', url);
      // While Redis is unreachable a request is answered 503 at once rather than waiting for a reconnection:
      // nothing waits in ioredis's offline queue (#reachable), a command in flight when the connection drops
      // fails with it, a peer that stops answering is given up after socketTimeout; the client keeps
      // reconnecting in the background and the store works again as soon as Redis is back.
      this.client = new Redis(url, {
        maxRetriesPerRequest: 0,
        connectTimeout: 2_000,
        socketTimeout: 3_000,
        retryStrategy: (times) => Math.min(times * 200, 2_000),
        ...redisOptions,
      });
      this.#ownsClient = true;
      // Connection errors surface as failed commands (reported by the TaskManager); an 'error' event
      // with no listener would only add noise on stderr.
      this.client.on('error', () => {});
    }
    if (this.client.status === 'ready') this.#triedToConnect = true;
    else for (const event of ['ready', 'close']) this.client.once(event, () => (this.#triedToConnect = true));
    // Back after a batch got no answer: settled at once, whether or not anything else is sent.
    this.client.on('ready', () => void this.#settle().catch(() => {}));
    // Every minute, or every retentionDays / 2 when shorter (as SqliteStore). On its own timer, so a store
    // whose manager never claims orphans (requeuePending: false) still sweeps; recovery sweeps too when due.
    this.#sweepEveryMs = Math.max(250, Math.min(CLEANUP_EVERY_MS, (this.retentionDays * DAY_MS) / 2));
    // A failed pass (Redis away) waits for the next one.
    this.#retentionTimer = setInterval(() => void this.#sweepIfDue().catch(() => {}), this.#sweepEveryMs).unref();
  }

  /**
   * Refuses at once (TaskStoreUnavailableError) while the client is not connected, instead of letting
   * ioredis queue the command until a reconnection, which a request would wait for. Before the client's
   * first connection attempt has ended, commands do wait for it: a store is used right after it is made.
   */
  #reachable(): void {
    const { status } = this.client;
    if (status !== 'ready' && this.#triedToConnect) {
      throw new TaskStoreUnavailableError(
        `RedisStore: Redis is unreachable (connection ${status}); the client reconnects in the background`,
      );
    }
  }

  /**
   * #reachable(), then the batches and claims that got no answer are settled first: a command sent after them
   * (a retry's write, a get, a list) never sees what Redis may have written of them after the client gave up.
   */
  async #ready(): Promise<void> {
    this.#reachable();
    if (this.#unanswered.length > 0) await this.#settle();
  }

  /**
   * SETTLE the batches that got no answer; a batch stays until a call settling it is answered (settling again
   * is harmless). Sent straight to Redis, not through #run, which waits for it.
   */
  #settle(): Promise<void> {
    if (this.#unanswered.length === 0) return Promise.resolve();
    this.#settling ??= (async () => {
      try {
        while (this.#unanswered.length > 0) {
          // All of them in one call: a task kept by a follower's batch is kept only if that batch was answered.
          const taken = this.#unanswered.slice();
          const argv = [this.prefix, this.ownerId, String(GIVEN_UP_MS)];
          for (const { batch, ids } of taken)
            if (ids === undefined) argv.push(batch, '-1');
            else argv.push(batch, String(ids.length), ...ids);
          await this.#send(scripts.settle, argv).catch(unavailable);
          this.#unanswered.splice(0, taken.length);
        }
      } finally {
        this.#settling = undefined;
      }
    })();
    return this.#settling;
  }

  protected async read(id: string): Promise<TaskRecord | undefined> {
    const found = (await this.#run(scripts.get, [this.prefix, id])) as StoredTask | null;
    if (found === null) return undefined;
    const [holder, json, kind] = found;
    if (json === null) {
      const error = unreadableRecord(holder, hashProblem(kind));
      this.unreadable(holder, error);
      throw error;
    }
    return this.getRecord(holder, json);
  }

  async list(filter?: TaskFilter): Promise<TaskRecord[]> {
    const f = compileFilter(filter);
    if (f.limit === 0) return [];
    await this.#ready();
    // This process's status changes land first: a list shows what get() answers (see GroupCommittedStore.get).
    await this.commit.flushChanges();
    const p = this.prefix;
    const { walked, required } = await planIndexes(this.client, p, f, (key, value) => tagKey(p, key, value)).catch(
      unavailable,
    );
    const chunk = Math.min(Math.max(f.limit === Infinity ? 500 : f.limit * 2, 50), 1_000);
    const walk = new MergedWalk(this.client, walked, f, chunk);
    const out: TaskRecord[] = [];
    while (out.length < f.limit) {
      // Without sets to check against, each id read is a record of the page (unless gone since).
      const want = required.length === 0 ? Math.min(chunk, f.limit - out.length) : chunk;
      const read = await walk.next(want).catch(unavailable);
      const ids = await inEvery(this.client, read, required).catch(unavailable);
      if (ids.length > 0) {
        const pipeline = this.client.pipeline();
        for (const id of ids) pipeline.hget(`${p}:t:${id}`, 'record');
        // A connection lost between the index read and this one is the store being unavailable, not a short page.
        const results = (await pipeline.exec().catch(unavailable)) ?? [];
        for (let i = 0; i < results.length; i++) {
          const [error, json] = results[i];
          // No record: deleted since the index was read (retention). An error: the key is not a hash.
          if (error !== null && !error.message.startsWith('WRONGTYPE')) unavailable(error);
          if (error !== null && error.message.startsWith('WRONGTYPE'))
            this.unreadable(ids[i], unreadableRecord(ids[i], hashProblem(undefined)));
          if (error !== null || typeof json !== 'string') continue;
          const record = this.readRecord(ids[i], json);
          if (record === undefined || !matchesFilter(record, f)) continue;
          if (out.push(record) === f.limit) break;
        }
      }
      if (read.length < want) break;
    }
    return out;
  }

  /**
   * From p:counts, kept by the scripts that write and delete records: a few fields per task name, however
   * long the history. Durations are histograms with the buckets of `task.duration`: the mean is exact, the
   * p95 an estimate within its bucket.
   */
  async metrics(): Promise<StoreMetrics> {
    await this.#ready();
    await this.commit.flushChanges();
    await this.#counted();
    const fields = await this.client.hgetall(`${this.prefix}:counts`).catch(unavailable);
    const counts: StatusCount[] = [];
    const buckets = new Map<string, DurationBucket>();
    const bucket = (le: string, name: string) => {
      const key = `${le}:${name}`;
      let found = buckets.get(key);
      if (found === undefined)
        buckets.set(key, (found = { name, le: le === 'inf' ? Infinity : Number(le), count: 0, sumMs: 0 }));
      return found;
    };
    for (const [field, value] of Object.entries(fields)) {
      const kind = field.slice(0, 2);
      const rest = field.slice(2);
      const colon = rest.indexOf(':');
      const [head, name] = [rest.slice(0, colon), rest.slice(colon + 1)];
      if (kind === 's:' && Number(value) > 0) counts.push({ name, status: head as TaskStatus, count: Number(value) });
      else if (kind === 'c:') bucket(head, name).count = Number(value);
      else if (kind === 'd:') bucket(head, name).sumMs = Number(value);
    }
    return metricsFromBuckets(
      counts,
      [...buckets.values()].filter((b) => b.count > 0),
    );
  }

  /**
   * Records written before p:counts existed (an older version of this package) are counted once, the
   * first time metrics() or the recovery sweep runs: p:created is walked with ZSCAN a chunk at a time,
   * each chunk counted by one script that skips records already counted, so writes by any instance in
   * the meantime are counted exactly once; p:counts:v marks the end. A failure is retried next time.
   */
  #counted(): Promise<void> {
    this.#counting ??= (async () => {
      const p = this.prefix;
      if ((await this.client.get(`${p}:counts:v`).catch(unavailable)) !== null) return;
      let cursor = '0';
      do {
        const [next, found] = await this.client.zscan(`${p}:created`, cursor, 'COUNT', 500).catch(unavailable);
        cursor = next;
        const ids = found.filter((_, i) => i % 2 === 0);
        if (ids.length > 0) await this.#run(scripts.countRecords, [p, ...ids]);
      } while (cursor !== '0');
      await this.client.set(`${p}:counts:v`, '1').catch(unavailable);
    })();
    this.#counting.catch(() => (this.#counting = undefined));
    return this.#counting;
  }

  async claimKey(key: string, id: string): Promise<string | undefined> {
    return ((await this.#run(scripts.claimKey, [this.prefix, key, id])) as string | null) ?? undefined;
  }

  async claimOrphans(ownerId: string, leaseMs: number): Promise<TaskRecord[]> {
    await this.commit.flush();
    const records = await this.claimInBatches((limit) => this.#claimOrphanBatch(ownerId, leaseMs, limit));
    // Counting a history written before counts existed runs in the background; metrics() waits for it.
    this.#counted().catch(() => {});
    await this.#sweepIfDue();
    return records;
  }

  /** One Lua call: at most `limit` orphans (one call taking 100 000 ran past the client's socket timeout). */
  async #claimOrphanBatch(ownerId: string, leaseMs: number, limit: number): Promise<OrphanBatch> {
    const batch = this.#batchName();
    // No answer: Redis may have run the claim (or may still): what it took is handed back when settled.
    const unanswered = () => this.#unanswered.push({ batch, ids: undefined });
    const args = [this.prefix, ownerId, leaseMs, limit, batch];
    const [taken, claimed] = (await this.#run(scripts.claimOrphans, args, unanswered)) as [number, StoredTask[]];
    // A record that cannot be read stays claimed by this owner, untouched: it is reported once and not
    // looked at again until this owner is gone.
    const records: TaskRecord[] = [];
    for (const [id, json, kind, cancel] of claimed) {
      if (json === null) {
        this.unreadable(id, unreadableRecord(id, hashProblem(kind)));
        continue;
      }
      const record = this.readRecord(id, json, true);
      if (record === undefined) continue;
      if (cancel != null) record.cancelRequested = cancel;
      records.push(record);
    }
    return { records, taken };
  }

  /** A retention pass, unless one ran within the last `#sweepEveryMs` or one is in flight. */
  #sweepIfDue(): Promise<void> {
    const now = Date.now();
    if (now - this.#cleanedAt < this.#sweepEveryMs || this.#sweeping !== undefined || this.closed !== undefined)
      return Promise.resolve();
    this.#cleanedAt = now;
    return this.#sweep(now);
  }

  /**
   * A retention pass: every record expired at `now` is deleted, SWEEP_BATCH of each kind per script call (so
   * no call holds Redis for long), yielding to the event loop between calls, until a batch comes back short.
   * Resolves when the pass is done or after its first SWEEP_AWAITED_BATCHES batches (rejecting if one of
   * those fails); the rest of a long pass goes on in the background, and a failure there waits for the
   * next pass. A pass stops when the store closes.
   */
  #sweep(now: number): Promise<void> {
    let release!: () => void;
    const awaited = new Promise<void>((resolve) => (release = resolve));
    const args = [
      this.prefix,
      retentionCutoff(now, this.retentionDays),
      retentionCutoff(now, this.failedRetentionDays),
      SWEEP_BATCH,
    ];
    const pass = (async () => {
      for (let batches = 1; this.closed === undefined; batches++) {
        if ((await this.#run(scripts.cleanup, args)) !== 1) return;
        if (batches === SWEEP_AWAITED_BATCHES) release();
        await new Promise((resolve) => setImmediate(resolve));
      }
    })();
    this.#sweeping = pass.then(
      () => (this.#sweeping = undefined),
      () => (this.#sweeping = undefined),
    );
    return Promise.race([pass, awaited]);
  }

  /** Renews the lease and, in the same script, answers the cancel requests on this owner's unfinished tasks. */
  async renewLease(): Promise<CancelRequest[] | undefined> {
    if (this.ownerId === '' || this.closed !== undefined) return undefined;
    const found = (await this.#run(scripts.renewLease, [this.prefix, this.ownerId, this.leaseMs])) as string[];
    const requests: CancelRequest[] = [];
    for (let i = 0; i < found.length; i += 2) requests.push({ id: found[i], reason: found[i + 1] });
    return requests;
  }

  /** One script: recorded only while the task is unfinished; its holder reads it with its next lease renewal. */
  async requestCancel(id: string, reason: string): Promise<boolean> {
    await this.commit.flush();
    return (await this.#run(scripts.requestCancel, [this.prefix, id, reason])) === 1;
  }

  /** Writes what is queued, gives up this process's lease (its unfinished tasks become claimable at once), closes its own client. */
  close(): Promise<void> {
    clearInterval(this.#retentionTimer);
    this.closed ??= (async () => {
      try {
        await this.commit.flush();
        // Before the lease goes: a task left pending by a batch that got no answer would be claimed and run.
        await this.#settle().catch(() => {});
        if (this.ownerId !== '' && this.client.status === 'ready')
          await this.client.del(`${this.prefix}:o:${this.ownerId}`);
      } finally {
        if (this.#ownsClient) await this.client.quit().catch(() => this.client.disconnect());
      }
    })();
    return this.closed;
  }

  protected async write({ records, released }: WriteBatch): Promise<SaveResult> {
    const batch = this.#batchName();
    const args: (string | number)[] = [this.prefix, this.ownerId, this.leaseMs, this.retentionDays * DAY_MS, batch];
    for (const r of records) {
      args.push(
        r.id,
        r.status,
        r.createdAt,
        r.endedAt ?? '',
        r.name,
        r.idempotencyKey ?? '',
        JSON.stringify(r.tags),
        released.has(r.id) ? '1' : '0',
        serialiseRecord(r, this.argsCipher),
        successDuration(r),
      );
    }
    // No answer (socketTimeout, the connection lost): Redis may have run the script, or may run it still,
    // while its tasks are refused (503). The batch is settled once Redis answers again, before anything else.
    const unanswered = () => this.#unanswered.push({ batch, ids: records.map((r) => r.id) });
    const dups = (await this.#run(scripts.save, args, unanswered)) as string[];
    if (dups.length === 0) return undefined;
    const map = new Map<string, string>();
    for (let i = 0; i < dups.length; i += 2) map.set(dups[i], dups[i + 1]);
    return map;
  }

  #batchName(): string {
    return `${this.#batchPrefix}.${(++this.#batches).toString(36)}`;
  }

  /** `unanswered` is called when the script was sent and got no answer from Redis (not a reply refusing it). */
  async #run(script: Script, args: (string | number)[], unanswered?: () => void): Promise<unknown> {
    await this.#ready();
    try {
      return await this.#send(script, args.map(String));
    } catch (error) {
      if (unanswered !== undefined && !(error instanceof Error && error.name === 'ReplyError')) unanswered();
      return unavailable(error);
    }
  }

  async #send(script: Script, argv: string[]): Promise<unknown> {
    // As one array (ioredis flattens it), never spread: a spread's arguments live on the stack, and a batch
    // of a few thousand records overflowed it ("Maximum call stack size exceeded").
    try {
      return await this.client.evalsha(script.sha, 0, argv);
    } catch (error) {
      // First use on this server (or after SCRIPT FLUSH): send the source once; Redis caches it by sha.
      if (error instanceof Error && error.message.startsWith('NOSCRIPT'))
        return this.client.eval(script.source, 0, argv);
      throw error;
    }
  }
}

/**
 * A task as the GET and CLAIM_ORPHANS scripts return it: its id, its record (null if none), its key's type,
 * and (CLAIM_ORPHANS) the reason of a cancel request on it.
 */
type StoredTask = [id: string, record: string | null, kind: string, cancel?: string | null];

function hashProblem(kind: string | undefined): string {
  if (kind === 'hash') return 'its hash has no "record" field';
  return kind === undefined ? 'its key is not a hash' : `its key holds a Redis ${kind}, not a hash`;
}

/**
 * A command that got no answer (connection lost, no reply in time) or one Redis could not serve now
 * (out of memory, loading, a read-only replica, a busy script) is the store being unavailable: 503s,
 * retried writes. Any other error is Redis refusing what we sent, and stays as it is.
 */
function unavailable(error: unknown): never {
  if (
    !(error instanceof Error) ||
    (error.name === 'ReplyError' &&
      !/^(OOM|LOADING|READONLY|BUSY|MASTERDOWN|NOREPLICAS|TRYAGAIN)\b/.test(error.message))
  )
    throw error;
  throw new TaskStoreUnavailableError(`RedisStore: ${error.message}`, { cause: error });
}

/** What a record adds to its name's duration histogram: the duration of a success, '' for none. */
function successDuration(record: TaskRecord): number | '' {
  return record.status === 'success' && typeof record.durationMs === 'number' && Number.isFinite(record.durationMs)
    ? record.durationMs
    : '';
}

/** The tag index key; the key's length (in UTF-8 bytes, as Lua's string.len counts) keeps `a=b=c` unambiguous. */
function tagKey(prefix: string, key: string, value: string): string {
  return `${prefix}:g:${Buffer.byteLength(key)}:${key}=${value}`;
}
