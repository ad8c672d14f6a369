// Every error the library throws carries a stable code, and docs/errors.md lists every code there is.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import * as taskflow from 'koa-taskflow';

/** Every `ERR_…` string literal in src/, less Node's own codes that the library only compares against. */
function codesInSource(dir = 'src'): Set<string> {
  const codes = new Set<string>();
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) for (const code of codesInSource(path)) codes.add(code);
    else if (entry.name.endsWith('.ts'))
      for (const [, code] of readFileSync(path, 'utf8').matchAll(/'(ERR_[A-Z_]+)'/g)) codes.add(code);
  }
  for (const nodeCode of ['ERR_MODULE_NOT_FOUND']) codes.delete(nodeCode);
  return codes;
}

describe('error codes', () => {
  it('docs/errors.md lists every code the library uses', () => {
    const table = readFileSync('docs/errors.md', 'utf8');
    const codes = [...codesInSource()];
    expect(codes.length).toBeGreaterThan(15);
    for (const code of codes) expect(table, code).toContain(`\`${code}\``);
  });

  it('every exported error class has its own code', () => {
    const made = [
      new taskflow.TaskTimeoutError(10),
      new taskflow.TaskInterruptedError(),
      new taskflow.TaskCancelledError('shutdown'),
      new taskflow.TaskManagerClosedError(),
      new taskflow.TaskNotFoundError('x'),
      new taskflow.TaskArgsDecryptionError('x', 'is unreadable'),
      new taskflow.TaskStalledError(2, 1),
      new taskflow.TaskQueueFullError(10),
      new taskflow.TaskStoreUnavailableError('down'),
      new taskflow.TaskStoreError('damaged', 'ERR_STORE_UNREADABLE'),
    ];
    for (const error of made) expect(error).toBeInstanceOf(taskflow.TaskflowError);
    expect(new Set(made.map((e) => e.code)).size).toBe(made.length);
    expect(new taskflow.TaskflowError('x', { code: 'ERR_TASK_NOT_RETRYABLE' }).code).toBe('ERR_TASK_NOT_RETRYABLE');
  });

  it('a name registered twice is ERR_TASK_NAME_TAKEN', () => {
    const manager = new taskflow.TaskManager();
    manager.task(async function send() {});
    expect(() => manager.task(async () => {}, { name: 'send' })).toThrow(
      expect.objectContaining({ code: 'ERR_TASK_NAME_TAKEN' }),
    );
  });
});
