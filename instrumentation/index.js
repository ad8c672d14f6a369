// The `--import` entry: `node --import koa-taskflow/instrumentation app.js`, or by path
// `node --import ./node_modules/koa-taskflow/instrumentation/index.js app.js`. It must be imported before
// the app so the HTTP, Koa and pino instrumentations can hook those modules. See README "OpenTelemetry".
export * from '../dist/instrumentation.js';
