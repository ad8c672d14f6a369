/**
 * `node --import koa-taskflow/instrumentation app.js`: starts the OpenTelemetry Node SDK before the app
 * loads, so the HTTP server, Koa and pino are instrumented and every task attempt span is exported.
 *
 * - Traces: OTLP/HTTP (JSON) through `@opentelemetry/exporter-trace-otlp-http`, configured by the standard
 *   variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `…_HEADERS`, `…_TIMEOUT`,
 *   `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER`…). Setting `OTEL_TRACES_EXPORTER` or an OTLP protocol variable hands
 *   the choice of exporter to the SDK's own environment handling instead.
 * - Metrics: as the SDK does from the environment (OTLP by default, `OTEL_METRICS_EXPORTER=none` to turn off).
 * - Resource: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, plus host and process detection.
 * - Instrumentations: HTTP, Koa, pino. pino lines get `trace_id`/`span_id`/`trace_flags` (log correlation);
 *   they are not also sent as OpenTelemetry log records, because they already leave the process on stdout
 *   and a second copy through OTLP would show every line twice in Loki.
 * - On SIGTERM/SIGINT the SDK flushes. If the app has no handler of its own for the signal, the signal is
 *   re-raised after the flush, so the process ends as it would have without us; if it has one, the app
 *   decides when to exit and the SDK is shut down once the event loop empties (after `manager.shutdown()`,
 *   whose task spans are then exported too).
 * - `OTEL_SDK_DISABLED=true` turns all of it off.
 *
 * The SDK packages are optional peer dependencies: an app that brings its own OpenTelemetry setup does not
 * install them. Exporter failures (collector down, slow, refusing) are reported through OpenTelemetry's
 * diagnostic logger (`OTEL_LOG_LEVEL`) and never reach the app.
 */
import { createRequire, register } from 'node:module';
import { pathToFileURL } from 'node:url';
import { isMainThread } from 'node:worker_threads';
import { diag, metrics, trace, type ProxyTracerProvider } from '@opentelemetry/api';
import type { NodeSDK, tracing } from '@opentelemetry/sdk-node';
import { taskSampler } from './sampling.js';

/** What the entry needs installed next to koa-taskflow. */
const SDK_PACKAGES = [
  '@opentelemetry/sdk-node',
  '@opentelemetry/exporter-trace-otlp-http',
  '@opentelemetry/instrumentation-http',
  '@opentelemetry/instrumentation-koa',
  '@opentelemetry/instrumentation-pino',
] as const;

/** Upper bound on the flush at shutdown: a collector that accepts connections but never answers must not hold the exit. */
const SHUTDOWN_TIMEOUT_MS = 5_000;

/** The part of import-in-the-middle used here (it is a dependency of @opentelemetry/instrumentation, not ours). */
interface ImportInTheMiddle {
  createAddHookMessageChannel(): { registerOptions: object; waitForAllMessagesAcknowledged: () => Promise<void> };
}

let sdk: NodeSDK | undefined;
let shuttingDown: Promise<void> | undefined;

/**
 * Flush and stop the SDK (at most once; later calls return the same promise). Called for you on
 * SIGTERM/SIGINT and when the event loop empties; call it yourself before a `process.exit()`.
 * Never rejects.
 */
export function shutdownTelemetry(): Promise<void> {
  shuttingDown ??= (async () => {
    if (sdk === undefined) return;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, SHUTDOWN_TIMEOUT_MS);
      timer.unref();
    });
    try {
      await Promise.race([sdk.shutdown(), timeout]);
    } catch (error) {
      diag.error('koa-taskflow/instrumentation: OpenTelemetry SDK shutdown failed', error);
    } finally {
      clearTimeout(timer);
    }
  })();
  return shuttingDown;
}

function isDisabled(): boolean {
  return process.env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true';
}

async function loadSdkPackages() {
  const missing: string[] = [];
  const load = async <T>(name: (typeof SDK_PACKAGES)[number], importer: () => Promise<T>): Promise<T | undefined> => {
    try {
      return await importer();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw error;
      missing.push(name);
      return undefined;
    }
  };
  const [sdkNode, exporter, http, koa, pino] = await Promise.all([
    load('@opentelemetry/sdk-node', () => import('@opentelemetry/sdk-node')),
    load('@opentelemetry/exporter-trace-otlp-http', () => import('@opentelemetry/exporter-trace-otlp-http')),
    load('@opentelemetry/instrumentation-http', () => import('@opentelemetry/instrumentation-http')),
    load('@opentelemetry/instrumentation-koa', () => import('@opentelemetry/instrumentation-koa')),
    load('@opentelemetry/instrumentation-pino', () => import('@opentelemetry/instrumentation-pino')),
  ]);
  if (
    sdkNode === undefined ||
    exporter === undefined ||
    http === undefined ||
    koa === undefined ||
    pino === undefined
  ) {
    throw new Error(
      `koa-taskflow/instrumentation needs the OpenTelemetry SDK packages, which are optional peer ` +
        `dependencies; missing: ${missing.join(', ')}. ` +
        `Install them with: npm install ${SDK_PACKAGES.join(' ')}`,
    );
  }
  return { sdkNode, exporter, http, koa, pino };
}

