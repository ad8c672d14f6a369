import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { startNode } from './helpers/child.js';

describe('examples/quickstart.js', () => {
  it('is exactly the quick start shown in the README', () => {
    const readme = readFileSync('README.md', 'utf8');
    const example = readFileSync('examples/quickstart.js', 'utf8');
    expect(readme).toContain('```js\n' + example + '```');
  });

  it('answers with a task id, runs the task after the response, and shuts down on SIGTERM', async () => {
    const app = startNode('examples/quickstart.js', [], { PORT: '0' });
    const url = (await app.waitForLine(/^listening on /)).replace('listening on ', '');
    const response = await fetch(url);
    const { taskId } = (await response.json()) as { taskId: string };
    expect(taskId).toMatch(/^[0-9a-f-]{36}$/);
    const log = JSON.parse(await app.waitForLine(/"msg":"sending welcome mail"/)) as Record<string, unknown>;
    expect(log).toMatchObject({ email: 'a@b.c', task: { id: taskId, name: 'sendWelcome', attempt: 1 }, tags: { tenant: 'acme' } });
    await app.waitForLine(/"msg":"task sendWelcome success"/);
    app.process.kill('SIGTERM');
    expect(await app.exited).toBe(0);
  });
});
