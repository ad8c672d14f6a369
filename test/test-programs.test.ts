// `npm test` installs the system programs it uses (scripts/test-programs.sh). Where it cannot (not root, or
// no apt-get), it must stop at once with one line naming what to install, rather than let tests fail later
// with `spawn redis-server ENOENT`.
import { execFile } from 'node:child_process';
import { symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { tempDir } from './helpers/files.js';

const run = promisify(execFile);

/** A PATH holding only `bash` and `id`: none of the programs, no apt-get. */
function barePath(): string {
  const bin = tempDir('taskflow-bin-');
  for (const tool of ['bash', 'id']) symlinkSync(`/usr/bin/${tool}`, join(bin, tool));
  return bin;
}

describe('scripts/test-programs.sh', () => {
  it('names every missing program in one line and stops when it cannot install them', async () => {
    const failure = await run('/usr/bin/bash', ['scripts/test-programs.sh'], { env: { PATH: barePath() } }).then(
      () => undefined,
      (error: { code: number; stdout: string; stderr: string }) => error,
    );
    expect(failure).toBeDefined();
    expect(failure!.code).toBe(1);
    expect(failure!.stdout).toBe('');
    expect(failure!.stderr.trim().split('\n')).toEqual([
      'npm test needs these system programs: install redis-server chromium jq (Debian: sudo apt-get install redis-server chromium jq)',
    ]);
  });

  it('does nothing when every program is there', async () => {
    const { stdout, stderr } = await run('/usr/bin/bash', ['scripts/test-programs.sh']);
    expect(stdout + stderr).toBe('');
  });
});
