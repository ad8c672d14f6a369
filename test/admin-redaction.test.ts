import { Writable } from 'node:stream';
import pino from 'pino';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { describe, expect, it } from 'vitest';
import { REDACTED, taskLog, type TaskRecord } from 'koa-taskflow';
import { expectJson, startAdmin, TOKEN } from './helpers/admin.js';
import { openSse } from './helpers/sse.js';
import { createManager } from './helpers/server.js';

describe('redaction: a secret never leaves a task', () => {
  it('not through the admin API, the event stream, pino lines or span events', async () => {
    const lines: string[] = [];
    const logger = pino({ level: 'trace' }, new Writable({ write: (chunk: Buffer, _encoding, done) => (lines.push(chunk.toString()), done()) }));
    const exporter = new InMemorySpanExporter();
    const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    // Default secret-looking names (password, apiKey, token…) plus a key name and a dotted path of our own.
    const manager = createManager({ logger, tracerProvider, redact: ['ssn', 'card.number'] });
    let received: string | undefined;
    const charge = manager.task(async function charge(order: { user: string; password: string; card: { number: string; holder: string } }, note: string) {
      received = order.password;
      taskLog('charging', {
        apiKey: 'SECRET-api-key',
        card: { number: order.card.number, holder: order.card.holder },
        customer: { ssn: 'SECRET-ssn', nested: { authToken: 'SECRET-token' } },
        visible: `visible-${note}`,
      });
    });
    const { api, base } = await startAdmin({}, manager);
    const stream = await openSse(`${base}/events`, { authorization: `Bearer ${TOKEN}` });

    const id = manager.add(charge, { user: 'visible-user', password: 'SECRET-password', card: { number: 'SECRET-4111', holder: 'visible-holder' } }, 'note');
    await manager.drain();
    await stream.until((m) => m.some((e) => e.event === 'lifecycle' && JSON.parse(e.data).status === 'success'));

    const record = await expectJson<TaskRecord>(await api(`/${id}`), 200);
    const surfaces: Record<string, string> = {
      'GET /tasks/:id': JSON.stringify(record),
      'GET /tasks': JSON.stringify(await expectJson(await api(''), 200)),
      'GET /tasks/events': stream.raw,
      pino: lines.join(''),
      spans: JSON.stringify(exporter.getFinishedSpans().map((s) => ({ name: s.name, attributes: s.attributes, events: s.events }))),
    };
    for (const [where, text] of Object.entries(surfaces)) {
      expect(text, where).not.toContain('SECRET');
      // Not vacuous: each surface carries the task's log, with the secrets masked and the rest intact.
      expect(text, where).toContain('visible-note');
      expect(text, where).toContain('visible-holder');
      expect(text, where).toContain(REDACTED);
    }
    expect(record.args).toEqual([{ user: 'visible-user', password: REDACTED, card: { number: REDACTED, holder: 'visible-holder' } }, 'note']);
    expect(record.logs[0].fields).toEqual({
      apiKey: REDACTED,
      card: { number: REDACTED, holder: 'visible-holder' },
      customer: { ssn: REDACTED, nested: { authToken: REDACTED } },
      visible: 'visible-note',
    });
    // Masking happens where values leave the task: the task itself got the real ones.
    expect(received).toBe('SECRET-password');
    expect(exporter.getFinishedSpans().find((s) => s.name === 'task charge')?.events.some((e) => e.name === 'task.log')).toBe(true);
  });
});
