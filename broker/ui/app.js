// The approver page. Everything agent-supplied (purpose, arguments, names) is written
// with textContent, never as HTML. A person signs in at /signin (session cookie; every
// change carries the session's CSRF token in X-Leash-CSRF); automation may paste an
// approver credential instead, which lives in sessionStorage only.
"use strict";

const KEY = "leash.approver";
const $ = (id) => document.getElementById(id);
let credential = sessionStorage.getItem(KEY);
let session = null; // {user, approver, csrf} when signed in with a session cookie
let tasks = [];
let refreshTimer = null;
let stream = null;

function signedIn() { return Boolean(credential || (session && session.approver)); }

function authHeaders() {
  if (credential) return { Authorization: "Bearer " + credential };
  if (session) return { "X-Leash-CSRF": session.csrf };
  return {};
}

async function api(method, path, body) {
  const headers = authHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = data.error ? data.error.message : response.statusText;
    const err = new Error(message);
    err.status = response.status;
    throw err;
  }
  return data;
}

function showError(message) { $("error").textContent = message || ""; }

function ago(iso) {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return seconds + " s ago";
  if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
  return Math.round(seconds / 3600) + " h ago";
}

function left(iso) {
  const seconds = Math.round((Date.parse(iso) - Date.now()) / 1000);
  if (seconds <= 0) return "ending";
  const m = Math.floor(seconds / 60), s = seconds % 60;
  return (m > 0 ? m + " min " : "") + s + " s";
}

// Bidirectional controls in agent text could reorder what an approver reads (a purpose
// that seems to name other tools): they are shown as U+FFFD, never applied.
const BIDI = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/g;
function clean(text) { return String(text).replace(BIDI, "\uFFFD"); }

function fill(node, selector, text) { node.querySelector(selector).textContent = clean(text); }

function renderApprovals(approvals) {
  const list = $("pending");
  // A refresh (any event) rebuilds the cards: keep the notes an approver is typing.
  const notes = new Map();
  for (const card of list.querySelectorAll("[data-approval-id]")) {
    notes.set(card.dataset.approvalId, card.querySelector(".note").value);
  }
  list.replaceChildren();
  for (const a of approvals) {
    const node = $("approval-template").content.firstElementChild.cloneNode(true);
    node.dataset.approvalId = a.approval_id;
    node.dataset.testid = "approval";
    node.querySelector(".note").value = notes.get(a.approval_id) || "";
    const kinds = { call: "call", renewal: "renewal", issuance: "new task", definition: "changed tool definition" };
    fill(node, ".kind", kinds[a.kind] || a.kind);
    fill(node, ".agent", a.user ? a.user + " via " + a.agent : a.agent);
    fill(node, ".ago", ago(a.requested_at));
    fill(node, ".purpose", a.purpose);
    fill(node, ".tools", "Tools: " + a.tools.join(", "));
    fill(node, ".expires", "Counts as denied in " + left(a.expires_at) + " if nobody decides.");
    if (a.call) {
      node.querySelector(".call").hidden = false;
      fill(node, ".call-tool", a.call.tool);
      fill(node, ".call-args", JSON.stringify(a.call.arguments, null, 2));
    }
    const decide = (verb) => async () => {
      node.querySelectorAll("button").forEach((b) => (b.disabled = true));
      try {
        await api("POST", "/v1/approvals/" + a.approval_id + "/" + verb, { note: node.querySelector(".note").value || undefined });
        showError("");
      } catch (err) { showError(err.message); }
      refresh();
    };
    node.querySelector(".approve").addEventListener("click", decide("approve"));
    node.querySelector(".deny").addEventListener("click", decide("deny"));
    list.append(node);
  }
  $("pending-count").textContent = approvals.length;
  $("pending-empty").hidden = approvals.length > 0;
}

