// An MCP client that connects to Leash "by the book" with the official MCP TypeScript
// SDK (@modelcontextprotocol/sdk, pinned in package.json): `Client` over
// `StreamableHTTPClientTransport` with an in-memory `OAuthClientProvider`. From nothing
// but the URL of /mcp the SDK gets a 401, discovers Leash as the authorization server
// (RFC 9728, RFC 8414), registers itself (RFC 7591), sends the user to authorize (PKCE
// S256, RFC 8707 resource), exchanges the code and, when the short-lived access token is
// refused, refreshes it. The browser's part (sign-in and consent pages) is played with
// plain HTTP requests and a small HTML form reader; nothing listens at the redirect URI:
// the browser stops at the redirect and hands its query over, as the SDK's own example
// client does with its callback server. Prints one JSON report on stdout.
//
// Usage: node mcp_oauth_client.mjs MCP_URL USERNAME PASSWORD APPROVER_CREDENTIAL [CONSENT_TOOLS]
//   CONSENT_TOOLS: comma-separated tools to leave ticked on the consent page (default:
//   the page's own preselection). The access token should live about 2 seconds (the
//   driver, tests/e2e/oauth_node.rs, sets it), so that sleeping 3 seconds makes the SDK
//   refresh it.
//
// Report: {"tools", "call", "after_refresh", "refreshed", "authorizations_before_revoke",
// "task", "revoke_status", "after_revoke", "authorizations", "scope_requested",
// "resource_requested", "authorization_url_params", "offered", "consented", "state_ok",
// "iss_ok", "registered", "invalidated", "token_requests", "mcp_requests", "sdk_version"} (or "error" when something
// failed before the revocation).
import { readFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";

const [mcpUrl, username, password, approver, consentArg] = process.argv.slice(2);
if (!approver) {
  console.error("usage: node mcp_oauth_client.mjs MCP_URL USERNAME PASSWORD APPROVER_CREDENTIAL [CONSENT_TOOLS]");
  process.exit(2);
}
const consentTools = consentArg === undefined ? null : consentArg.split(",").filter((t) => t);
const base = new URL(mcpUrl).origin;
// Nothing listens here: the browser stops at the redirect and hands its query over.
const REDIRECT_URI = "http://127.0.0.1:8976/callback";

const report = {};
try {
  // The package's exports do not include package.json: read it from where npm put it.
  const sdkPackage = new URL("./node_modules/@modelcontextprotocol/sdk/package.json", import.meta.url);
  report.sdk_version = JSON.parse(readFileSync(sdkPackage, "utf8")).version;
} catch {
  report.sdk_version = null;
}

const describe = (err) => {
  if (err instanceof AggregateError) return err.errors.map(describe).join("; ");
  if (err instanceof Error) return `${err.constructor?.name ?? err.name}: ${err.message}`;
  return String(err);
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const within = (ms, promise, what) =>
  Promise.race([
    promise,
    sleep(ms).then(() => {
      throw new Error(`${what} took longer than ${ms} ms`);
    }),
  ]);

// ------------------------------------------------------------------ the SDK's storage

/** The SDK's OAuthClientProvider, in memory; remembers what the SDK did with it. */
class MemoryProvider {
  constructor() {
    this.client = undefined;
    this.stored = undefined;
    this.verifier = undefined;
    this.lastState = undefined;
    this.accessTokens = [];
    this.authorizationUrls = [];
    this.registrations = 0;
    this.invalidated = [];
    this.discovered = undefined;
  }

  get redirectUrl() {
    return REDIRECT_URI;
  }

  get clientMetadata() {
    return {
      redirect_uris: [REDIRECT_URI],
      client_name: "typescript-sdk-test",
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
      // The SDK replaces this with the scope Leash challenges with (WWW-Authenticate
      // scope, else the resource metadata's scopes_supported) before it registers and
      // authorizes.
      scope: "web.search",
    };
  }

  state() {
    this.lastState = randomBytes(16).toString("hex");
    return this.lastState;
  }

  clientInformation() {
    return this.client;
  }

  saveClientInformation(info) {
    if (!this.client || this.client.client_id !== info.client_id) this.registrations += 1;
    this.client = info;
  }

  tokens() {
    return this.stored;
  }

  saveTokens(tokens) {
    this.stored = tokens;
    this.accessTokens.push(tokens.access_token);
  }

  redirectToAuthorization(url) {
    // The SDK "opens the browser" here and then fails the request with an
    // UnauthorizedError; the application finishes with transport.finishAuth(code).
    this.authorizationUrls.push(url.href);
  }

  saveCodeVerifier(verifier) {
    this.verifier = verifier;
  }

  codeVerifier() {
    if (!this.verifier) throw new Error("no code verifier saved");
    return this.verifier;
  }

  invalidateCredentials(scope) {
    this.invalidated.push(scope);
    if (scope === "all" || scope === "client") this.client = undefined;
    if (scope === "all" || scope === "tokens") this.stored = undefined;
    if (scope === "all" || scope === "verifier") this.verifier = undefined;
  }

  saveDiscoveryState(state) {
    // Kept to check the issuer the redirect names (RFC 9207); not handed back, so the
    // SDK discovers afresh on every authorization.
    this.discovered = state;
  }
}

// ------------------------------------------------------------ what went over the wire

/** Every token request the SDK made (grant type, status, OAuth error) and every /mcp exchange. */
const tokenRequests = [];
const mcpRequests = [];
const loggingFetch = async (url, init) => {
  const response = await fetch(url, init);
  const target = new URL(url instanceof Request ? url.url : String(url));
  if (target.pathname === "/oauth/token") {
    const body = init?.body instanceof URLSearchParams ? init.body : new URLSearchParams(String(init?.body ?? ""));
    const seen = { grant_type: body.get("grant_type"), status: response.status, resource: body.get("resource") };
    if (!response.ok) seen.error = await response.clone().json().then((j) => j.error, () => null);
    tokenRequests.push(seen);
  } else if (target.pathname === "/mcp") {
    mcpRequests.push(`${init?.method ?? "GET"} ${response.status}`);
  }
  return response;
};

// ----------------------------------------------------------- a small HTML form reader

const ENTITIES = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", nbsp: "\u00a0" };
const unescape = (text) =>
  text.replace(/&(#x[0-9a-f]+|#[0-9]+|[a-z]+);/gi, (whole, entity) => {
    if (entity[0] === "#") {
      const code = entity[1] === "x" || entity[1] === "X" ? parseInt(entity.slice(2), 16) : parseInt(entity.slice(1), 10);
      return Number.isFinite(code) ? String.fromCodePoint(code) : whole;
    }
    return ENTITIES[entity.toLowerCase()] ?? whole;
  });

function attributesOf(text) {
  const out = {};
  const pattern = /([^\s"'=<>\/]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+)))?/g;
  for (const m of text.matchAll(pattern)) {
    out[m[1].toLowerCase()] = unescape(m[2] ?? m[3] ?? m[4] ?? "");
  }
  return out;
}

/** The controls of the form on `html` whose action's path is `action`. */
function formOn(html, action) {
  const tags = /<(\/?)([a-zA-Z]+)((?:[^>"']|"[^"]*"|'[^']*')*)>/g;
  let form = null;
  let select = null;
  let option = null;
  let textarea = null;
  let last = 0;
  for (const m of html.matchAll(tags)) {
    const between = html.slice(last, m.index);
    last = m.index + m[0].length;
    if (option) option.text += unescape(between);
    if (textarea) textarea.value += unescape(between);
    const closing = m[1] === "/";
    const name = m[2].toLowerCase();
    const attrs = closing ? {} : attributesOf(m[3]);
    if (name === "form") {
      if (closing) {
        if (form) return form;
        continue;
      }
      const path = new URL(attrs.action ?? "", base).pathname;
      if (path === action) form = { action: attrs.action, controls: [] };
      continue;
    }
    if (!form) continue;
    if (closing) {
      if (name === "select") select = null;
      if (name === "option" || name === "select") option = null;
      if (name === "textarea") textarea = null;
      continue;
    }
    option = name === "option" ? option : null;
    if (name === "input") {
      form.controls.push({
        tag: "input",
        type: (attrs.type ?? "text").toLowerCase(),
        name: attrs.name ?? "",
        value: attrs.value ?? (["checkbox", "radio"].includes((attrs.type ?? "").toLowerCase()) ? "on" : ""),
        checked: "checked" in attrs,
      });
    } else if (name === "select") {
      select = attrs.name ?? "";
    } else if (name === "option" && select !== null) {
      option = { tag: "option", type: "option", name: select, value: attrs.value, text: "", checked: "selected" in attrs };
      form.controls.push(option);
    } else if (name === "textarea") {
      textarea = { tag: "textarea", type: "textarea", name: attrs.name ?? "", value: "", checked: false };
      form.controls.push(textarea);
    } else if (name === "button") {
      form.controls.push({ tag: "button", type: (attrs.type ?? "submit").toLowerCase(), name: attrs.name ?? "", value: attrs.value ?? "", checked: false });
    }
  }
  if (form) return form;
  throw new Error(`no form posting to ${action} on the page: ${html.slice(0, 2000)}`);
}

/** What a browser submits for the form as it stands (no button pressed): [[name, value]]. */
function filled(form) {
  const out = [];
  const selects = new Map();
  for (const c of form.controls) {
    if (!c.name) continue;
    if (c.tag === "option") {
      const value = c.value ?? c.text.trim();
      const chosen = selects.get(c.name);
      if (!chosen || (c.checked && !chosen.checked)) selects.set(c.name, { value, checked: c.checked });
    } else if (c.tag === "button" || ["submit", "button", "reset", "image"].includes(c.type)) {
      continue;
    } else if (c.type === "checkbox" || c.type === "radio") {
      if (c.checked) out.push([c.name, c.value]);
    } else {
      out.push([c.name, c.value]);
    }
  }
  for (const [name, { value }] of selects) out.push([name, value]);
  return out;
}

const replaced = (fields, name, value) => [...fields.filter(([k]) => k !== name), [name, value]];

// ------------------------------------------------------------------ the user's browser

/** Follows no redirect; keeps cookies by hand. */
class Browser {
  constructor() {
    this.cookies = new Map();
  }

  remember(response) {
    for (const raw of response.headers.getSetCookie()) {
      const [pair, ...attributes] = raw.split(";");
      const at = pair.indexOf("=");
      const name = pair.slice(0, at).trim();
      const value = pair.slice(at + 1).trim().replace(/^"|"$/g, "");
      const attrs = attributes.map((a) => a.trim().toLowerCase().replace(/ /g, ""));
      const expired = attrs.some((a) => a === "max-age=0" || a.startsWith("max-age=-") || a.startsWith("expires=thu,01jan1970"));
      if (!value || expired) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }

  headers(extra = {}) {
    const headers = { ...extra };
    if (this.cookies.size) headers.cookie = [...this.cookies].map(([k, v]) => `${k}=${v}`).join("; ");
    return headers;
  }

  async get(url) {
    const response = await fetch(url, { redirect: "manual", headers: this.headers() });
    this.remember(response);
    return { status: response.status, location: response.headers.get("location"), text: await response.text() };
  }

  async postForm(url, fields) {
    const response = await fetch(url, {
      method: "POST",
      redirect: "manual",
      headers: this.headers({ "content-type": "application/x-www-form-urlencoded" }),
      body: new URLSearchParams(fields).toString(),
    });
    this.remember(response);
    return { status: response.status, location: response.headers.get("location"), text: await response.text() };
  }
}

/**
 * The user opens the authorization URL: signs in, consents, and the browser stops at the
 * redirect to the client. Returns the redirect's query parameters.
 */
async function authorizeInBrowser(browser, authorizationUrl, first) {
  const query = new URL(authorizationUrl).searchParams;
  if (first) {
    report.authorization_url_params = [...new Set(query.keys())].sort();
    report.scope_requested = query.get("scope");
    report.resource_requested = query.get("resource");
  }
  let response = await browser.get(authorizationUrl);
  if ([302, 303].includes(response.status) && (response.location ?? "").includes("/signin")) {
    const signinUrl = new URL(response.location, authorizationUrl).href;
    const page = await browser.get(signinUrl);
    if (page.status !== 200) throw new Error(`sign-in page: HTTP ${page.status} ${page.text.slice(0, 500)}`);
    const form = formOn(page.text, "/signin");
    const fields = replaced(replaced(filled(form), "username", username), "password", password);
    const signed = await browser.postForm(new URL(form.action, signinUrl).href, fields);
    if (signed.status !== 303) throw new Error(`sign-in: HTTP ${signed.status} ${signed.text.slice(0, 500)}`);
    response = await browser.get(new URL(signed.location, signinUrl).href);
  }
  if (response.status !== 200) {
    throw new Error(`consent page: HTTP ${response.status} ${response.location} ${response.text.slice(0, 500)}`);
  }
  const form = formOn(response.text, "/oauth/authorize");
  const offered = form.controls.filter((c) => c.name === "tools" && c.type === "checkbox").map((c) => [c.value, c.checked]);
  let fields = filled(form);
  if (consentTools !== null) {
    const unknown = consentTools.filter((t) => !offered.some(([v]) => v === t));
    if (unknown.length) throw new Error(`the consent page does not offer ${unknown}: ${JSON.stringify(offered)}`);
    fields = [...fields.filter(([k]) => k !== "tools"), ...consentTools.map((t) => ["tools", t])];
  }
  if (first) {
    report.offered = Object.fromEntries(offered);
    report.consented = fields.filter(([k]) => k === "tools").map(([, v]) => v).sort();
  }
  const answer = await browser.postForm(new URL(form.action, authorizationUrl).href, [...fields, ["decision", "allow"]]);
  if (answer.status !== 303) throw new Error(`consent: HTTP ${answer.status} ${answer.text.slice(0, 500)}`);
  if (!answer.location?.startsWith(REDIRECT_URI + "?")) throw new Error(`consent redirected elsewhere: ${answer.location}`);
  return new URL(answer.location).searchParams;
}

// ------------------------------------------------------------------------ the client

const textOf = (result) => (result.content ?? []).map((block) => block.text ?? "").join("\n");

async function call(client, name, args) {
  try {
    const result = await client.callTool({ name, arguments: args });
    return { is_error: Boolean(result.isError), text: textOf(result) };
  } catch (err) {
    // An UnauthorizedError, an HTTP error of the transport or a JSON-RPC error.
    return { error: describe(err), unauthorized: err instanceof UnauthorizedError };
  }
}

async function findTask() {
  const bearer = { authorization: "Bearer " + approver };
  const listed = await fetch(base + "/v1/tasks?state=active", { headers: bearer });
  if (!listed.ok) throw new Error(`GET /v1/tasks: HTTP ${listed.status}`);
  const tasks = (await listed.json()).tasks.filter((t) => String(t.agent ?? "").startsWith("client:"));
  if (tasks.length !== 1) throw new Error(`expected one active client task, found ${JSON.stringify(tasks)}`);
  const shown = await fetch(`${base}/v1/tasks/${tasks[0].task_id}`, { headers: bearer });
  if (!shown.ok) throw new Error(`GET /v1/tasks/{id}: HTTP ${shown.status}`);
  return shown.json();
}

const provider = new MemoryProvider();
const browser = new Browser();
const newClient = () => new Client({ name: "leash-typescript-sdk-test", version: "1.0.0" });
const newTransport = () => new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: provider, fetch: loggingFetch });

let revoked = false;
let client = null;
try {
  await within(120000, (async () => {
    // 1. Nothing but the URL: the SDK is refused, discovers, registers and "opens the
    // browser" at the authorization URL, then fails the connect with UnauthorizedError.
    let transport = newTransport();
    client = newClient();
    try {
      await client.connect(transport);
      throw new Error("connected without authorizing");
    } catch (err) {
      if (!(err instanceof UnauthorizedError)) throw err;
    }
    if (provider.authorizationUrls.length !== 1) {
      throw new Error(`expected one authorization URL, got ${JSON.stringify(provider.authorizationUrls)}`);
    }
    report.registered = provider.registrations;
    // 2. The user signs in and consents; the redirect's query is what the application's
    // callback would receive. The SDK leaves state and iss to the application.
    const params = await authorizeInBrowser(browser, provider.authorizationUrls[0], true);
    if (!params.get("code")) throw new Error(`authorization refused: ${params}`);
    report.state_ok = params.get("state") === provider.lastState;
    const issuer = provider.discovered?.authorizationServerMetadata?.issuer;
    report.iss_ok = issuer !== undefined && params.get("iss") === issuer;
    if (!report.state_ok || !report.iss_ok) {
      throw new Error(`the redirect's state or iss is wrong: ${params} (state ${provider.lastState}, issuer ${issuer})`);
    }
    await transport.finishAuth(params.get("code"));
    await client.close().catch(() => {});

    // 3. Connected for real.
    transport = newTransport();
    client = newClient();
    await client.connect(transport);
    const tools = await client.listTools();
    report.tools = tools.tools.map((t) => t.name).sort();
    report.call = await call(client, "web.search", { query: "through oauth" });
    const first = [...provider.accessTokens];

    // 4. The access token lives ~2 s: the next request is refused and the SDK refreshes.
    await sleep(3000);
    report.after_refresh = await call(client, "web.search", { query: "after refresh" });
    const latest = provider.accessTokens[provider.accessTokens.length - 1];
    report.refreshed =
      provider.accessTokens.length > first.length &&
      !first.includes(latest) &&
      provider.authorizationUrls.length === 1 &&
      tokenRequests.some((r) => r.grant_type === "refresh_token" && r.status === 200);
    report.authorizations_before_revoke = provider.authorizationUrls.length;

    // 5. An approver revokes the grant's task.
    const task = await findTask();
    report.task = Object.fromEntries(["task_id", "agent", "user", "state", "tools"].map((k) => [k, task[k] ?? null]));
    const revoke = await fetch(`${base}/v1/tasks/${task.task_id}/revoke`, {
      method: "POST",
      headers: { authorization: "Bearer " + approver, "content-type": "application/json" },
      body: JSON.stringify({ reason: "test" }),
    });
    report.revoke_status = revoke.status;
    revoked = true;

    // 6. The next call is refused, the refresh token is dead too, and the SDK can only
    // send the user to authorize again (which nobody does here): the call fails.
    report.after_revoke = await within(60000, call(client, "web.search", { query: "after revoke" }), "the call after the revocation");
  })(), "the whole exchange");
} catch (err) {
  if (revoked && !("after_revoke" in report)) report.after_revoke = { error: describe(err) };
  else if (!revoked) report.error = describe(err);
}
report.authorizations = provider.authorizationUrls.length;
report.invalidated = provider.invalidated;
report.token_requests = tokenRequests;
report.mcp_requests = mcpRequests;
await client?.close().catch(() => {});
console.log(JSON.stringify(report));
process.exit(0);
