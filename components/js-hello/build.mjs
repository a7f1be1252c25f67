// Builds app.js into a `wasi:http/proxy` component (weft's `http-service` world).
// Usage: node build.mjs [output.wasm]
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? resolve(here, '../../target/components/js/js-hello.wasm'));
const started = Date.now();
console.error(`componentize-js: building ${out} ...`);
const { component } = await componentize({
  sourcePath: resolve(here, 'app.js'),
  witPath: resolve(here, '../../wit'),
  worldName: 'http-service',
  // No outgoing fetch and no fetch-event: the component exports incoming-handler itself.
  disableFeatures: ['http', 'fetch-event'],
});
await mkdir(dirname(out), { recursive: true });
await writeFile(out, component);
console.error(`componentize-js: wrote ${component.length} bytes in ${Date.now() - started} ms`);
