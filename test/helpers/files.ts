import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onCleanup } from './server.js';

/** A fresh temporary directory, removed after the test. */
export function tempDir(prefix = 'taskflow-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function run(command: string, args: string[]): boolean {
  try {
    execFileSync(command, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Mount a tmpfs with `options` on `dir` (unmounted after the test); false when this process may not mount. */
export function mountTmpfs(dir: string, options: string): boolean {
  if (process.platform !== 'linux' || !run('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', dir])) return false;
  onCleanup(() => void run('umount', ['-l', dir]));
  return true;
}

/**
 * A directory this process really cannot write to, holding what `fill` wrote before: a tmpfs remounted
 * read-only (needs the right to mount, as root in a container), else one made immutable with `chattr +i`
 * (root, on ext4 and the like), else (not root) one with mode 0555. `how` says which; undefined if none worked.
 */
export function readOnlyDirectory(fill: (dir: string) => void = () => {}): { dir: string; how: string } | undefined {
  const dir = tempDir('taskflow-ro-');
  let how: string;
  if (mountTmpfs(dir, 'size=4m')) {
    fill(dir);
    if (!run('mount', ['-o', 'remount,ro', dir])) return undefined;
    how = 'a read-only tmpfs';
  } else if (process.getuid?.() === 0) {
    fill(dir);
    if (!run('chattr', ['+i', dir])) return undefined;
    onCleanup(() => void run('chattr', ['-i', dir]));
    how = 'an immutable directory';
  } else {
    fill(dir);
    chmodSync(dir, 0o555);
    onCleanup(() => chmodSync(dir, 0o755));
    how = 'a directory with mode 0555';
  }
  try {
    writeFileSync(join(dir, 'probe'), '');
    return undefined;
  } catch {
    return { dir, how };
  }
}
