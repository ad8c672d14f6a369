import {
  context,
  createNoopMeter,
  INVALID_SPAN_CONTEXT,
  INVALID_SPANID,
  INVALID_TRACEID,
  metrics,
  ProxyTracerProvider,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  TraceFlags,
  type Attributes,
  type Counter,
  type Histogram,
  type Link,
  type Meter,
  type MeterProvider,
  type ObservableCallback,
  type ObservableGauge,
  type Span,
  type SpanContext,
  type Tracer,
  type TracerProvider,
  type UpDownCounter,
} from '@opentelemetry/api';
import { ATTR_ERROR_TYPE } from '@opentelemetry/semantic-conventions';
import { types } from 'node:util';
import { TaskCancelledError, TaskflowError, TaskInterruptedError, toErrorInfo } from './errors.js';

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
/** On every attempt span of a task added under a span: that span's ids (a Jaeger tag search finds them). */
export const ATTR_TASK_REQUEST_TRACE_ID = 'task.request.trace_id';
export const ATTR_TASK_REQUEST_SPAN_ID = 'task.request.span_id';
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
/** A `taskProgress()` report on the attempt's span (throttled); its value is the ATTR_TASK_PROGRESS attribute. */
export const EVENT_TASK_PROGRESS = 'task.progress';
export const ATTR_TASK_PROGRESS = 'task.progress';
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
  readonly id: string;
  readonly name: string;
  readonly maxAttempts: number;
  readonly priority?: number;
  readonly idempotencyKey?: string;
  /** The tags as they may leave the process (secret-looking tag names masked). */
  readonly safeTags: Readonly<Record<string, string>>;
  readonly requestLink?: SpanContext;
  readonly previousAttempt?: SpanContext;
  /** `'child'`: the attempt's parent is `requestLink` instead of a link to it. */
  readonly traceMode: 'link' | 'child';
}

// What the API's global proxy delegates to while no SDK is registered, and the one span that stands for
// every attempt then: nothing is allocated per attempt when tracing is off.
const NOOP_TRACER_PROVIDER = new ProxyTracerProvider().getDelegate();
const NON_RECORDING_SPAN = trace.wrapSpanContext(INVALID_SPAN_CONTEXT);

/** Copied by the SDK's setStatus: one object for every successful attempt. */
const OK_STATUS = Object.freeze({ code: SpanStatusCode.OK });

/** How an attempt ended, as the `task.status` of the metrics. */
export type AttemptOutcome = 'success' | 'failed' | 'interrupted' | 'cancelled';

/**
 * Bucket bounds for `task.duration`, in seconds. The SDK's default bounds (0, 5, 10, 25 … 10 000) suit
 * milliseconds and would put almost every task into the first bucket; these follow the HTTP duration
 * conventions at the short end and stretch to minutes for slow jobs.
 */
export const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

/** The span name and metric attribute sets of one task name, built once: the hot path allocates none. */
interface NameAttributes {
  span: string;
  active: Attributes;
  outcome: Record<AttemptOutcome, Attributes>;
}

/** The tracer and instruments of one TaskManager. */
export class TaskTelemetry {
  readonly tracer: Tracer;
  readonly #tracerProvider: TracerProvider;
  #meter: Meter | undefined;
  #duration!: Histogram;
  #attempts!: Counter;
  #active!: UpDownCounter;
  #queueDepth: ObservableGauge | undefined;
  /** False while the meter is the API's no-op one: the per-attempt instrument calls are skipped. */
  #metricsOn = false;
  readonly #observeQueueDepth: ObservableCallback;
  readonly #ownMeterProvider: MeterProvider | undefined;
  readonly #nameAttributes = new Map<string, NameAttributes>();

  /** Told once when an attempt's sampling decision differs from its request's (see taskSampler). */
  readonly #onIncoherentSampling: (message: string) => void;
  #warnedIncoherent = false;

  constructor(
    tracerProvider: TracerProvider | undefined,
    meterProvider: MeterProvider | undefined,
    queueDepth: () => number,
    onIncoherentSampling: (message: string) => void = () => {},
  ) {
    this.#onIncoherentSampling = onIncoherentSampling;
    // The global tracer provider is a proxy, so a tracer taken now follows an SDK registered later.
    this.#tracerProvider = tracerProvider ?? trace.getTracerProvider();
    this.tracer = this.#tracerProvider.getTracer(INSTRUMENTATION_NAME);
    this.#ownMeterProvider = meterProvider;
    this.#observeQueueDepth = (result) => result.observe(queueDepth());
    this.bindMeter();
  }