function renderTasks() {
  const list = $("active");
  list.replaceChildren();
  for (const t of tasks) {
    const node = $("task-template").content.firstElementChild.cloneNode(true);
    node.dataset.taskId = t.task_id;
    fill(node, ".agent", t.user ? t.user + " via " + t.agent : t.agent);
    fill(node, ".task-id", t.task_id);
    fill(node, ".purpose", t.purpose);
    fill(node, ".tools", "Tools: " + t.tools.join(", "));
    fill(node, ".left", left(t.expires_at));
    fill(node, ".calls", t.calls + (t.max_calls ? " of " + t.max_calls : ""));
    node.querySelector(".open-timeline").href = "#task/" + t.task_id;
    node.querySelector(".revoke-task").addEventListener("click", async (event) => {
      event.target.disabled = true;
      try { await api("POST", "/v1/tasks/" + t.task_id + "/revoke", { reason: "revoked from the approver page" }); showError(""); }
      catch (err) { showError(err.message); }
      refresh();
    });
    // An MCP client's task belongs to a person's grant, not to an agent credential:
    // revoking the task is the way to end it.
    if (t.user) node.querySelector(".revoke-agent").hidden = true;
    node.querySelector(".revoke-agent").addEventListener("click", async (event) => {
      if (!confirm("Revoke every task and credential of agent " + t.agent + "?")) return;
      event.target.disabled = true;
      try { await api("POST", "/v1/agents/" + encodeURIComponent(t.agent) + "/revoke", { reason: "revoked from the approver page" }); showError(""); }
      catch (err) { showError(err.message); }
      refresh();
    });
    list.append(node);
  }
  $("active-count").textContent = tasks.length;
  $("active-empty").hidden = tasks.length > 0;
}

async function refresh() {
  try {
    const [approvals, active] = await Promise.all([
      api("GET", "/v1/approvals?state=pending"),
      api("GET", "/v1/tasks?state=active"),
    ]);
    tasks = active.tasks;
    renderApprovals(approvals.approvals);
    renderTasks();
  } catch (err) {
    if (err.status === 401 || err.status === 403) return signOut("Signed out: " + err.message);
    showError(err.message);
  }
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, 100);
}

// Server-Sent Events over fetch, so the credential travels in a header, not the URL.
async function listen() {
  let delay = 1000;
  while (signedIn()) {
    stream = new AbortController();
    try {
      const response = await fetch("/v1/events", { headers: authHeaders(), signal: stream.signal });
      if (!response.ok) throw new Error("event stream refused: " + response.status);
      $("live").textContent = "live";
      $("live").classList.add("on");
      delay = 1000;
      scheduleRefresh();
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const name = (/^event: (.*)$/m.exec(frame) || [])[1];
          if (!name) continue;
          const data = (/^data: (.*)$/m.exec(frame) || [])[1];
          let taskId = null;
          try { taskId = data ? JSON.parse(data).task_id : null; } catch (err) { taskId = null; }
          if (name === "timeline.appended") {
            // A task's new audit rows: only an open timeline (and the calls shown) care.
            if (openTask && taskId === openTask.id) scheduleTimeline();
            continue;
          }
          if (openTask && (taskId === openTask.id || name === "resync")) scheduleTimeline();
          scheduleRefresh();
        }
      }
    } catch (err) {
      if (!signedIn()) return;
    }
    $("live").textContent = "reconnecting…";
    $("live").classList.remove("on");
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

function showApp() {
  $("signin").hidden = true;
  $("session").hidden = false;
  $("who").textContent = session ? session.user : "";
  route();
  refresh();
  search(false);
  listen();
}

// ---- Every task: search, a page at a time ----

let searchNext = null;

function searchQuery() {
  const form = $("search");
  const params = new URLSearchParams();
  for (const name of ["agent", "user", "tool", "state"]) {
    const value = form.elements[name].value.trim();
    if (value && value !== "all") params.set(name, value);
  }
  for (const name of ["since", "until"]) {
    const value = form.elements[name].value;
    if (value) params.set(name, new Date(value).toISOString());
  }
  params.set("limit", "25");
  return params;
}

