import { afterAll, beforeAll } from 'vitest';

// Every test file fails if anything produced an unhandled rejection or uncaught exception.
const problems: unknown[] = [];
const onProblem = (error: unknown): void => {
  problems.push(error);
};

beforeAll(() => {
  process.on('unhandledRejection', onProblem);
  process.on('uncaughtException', onProblem);
});

afterAll(() => {
  process.off('unhandledRejection', onProblem);
  process.off('uncaughtException', onProblem);
  if (problems.length > 0)
    throw new Error(`unhandled rejections/exceptions during the tests: ${problems.map(String).join('; ')}`);
});
