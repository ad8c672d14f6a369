import { TraceFlags, type SpanContext } from '@opentelemetry/api';
import type { Acceptance } from './acceptance.js';
import { TaskStoreError, TaskStoreUnavailableError } from './errors.js';
import { mergeOptions, resolveOptions, type ResolvedTaskOptions } from './options.js';
import { recordedOptions, type TaskRegistry } from './registry.js';
import type { Reporter } from './report.js';
import type { Runner } from './runner.js';
import { AesGcmArgsCipher } from './stores/args-cipher.js';
import { MAX_ORPHANS_PER_CLAIM } from './stores/durable-store.js';
import { unreadableArgs } from './stores/records.js';
import { NO_LOGS, ResumedTaskRun } from './task-run.js';
import type { CancelRequest, TaskFunction, TaskRecord, TaskStore } from './types.js';

export interface RecoveryDeps {
  /** This process's identity as the owner of durable tasks. */
  ownerId: string;
  store: TaskStore;
  registry: TaskRegistry;
  acceptance: Acceptance;
  runner: Runner;
  reporter: Reporter;
  requeuePending: boolean;
  leaseMs: number;
  orphanCheckMs: number;
  /** Args are sealed with it in the store (AES-256-GCM). */
  encryptionKey: Uint8Array | undefined;
  /** Cancel requests recorded on tasks this process holds, as a lease renewal answered them. */
  cancelRequested(requests: readonly CancelRequest[]): void;
}

/**
 * Durable stores: this process's lease on its unfinished tasks, and the tasks a process that is gone left
 * behind (orphans), claimed and resumed at start and every `orphanCheckMs`.
 */
export class Recovery {
  readonly #deps: RecoveryDeps;
  #started: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #maintenanceFailed = false;
  #stopped = false;

  /** Attaches the store: unfinished records it writes from now on are this process's, under its lease. */
  constructor(deps: RecoveryDeps) {
    this.#deps = deps;
    const { encryptionKey, reporter } = deps;
    deps.store.attach?.({
      ownerId: deps.ownerId,
      leaseMs: deps.leaseMs,
      argsCipher: encryptionKey === undefined ? undefined : new AesGcmArgsCipher(encryptionKey),
      reportUnreadable: (id, error) => reporter.unreadable(id, error),
    });
  }