async function search(more) {
  const params = searchQuery();
  if (more && searchNext) params.set("after", searchNext);
  try {
    const found = await api("GET", "/v1/tasks?" + params.toString());
    const body = $("found").querySelector("tbody");
    if (!more) body.replaceChildren();
    for (const t of found.tasks) {
      const row = document.createElement("tr");
      row.dataset.listedTask = t.task_id;
      const cell = (text) => { const td = document.createElement("td"); td.textContent = clean(text); row.append(td); return td; };
      cell(new Date(t.created_at).toLocaleString());
      const who = cell("");
      const link = document.createElement("a");
      link.href = "#task/" + t.task_id;
      link.textContent = clean(t.user ? t.user + " via " + t.agent : t.agent);
      who.append(link);
      cell(t.purpose);
      cell(t.state.replace("_", " "));
      cell(String(t.calls));
      body.append(row);
    }
    searchNext = found.next || null;
    $("more").hidden = !searchNext;
    $("found-empty").hidden = body.children.length > 0;
    $("found").hidden = body.children.length === 0;
  } catch (err) {
    showError(err.message);
  }
}

// ---- One task: its live timeline ----

let openTask = null; // {id, after, entries}
let timelineTimer = null;

function route() {
  const match = /^#task\/(tsk_[0-9a-f]{32})$/.exec(location.hash);
  const evidence = /^#evidence\/(tsk_[0-9a-f]{32})$/.exec(location.hash);
  $("app").hidden = Boolean(match || evidence);
  $("task-view").hidden = !match;
  $("evidence-view").hidden = !evidence;
  if (match) {
    if (!openTask || openTask.id !== match[1]) openTimeline(match[1]);
    return;
  }
  openTask = null;
  if (evidence) showEvidence(evidence[1]);
}

async function openTimeline(id) {
  openTask = { id, after: 0, entries: 0 };
  $("timeline").replaceChildren();
  $("timeline-count").textContent = "0";
  $("task-error").textContent = "";
  await loadTimeline();
  $("task-title").focus();
}

function scheduleTimeline() {
  clearTimeout(timelineTimer);
  timelineTimer = setTimeout(loadTimeline, 50);
}

// One load at a time per task; news during a load makes it go round once more.
async function loadTimeline() {
  if (!openTask) return;
  const task = openTask;
  if (task.loading) { task.again = true; return; }
  task.loading = true;
  try {
    do {
      task.again = false;
      for (;;) {
        const page = await api("GET", "/v1/tasks/" + task.id + "/timeline?after=" + task.after);
        if (openTask !== task) return;
        renderTaskHead(page.task);
        const fresh = page.entries.filter((entry) => entry.seq > task.after);
        for (const entry of fresh) $("timeline").append(renderEntry(entry));
        task.entries += fresh.length;
        task.after = Math.max(task.after, page.next);
        $("timeline-count").textContent = String(task.entries);
        if (fresh.length === 0) break;
      }
    } while (task.again && openTask === task);
  } catch (err) {
    if (err.status === 401) return signOut("Signed out: " + err.message);
    $("task-error").textContent = err.message;
  } finally {
    task.loading = false;
  }
}

function renderTaskHead(t) {
  $("task-title").textContent = clean(t.user ? t.user + " via " + t.agent : t.agent);
  $("task-state").textContent = t.state.replace("_", " ");
  $("task-purpose").textContent = clean(t.purpose);
  $("task-id").textContent = t.task_id;
  $("task-tools").textContent = clean(t.tools.join(", "));
  $("task-window").textContent = new Date(t.created_at).toLocaleString() + " – " + new Date(t.expires_at).toLocaleString();
  $("task-calls").textContent = t.calls + (t.max_calls ? " of " + t.max_calls : "");
  $("task-revoke").hidden = !(t.state === "active" || t.state === "pending_approval");
}

const KINDS = {
  "task.requested": "asked", "task.issued": "issued", "approval.requested": "approval asked",
  "approval.approved": "approved", "approval.denied": "denied", "approval.expired": "approval expired",
  "call.allowed": "call", "call.denied": "call refused", "call.held": "call held",
  "task.renewed": "renewed", "task.completed": "completed", "task.revoked": "revoked",
  "task.expired": "expired", "task.denied": "denied", "token.revoked": "token revoked",
};

