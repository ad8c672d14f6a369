import {
  context,
  isSpanContextValid,
  metrics,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Counter,
  type Histogram,
  type Link,
  type Meter,
  type MeterProvider,
  type Span,
  type SpanContext,
  type Tracer,
  type TracerProvider,
  type UpDownCounter,
} from '@opentelemetry/api';
import { ATTR_ERROR_TYPE } from '@opentelemetry/semantic-conventions';

/** Every attribute, span, event and metric name koa-taskflow emits, in one place. */
export const INSTRUMENTATION_NAME = 'koa-taskflow';
export const ATTR_TASK_ID = 'task.id';
export const ATTR_TASK_NAME = 'task.name';
export const ATTR_TASK_ATTEMPT = 'task.attempt';
export const ATTR_TASK_MAX_ATTEMPTS = 'task.max_attempts';
export const ATTR_TASK_PRIORITY = 'task.priority';
export const ATTR_TASK_IDEMPOTENCY_KEY = 'task.idempotency_key';
export const ATTR_TASK_STATUS = 'task.status';
export const ATTR_TASK_TAG_PREFIX = 'task.tag.';
// The messaging conventions are still "development" status, so the semantic-conventions package only ships
// them from its unstable `incubating` entry point; its README asks libraries to copy such names instead.
export const ATTR_MESSAGING_SYSTEM = 'messaging.system';
export const ATTR_MESSAGING_OPERATION_TYPE = 'messaging.operation.type';
export const ATTR_MESSAGING_MESSAGE_ID = 'messaging.message.id';
export { ATTR_ERROR_TYPE };
export const ATTR_LOG_MESSAGE = 'log.message';
export const ATTR_LOG_LEVEL = 'log.level';
export const MESSAGING_SYSTEM = 'koa-taskflow';
export const EVENT_TASK_LOG = 'task.log';
export const EVENT_TASK_ENQUEUED = 'task.enqueued';
export const METRIC_DURATION = 'task.duration';
export const METRIC_ATTEMPTS = 'task.attempts';
export const METRIC_ACTIVE = 'task.active';
export const METRIC_QUEUE_DEPTH = 'task.queue.depth';

export function spanName(taskName: string): string {
  return `task ${taskName}`;
}

const tagAttributeNames = new Map<string, string>();

/** `task.tag.<key>`, built once per key. */
export function tagAttribute(key: string): string {
  let name = tagAttributeNames.get(key);
  if (name === undefined) {
    name = ATTR_TASK_TAG_PREFIX + key;
    if (tagAttributeNames.size < 10_000) tagAttributeNames.set(key, name);
  }
  return name;
}

/** What an attempt's span needs to know about its task. */
export interface AttemptSpanInput {
  id: string;
  name: string;
  attempt: number;
  maxAttempts: number;
  priority?: number;
  idempotencyKey?: string;
  tags: Readonly<Record<string, string>>;
  requestLink?: SpanContext;
  previousAttempt?: SpanContext;
}

/** The tracer and instruments of one TaskManager. */
export class TaskTelemetry {
  readonly tracer: Tracer;
  #meter!: Meter;
  #duration!: Histogram;
  #attempts!: Counter;
  #active!: UpDownCounter;
  readonly #ownMeterProvider: MeterProvider | undefined;

  constructor(tracerProvider: TracerProvider | undefined, meterProvider: MeterProvider | undefined, readonly queueDepth: () => number) {
    // The global tracer provider is a proxy, so a tracer taken now follows an SDK registered later.
    this.tracer = (tracerProvider ?? trace.getTracerProvider()).getTracer(INSTRUMENTATION_NAME);
    this.#ownMeterProvider = meterProvider;
    this.bindMeter();
  }

