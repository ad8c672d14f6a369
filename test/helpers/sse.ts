import { onCleanup, waitFor } from './server.js';

export interface SseMessage {
  id?: string;
  event: string;
  data: string;
}

export interface SseStream {
  response: Response;
  /** Every byte received, as text. */
  readonly raw: string;
  readonly messages: SseMessage[];
  readonly comments: string[];
  /** Resolves once the server has ended the stream. */
  ended: Promise<void>;
  /** Poll until `check(messages)` holds. */
  until(check: (messages: SseMessage[]) => boolean, what?: string): Promise<void>;
  close(): void;
}

/**
 * Reads a real `text/event-stream` response with fetch and parses it as EventSource would
 * (fields `id`, `event`, `data`; `:` comments). Closed after the test.
 */
export async function openSse(url: string, headers: Record<string, string> = {}): Promise<SseStream> {
  const abort = new AbortController();
  const response = await fetch(url, { headers: { accept: 'text/event-stream', ...headers }, signal: abort.signal });
  const messages: SseMessage[] = [];
  const comments: string[] = [];
  let raw = '';
  let buffer = '';
  let current: Partial<SseMessage> = {};
  const consume = (line: string): void => {
    if (line === '') {
      if (current.data !== undefined)
        messages.push({ id: current.id, event: current.event ?? 'message', data: current.data });
      current = {};
    } else if (line.startsWith(':')) {
      comments.push(line.slice(1).trim());
    } else {
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'data') current.data = current.data === undefined ? value : `${current.data}\n${value}`;
      else if (field === 'event') current.event = value;
      else if (field === 'id') current.id = value;
    }
  };
  const ended = (async () => {
    if (response.body === null || !response.headers.get('content-type')?.startsWith('text/event-stream')) return;
    const decoder = new TextDecoder();
    const reader = response.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        const text = decoder.decode(value, { stream: true });
        raw += text;
        buffer += text;
        let newline: number;
        while ((newline = buffer.indexOf('\n')) >= 0) {
          consume(buffer.slice(0, newline).replace(/\r$/, ''));
          buffer = buffer.slice(newline + 1);
        }
      }
    } catch {
      // aborted by close()
    }
  })();
  const stream: SseStream = {
    response,
    get raw() {
      return raw;
    },
    messages,
    comments,
    ended,
    until: (check, what = 'server-sent events') => waitFor(() => check(messages), 5_000, what),
    close: () => abort.abort(),
  };
  onCleanup(async () => {
    abort.abort();
    await ended;
  });
  return stream;
}