  /** Claims left-behind work once and keeps the lease alive. Rejects (and may be called again) when the store is unreachable. */
  start(): Promise<void> {
    this.#started ??= this.#start().catch((error: unknown) => {
      this.#started = undefined;
      throw error;
    });
    return this.#started;
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#timer);
  }

  async #start(): Promise<void> {
    const { store, requeuePending, leaseMs, orphanCheckMs } = this.#deps;
    try {
      if (requeuePending) await this.#claimOrphans();
      else await store.renewLease?.();
    } catch (error) {
      // The store says what is wrong with its data (damaged, not our schema): that is the error to show.
      if (error instanceof TaskStoreError) throw error;
      const message = error instanceof Error ? error.message : String(error);
      throw new TaskStoreUnavailableError(
        `start: the task store is unreachable (${message}); nothing was resumed. Requests that add ` +
          `persisted tasks are answered 503 until it is back; call start() again to resume left-behind work`,
        { cause: error },
      );
    }
    if (this.#stopped || this.#timer !== undefined) return;
    // One timer: the lease is renewed every leaseMs/3; orphans are looked for every orphanCheckMs.
    const tick = Math.min(Math.round(leaseMs / 3), orphanCheckMs);
    let sinceCheck = 0;
    this.#timer = setInterval(() => {
      sinceCheck += tick;
      const check = requeuePending && sinceCheck >= orphanCheckMs;
      if (check) sinceCheck = 0;
      void this.#maintain(check);
    }, tick).unref();
  }

  async #maintain(checkOrphans: boolean): Promise<void> {
    try {
      const { store } = this.#deps;
      if (checkOrphans) await this.#claimOrphans();
      // A store that records cancel requests answers them with the renewal: read them on every tick, so a
      // task cancelled from another instance is stopped within one renewal interval.
      if (!checkOrphans || store.requestCancel !== undefined) {
        const requests = await store.renewLease?.();
        if (requests && requests.length > 0 && !this.#stopped) this.#deps.cancelRequested(requests);
      }
      this.#maintenanceFailed = false;
    } catch (error) {
      if (this.#stopped) return;
      // Once per outage: the timer keeps trying.
      if (!this.#maintenanceFailed) this.#deps.reporter.report('store lease renewal / orphan check (retrying)', error);
      this.#maintenanceFailed = true;
    }
  }

  async #claimOrphans(): Promise<void> {
    const { store, ownerId, leaseMs } = this.#deps;
    // A full call (SqliteStore and RedisStore claim MAX_ORPHANS_PER_CLAIM at most) may have left more
    // behind: claimed at once, not an orphan check later.
    let records: TaskRecord[];
    do {
      records = await store.claimOrphans(ownerId, leaseMs);
      this.#resumeAll(records);
    } while (records.length >= MAX_ORPHANS_PER_CLAIM && !this.#stopped);
  }

  #resumeAll(records: readonly TaskRecord[]): void {
    const { runner, reporter } = this.#deps;
    for (const record of records) {
      if (this.#stopped) break;
      // Our own lease ran out while we were alive (a long stall): the task still lives here.
      if (runner.live(record.id) !== undefined) continue;
      try {
        this.#resume(record);
      } catch (error) {
        reporter.report(`resuming task ${record.id}`, error);
      }
    }
  }

  /**
   * Take over a task from the store: run it again from its stored state (attempts, next retry time). One
   * left `running` died with its process: it runs again as its next attempt, linked to the one that died,
   * unless that is one stall more than its `maxStalls` (it ends `failed`, TaskStalledError) or it is not
   * `requeueOnInterrupt` (it ends `interrupted`, reason `crash`). It also ends `interrupted` when nothing
   * in this process is registered under its name, or when its args cannot be decrypted here.
   */
  #resume(record: TaskRecord): void {
    const { registry, runner, reporter } = this.#deps;
    const registration = registry.named(record.name);
    let options: ResolvedTaskOptions;
    let fn: TaskFunction;
    let reason: string | undefined;
    // Args this process cannot decrypt (no or another encryptionKey, altered ciphertext): the task cannot
    // run here; it ends interrupted with that error, its sealed args kept, and retry(id) runs it once the key is right.
    const unreadable = unreadableArgs(record);
    let died = false;
    if (registration === undefined) {
      options = resolveOptions('recovery', { tags: record.tags }, record.name);
      fn = () => {};
      reason = 'unregistered';
    } else {
      options = resolveOptions(
        'recovery',
        mergeOptions(registration.options, recordedOptions(record)),
        registration.name,
      );
      fn = registration.fn;
      if (record.status === 'running' && unreadable === undefined) {
        if (options.requeueOnInterrupt) died = true;
        else reason = 'crash';
      }
    }
    if (unreadable !== undefined) {
      reason = 'encryption_key';
      reporter.report(
        `recovering task ${record.id} (ended interrupted; retry(id) once "encryptionKey" is right)`,
        unreadable,
      );
    }
    record.status = 'pending';
    if (record.logs.length === 0) record.logs = NO_LOGS;
    const link: SpanContext | undefined =
      record.requestTraceId !== undefined && record.requestSpanId !== undefined
        ? {
            traceId: record.requestTraceId,
            spanId: record.requestSpanId,
            traceFlags: record.requestTraceFlags ?? TraceFlags.SAMPLED,
            isRemote: true,
          }
        : undefined;
    // The next attempt links to the latest one, wherever it ran (its span context is stored as it starts).
    const previousAttempt: SpanContext | undefined =
      record.traceId !== undefined && record.spanId !== undefined
        ? { traceId: record.traceId, spanId: record.spanId, traceFlags: TraceFlags.SAMPLED, isRemote: true }
        : undefined;
    const run = new ResumedTaskRun(runner, record, fn, options, link, registration !== undefined, previousAttempt);
    const stalledOut = died ? run.countStall() : undefined;
    runner.accept(run);
    // Cancelled (from any instance) while its process was gone or after it was handed back: it ends here.
    if (record.cancelRequested !== undefined) return run.cancel('cancelled', record.cancelRequested);
    if (reason !== undefined) return run.cancel('interrupted', reason, unreadable);
    if (stalledOut !== undefined) return run.failStalled(stalledOut);
    if (record.idempotencyKey !== undefined) this.#deps.acceptance.holdKey(record.idempotencyKey, record.id);
    void runner.recordChanged(record);
    const wait = (record.runAt ?? 0) - Date.now();
    if (wait > 0) runner.retryLater(run, wait);
    else runner.submit(run);
  }
}