  /**
   * The global meter provider is not a proxy: instruments taken before the SDK registered stay no-ops.
   * `start()` calls this again so an app that registers its SDK before `start()` gets real metrics.
   */
  bindMeter(): void {
    const meter = (this.#ownMeterProvider ?? metrics.getMeterProvider()).getMeter(INSTRUMENTATION_NAME);
    if (meter === this.#meter) return;
    this.#queueDepth?.removeCallback(this.#observeQueueDepth);
    this.#meter = meter;
    this.#metricsOn = meter !== createNoopMeter();
    this.#duration = meter.createHistogram(METRIC_DURATION, {
      unit: 's',
      description: 'Duration of task attempts',
      advice: { explicitBucketBoundaries: DURATION_BUCKETS },
    });
    this.#attempts = meter.createCounter(METRIC_ATTEMPTS, {
      unit: '{attempt}',
      description: 'Task attempts, by how the attempt ended',
    });
    this.#active = meter.createUpDownCounter(METRIC_ACTIVE, {
      unit: '{attempt}',
      description: 'Task attempts running now',
    });
    this.#queueDepth = meter.createObservableGauge(METRIC_QUEUE_DEPTH, {
      unit: '{task}',
      description: 'Tasks waiting for a free slot',
    });
    this.#queueDepth.addCallback(this.#observeQueueDepth);
  }

  /** Stop reporting this manager's queue depth (the meter outlives the manager when it is the global one). */
  close(): void {
    this.#queueDepth?.removeCallback(this.#observeQueueDepth);
    this.#queueDepth = undefined;
  }

  /**
   * The span active where a task is added (the request's span under HTTP instrumentation). It gets a
   * `task.enqueued` event; its context becomes the attempt spans' link.
   */
  enqueuedFrom(taskId: string, taskName: string): SpanContext | undefined {
    const span = trace.getSpan(context.active());
    if (span === undefined) return undefined;
    const spanContext = span.spanContext();
    if (!hasSpanIds(spanContext)) return undefined;
    if (span.isRecording()) span.addEvent(EVENT_TASK_ENQUEUED, { [ATTR_TASK_ID]: taskId, [ATTR_TASK_NAME]: taskName });
    return spanContext;
  }

  /** Set once an SDK is behind the tracer: a proxy's delegate is set once, so on stays on. */
  #tracingOn = false;

  /** True while the tracer is the API's no-op one (no SDK registered, no provider given). */
  get tracingOff(): boolean {
    if (this.#tracingOn) return false;
    const provider = this.#tracerProvider;
    const off = provider instanceof ProxyTracerProvider && provider.getDelegate() === NOOP_TRACER_PROVIDER;
    this.#tracingOn = !off;
    return off;
  }

  startAttempt(input: AttemptSpanInput, attempt: number): Span {
    if (this.#metricsOn) this.#active.add(1, this.#names(input.name).active);
    if (this.tracingOff) return NON_RECORDING_SPAN;
    const request = input.requestLink;
    const child = request !== undefined && input.traceMode === 'child';
    // Link mode: the request is the first link (taskSampler reads its sampled flag there), the previous
    // attempt the second. Child mode: the request is the parent, and later attempts link to the previous.
    let links: Link[] | undefined;
    if (request !== undefined && !child) links = [{ context: request }];
    if (input.previousAttempt !== undefined) (links ??= []).push({ context: input.previousAttempt });
    // What names the attempt goes in at the start, for the sampler (taskSampler knows an attempt by task.id);
    // the rest only onto a span that records. The SDK copies start attributes twice (sanitised, then merged
    // with the sampler's) before setting them one by one: for all of them that was a third of its startSpan.
    const parent = child ? trace.setSpanContext(ROOT_CONTEXT, request) : ROOT_CONTEXT;
    const names = this.#names(input.name);
    const span = this.tracer.startSpan(
      names.span,
      { kind: SpanKind.CONSUMER, links, attributes: { [ATTR_TASK_ID]: input.id, [ATTR_TASK_NAME]: input.name } },
      parent,
    );
    if (span.isRecording()) setAttemptAttributes(span, input, attempt);
    if (request !== undefined && !this.#warnedIncoherent) this.#checkSampling(request, span);
    return span;
  }

  /**
   * A sampled request whose attempt was dropped (or the reverse) breaks the way from one to the other: the
   * app's sampler decides for each attempt's new trace afresh. Said once, with the fix.
   */
  #checkSampling(request: SpanContext, span: Span): void {
    const requestSampled = (request.traceFlags & TraceFlags.SAMPLED) !== 0;
    const attemptSampled = (span.spanContext().traceFlags & TraceFlags.SAMPLED) !== 0;
    if (requestSampled === attemptSampled) return;
    this.#warnedIncoherent = true;
    this.#onIncoherentSampling(
      `a ${requestSampled ? 'sampled' : 'dropped'} request added a task whose attempt span was ` +
        `${attemptSampled ? 'sampled' : 'dropped'}: ` +
        `the tracer's sampler decides for each attempt on its own, so requests and their tasks are kept or dropped apart. ` +
        `Wrap the SDK's sampler with taskSampler() from koa-taskflow (new NodeSDK({ sampler: taskSampler(yourSampler) })); ` +
        `the koa-taskflow/instrumentation entry does this for you`,
    );
  }

  endAttempt(span: Span, taskName: string, durationMs: number, error: unknown): void {
    let outcome: AttemptOutcome = 'success';
    // Only our own abort reasons are interrupts; a thrown Proxy is never asked (instanceof runs its traps).
    if (error !== undefined)
      outcome = !isOwnError(error)
        ? 'failed'
        : error instanceof TaskInterruptedError
          ? 'interrupted'
          : error instanceof TaskCancelledError
            ? 'cancelled'
            : 'failed';
    if (span.isRecording()) {
      if (error === undefined) {
        span.setStatus(OK_STATUS);
      } else {
        // Recorded from the info, not the error: the thrown value itself may throw when the SDK reads its
        // name, message, stack or code, and the SDK would name an Error with a `code` (ours all have one) by
        // that code; the exception event says the same type as error.type and the record.
        const info = toErrorInfo(error);
        span.recordException({ name: info.type, message: info.message, stack: info.stack });
        span.setStatus({ code: SpanStatusCode.ERROR, message: info.message });
        span.setAttribute(ATTR_ERROR_TYPE, info.type);
      }
    }
    span.end();
    if (!this.#metricsOn) return;
    const attributes = this.#names(taskName);
    this.#active.add(-1, attributes.active);
    this.#duration.record(durationMs / 1000, attributes.outcome[outcome]);
    this.#attempts.add(1, attributes.outcome[outcome]);
  }

  // The last name asked for and its attributes: most attempts follow one of the same task, and comparing a
  // name costs less than hashing it into the map.
  #lastName: string | undefined;
  #lastNames: NameAttributes | undefined;

  #names(taskName: string): NameAttributes {
    if (taskName === this.#lastName) return this.#lastNames!;
    let attributes = this.#nameAttributes.get(taskName);
    if (attributes === undefined) {
      const outcome = (status: AttemptOutcome): Attributes => ({
        [ATTR_TASK_NAME]: taskName,
        [ATTR_TASK_STATUS]: status,
      });
      attributes = {
        span: spanName(taskName),
        active: { [ATTR_TASK_NAME]: taskName },
        outcome: {
          success: outcome('success'),
          failed: outcome('failed'),
          interrupted: outcome('interrupted'),
          cancelled: outcome('cancelled'),
        },
      };
      // Task names are few (registered functions); the bound only guards against names built per call.
      if (this.#nameAttributes.size < 1_000) this.#nameAttributes.set(taskName, attributes);
    }
    this.#lastName = taskName;
    this.#lastNames = attributes;
    return attributes;
  }
}

/** An error of a class of ours (not a Proxy, whose getPrototypeOf trap `instanceof` would run). */
function isOwnError(error: unknown): error is TaskflowError {
  return error !== null && typeof error === 'object' && !types.isProxy(error) && error instanceof TaskflowError;
}

/**
 * The attempt span's attributes besides task.id and task.name (given at its start), set one by one: the SDK's
 * setAttributes walks an object with for-in to do the same, so building that object is work for nothing.
 */
function setAttemptAttributes(span: Span, input: AttemptSpanInput, attempt: number): void {
  span.setAttribute(ATTR_TASK_ATTEMPT, attempt);
  span.setAttribute(ATTR_TASK_MAX_ATTEMPTS, input.maxAttempts);
  span.setAttribute(ATTR_MESSAGING_SYSTEM, MESSAGING_SYSTEM);
  span.setAttribute(ATTR_MESSAGING_OPERATION_TYPE, 'process');
  span.setAttribute(ATTR_MESSAGING_MESSAGE_ID, input.id);
  const request = input.requestLink;
  if (request !== undefined) {
    span.setAttribute(ATTR_TASK_REQUEST_TRACE_ID, request.traceId);
    span.setAttribute(ATTR_TASK_REQUEST_SPAN_ID, request.spanId);
  }
  if (input.priority !== undefined) span.setAttribute(ATTR_TASK_PRIORITY, input.priority);
  if (input.idempotencyKey !== undefined) span.setAttribute(ATTR_TASK_IDEMPOTENCY_KEY, input.idempotencyKey);
  const tags = input.safeTags;
  for (const key in tags) span.setAttribute(tagAttribute(key), tags[key]);
}

/**
 * Whether a span context names a real span (what links and an active attempt need). The API's
 * isSpanContextValid runs two regular expressions per call; spans from an SDK, and remote contexts that
 * passed a propagator, are already well-formed, so only the all-zero ids of the non-recording span remain.
 */
export function hasSpanIds(spanContext: SpanContext): boolean {
  return spanContext.traceId !== INVALID_TRACEID && spanContext.spanId !== INVALID_SPANID;
}

/** pino / instrumentation-pino render trace flags as two hex digits. */
export function formatTraceFlags(flags: number): string {
  // The two values every line has, without building the string per line.
  if (flags === 1) return '01';
  if (flags === 0) return '00';
  return flags < 16 ? `0${flags.toString(16)}` : flags.toString(16);
}
