import {
  trace,
  TraceFlags,
  type Attributes,
  type Context,
  type Link,
  type SpanKind,
  type TraceState,
} from '@opentelemetry/api';
import { ATTR_TASK_ID, hasSpanIds } from './otel.js';

/** The SDK's `SamplingDecision` values (`@opentelemetry/sdk-trace-base`), restated so this entry needs no SDK. */
const NOT_RECORD = 0;
const RECORD_AND_SAMPLED = 2;

/** What an OpenTelemetry SDK sampler returns (structurally `SamplingResult`). */
export interface TaskSamplingResult {
  decision: 0 | 1 | 2;
  attributes?: Readonly<Attributes>;
  traceState?: TraceState;
}

/** Any OpenTelemetry SDK sampler (structurally the SDK's `Sampler`): `TraceIdRatioBasedSampler`, `ParentBasedSampler`… */
export interface TaskSamplerDelegate {
  shouldSample(
    context: Context,
    traceId: string,
    spanName: string,
    spanKind: SpanKind,
    attributes: Attributes,
    links: Link[],
  ): TaskSamplingResult;
  toString(): string;
}

/**
 * Wraps an SDK sampler so that a request's sampling decision governs its tasks: a task attempt span is
 * recorded iff the span that was active where the task was added was sampled, for every attempt, retries
 * minutes later and tasks recovered by another process included (the decision travels in the record).
 * Every other span, and the first attempt of a task added outside any span, is left to `delegate`.
 *
 * ```js
 * new NodeSDK({ sampler: taskSampler(new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(0.1) })) });
 * ```
 */
export function taskSampler<S extends TaskSamplerDelegate>(delegate: S): TaskSamplerDelegate {
  if (delegate === null || typeof delegate !== 'object' || typeof delegate.shouldSample !== 'function') {
    throw new TypeError(
      'taskSampler: argument "delegate" must be an OpenTelemetry sampler (an object with shouldSample())',
    );
  }
  return {
    shouldSample(context, traceId, spanName, spanKind, attributes, links) {
      if (attributes?.[ATTR_TASK_ID] !== undefined) {
        // An attempt (koa-taskflow starts it with task.id): in child mode its parent is the request's span;
        // in link mode the request is its first link, or, for a task added outside any span, the link is
        // to the previous attempt, whose decision the delegate made as a root.
        const parent = trace.getSpanContext(context);
        const decidedBy = parent !== undefined && hasSpanIds(parent) ? parent : links?.[0]?.context;
        if (decidedBy !== undefined)
          return { decision: decidedBy.traceFlags & TraceFlags.SAMPLED ? RECORD_AND_SAMPLED : NOT_RECORD };
      }
      return delegate.shouldSample(context, traceId, spanName, spanKind, attributes, links);
    },
    toString() {
      return `TaskSampler{${delegate.toString()}}`;
    },
  };
}
