// encryptionKey: args are stored AES-256-GCM encrypted in the durable stores, read back (get, list,
// recovery after a restart, retry) with the same key, and refused clearly with no key, another key, or an
// altered ciphertext. Raw rows and Redis values are read directly, not through the store.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import {
  getTaskContext,
  MemoryStore,
  TaskArgsDecryptionError,
  TaskManager,
  type TaskManagerOptions,
  type TaskStore,
} from 'koa-taskflow';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { RedisStore } from 'koa-taskflow/redis';
import { tempDir } from './helpers/files.js';
import { recordingLogger } from './helpers/logger.js';
import { startRedisServer } from './helpers/redis.js';
import { createManager, onCleanup, startApp, waitFor } from './helpers/server.js';

const CARD = { card: '4111-1111-1111-1111', holder: 'Ada Lovelace' };

/** A manager whose `charge` task records the args it ran with. */
function chargingManager(options: TaskManagerOptions, ran: unknown[][] = []) {
  const manager = createManager({ requeuePending: true, ...options });
  const charge = manager.task(async function charge(order: string, payment: typeof CARD) {
    ran.push([order, payment]);
  });
  return { manager, charge, ran };
}

/**
 * A `charge` task accepted through a Koa request that never starts: it waits behind a task holding the
 * only slot, and shutdown hands it back to the store as pending work for the next manager.
 */
async function leavePending(store: TaskStore, encryptionKey: Buffer | undefined, order = 'order-1'): Promise<string> {
  const started: string[] = [];
  const { url, manager } = await startApp(
    (app, m) => {
      const hold = m.task(
        async function hold() {
          started.push('hold');
          await new Promise((resolve) => getTaskContext()!.signal.addEventListener('abort', resolve));
        },
        { requeueOnInterrupt: false },
      );
      const charge = m.task(async function charge(_order: string, _payment: typeof CARD) {
        started.push('charge');
      });
      app.use(async (ctx) => {
        ctx.tasks.schedule(hold);
        ctx.body = { id: ctx.tasks.addTask(charge, order, CARD) };
      });
    },
    { store, encryptionKey, concurrency: 1, requeuePending: false },
  );
  const { id } = (await (await fetch(url)).json()) as { id: string };
  await waitFor(() => started.includes('hold'), 5_000, 'the holding task to start');
  await manager.shutdown({ timeoutMs: 50 });
  expect(started).toEqual(['hold']);
  return id;
}

function sqliteFile(): string {
  return join(tempDir('taskflow-encryption-'), 'tasks.db');
}

function rawRow(path: string, id: string): string {
  const db = new DatabaseSync(path, { readOnly: true });
  try {
    return (db.prepare('SELECT record FROM taskflow_tasks WHERE id = ?').get(id) as { record: string }).record;
  } finally {
    db.close();
  }
}

function setRawArgs(path: string, id: string, args: unknown): void {
  const db = new DatabaseSync(path);
  try {
    const record = JSON.parse(rawRow(path, id)) as { args: unknown };
    record.args = args;
    db.prepare('UPDATE taskflow_tasks SET record = ? WHERE id = ?').run(JSON.stringify(record), id);
  } finally {
    db.close();
  }
}

function sealedArgsOf(raw: string): string {
  const args = (JSON.parse(raw) as { args: unknown }).args;
  expect(typeof args).toBe('string');
  return args as string;
}

/** The same sealed value with one byte of its ciphertext changed. */
function tamper(sealed: string): string {
  const parts = sealed.split(':');
  const data = Buffer.from(parts[5], 'base64');
  data[0] ^= 0x01;
  parts[5] = data.toString('base64');
  return parts.join(':');
}

function sqliteStore(path: string): SqliteStore {
  const store = new SqliteStore({ path });
  onCleanup(() => store.close());
  return store;
}

