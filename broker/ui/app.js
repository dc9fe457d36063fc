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

function fill(node, selector, text) { node.querySelector(selector).textContent = text; }

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
          if (/^event: /m.test(frame)) scheduleRefresh();
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
  $("app").hidden = false;
  $("session").hidden = false;
  $("who").textContent = session ? session.user : "";
  refresh();
  listen();
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
