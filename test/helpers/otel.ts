import { afterAll, beforeAll, beforeEach } from 'vitest';
import { context } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';

/**
 * For a test file that reads spans from memory: an exporter emptied before each test, and a context manager
 * for the file's duration (what an SDK installs at start: without one no span can be "active").
 */
export function inMemorySpans(): InMemorySpanExporter {
  const exporter = new InMemorySpanExporter();
  const contextManager = new AsyncLocalStorageContextManager();
  beforeAll(() => {
    context.setGlobalContextManager(contextManager.enable());
  });
  afterAll(() => {
    context.disable();
  });
  beforeEach(() => {
    exporter.reset();
  });
  return exporter;
}