/**
 * ESM apps (`import Koa from 'koa'`) are only instrumentable through a loader hook. The hook must be the
 * import-in-the-middle copy that @opentelemetry/instrumentation itself uses, or its `Hook()` calls would go
 * to a loader that never hears of them: so it is resolved from there, not from this package. The message
 * channel tells the loader which modules the instrumentations hook, so only those get wrapped.
 * Returns the wait for the loader to have taken every registration in.
 */
function registerEsmHook(): () => Promise<void> {
  const fromHere = createRequire(import.meta.url);
  const fromHttp = createRequire(fromHere.resolve('@opentelemetry/instrumentation-http'));
  const fromInstrumentation = createRequire(fromHttp.resolve('@opentelemetry/instrumentation'));
  const iitm = fromInstrumentation('import-in-the-middle') as ImportInTheMiddle;
  const { registerOptions, waitForAllMessagesAcknowledged } = iitm.createAddHookMessageChannel();
  register(
    pathToFileURL(fromInstrumentation.resolve('import-in-the-middle/hook.mjs')).href,
    import.meta.url,
    registerOptions,
  );
  return waitForAllMessagesAcknowledged;
}

/**
 * The sampler OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG name, built as the SDK builds it (the SDK's own
 * builder is not exported, and a sampler passed to NodeSDK replaces the environment's): the standard values;
 * anything else falls back to the default, parentbased_always_on, with a diagnostic, as the SDK does.
 */
function samplerFromEnv(sdk: typeof tracing): tracing.Sampler {
  const name = (process.env.OTEL_TRACES_SAMPLER ?? '').trim().toLowerCase() || 'parentbased_always_on';
  const ratio = (): number => {
    const arg = process.env.OTEL_TRACES_SAMPLER_ARG?.trim();
    const value = arg ? Number(arg) : 1;
    if (Number.isFinite(value) && value >= 0 && value <= 1) return value;
    diag.error(`koa-taskflow/instrumentation: OTEL_TRACES_SAMPLER_ARG "${arg}" is not a ratio from 0 to 1; using 1`);
    return 1;
  };
  switch (name) {
    case 'always_on':
      return new sdk.AlwaysOnSampler();
    case 'always_off':
      return new sdk.AlwaysOffSampler();
    case 'traceidratio':
      return new sdk.TraceIdRatioBasedSampler(ratio());
    case 'parentbased_always_off':
      return new sdk.ParentBasedSampler({ root: new sdk.AlwaysOffSampler() });
    case 'parentbased_traceidratio':
      return new sdk.ParentBasedSampler({ root: new sdk.TraceIdRatioBasedSampler(ratio()) });
    default:
      if (name !== 'parentbased_always_on')
        diag.error(
          `koa-taskflow/instrumentation: OTEL_TRACES_SAMPLER "${name}" is not supported here; using parentbased_always_on`,
        );
      return new sdk.ParentBasedSampler({ root: new sdk.AlwaysOnSampler() });
  }
}

/** Export what has ended so far without stopping anything (the app is still shutting down). */
function flushNow(): void {
  const providers: unknown[] = [
    (trace.getTracerProvider() as ProxyTracerProvider).getDelegate(),
    metrics.getMeterProvider(),
  ];
  for (const provider of providers) {
    const flush = (provider as { forceFlush?: () => Promise<void> }).forceFlush;
    if (typeof flush === 'function')
      flush.call(provider).catch((error: unknown) => diag.error('koa-taskflow/instrumentation: flush failed', error));
  }
}

async function start(): Promise<void> {
  const packages = await loadSdkPackages();
  const loaderReady = registerEsmHook();
  const env = process.env;
  const exporterFromEnv = Boolean(
    env.OTEL_TRACES_EXPORTER || env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL || env.OTEL_EXPORTER_OTLP_PROTOCOL,
  );
  sdk = new packages.sdkNode.NodeSDK({
    // The environment's sampler, wrapped so that a request's decision governs its tasks' attempts.
    sampler: taskSampler(samplerFromEnv(packages.sdkNode.tracing)),
    traceExporter: exporterFromEnv ? undefined : new packages.exporter.OTLPTraceExporter(),
    instrumentations: [
      new packages.http.HttpInstrumentation(),
      new packages.koa.KoaInstrumentation(),
      new packages.pino.PinoInstrumentation({ disableLogSending: true }),
    ],
  });
  try {
    sdk.start();
  } catch (error) {
    // Telemetry that cannot start must not stop the app: it runs untraced, and says so once.
    sdk = undefined;
    console.warn(
      'koa-taskflow/instrumentation: the OpenTelemetry SDK did not start; the app runs without telemetry:',
      error,
    );
    return;
  }
  // The app's modules must not load before the loader knows which of them to wrap.
  await loaderReady();

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, function flushOnSignal() {
      if (process.listenerCount(signal) > 1) {
        // The app handles the signal and decides when to exit; its last task spans are still to come
        // (manager.shutdown()), so the SDK stays up until the event loop empties ('beforeExit').
        flushNow();
        return;
      }
      // Nobody else listens: Node's default would end the process now. Flush, then let the signal do
      // that, so the exit status is the one the signal gives (a second signal while flushing ends it at once).
      const reraise = () => {
        process.off(signal, flushOnSignal);
        process.kill(process.pid, signal);
      };
      if (shuttingDown !== undefined) return reraise();
      void shutdownTelemetry().then(reraise);
    });
  }
  process.once('beforeExit', () => void shutdownTelemetry());
}

if (isMainThread && !isDisabled()) await start();