  /**
   * The global meter provider is not a proxy: instruments taken before the SDK registered stay no-ops.
   * `start()` calls this again so an app that registers its SDK before `start()` gets real metrics.
   */
  bindMeter(): void {
    const meter = (this.#ownMeterProvider ?? metrics.getMeterProvider()).getMeter(INSTRUMENTATION_NAME);
    if (meter === this.#meter) return;
    this.#meter = meter;
    this.#duration = meter.createHistogram(METRIC_DURATION, { unit: 's', description: 'Duration of task attempts' });
    this.#attempts = meter.createCounter(METRIC_ATTEMPTS, { description: 'Task attempts, by final status of the attempt' });
    this.#active = meter.createUpDownCounter(METRIC_ACTIVE, { description: 'Task attempts running now' });
    meter
      .createObservableGauge(METRIC_QUEUE_DEPTH, { description: 'Tasks waiting for a free slot' })
      .addCallback((result) => result.observe(this.queueDepth()));
  }

  /**
   * The span active where a task is added (the request's span under HTTP instrumentation). It gets a
   * `task.enqueued` event; its context becomes the attempt spans' link.
   */
  enqueuedFrom(taskId: string, taskName: string): SpanContext | undefined {
    const span = trace.getSpan(context.active());
    if (span === undefined) return undefined;
    const spanContext = span.spanContext();
    if (!isSpanContextValid(spanContext)) return undefined;
    if (span.isRecording()) span.addEvent(EVENT_TASK_ENQUEUED, { [ATTR_TASK_ID]: taskId, [ATTR_TASK_NAME]: taskName });
    return spanContext;
  }

  startAttempt(input: AttemptSpanInput): Span {
    let links: Link[] | undefined;
    if (input.requestLink !== undefined) links = [{ context: input.requestLink }];
    if (input.previousAttempt !== undefined) (links ??= []).push({ context: input.previousAttempt });
    // ROOT_CONTEXT: every attempt starts its own trace; the request is reached through the link.
    const span = this.tracer.startSpan(spanName(input.name), { kind: SpanKind.CONSUMER, links }, ROOT_CONTEXT);
    // Attributes are built only for a span that records: with no SDK this costs nothing.
    if (span.isRecording()) span.setAttributes(attemptAttributes(input));
    this.#active.add(1, { [ATTR_TASK_NAME]: input.name });
    return span;
  }

  endAttempt(span: Span, taskName: string, durationMs: number, error: unknown): void {
    const status = error === undefined ? 'success' : 'failed';
    if (span.isRecording()) {
      if (error === undefined) {
        span.setStatus({ code: SpanStatusCode.OK });
      } else {
        const err = error instanceof Error ? error : new Error(String(error));
        span.recordException(err);
        span.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
        span.setAttribute(ATTR_ERROR_TYPE, err.name || 'Error');
      }
    }
    span.end();
    const attributes = { [ATTR_TASK_NAME]: taskName, [ATTR_TASK_STATUS]: status };
    this.#active.add(-1, { [ATTR_TASK_NAME]: taskName });
    this.#duration.record(durationMs / 1000, attributes);
    this.#attempts.add(1, attributes);
  }
}

function attemptAttributes(input: AttemptSpanInput): Attributes {
  const attributes: Attributes = {
    [ATTR_TASK_ID]: input.id,
    [ATTR_TASK_NAME]: input.name,
    [ATTR_TASK_ATTEMPT]: input.attempt,
    [ATTR_TASK_MAX_ATTEMPTS]: input.maxAttempts,
    [ATTR_MESSAGING_SYSTEM]: MESSAGING_SYSTEM,
    [ATTR_MESSAGING_OPERATION_TYPE]: 'process',
    [ATTR_MESSAGING_MESSAGE_ID]: input.id,
  };
  if (input.priority !== undefined) attributes[ATTR_TASK_PRIORITY] = input.priority;
  if (input.idempotencyKey !== undefined) attributes[ATTR_TASK_IDEMPOTENCY_KEY] = input.idempotencyKey;
  for (const key in input.tags) attributes[tagAttribute(key)] = input.tags[key];
  return attributes;
}

/** pino / instrumentation-pino render trace flags as two hex digits. */
export function formatTraceFlags(flags: number): string {
  return flags < 16 ? `0${flags.toString(16)}` : flags.toString(16);
}