function describe(entry) {
  const d = entry.detail || {};
  switch (entry.kind) {
    case "task.requested":
    case "task.issued":
      return "“" + d.purpose + "” — tools " + (d.tools || []).join(", ") + (d.ttl_seconds ? " for " + d.ttl_seconds + " s" : "");
    case "approval.requested":
      return (d.kind === "call" ? "per-call approval for " + d.tool : d.kind) + " (" + d.approval_id + ")";
    case "approval.approved":
    case "approval.denied":
      return d.kind + (d.note ? " — note: “" + d.note + "”" : "") + (d.revocation_id ? " — token " + d.revocation_id.slice(0, 16) + "…" : "");
    case "call.allowed":
    case "call.denied":
    case "call.held": {
      let text = d.tool + (d.prompt ? " (prompt)" : "") + (d.uri ? " " + d.uri : "");
      if (entry.kind === "call.denied") text += " — " + d.status + " " + d.code + (d.reason ? ": " + d.reason : "");
      if (entry.kind === "call.held") text += " — waiting for approval " + d.approval_id;
      text += d.upstream ? " — upstream: " + d.upstream : (entry.kind === "call.allowed" ? "" : " — not forwarded");
      if (d.round) text += " — round " + d.round;
      if (d.chain) text += " — derived token " + d.token.slice(0, 16) + "… (" + d.chain.length + " blocks)";
      return text;
    }
    case "task.renewed":
      return "until " + new Date(d.expires_at).toLocaleString() + " — token " + String(d.revocation_id).slice(0, 16) + "…";
    case "token.revoked":
      return "token " + String(d.revocation_id).slice(0, 16) + "…";
    default:
      return d.reason ? d.reason : "";
  }
}

function renderEntry(entry) {
  const node = $("entry-template").content.firstElementChild.cloneNode(true);
  node.dataset.seq = entry.seq;
  node.dataset.kind = entry.kind;
  node.classList.add(entry.kind.replace(".", "-"));
  const when = node.querySelector(".when");
  when.dateTime = entry.at;
  when.textContent = new Date(entry.at).toLocaleTimeString();
  fill(node, ".what", KINDS[entry.kind] || entry.kind);
  fill(node, ".who", entry.actor);
  fill(node, ".summary", describe(entry));
  const d = entry.detail || {};
  if (d.arguments !== undefined) {
    const args = node.querySelector(".args");
    args.hidden = false;
    args.textContent = clean(JSON.stringify(d.arguments, null, 2));
  } else if (d.arguments_omitted_bytes) {
    fill(node, ".summary", describe(entry) + " — arguments not kept (" + d.arguments_omitted_bytes + " bytes)");
  }
  return node;
}

// ---- Signed evidence, printable ----

let evidenceUrl = null;

