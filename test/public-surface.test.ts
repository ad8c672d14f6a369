// What the package publishes: the names each entry point's built .d.ts exports, and TaskManager's public
// members, against explicit lists. A name added or leaked (an internal, a runner) fails here first.
import { readFileSync } from 'node:fs';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { exports: Record<string, { types?: string }> };

const entries = ['.', './sqlite', './redis', './bullmq', './instrumentation', './testing'];
const files = entries.map((entry) => pkg.exports[entry].types!);
// One program for every entry point: type-checking the .d.ts once is most of this file's time.
const prog = ts.createProgram(files, {
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  skipLibCheck: true,
  noEmit: true,
});
const checker = prog.getTypeChecker();

function exportsOf(entry: string): ts.Symbol[] {
  const moduleSymbol = checker.getSymbolAtLocation(prog.getSourceFile(pkg.exports[entry].types!)!)!;
  return checker.getExportsOfModule(moduleSymbol);
}

const exportedNames = (entry: string) =>
  exportsOf(entry)
    .map((s) => s.name)
    .sort();

/** The public instance members of an exported class: no `#private`, `private` or `protected` ones. */
function publicMembers(entry: string, name: string): string[] {
  const symbol = exportsOf(entry).find((s) => s.name === name)!;
  return checker
    .getPropertiesOfType(checker.getDeclaredTypeOfSymbol(symbol))
    .filter((p) => !p.name.startsWith('#') && !p.name.startsWith('__#'))
    .filter((p) => {
      const declaration = p.valueDeclaration ?? p.declarations![0];
      return !(ts.getCombinedModifierFlags(declaration) & ts.ModifierFlags.NonPublicAccessibilityModifier);
    })
    .map((p) => p.name)
    .sort();
}

const PUBLIC = {
  '.': [
    'AdminAuth',
    'AdminMiddleware',
    'AdminOptions',
    'ArgsCipher',
    'AttemptEventBase',
    'CancelOptions',
    'CancelRequest',
    'InMemoryObserver',
    'IsolateMode',
    'LifecycleEvent',
    'LogEntry',
    'LogEvent',
    'LogLevel',
    'MemoryStore',
    'MemoryStoreOptions',
    'NameMetrics',
    'ObserverFilter',
    'ObserverMetrics',
    'PersistedTaskOptions',
    'PhaseScheduler',
    'ProgressEvent',
    'REDACTED',
    'RepeatSchedule',
    'Repeating',
    'ResolvedTaskOptions',
    'SaveResult',
    'StoreCapabilities',
    'StoreLease',
    'StoreMetrics',
    'Tags',
    'TaskAdder',
    'TaskArgsDecryptionError',
    'TaskCancelledError',
    'TaskContext',
    'TaskEngine',
    'TaskErrorInfo',
    'TaskEvent',
    'TaskFilter',
    'TaskFunction',
    'TaskHandle',
    'TaskInterruptedError',
    'TaskLimit',
    'TaskLogger',
    'TaskManager',
    'TaskManagerClosedError',
    'TaskManagerOptions',
    'TaskMetrics',
    'TaskNotFoundError',
    'TaskObserver',
    'TaskOptions',
    'TaskPhase',
    'TaskQueueFullError',
    'TaskRecord',
    'TaskSamplerDelegate',
    'TaskSamplingResult',
    'TaskScheduler',
    'TaskStalledError',
    'TaskStatus',
    'TaskStore',
    'TaskStoreError',
    'TaskStoreUnavailableError',
    'TaskTimeoutError',
    'TaskflowError',
    'ThreadPoolOptions',
    'TraceMode',
    'filterObserver',
    'getTaskContext',
    'pinoObserver',
    'semconv',
    'spanEventObserver',
    'taskLog',
    'taskProgress',
    'taskSampler',
  ],
  './sqlite': ['SQLITE_SCHEMA_VERSION', 'SqliteStore', 'SqliteStoreOptions'],
  './redis': ['RedisConnection', 'RedisStore', 'RedisStoreOptions'],
  './bullmq': ['BullmqEngineOptions', 'TaskEngine', 'bullmqEngine'],
  './instrumentation': ['shutdownTelemetry'],
  './testing': ['TaskStoreCapabilities', 'TaskStoreHarness', 'TestFunctions', 'describeTaskStore'],
} as Record<string, string[]>;

describe('the published type surface', () => {
  it.each(Object.keys(PUBLIC))('%s exports exactly the listed names', (entry) => {
    expect(exportedNames(entry)).toEqual([...PUBLIC[entry]].sort());
  });

  it("TaskManager's public members are its documented API, no internals", () => {
    expect(publicMembers('.', 'TaskManager')).toEqual(
      [
        'add',
        'admin',
        'cancel',
        'drain',
        'get',
        'instanceId',
        'list',
        'logger',
        'metrics',
        'middleware',
        'queued',
        'repeat',
        'retry',
        'running',
        'shutdown',
        'start',
        'store',
        'subscribe',
        'task',
        'unfinished',
        'with',
        'work',
      ].sort(),
    );
  });

  it('MemoryStore publishes the TaskStore methods, not its synchronous internals', () => {
    expect(publicMembers('.', 'MemoryStore')).toEqual(
      ['claimKey', 'claimOrphans', 'close', 'durable', 'get', 'list', 'maxRecords', 'save'].sort(),
    );
  });
});
