// Type-aware linting for the TypeScript that tsconfig.json checks (src, test, bench); plain rules for
// the JavaScript examples and fixtures, which users copy as they are.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.tmp/**', 'coverage/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      globals: { ...globals.node },
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // Task functions, Koa middleware and TaskStore methods implement Promise-returning interfaces: `async`
      // keeps a throw a rejection (what callers handle) even where the body has nothing to await.
      '@typescript-eslint/require-await': 'off',
      // `_name` is a parameter the signature needs (a task's typed arguments, an interface) but the body does
      // not read; a key destructured next to `...rest` is how a field is left out of a copy.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', ignoreRestSiblings: true }],
      // An AbortSignal's `reason` (typed any) is passed on as abort() was given it, as fetch does; this is
      // only-throw-error's default for `throw`.
      '@typescript-eslint/prefer-promise-reject-errors': [
        'error',
        { allowThrowingAny: true, allowThrowingUnknown: true },
      ],
    },
  },
  {
    files: ['test/**/*.ts'],
    rules: {
      // vitest types its asymmetric matchers (expect.stringMatching, expect.any …) as `any`, so that they fit
      // anywhere in an expected value; every assignment of one would be reported.
      '@typescript-eslint/no-unsafe-assignment': 'off',
    },
  },
  {
    files: ['test/demo.test.ts'],
    // The demo's live status line is drawn with ANSI escapes: these regular expressions match ESC on purpose.
    rules: { 'no-control-regex': 'off' },
  },
  { files: ['**/*.js'], ...tseslint.configs.disableTypeChecked },
);
