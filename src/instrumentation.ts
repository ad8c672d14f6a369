// Placeholder entry until the OpenTelemetry bootstrap lands: `node --import koa-taskflow/instrumentation`
// must fail loudly rather than run an app that silently exports nothing.
throw new Error('koa-taskflow/instrumentation is not implemented yet in this version; register an OpenTelemetry SDK yourself for now');
