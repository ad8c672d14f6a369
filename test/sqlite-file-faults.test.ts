// What SqliteStore says when its file cannot be used (a TaskStoreError whose code says why, the file left as
// it was), and what a full disk does to requests: 503s, and nothing acknowledged is lost.
import { appendFileSync, existsSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { describe, expect, it } from 'vitest';
import { TaskStoreError, TaskStoreUnavailableError } from 'koa-taskflow';
import { SqliteStore } from 'koa-taskflow/sqlite';
import { mountTmpfs, readOnlyDirectory, tempDir } from './helpers/files.js';
import { recordingLogger } from './helpers/logger.js';
import { createManager, onCleanup, startApp, waitFor } from './helpers/server.js';

/** The error `new SqliteStore({ path })` throws (the test fails if it opens). */
function openError(path: string): TaskStoreError {
  try {
    const store = new SqliteStore({ path });
    void store.close();
  } catch (error) {
    expect(error).toBeInstanceOf(TaskStoreError);
    return error as TaskStoreError;
  }
  throw new Error(`SqliteStore opened ${path}`);
}

/** A store file with one task in it, closed. */
async function storeFile(path: string): Promise<void> {
  const store = new SqliteStore({ path });
  await store.save([
    {
      id: 'a',
      name: 'job',
      status: 'success',
      args: [],
      tags: {},
      attempts: 1,
      maxAttempts: 1,
      createdAt: Date.now(),
      endedAt: Date.now(),
      logs: [],
    },
  ]);
  await store.close();
}

function exec(path: string, sql: string): void {
  const db = new DatabaseSync(path);
  db.exec(sql);
  db.close();
}

describe('SqliteStore: a file it cannot use', () => {
  it('not a database, or a damaged one: ERR_STORE_UNREADABLE, the file untouched', async () => {
    const dir = tempDir();
    const garbage = join(dir, 'garbage.db');
    writeFileSync(garbage, 'this is not a database\n'.repeat(500));
    expect(openError(garbage)).toMatchObject({
      code: 'ERR_STORE_UNREADABLE',
      message: expect.stringMatching(/file is not a database\. .*move it away \(it was not modified\)/),
    });

    // A real store file whose first page (the schema) was overwritten after its header.
    const damaged = join(dir, 'damaged.db');
    await storeFile(damaged);
    const bytes = readFileSync(damaged);
    bytes.fill(0x5a, 100, 4096);
    writeFileSync(damaged, bytes);
    expect(openError(damaged)).toMatchObject({
      code: 'ERR_STORE_UNREADABLE',
      message: expect.stringMatching(/malformed/),
    });
    expect(readFileSync(damaged).equals(bytes)).toBe(true);
  });

  it('not our schema, a damaged schema, a newer schema: ERR_STORE_SCHEMA / ERR_STORE_NEWER_SCHEMA', async () => {
    const dir = tempDir();
    const dropped = join(dir, 'dropped.db');
    await storeFile(dropped);
    exec(dropped, 'DROP TABLE taskflow_tags');
    expect(openError(dropped)).toMatchObject({
      code: 'ERR_STORE_SCHEMA',
      message: expect.stringMatching(
        /its koa-taskflow schema \(version 4\) has no column "\w+" in table "taskflow_tags": it is damaged or is not a koa-taskflow database/,
      ),
    });

    // Someone else's database that happens to use user_version.
    const foreign = join(dir, 'foreign.db');
    exec(foreign, 'CREATE TABLE users (id INTEGER PRIMARY KEY); PRAGMA user_version = 1');
    expect(openError(foreign)).toMatchObject({
      code: 'ERR_STORE_SCHEMA',
      message: expect.stringContaining('has no column'),
    });

    const clash = join(dir, 'clash.db');
    exec(clash, 'CREATE TABLE taskflow_tasks (x)');
    expect(openError(clash)).toMatchObject({
      code: 'ERR_STORE_SCHEMA',
      message: expect.stringContaining('has a table "taskflow_tasks" but no koa-taskflow schema version'),
    });

    const newer = join(dir, 'newer.db');
    await storeFile(newer);
    exec(newer, 'PRAGMA user_version = 5');
    expect(openError(newer)).toMatchObject({
      code: 'ERR_STORE_NEWER_SCHEMA',
      message: expect.stringContaining("schema version 5 is newer than this koa-taskflow's (4); upgrade koa-taskflow"),
    });
  });

  it("another application's database is refused whatever its user_version, and left as it was, byte for byte; an empty or a new file is adopted", async () => {
    const dir = tempDir();
    const users = "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT); INSERT INTO users VALUES (1, 'a@b.c')";
    for (const [name, schema] of [
      ['version-0.db', users],
      ['version-3.db', `${users}; PRAGMA user_version = 3`],
      ['view-only.db', 'CREATE VIEW answer AS SELECT 42 AS value'],
    ]) {
      // A rollback-journal database, as most applications' are: WAL mode would rewrite its header.
      const path = join(dir, name);
      exec(path, schema);
      const before = readFileSync(path);
      expect(openError(path), name).toMatchObject({ code: 'ERR_STORE_SCHEMA' });
      expect(readFileSync(path).equals(before), `${name}: its bytes`).toBe(true);
      expect([existsSync(`${path}-wal`), existsSync(`${path}-shm`)], `${name}: -wal and -shm files left`).toEqual([
        false,
        false,
      ]);
    }
    expect(openError(join(dir, 'version-0.db')).message).toContain(
      'it has a table "users": it is another application\'s database',
    );

    const empty = join(dir, 'empty.db');
    writeFileSync(empty, '');
    for (const path of [empty, join(dir, 'new.db')]) {
      await storeFile(path);
      const reopened = new SqliteStore({ path });
      expect((await reopened.list()).map((r) => r.id)).toEqual(['a']);
      await reopened.close();
    }
  });

  it('a table dropped while the store is open: reads fail with ERR_STORE_SCHEMA, not a bare SQLite error', async () => {
    const path = join(tempDir(), 'tasks.db');
    const store = new SqliteStore({ path });
    onCleanup(() => store.close().catch(() => {}));
    exec(path, 'DROP TABLE taskflow_tags');
    await expect(store.list({ tags: { a: 'b' } })).rejects.toMatchObject({
      name: 'TaskStoreError',
      code: 'ERR_STORE_SCHEMA',
      message: expect.stringContaining('no such table: taskflow_tags'),
    });
    // start() passes it on as it is, rather than calling the store unreachable.
    const noop = () => {};
    const manager = createManager({
      store,
      logger: { trace: noop, debug: noop, info: noop, warn: noop, error: noop, fatal: noop },
    });
    await expect(manager.start()).rejects.toMatchObject({ name: 'TaskStoreError', code: 'ERR_STORE_SCHEMA' });
  });

  it('any other SQLite error, and a read that close() stopped, is a TaskflowError, not a bare SQLite error', async () => {
    const path = join(tempDir(), 'tasks.db');
    const store = new SqliteStore({ path });
    onCleanup(() => store.close().catch(() => {}));
    // A schema altered by hand (a trigger refusing writes): a constraint error, not one of the file.
    exec(
      path,
      "CREATE TRIGGER refuse BEFORE INSERT ON taskflow_keys BEGIN SELECT RAISE(ABORT, 'refused by hand'); END",
    );
    const claim = store.claimKey('key', 'a');
    await expect(claim).rejects.toBeInstanceOf(TaskStoreUnavailableError);
    await expect(claim).rejects.toMatchObject({ message: expect.stringContaining('refused by hand') });

    // list() runs on the store's worker thread, which close() stops.
    const listing = store.list();
    const closing = store.close();
    await expect(listing).rejects.toMatchObject({
      name: 'TaskStoreUnavailableError',
      message: 'SqliteStore: the store is closed',
    });
    await closing;
  });

  it('a read-only directory or filesystem: ERR_STORE_READ_ONLY, not "corrupt"', async (context) => {
    const readOnly = readOnlyDirectory((dir) => exec(join(dir, 'existing.db'), 'PRAGMA journal_mode = WAL'));
    if (readOnly === undefined) return context.skip('no way to make a read-only directory here');
    const fresh = openError(join(readOnly.dir, 'new.db'));
    expect(fresh, readOnly.how).toMatchObject({
      code: 'ERR_STORE_READ_ONLY',
      message: expect.stringMatching(
        /its directory ".*" (is on a read-only filesystem|is not writable by this process)/,
      ),
    });
    expect(fresh.message).not.toMatch(/corrupt|damaged/);
    expect(openError(join(readOnly.dir, 'existing.db')), readOnly.how).toMatchObject({ code: 'ERR_STORE_READ_ONLY' });
  });
});

describe('SqliteStore on a full disk', () => {
  it('requests that add a task get 503 while the disk is full, nothing crashes, and every acknowledged task runs and is recorded', async (context) => {
    const dir = tempDir('taskflow-full-');
    if (!mountTmpfs(dir, 'size=2m')) return context.skip('this process may not mount a size-limited tmpfs');
    const store = new SqliteStore({ path: join(dir, 'tasks.db') });
    const { errors, logger } = recordingLogger('name');
    const { url, manager } = await startApp(
      (app, m) => {
        const job = m.task(function job(payload: string) {
          return payload.length;
        });
        app.use(async (ctx) => {
          ctx.body = { id: ctx.tasks.addTask(job, 'x'.repeat(20_000)) };
        });
      },
      { store, logger },
    );
    const acknowledged: string[] = [];
    const request = async () => {
      const response = await fetch(url);
      if (response.status === 200) acknowledged.push(((await response.json()) as { id: string }).id);
      return response.status;
    };
    expect(await request()).toBe(200);

    const filler = join(dir, 'filler');
    try {
      for (;;) appendFileSync(filler, Buffer.alloc(64 * 1024));
    } catch (error) {
      expect((error as NodeJS.ErrnoException).code).toBe('ENOSPC');
    }
    // The WAL reuses the space it has: requests keep going until it must grow.
    const whileFull: number[] = [];
    while (!whileFull.includes(503) && whileFull.length < 200) whileFull.push(await request());
    expect(whileFull).toContain(503);
    expect(new Set(whileFull)).toEqual(new Set(whileFull.includes(200) ? [200, 503] : [503]));
    expect(errors).toContain('koa-taskflow: store write before the response TaskStoreUnavailableError');

    rmSync(filler);
    for (let i = 0; i < 5; i++) expect(await request()).toBe(200);
    // Status writes that failed meanwhile are retried every second.
    await waitFor(
      async () => (await Promise.all(acknowledged.map((id) => manager.get(id)))).every((r) => r?.status === 'success'),
      10_000,
      'every acknowledged task to be recorded as success',
    );
    await manager.shutdown();
    const reopened = new SqliteStore({ path: join(dir, 'tasks.db') });
    onCleanup(() => reopened.close());
    const stored = await reopened.list();
    for (const id of acknowledged) expect(stored.find((r) => r.id === id)?.status, `task ${id}`).toBe('success');
  });

  it('shutdown() when the store cannot give up its lease: resolves, the store reports a TaskStoreUnavailableError and closes its file all the same', async (context) => {
    const dir = tempDir('taskflow-full-');
    if (!mountTmpfs(dir, 'size=1m')) return context.skip('this process may not mount a size-limited tmpfs');
    const path = join(dir, 'tasks.db');
    const store = new SqliteStore({ path });
    const { errors, logger } = recordingLogger('name');
    const manager = createManager({ store, logger });
    const job = manager.task(function job(n: number) {
      return n;
    });
    await manager.start();
    const id = manager.add(job, 1);
    await manager.drain();

    const filler = join(dir, 'filler');
    try {
      for (;;) appendFileSync(filler, Buffer.alloc(4096));
    } catch (error) {
      expect((error as NodeJS.ErrnoException).code).toBe('ENOSPC');
    }
    // As the docs' `process.once('SIGTERM', () => manager.shutdown())` calls it: a rejection would crash the app.
    await manager.shutdown();
    expect(errors).toEqual(['koa-taskflow: store close at shutdown TaskStoreUnavailableError']);
    const closing = store.close();
    await expect(closing).rejects.toBeInstanceOf(TaskStoreUnavailableError);
    await expect(closing).rejects.toMatchObject({
      code: 'ERR_STORE_UNAVAILABLE',
      message: expect.stringContaining('database or disk is full'),
    });
    await expect(store.get(id)).rejects.toMatchObject({
      code: 'ERR_STORE_UNAVAILABLE',
      message: expect.stringContaining('closed'),
    });
    const open = readdirSync('/proc/self/fd').flatMap((fd) => {
      try {
        return [readlinkSync(`/proc/self/fd/${fd}`)];
      } catch {
        return [];
      }
    });
    expect(open.filter((file) => file.startsWith(dir))).toEqual([]);

    // The owner row left behind is a crashed process's: the next store reads the file as it was.
    rmSync(filler);
    const reopened = new SqliteStore({ path });
    onCleanup(() => reopened.close());
    expect((await reopened.get(id))?.status).toBe('success');
  });
});
