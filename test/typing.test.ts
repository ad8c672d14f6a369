import { describe, expect, expectTypeOf, it } from 'vitest';
import type { TaskHandle, TaskRecord } from 'koa-taskflow';
import { createManager, startApp } from './helpers/server.js';

// `npm test` runs `tsc --noEmit` over the tests first: every `@ts-expect-error` below must be a real
// compile error, or the type check fails ("Unused '@ts-expect-error' directive").

async function sendWelcome(email: string, attempts: number): Promise<void> {
  void email;
  void attempts;
}

describe('typed arguments', () => {
  it('accept the arguments of the function and reject anything else at compile time', async () => {
    const manager = createManager();
    const registered = manager.task(sendWelcome);
    expectTypeOf(registered).toEqualTypeOf(sendWelcome);

    manager.add(sendWelcome, 'a@b.c', 1);
    // @ts-expect-error wrong type for the first parameter
    expect(() => manager.add(sendWelcome, 42, 1)).not.toThrow();
    // @ts-expect-error missing argument
    expect(() => manager.add(sendWelcome, 'a@b.c')).not.toThrow();
    // @ts-expect-error one argument too many
    expect(() => manager.with({ retries: 1 }).add(sendWelcome, 'a@b.c', 1, true)).not.toThrow();
    await manager.drain();

    const { url } = await startApp((app) => {
      app.use(async (ctx) => {
        const id = ctx.tasks.addTask(sendWelcome, 'x@y.z', 2);
        expectTypeOf(id).toEqualTypeOf<string>();
        const handle = ctx.tasks.with({ tags: { tenant: 'acme' } }).afterResponse.schedule(sendWelcome, 'x@y.z', 3);
        expectTypeOf(handle).toEqualTypeOf<TaskHandle<[string, number]>>();
        expectTypeOf(handle.done).toEqualTypeOf<Promise<TaskRecord>>();
        // @ts-expect-error a number where a string is expected
        ctx.tasks.afterRoute.schedule(sendWelcome, 1, 2);
        // @ts-expect-error a string where a number is expected
        ctx.tasks.schedule(sendWelcome, 'x@y.z', 'three');
        // @ts-expect-error tag values must be strings
        ctx.tasks.with({ tags: { tenant: 7 } });
        ctx.status = 204;
      });
    });
    await fetch(url);
  });

  it('sync functions and functions without parameters are accepted', () => {
    const manager = createManager();
    expectTypeOf(manager.add(() => 1)).toEqualTypeOf<string>();
    manager.add((n: number) => n * 2, 21);
  });
});