async function showEvidence(id) {
  try {
    const doc = await api("GET", "/v1/tasks/" + id + "/evidence");
    const e = doc.evidence;
    const facts = $("evidence-facts");
    facts.replaceChildren();
    const fact = (name, value) => {
      const dt = document.createElement("dt"); dt.textContent = name;
      const dd = document.createElement("dd"); dd.textContent = clean(value);
      facts.append(dt, dd);
    };
    $("evidence-title").textContent = "Evidence of " + e.task.task_id;
    fact("Agent", e.task.user ? e.task.user + " via " + e.task.agent : e.task.agent);
    fact("Purpose", e.task.purpose);
    fact("Tools", e.task.tools.join(", "));
    fact("State", e.task.state + (e.task.end_reason ? " — " + e.task.end_reason : ""));
    fact("Window", e.task.created_at + " – " + (e.task.ended_at || e.task.expires_at));
    fact("Issuance", e.issuance.by === "approver" ? e.issuance.decision + " by " + e.issuance.approver + (e.issuance.note ? " — “" + e.issuance.note + "”" : "") : "by " + e.issuance.by);
    fact("Calls", e.summary.calls_allowed + " allowed, " + e.summary.calls_denied + " refused, " + e.summary.calls_held + " held");
    fact("Policy", e.policy.sha256);
    fact("Audit rows", e.audit.count + (e.audit.count ? " (seq " + e.audit.first_seq + " to " + e.audit.last_seq + ")" : ""));
    fact("Checkpoint", e.checkpoint ? "seq " + e.checkpoint.seq + ", signed " + e.checkpoint.at + " by root key " + e.checkpoint.kid : "none yet");
    fact("Signature", "ed25519, root key " + doc.signature.kid + ": " + doc.signature.value);
    const tokens = $("evidence-tokens");
    tokens.replaceChildren();
    for (const t of e.tokens) {
      const li = document.createElement("li");
      li.textContent = clean(t.revocation_id + " — " + t.source + (t.blocks ? " — blocks: " + t.blocks.join(" | ") : ""));
      tokens.append(li);
    }
    const rows = $("evidence-rows");
    rows.replaceChildren();
    for (const r of e.audit.rows) {
      const tr = document.createElement("tr");
      for (const text of [String(r.seq), new Date(r.at_ms).toISOString(), r.kind, r.actor, r.detail, r.hash.slice(0, 16) + "…"]) {
        const td = document.createElement("td"); td.textContent = clean(text); tr.append(td);
      }
      rows.append(tr);
    }
    if (evidenceUrl) URL.revokeObjectURL(evidenceUrl);
    evidenceUrl = URL.createObjectURL(new Blob([JSON.stringify(doc, null, 2)], { type: "application/json" }));
    $("evidence-download").href = evidenceUrl;
    $("evidence-download").download = "evidence-" + e.task.task_id + ".json";
    $("evidence-title").focus();
  } catch (err) {
    $("app").hidden = false;
    $("evidence-view").hidden = true;
    showError(err.message);
  }
}

async function signOut(message) {
  if (session && !credential) {
    // Ends the session on the server too (a plain form post would do the same).
    const body = new URLSearchParams({ csrf: session.csrf });
    await fetch("/signout", { method: "POST", body, redirect: "manual" }).catch(() => {});
  }
  session = null;
  credential = null;
  sessionStorage.removeItem(KEY);
  if (stream) stream.abort();
  $("app").hidden = true;
  $("task-view").hidden = true;
  $("evidence-view").hidden = true;
  openTask = null;
  $("session").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    credential = $("credential").value.trim();
    try {
      await api("GET", "/v1/approvals?state=pending");
      sessionStorage.setItem(KEY, credential);
      $("credential").value = "";
      $("signin-error").textContent = "";
      showApp();
    } catch (err) {
      credential = null;
      $("signin-error").textContent = "Sign-in failed: " + err.message;
    }
  });
  $("signout").addEventListener("click", () => signOut(""));
  $("search").addEventListener("submit", (event) => { event.preventDefault(); search(false); });
  $("more").addEventListener("click", () => search(true));
  $("back").addEventListener("click", (event) => { event.preventDefault(); location.hash = ""; });
  $("evidence-back").addEventListener("click", (event) => {
    event.preventDefault();
    location.hash = "#task/" + (/tsk_[0-9a-f]{32}/.exec(location.hash) || [""])[0];
  });
  $("evidence-print").addEventListener("click", () => window.print());
  $("task-evidence").addEventListener("click", () => { if (openTask) location.hash = "#evidence/" + openTask.id; });
  $("task-revoke").addEventListener("click", async (event) => {
    if (!openTask) return;
    event.target.disabled = true;
    try {
      await api("POST", "/v1/tasks/" + openTask.id + "/revoke", { reason: "revoked from the task's timeline" });
      $("task-error").textContent = "";
    } catch (err) { $("task-error").textContent = err.message; }
    event.target.disabled = false;
    scheduleTimeline();
  });
  window.addEventListener("hashchange", () => { if (signedIn()) route(); });
  setInterval(() => { if (signedIn()) renderTasks(); }, 1000);
  if (credential) return showApp();
  // Signed in at /signin? The session cookie tells.
  fetch("/v1/session").then((r) => (r.ok ? r.json() : null)).then((found) => {
    if (!found) return;
    session = found;
    if (found.approver) showApp();
    else $("signin-error").textContent = "You are signed in as " + found.user + ", who is not an approver.";
  }).catch(() => {});
});