describe('encryptionKey with SqliteStore', () => {
  it('stores args encrypted (the raw row has no plaintext) and a new manager with the same key runs the task with them', async () => {
    const path = sqliteFile();
    const key = randomBytes(32);
    const id = await leavePending(sqliteStore(path), key);

    const raw = rawRow(path, id);
    expect(raw).not.toContain('4111');
    expect(raw).not.toContain('Lovelace');
    expect(raw).not.toContain('order-1');
    expect(sealedArgsOf(raw)).toMatch(/^enc:v1:[0-9a-f]{8}:[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$/);
    // What is not secret-bearing stays readable (filters and recovery need it).
    expect(JSON.parse(raw)).toMatchObject({ id, name: 'charge', status: 'pending' });

    const { manager, ran } = chargingManager({ store: sqliteStore(path), encryptionKey: key });
    await manager.start();
    await waitFor(async () => (await manager.get(id))?.status === 'success', 5_000, 'the recovered task to succeed');
    expect(ran).toEqual([['order-1', CARD]]);
    expect((await manager.get(id))?.args).toEqual(['order-1', CARD]);
    expect((await manager.list({ name: 'charge' })).map((r) => r.args)).toEqual([['order-1', CARD]]);
    await manager.drain();
    expect(rawRow(path, id)).not.toContain('4111');
  });

  it('another key or no key: get/list fail with a TaskArgsDecryptionError naming encryptionKey; recovery ends the task interrupted, keeps its sealed args, and retry with the right key runs it', async () => {
    const path = sqliteFile();
    const key = randomBytes(32);
    const id = await leavePending(sqliteStore(path), key);
    const sealedBefore = sealedArgsOf(rawRow(path, id));

    const noKey = createManager({ store: sqliteStore(path), requeuePending: false });
    await expect(noKey.get(id)).rejects.toThrow(TaskArgsDecryptionError);
    await expect(noKey.get(id)).rejects.toThrow(
      /are stored encrypted \(key id [0-9a-f]{8}\) but this TaskManager has no option "encryptionKey"/,
    );
    await expect(noKey.list()).rejects.toThrow(/"encryptionKey"/);

    // The wrong key's manager claims the orphan at start and cannot run it: it ends, it does not crash.
    const { errors: reported, logger } = recordingLogger();
    const wrong = chargingManager({ store: sqliteStore(path), encryptionKey: randomBytes(32), logger });
    await expect(wrong.manager.get(id)).rejects.toThrow(
      /were encrypted with another "encryptionKey" \(key id [0-9a-f]{8}; this TaskManager's key has id [0-9a-f]{8}\)/,
    );
    await wrong.manager.start();
    await wrong.manager.drain();
    expect(wrong.ran).toEqual([]);
    await expect(wrong.manager.retry(id)).rejects.toThrow(TaskArgsDecryptionError);
    await wrong.manager.shutdown();
    const ended = JSON.parse(rawRow(path, id)) as {
      status: string;
      reason: string;
      error: { type: string; message: string };
      args: string;
    };
    expect(ended).toMatchObject({
      status: 'interrupted',
      reason: 'encryption_key',
      error: { type: 'TaskArgsDecryptionError' },
    });
    expect(ended.error.message).toMatch(/"encryptionKey"/);
    expect(ended.args).toBe(sealedBefore);
    expect(reported).toEqual([
      expect.stringMatching(new RegExp(`recovering task ${id} .*were encrypted with another "encryptionKey"`)),
    ]);

    const right = chargingManager({ store: sqliteStore(path), encryptionKey: key });
    await right.manager.start();
    expect(await right.manager.get(id)).toMatchObject({ status: 'interrupted', args: ['order-1', CARD] });
    const retried = await right.manager.retry(id);
    await right.manager.drain();
    expect(right.ran).toEqual([['order-1', CARD]]);
    expect(await right.manager.get(retried)).toMatchObject({ status: 'success', retryOf: id });
  });

  it('an altered ciphertext, or one copied from another record, fails AES-GCM authentication with a clear error', async () => {
    const path = sqliteFile();
    const key = randomBytes(32);
    const store = sqliteStore(path);
    const first = await leavePending(store, key, 'order-1');
    const second = await leavePending(sqliteStore(path), key, 'order-2');
    const sealedFirst = sealedArgsOf(rawRow(path, first));
    setRawArgs(path, first, tamper(sealedFirst));
    setRawArgs(path, second, sealedFirst);

    const { manager, ran } = chargingManager({ store: sqliteStore(path), encryptionKey: key, requeuePending: false });
    for (const id of [first, second]) {
      const error = await manager.get(id).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(TaskArgsDecryptionError);
      expect(error).toMatchObject({
        taskId: id,
        message: expect.stringMatching(/failed AES-256-GCM authentication with this "encryptionKey"/),
      });
    }
    expect(ran).toEqual([]);
  });

  it('records written without a key stay readable after the key is turned on, and are encrypted when next written', async () => {
    const path = sqliteFile();
    const id = await leavePending(sqliteStore(path), undefined);
    const plain = JSON.parse(rawRow(path, id)) as { args: unknown };
    expect(plain.args).toEqual(['order-1', CARD]);

    const { manager, ran } = chargingManager({ store: sqliteStore(path), encryptionKey: randomBytes(32) });
    expect((await manager.get(id))?.args).toEqual(['order-1', CARD]);
    await manager.start();
    await waitFor(() => ran.length === 1, 5_000, 'the plaintext task to run');
    expect(ran).toEqual([['order-1', CARD]]);
    await manager.drain();
    const raw = rawRow(path, id);
    expect(JSON.parse(raw)).toMatchObject({ status: 'success' });
    expect(raw).not.toContain('4111');
    expect(sealedArgsOf(raw)).toMatch(/^enc:v1:/);
  });
});

describe('encryptionKey with RedisStore', () => {
  it('stores args encrypted in Redis, runs them after a restart with the same key, and refuses another key or an altered value', async () => {
    const redis = await startRedisServer();
    const open = () => {
      const store = new RedisStore({ url: redis.url }, { prefix: 'enc' });
      onCleanup(() => store.close());
      return store;
    };
    const raw = new Redis(redis.url);
    onCleanup(() => void raw.disconnect());
    const key = randomBytes(32);
    const id = await leavePending(open(), key);

    const value = (await raw.hget(`enc:t:${id}`, 'record'))!;
    expect(value).not.toContain('4111');
    expect(value).not.toContain('Lovelace');
    const sealed = sealedArgsOf(value);
    expect(sealed).toMatch(/^enc:v1:/);

    const wrong = createManager({ store: open(), encryptionKey: randomBytes(32), requeuePending: false });
    await expect(wrong.get(id)).rejects.toThrow(/were encrypted with another "encryptionKey"/);
    await expect(wrong.list()).rejects.toThrow(TaskArgsDecryptionError);

    const altered = JSON.parse(value) as { args: string };
    altered.args = tamper(sealed);
    await raw.hset(`enc:t:${id}`, 'record', JSON.stringify(altered));
    const checker = createManager({ store: open(), encryptionKey: key, requeuePending: false });
    await expect(checker.get(id)).rejects.toThrow(/failed AES-256-GCM authentication/);
    await raw.hset(`enc:t:${id}`, 'record', value);

    const { manager, ran } = chargingManager({ store: open(), encryptionKey: key });
    await manager.start();
    await waitFor(() => ran.length === 1, 5_000, 'the recovered task to run');
    expect(ran).toEqual([['order-1', CARD]]);
    await manager.drain();
    expect(await manager.get(id)).toMatchObject({ status: 'success', args: ['order-1', CARD] });
    expect(await raw.hget(`enc:t:${id}`, 'record')).not.toContain('4111');
  });

  it('without a key args are stored as plain JSON, as before', async () => {
    const redis = await startRedisServer();
    const store = new RedisStore({ url: redis.url }, { prefix: 'plain' });
    onCleanup(() => store.close());
    const id = await leavePending(store, undefined);
    const raw = new Redis(redis.url);
    onCleanup(() => void raw.disconnect());
    expect(JSON.parse((await raw.hget(`plain:t:${id}`, 'record'))!)).toMatchObject({ args: ['order-1', CARD] });
  });
});

describe('encryptionKey validation', () => {
  it('refuses keys that are not 32 bytes and stores that would not encrypt, naming the option', () => {
    const path = sqliteFile();
    for (const bad of [Buffer.alloc(31), Buffer.alloc(33), 'k'.repeat(32), randomBytes(32).toString('hex')]) {
      expect(() => new TaskManager({ store: sqliteStore(path), encryptionKey: bad as never })).toThrow(
        /"encryptionKey".*32-byte/,
      );
    }
    expect(() => new TaskManager({ store: new MemoryStore(), encryptionKey: randomBytes(32) })).toThrow(
      /"encryptionKey".*durable store/,
    );
    const plainDurable: TaskStore = Object.assign(new MemoryStore(), { durable: true, attach() {} });
    expect(() => new TaskManager({ store: plainDurable, encryptionKey: randomBytes(32) })).toThrow(
      /"encryptionKey" needs a store that encrypts args/,
    );
    expect(() => new TaskManager({ store: sqliteStore(path), encryptionKey: new Uint8Array(32) })).not.toThrow();
  });
});
