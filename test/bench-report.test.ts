// The benchmark's report is made from bench/results.json and bench/goals.ts alone: the committed tables must be
// what the generator makes of the committed results, so a number in the docs cannot drift from a measurement.
// The growth part of `npm run bench` (issue 16) runs here with a small history, so it cannot rot between runs.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { GOALS, evaluate } from '../bench/goals.ts';
import { runGrowthBench } from '../bench/growth.ts';
import {
  BENCHMARKS_DOC,
  DURABLE_DOC,
  OTEL_DOC,
  RATIOS_SVG,
  RESULTS_MD,
  docsSections,
  ratiosChart,
  replaceSections,
  resultsMarkdown,
} from '../bench/report.ts';
import { GROWTH_READS, readResults } from '../bench/results.ts';

describe('the benchmark report (bench/report.ts)', () => {
  const results = readResults();

  it('docs/benchmarks.md, bench/results.md and bench/ratios.svg are what npm run bench:report makes of results.json', () => {
    const doc = readFileSync(BENCHMARKS_DOC, 'utf8');
    expect(doc).toContain('<!-- bench:goals -->');
    expect(doc).toContain('<!-- bench:growth -->');
    expect(replaceSections(doc, docsSections(results)[BENCHMARKS_DOC])).toBe(doc);
    expect(readFileSync(RESULTS_MD, 'utf8')).toBe(resultsMarkdown(results));
    expect(readFileSync(RATIOS_SVG, 'utf8')).toBe(ratiosChart(results));
  });

  it.each([
    ['docs/durable-stores.md', DURABLE_DOC, 'durable', 'SqliteStore (WAL, synchronous=FULL)'],
    ['docs/opentelemetry.md', OTEL_DOC, 'otel', 'no SDK registered (the default)'],
  ])('the measured table of %s is what npm run bench:report makes of results.json', (_, path, name, row) => {
    const doc = readFileSync(path, 'utf8');
    const sections = docsSections(results)[path];
    expect(Object.keys(sections)).toEqual([name]);
    expect(sections[name]).toContain(row);
    expect(replaceSections(doc, sections)).toBe(doc);
  });

  it('every part of npm run bench has its section in the committed results, with the load it ran under', () => {
    for (const part of ['http', 'durable', 'inprocess', 'otel', 'growth', 'bullmq'] as const)
      expect(results[part]?.load, part).toHaveLength(2);
  });

  it('the committed results measure every goal of bench/goals.ts', () => {
    const unmeasured = GOALS.filter((goal) => evaluate(goal, results) === undefined).map((goal) => goal.what);
    expect(unmeasured).toEqual([]);
  });

  it('a generated section replaces what was between its markers, and a missing marker is an error', () => {
    const text = 'before\n<!-- bench:goals -->\nstale\n<!-- /bench:goals -->\nafter\n';
    expect(replaceSections(text, { goals: 'fresh' })).toBe(
      'before\n<!-- bench:goals -->\nfresh\n<!-- /bench:goals -->\nafter\n',
    );
    expect(() => replaceSections('no markers', { goals: 'fresh' })).toThrow(/bench:goals/);
  });
});

describe('the growth benchmark (bench/growth.ts), with a small history', () => {
  it(
    'measures CPU per task and every admin read of SQLite and Redis, and the #16 goals read it',
    { timeout: 120_000 },
    async () => {
      const growth = await runGrowthBench({
        sizes: [0, 1_000],
        stores: ['sqlite', 'redis'],
        tasks: 50,
        readRepeats: 1,
      });
      expect(growth.rows.map((r) => `${r.store} ${r.size}`)).toEqual([
        'sqlite 0',
        'redis 0',
        'sqlite 1000',
        'redis 1000',
      ]);
      for (const row of growth.rows) {
        expect(row.cpuPerTaskUs, `${row.store} ${row.size}`).toBeGreaterThan(0);
        expect(row.idleLoopDelayMs, `${row.store} ${row.size}`).toBeGreaterThanOrEqual(0);
        for (const read of GROWTH_READS) {
          expect(row.reads[read].ms, `${row.store} ${row.size} ${read}`).toBeGreaterThan(0);
          expect(row.reads[read].maxLoopDelayMs, `${row.store} ${row.size} ${read}`).toBeGreaterThanOrEqual(0);
        }
      }
      const at = { growth: { ...growth, started: '', nodeVersion: '', machine: '' } };
      const growthGoals = GOALS.filter((goal) => goal.measure.kind.startsWith('growth'));
      expect(growthGoals).toHaveLength(10);
      for (const goal of growthGoals) expect(evaluate(goal, at)?.size, goal.what).toBe(1_000);
    },
  );
});
