import type { ServerResponse } from 'node:http';
import type { Context } from 'koa';
import type { LifecycleEvent, LogEvent, TaskEvent, TaskObserver } from '../types.js';

export interface EventStreamOptions {
  maxClients: number;
  heartbeatMs: number;
  /** A client this far behind (bytes not yet taken by its socket) is dropped instead of buffering without end. */
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
}

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
    };
    this.#unsubscribe = this.source.subscribe(observer);
    // A comment line every heartbeatMs keeps proxies and load balancers from closing a quiet stream.
    this.#heartbeat = setInterval(() => {
      for (const client of this.#clients) this.#write(client, ': heartbeat\n\n');
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
      if (tags.some(([key, value]) => event.tags[key] !== value)) continue;
      frame ??= `id: ${++this.#sequence}\nevent: ${event.type}\ndata: ${safeJson(event)}\n\n`;
      this.#write(client, frame);
    }
  }

  #write(client: Client, text: string): void {
    const { res } = client;
    if (res.writableLength > this.options.maxBufferedBytes) {
      client.close();
      return;
    }
    res.write(text);
  }
}

/**
 * JSON that cannot throw: task args and log fields are the user's values (a BigInt, a cycle). One
 * unserialisable value must not cost the whole answer, so it is replaced by a placeholder.
 */
export function safeJson(value: unknown, space?: number): string {
  try {
    return JSON.stringify(value, null, space);
  } catch {
    const seen = new WeakSet<object>();
    return JSON.stringify(
      value,
      (_key, v: unknown) => {
        if (typeof v === 'bigint') return v.toString();
        if (v !== null && typeof v === 'object') {
          if (seen.has(v)) return '[circular]';
          seen.add(v);
        }
        return v;
      },
      space,
    );
  }
}
