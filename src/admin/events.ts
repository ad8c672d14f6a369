import type { ServerResponse } from 'node:http';
import type { Context } from 'koa';
import { createRedactor, givenTag } from '../redact.js';
import type { LifecycleEvent, LogEvent, ProgressEvent, TaskEvent, TaskObserver } from '../types.js';

export interface EventStreamOptions {
  maxClients: number;
  heartbeatMs: number;
  /**
   * A client this far behind (bytes not yet taken by its socket) gets no more events until its socket has
   * drained, then one `resync` event in their place; one whose backlog does not shrink for two heartbeats
   * has stopped reading and is dropped.
   */
  maxBufferedBytes: number;
}

/** Which events one client wants: `name` and every tag must match. */
export interface EventFilter {
  name?: string;
  tags: [string, string][];
}

interface Client {
  res: ServerResponse;
  filter: EventFilter;
  close: () => void;
  /** Events not sent since the backlog passed the limit; undefined while the client keeps up. */
  missed: number | undefined;
  /** While behind: the smallest backlog seen at a heartbeat, and heartbeats since it last shrank. */
  backlog: number;
  stalledBeats: number;
}

/** Heartbeats a client that is behind may go without its backlog shrinking before it is dropped. */
const STALLED_HEARTBEATS = 2;

/** Something that can add an observer at run time and take it away again (the TaskManager). */
export interface EventSource {
  subscribe(observer: TaskObserver): () => void;
}

/**
 * The server-sent event stream: one observer on the manager's chain while at least one client is
 * connected (none otherwise, so an idle admin costs the tasks nothing), each event serialised once and
 * written to every client whose filter it matches, in the order the chain delivers them.
 */
export class EventHub {
  readonly #clients = new Set<Client>();
  #unsubscribe: (() => void) | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #sequence = 0;

  constructor(
    private readonly source: EventSource,
    private readonly options: EventStreamOptions,
  ) {}

  get size(): number {
    return this.#clients.size;
  }

  /** Turn `ctx` into an event stream. Returns false (and does nothing) when the client limit is reached. */
  open(ctx: Context, filter: EventFilter): boolean {
    if (this.#clients.size >= this.options.maxClients) return false;
    const res = ctx.res;
    const client: Client = {
      res,
      filter,
      missed: undefined,
      backlog: 0,
      stalledBeats: 0,
      close: () => {
        if (!this.#clients.delete(client)) return;
        if (!res.writableEnded) res.end();
        if (this.#clients.size === 0) this.#idle();
      },
    };
    this.#clients.add(client);
    if (this.#unsubscribe === undefined) this.#start();
    // The client going away (tab closed, fetch aborted) is seen as the response closing.
    res.once('close', client.close);
    res.on('error', client.close);
    ctx.req.socket.setNoDelay(true);
    // We write the response ourselves: given a stream body, Koa would report every client that goes away
    // as an application error (ERR_STREAM_PREMATURE_CLOSE), and leaving is how an event stream ends.
    ctx.respond = false;
    ctx.status = 200;
    ctx.set('Content-Type', 'text/event-stream; charset=utf-8');
    // no-transform: a compressing proxy or middleware would otherwise hold events back to fill a block.
    ctx.set('Cache-Control', 'no-cache, no-transform');
    ctx.set('X-Accel-Buffering', 'no');
    ctx.set('X-Content-Type-Options', 'nosniff');
    // Written at once so the headers go out now: the client knows it is subscribed when its request resolves.
    res.write(`retry: 2000\n: connected\n\n`);
    return true;
  }

  /** End every stream (before `server.close()`, which otherwise waits for them). */
  close(): void {
    for (const client of [...this.#clients]) client.close();
  }

  #start(): void {
    const observer: TaskObserver = {
      onLifecycle: (event: LifecycleEvent) => this.#broadcast(event),
      onLog: (event: LogEvent) => this.#broadcast(event),
      onProgress: (event: ProgressEvent) => this.#broadcast(event),
    };
    this.#unsubscribe = this.source.subscribe(observer);
    // A comment line every heartbeatMs keeps proxies and load balancers from closing a quiet stream.
    this.#heartbeat = setInterval(() => {
      for (const client of [...this.#clients]) {
        if (client.missed !== undefined) this.#checkProgress(client);
        else if (!this.#fallsBehind(client)) client.res.write(': heartbeat\n\n');
      }
    }, this.options.heartbeatMs).unref();
  }

  #idle(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    clearInterval(this.#heartbeat);
    this.#heartbeat = undefined;
  }

  #broadcast(event: TaskEvent): void {
    let frame: string | undefined;
    for (const client of this.#clients) {
      const { name, tags } = client.filter;
      if (name !== undefined && event.name !== name) continue;
      if (tags.some(([key, value]) => givenTag(event.tags, key) !== value)) continue;
      if (client.missed !== undefined || this.#fallsBehind(client)) {
        client.missed = (client.missed ?? 0) + 1;
        continue;
      }
      frame ??= `id: ${++this.#sequence}\nevent: ${event.type}\ndata: ${safeJson(event)}\n\n`;
      client.res.write(frame);
    }
  }

  /**
   * One event-loop turn can add thousands of tasks, far more than a socket takes at once: past the limit
   * the client is sent nothing more (its backlog stops growing, so memory stays bounded) until its socket
   * has drained; then one `resync` event stands for every event it missed, and the dashboard re-reads the
   * API. A client that is reading is never dropped for a burst.
   */
  #fallsBehind(client: Client): boolean {
    const { res } = client;
    if (res.writableLength <= this.options.maxBufferedBytes) return false;
    client.missed = 0;
    client.backlog = res.writableLength;
    client.stalledBeats = 0;
    // Past the limit a write has returned false, so 'drain' comes once the socket has taken everything.
    res.once('drain', () => {
      if (!this.#clients.has(client)) return;
      const missed = client.missed;
      client.missed = undefined;
      if (missed) res.write(`event: resync\ndata: ${JSON.stringify({ type: 'resync', missed })}\n\n`);
    });
    return true;
  }

  /** At each heartbeat while behind: a backlog that has not shrunk for STALLED_HEARTBEATS means the client stopped reading. */
  #checkProgress(client: Client): void {
    const backlog = client.res.writableLength;
    if (backlog < client.backlog) {
      client.backlog = backlog;
      client.stalledBeats = 0;
    } else if (++client.stalledBeats >= STALLED_HEARTBEATS) {
      client.close();
      // Destroyed, not only ended: its backlog would stay queued behind a socket that takes nothing.
      client.res.destroy();
    }
  }
}

/** A copy that JSON can write: a toJSON() or getter that throws, a cycle, replaced by markers; nothing masked. */
const writable = createRedactor(false);

/**
 * JSON that cannot throw: task args and log fields are the user's values (a BigInt, a cycle, a toJSON() that
 * throws). One unserialisable value must not cost the whole answer (a page of the list), so it is replaced
 * by a placeholder.
 */
export function safeJson(value: unknown, space?: number): string {
  try {
    return JSON.stringify(value, null, space);
  } catch {
    return JSON.stringify(writable(value), (_key, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), space);
  }
}
