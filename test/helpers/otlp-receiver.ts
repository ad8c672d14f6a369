// A real OTLP/HTTP receiver on 127.0.0.1 for the tests: accepts JSON exports (`/v1/traces`, `/v1/metrics`,
// `/v1/logs`), gunzips when asked, and decodes spans into plain objects. Closed after the test.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';
import { onCleanup } from './server.js';

/** An OTLP JSON `AnyValue`. */
interface AnyValue {
  stringValue?: string;
  boolValue?: boolean;
  intValue?: number | string;
  doubleValue?: number;
  arrayValue?: { values?: AnyValue[] };
  kvlistValue?: { values?: KeyValue[] };
}
interface KeyValue {
  key: string;
  value: AnyValue;
}
type Attributes = Record<string, unknown>;

export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string | undefined;
  name: string;
  /** OTLP numbering: 1 internal, 2 server, 3 client, 4 producer, 5 consumer. */
  kind: number;
  scope: string;
  service: unknown;
  attributes: Attributes;
  events: { name: string; attributes: Attributes }[];
  links: { traceId: string; spanId: string }[];
  /** OTLP numbering: 0 unset, 1 ok, 2 error. */
  status: { code: number; message?: string };
}

export interface ReceivedMetric {
  name: string;
  unit: string | undefined;
  scope: string;
  points: { attributes: Attributes; value: unknown }[];
}

function decodeValue(value: AnyValue): unknown {
  if (value.stringValue !== undefined) return value.stringValue;
  if (value.boolValue !== undefined) return value.boolValue;
  if (value.intValue !== undefined) return Number(value.intValue);
  if (value.doubleValue !== undefined) return value.doubleValue;
  if (value.arrayValue !== undefined) return (value.arrayValue.values ?? []).map(decodeValue);
  if (value.kvlistValue !== undefined) return decodeAttributes(value.kvlistValue.values);
  return undefined;
}

function decodeAttributes(list: KeyValue[] | undefined): Attributes {
  const out: Attributes = {};
  for (const { key, value } of list ?? []) out[key] = decodeValue(value);
  return out;
}

/** The parts of the OTLP JSON payloads (opentelemetry-proto, JSON mapping) read here. */
interface OtlpResource {
  resource?: { attributes?: KeyValue[] };
}
interface OtlpScope {
  scope?: { name: string };
}
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes?: KeyValue[];
  events?: { name: string; attributes?: KeyValue[] }[];
  links?: { traceId: string; spanId: string }[];
  status?: { code?: number; message?: string };
}
interface OtlpPoint {
  attributes?: KeyValue[];
  asInt?: number | string;
  asDouble?: number;
  count?: number | string;
  sum?: number;
}
interface OtlpMetric {
  name: string;
  unit?: string;
  sum?: { dataPoints?: OtlpPoint[] };
  gauge?: { dataPoints?: OtlpPoint[] };
  histogram?: { dataPoints?: OtlpPoint[] };
}
interface TracesPayload {
  resourceSpans?: (OtlpResource & { scopeSpans?: (OtlpScope & { spans?: OtlpSpan[] })[] })[];
}
interface MetricsPayload {
  resourceMetrics?: (OtlpResource & { scopeMetrics?: (OtlpScope & { metrics?: OtlpMetric[] })[] })[];
}

function decodeSpans(body: TracesPayload): ReceivedSpan[] {
  const spans: ReceivedSpan[] = [];
  for (const resourceSpans of body.resourceSpans ?? []) {
    const service = decodeAttributes(resourceSpans.resource?.attributes)['service.name'];
    for (const scopeSpans of resourceSpans.scopeSpans ?? []) {
      for (const span of scopeSpans.spans ?? []) {
        spans.push({
          traceId: span.traceId,
          spanId: span.spanId,
          parentSpanId: span.parentSpanId || undefined,
          name: span.name,
          kind: span.kind,
          scope: scopeSpans.scope?.name ?? '',
          service,
          attributes: decodeAttributes(span.attributes),
          events: (span.events ?? []).map((e) => ({ name: e.name, attributes: decodeAttributes(e.attributes) })),
          links: (span.links ?? []).map((l) => ({ traceId: l.traceId, spanId: l.spanId })),
          status: { code: span.status?.code ?? 0, message: span.status?.message },
        });
      }
    }
  }
  return spans;
}

function decodeMetrics(body: MetricsPayload): ReceivedMetric[] {
  const out: ReceivedMetric[] = [];
  for (const resourceMetrics of body.resourceMetrics ?? []) {
    for (const scopeMetrics of resourceMetrics.scopeMetrics ?? []) {
      for (const metric of scopeMetrics.metrics ?? []) {
        const data = metric.sum ?? metric.gauge ?? metric.histogram ?? {};
        out.push({
          name: metric.name,
          unit: metric.unit,
          scope: scopeMetrics.scope?.name ?? '',
          points: (data.dataPoints ?? []).map((p) => ({
            attributes: decodeAttributes(p.attributes),
            value: p.asInt !== undefined ? Number(p.asInt) : (p.asDouble ?? { count: Number(p.count), sum: p.sum }),
          })),
        });
      }
    }
  }
  return out;
}

export interface OtlpReceiver {
  /** `http://127.0.0.1:<port>`: the value for OTEL_EXPORTER_OTLP_ENDPOINT. */
  url: string;
  spans: ReceivedSpan[];
  metrics: ReceivedMetric[];
  /** Every request as received: path and content type (a non-JSON export is kept undecoded). */
  requests: { path: string; contentType: string | undefined }[];
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const body = Buffer.concat(chunks);
  return req.headers['content-encoding'] === 'gzip' ? gunzipSync(body) : body;
}

export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const receiver: OtlpReceiver = { url: '', spans: [], metrics: [], requests: [] };
  const receive = async (req: IncomingMessage, res: ServerResponse) => {
    const path = req.url ?? '';
    const contentType = req.headers['content-type'];
    receiver.requests.push({ path, contentType });
    const body = await readBody(req);
    if (contentType?.startsWith('application/json')) {
      const payload: unknown = JSON.parse(body.toString('utf8'));
      if (path === '/v1/traces') receiver.spans.push(...decodeSpans(payload as TracesPayload));
      if (path === '/v1/metrics') receiver.metrics.push(...decodeMetrics(payload as MetricsPayload));
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{}');
  };
  // A payload that cannot be read is answered 400 (the exporter reports it), not left an unhandled rejection.
  const server = createServer((req, res) => {
    receive(req, res).catch((error: unknown) => {
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(String(error));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  receiver.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  onCleanup(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return receiver;
}

/** A loopback port nothing listens on: connections to it are refused. */
export async function refusedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
