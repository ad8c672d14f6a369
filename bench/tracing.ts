// The tracing every traced benchmark uses: a real OpenTelemetry SDK (batch processor) whose exporter drops
// the spans, so what is measured is the SDK's work in process, not an exporter's I/O.
import { context } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import { BasicTracerProvider, BatchSpanProcessor, type SpanExporter } from '@opentelemetry/sdk-trace-base';

const dropping: SpanExporter = {
  export: (_spans, done: (result: ExportResult) => void) => done({ code: ExportResultCode.SUCCESS }),
  shutdown: async () => {},
};

/**
 * A tracer provider that records spans and drops them once batched, with the async-hooks context manager set
 * globally (as the Node SDK would) so a span is active across awaits.
 */
export function droppingTracerProvider(maxQueueSize = 65_536): BasicTracerProvider {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  return new BasicTracerProvider({ spanProcessors: [new BatchSpanProcessor(dropping, { maxQueueSize })] });
}
