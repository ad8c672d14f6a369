// The package as a user gets it: `npm pack` (which runs `prepare`, the build), the tarball installed into a
// throw-away app outside this repository, every entry point imported from there, and the README's quick
// start run against it. This is what catches a file missing from `files` or a broken `exports` map: inside
// the repo, imports of `koa-taskflow` resolve to the working tree and would hide both.
import { execFile } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { startNode } from './helpers/child.js';
import { startOtlpReceiver } from './helpers/otlp-receiver.js';
import { waitFor } from './helpers/server.js';
import { tempDir } from './helpers/files.js';

const run = promisify(execFile);
// What a user installs beside the package: its peers, the optional ones of every entry point included.
const PEERS = [
  'koa',
  'pino',
  '@opentelemetry/api',
  'ioredis',
  '@opentelemetry/sdk-node',
  '@opentelemetry/exporter-trace-otlp-http',
  '@opentelemetry/instrumentation-http',
  '@opentelemetry/instrumentation-koa',
  '@opentelemetry/instrumentation-pino',
];
const root = process.cwd();
const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { name: string; version: string };

/** The version of a dependency installed here, so the throw-away app installs the same one (from npm's cache). */
const installed = (name: string): string =>
  `${name}@${(JSON.parse(readFileSync(join(root, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version}`;

describe('the packed package', () => {
  it(
    'installs from its tarball into a fresh app, imports from every entry point and runs the quick start',
    { timeout: 300_000 },
    async () => {
      const packDir = tempDir('taskflow-pack-');
      // --ignore-scripts: `npm test` has just built dist/ (pretest); `prepare` would rebuild it from empty while
      // other test files run the built package. `npm ci`/`npm install` run `prepare` (CI starts with it).
      const { stdout } = await run('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', packDir], {
        cwd: root,
        maxBuffer: 16 * 1024 * 1024,
      });
      const [packed] = JSON.parse(stdout.slice(stdout.indexOf('['))) as [
        { filename: string; files: { path: string }[] },
      ];
      const files = packed.files.map((f) => f.path);
      // Exactly what the five entry points need, and none of the sources, tests or benchmarks.
      for (const file of [
        'package.json',
        'README.md',
        'dist/index.js',
        'dist/index.d.ts',
        'dist/stores/sqlite.js',
        'dist/stores/redis.js',
        'dist/instrumentation.js',
        'dist/testing.js',
        'instrumentation/index.js',
      ]) {
        expect(files).toContain(file);
      }
      expect(files.filter((f) => /^(src|test|bench|examples|scripts|\.ci)\//.test(f))).toEqual([]);

      const app = tempDir('taskflow-app-');
      writeFileSync(
        join(app, 'package.json'),
        JSON.stringify({ name: 'throwaway-app', private: true, type: 'module' }),
      );
      await run(
        'npm',
        [
          'install',
          '--prefer-offline',
          '--no-audit',
          '--no-fund',
          '--ignore-scripts',
          join(packDir, packed.filename),
          ...PEERS.map(installed),
        ],
        { cwd: app, maxBuffer: 16 * 1024 * 1024 },
      );

      const probe = join(app, 'probe.js');
      writeFileSync(
        probe,
        `const entries = {};
for (const entry of ['${pkg.name}', '${pkg.name}/sqlite', '${pkg.name}/redis', '${pkg.name}/instrumentation', '${pkg.name}/testing']) {
  entries[entry] = Object.keys(await import(entry)).sort();
}
console.log(JSON.stringify(entries));
`,
      );
      const { stdout: exported } = await run(process.execPath, [probe], {
        cwd: app,
        env: { ...process.env, OTEL_SDK_DISABLED: 'true' },
      });
      const entries = JSON.parse(exported.trim().split('\n').at(-1)!) as Record<string, string[]>;
      expect(entries[pkg.name]).toEqual(
        expect.arrayContaining(['TaskManager', 'taskLog', 'getTaskContext', 'MemoryStore', 'TaskflowError']),
      );
      expect(entries[`${pkg.name}/sqlite`]).toContain('SqliteStore');
      expect(entries[`${pkg.name}/redis`]).toContain('RedisStore');
      expect(entries[`${pkg.name}/instrumentation`]).toContain('shutdownTelemetry');
      expect(entries[`${pkg.name}/testing`]).toEqual(['describeTaskStore']);

      // The quick start, byte for byte as the README shows it, against the installed package: plain, then
      // traced through the installed instrumentation entry to a real OTLP/HTTP receiver.
      copyFileSync(join(root, 'examples/quickstart.js'), join(app, 'quickstart.js'));
      const runQuickstart = async (
        env: Record<string, string>,
        nodeArgs: string[],
        ended: (taskId: string) => boolean,
      ): Promise<string> => {
        const quickstart = startNode(join(app, 'quickstart.js'), [], { PORT: '0', ...env }, { nodeArgs, cwd: app });
        const url = (await quickstart.waitForLine(/^listening on /)).replace('listening on ', '');
        const { taskId } = (await (await fetch(url)).json()) as { taskId: string };
        const log = JSON.parse(await quickstart.waitForLine(/"msg":"sending welcome mail"/)) as Record<string, unknown>;
        expect(log).toMatchObject({ task: { id: taskId, name: 'sendWelcome', attempt: 1 } });
        await waitFor(() => ended(taskId), 10_000, 'the task to end');
        quickstart.process.kill('SIGTERM');
        expect(await quickstart.exited).toBe(0);
        return taskId;
      };
      await runQuickstart({}, [], () => true);

      const receiver = await startOtlpReceiver();
      const traced = await runQuickstart(
        {
          OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
          OTEL_SERVICE_NAME: 'packed-quickstart',
          OTEL_BSP_SCHEDULE_DELAY: '50',
          OTEL_METRICS_EXPORTER: 'none',
        },
        ['--import', `${pkg.name}/instrumentation`],
        (taskId) => receiver.spans.some((s) => s.attributes['task.id'] === taskId),
      );
      const span = receiver.spans.find((s) => s.attributes['task.id'] === traced);
      expect(span).toMatchObject({ name: 'task sendWelcome', service: 'packed-quickstart', status: { code: 1 } });
      expect(span!.links).toHaveLength(1);
      // Removed here, within the test's time: thousands of files take a loaded machine longer than a hook may.
      await rm(app, { recursive: true, force: true });
    },
  );

  it('koa-taskflow/sqlite on a Node without node:sqlite says which Node it needs', async () => {
    // --no-experimental-sqlite takes node:sqlite away from this Node 24, as an older Node lacks it.
    const probe = `import('${pkg.name}/sqlite').then(() => console.log('loaded'), (e) => console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message })))`;
    const { stdout } = await run(process.execPath, ['--no-experimental-sqlite', '--input-type=module', '-e', probe]);
    const error = JSON.parse(stdout) as { name: string; code: string; message: string };
    expect(error).toMatchObject({ name: 'TaskflowError', code: 'ERR_NODE_SQLITE_UNAVAILABLE' });
    expect(error.message).toContain('needs Node.js >= 22.15');
    expect(error.message).toContain(process.version);
  });
});
