// The approver page with the same sign-in as every other page, in headless Chromium
// (Debian's) with JavaScript on (the approver page is a script). Driven by
// tests/e2e/oauth_node.rs, which has already connected an MCP client of the user's:
//   opens /ui, follows its sign-in link to /signin, signs in as the approver, lands back
//   on /ui, finds the active task card of the MCP client (the one whose text starts with
//   <expected-agent-text>, e.g. "alice via client:<id>"), screenshots the page, presses
//   that card's "Revoke task" and waits until the card is gone;
//   then, in a second browser context, signs in the same way as a user who is not an
//   approver: the page says so and shows no app.
// Prints one JSON line on stdout: {"javascript_ran", "signin_url", "landed", "who",
// "live", "card" {"task_id", "agent", "tools", "purpose"}, "cards", "revoked",
// "revoke_status", "error_shown", "active_empty", "not_approver" {"signin_url",
// "landed", "message", "app_visible", "signin_visible", "tasks_status"},
// "page_errors", "console", "http_errors"} or with "error" (and "at", "page_text": where the browser
// was) when something failed.
// Usage: node approver_session.mjs <broker-url> <approver> <approver-password> <user> <user-password> <expected-agent-text> <screenshot.png>
import { chromium } from "playwright-core";

const [url, approver, approverPassword, user, userPassword, expected, shot] = process.argv.slice(2);
if (!shot) {
  console.error("usage: node approver_session.mjs <broker-url> <approver> <approver-password> <user> <user-password> <expected-agent-text> <screenshot.png>");
  process.exit(2);
}

const report = { page_errors: [], console: [], http_errors: [] };
let current = null; // the page in use, for the error report
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

/// A fresh browser context (its own cookies) on /ui, signed in through the page's
/// sign-in link and the /signin form; back on /ui when it returns.
async function signInThroughUi(name, password, into) {
  const context = await browser.newContext({ javaScriptEnabled: true, viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  current = page;
  page.on("pageerror", (err) => report.page_errors.push(`${name}: ${err.message}`));
  page.on("console", (msg) => report.console.push(`${name} ${msg.type()}: ${msg.text()}`));
  page.on("response", (r) => {
    if (r.status() >= 400) report.http_errors.push(`${name} ${r.request().method()} ${new URL(r.url()).pathname} ${r.status()}`);
  });
  await page.goto(url + "/ui");
  const link = page.locator("a[data-testid=signin-link]");
  await link.waitFor({ state: "visible", timeout: 10000 });
  await Promise.all([
    page.waitForURL((u) => u.pathname === "/signin", { timeout: 15000 }),
    link.click(),
  ]);
  into.signin_url = page.url();
  await page.getByLabel("User name").fill(name);
  await page.getByLabel("Password").fill(password);
  await Promise.all([
    page.waitForURL((u) => u.pathname === "/ui", { timeout: 15000 }),
    page.getByRole("button", { name: "Sign in" }).click(),
  ]);
  into.landed = page.url();
  return page;
}

try {
  // ------------------------------------------------------------- the approver
  const page = await signInThroughUi(approver, approverPassword, report);
  report.javascript_ran = await page.evaluate(() => true);
  await page.locator("#app").waitFor({ state: "visible", timeout: 15000 });
  await page.locator("#live.on").waitFor({ timeout: 15000 });
  report.live = (await page.locator("#live").textContent()).trim();
  report.who = (await page.locator("#who").textContent()).trim();

  const card = page.locator("#active [data-task-id]").filter({ hasText: expected });
  await card.first().waitFor({ timeout: 15000 });
  report.cards = await page.locator("#active [data-task-id]").count();
  const taskId = await card.first().getAttribute("data-task-id");
  // The cards are rebuilt every second: from here on, the card is found by its task id.
  const theCard = page.locator(`#active [data-task-id="${taskId}"]`);
  report.card = {
    task_id: taskId,
    agent: (await theCard.locator(".agent").textContent()).trim(),
    tools: (await theCard.locator(".tools").textContent()).trim(),
    purpose: (await theCard.locator(".purpose").textContent()).trim(),
  };
  await page.screenshot({ path: shot, fullPage: true });

  const revoked = page.waitForResponse(
    (r) => r.request().method() === "POST" && new URL(r.url()).pathname === `/v1/tasks/${taskId}/revoke`,
    { timeout: 15000 },
  );
  await theCard.getByRole("button", { name: "Revoke task" }).click();
  report.revoke_status = (await revoked).status();
  await theCard.waitFor({ state: "detached", timeout: 15000 });
  report.revoked = true;
  report.error_shown = ((await page.locator("#error").textContent()) || "").trim();
  report.active_empty = await page.locator("#active-empty").isVisible();

  // ------------------------------------------------ a user who is not an approver
  const other = {};
  report.not_approver = other;
  const second = await signInThroughUi(user, userPassword, other);
  const message = second.locator("#signin-error");
  await message.filter({ hasText: /\S/ }).waitFor({ timeout: 15000 });
  other.message = (await message.textContent()).trim();
  other.app_visible = await second.locator("#app").isVisible();
  other.signin_visible = await second.locator("#signin").isVisible();
  // Her session cookie does not open the approver API either.
  other.tasks_status = await second.evaluate(async () => (await fetch("/v1/tasks?state=active")).status);
} catch (err) {
  report.error = String(err && err.stack ? err.stack : err);
  try {
    if (current) {
      report.at = current.url();
      report.page_text = (await current.locator("body").innerText({ timeout: 2000 })).slice(0, 1000);
    }
  } catch {
    // nothing more to say
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
