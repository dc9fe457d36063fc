// An MCP client's user in headless Chromium (Debian's), with JavaScript switched off:
// the sign-in and consent pages must work as plain HTML forms. Driven by
// tests/e2e/oauth_node.rs, which registers a client and builds the authorization URL.
//   opens the authorization URL, is sent to /signin, types the user name and password,
//   signs in, lands on the consent page, screenshots it, unticks one tool, presses Allow,
//   and stops at the redirect to the client (nothing listens there: the browser's
//   request for it is read, and its connection is refused).
// Prints one JSON line on stdout: {"signin_url", "consent_url", "offered" {tool: ticked},
// "submitted" [tools], "redirect", "code", "state", "iss", "callback_method",
// "javascript_ran", "page_errors", "console", "responses"} or with "error" (and "at",
// "page_text": where the browser was) when something failed.
// Usage: node consent.mjs <authorization-url> <user> <password> <redirect-uri> <tool-to-untick> <screenshot.png>
import { chromium } from "playwright-core";

const [authorizationUrl, user, password, redirectUri, untick, shot] = process.argv.slice(2);
if (!shot) {
  console.error("usage: node consent.mjs <authorization-url> <user> <password> <redirect-uri> <tool-to-untick> <screenshot.png>");
  process.exit(2);
}

const report = { page_errors: [] };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({ javaScriptEnabled: false, viewport: { width: 900, height: 720 } });
  const page = await context.newPage();
  page.on("pageerror", (err) => report.page_errors.push(err.message));
  // Chromium says here when a Content-Security-Policy blocks a form or its redirect.
  report.console = [];
  page.on("console", (msg) => report.console.push(`${msg.type()}: ${msg.text()}`));
  report.responses = [];
  page.on("response", async (r) => {
    const request = r.request();
    const origin = request.method() === "POST" ? ` (Origin: ${(await request.allHeaders()).origin})` : "";
    report.responses.push(`${request.method()} ${new URL(r.url()).pathname} ${r.status()}${origin}`);
  });
  // Scripts must not run on these pages: a page whose script would rename it stays as is.
  await page.setContent("<title>no script ran</title><script>document.title = 'a script ran'</script>");
  report.javascript_ran = (await page.title()) !== "no script ran";

  await page.goto(authorizationUrl);
  report.signin_url = page.url();
  if (new URL(page.url()).pathname !== "/signin") throw new Error(`not sent to sign in: ${page.url()}`);
  await page.getByLabel("User name").fill(user);
  await page.getByLabel("Password").fill(password);
  await Promise.all([
    page.waitForURL((url) => url.pathname === "/oauth/authorize", { timeout: 15000 }),
    page.getByRole("button", { name: "Sign in" }).click(),
  ]);
  report.consent_url = page.url();

  const boxes = page.locator('input[type="checkbox"][name="tools"]');
  report.offered = {};
  for (const box of await boxes.all()) {
    report.offered[await box.getAttribute("value")] = await box.isChecked();
  }
  await page.screenshot({ path: shot, fullPage: true });
  await page.locator(`input[type="checkbox"][name="tools"][value="${untick}"]`).uncheck();
  report.submitted = [];
  for (const box of await boxes.all()) {
    if (await box.isChecked()) report.submitted.push(await box.getAttribute("value"));
  }
  report.submitted.sort();

  // The answer is a redirect to the client's redirect URI, where nothing listens: the
  // browser's request for it is what the client would receive (page.route does not see
  // requests that follow a redirect). A Content-Security-Policy form-action that left
  // the client out would stop it before any request (Chromium says so in the console).
  const callbackSeen = page.waitForRequest((request) => request.url().startsWith(redirectUri), { timeout: 15000 });
  callbackSeen.catch(() => {});
  const answered = page.waitForResponse(
    (r) => r.request().method() === "POST" && new URL(r.url()).pathname === "/oauth/authorize",
    { timeout: 15000 },
  );
  await page.getByRole("button", { name: "Allow" }).click();
  const answer = await answered;
  if (answer.status() !== 303) throw new Error(`the consent was answered with HTTP ${answer.status()}, not a redirect`);
  const callback = await callbackSeen;
  report.redirect = callback.url();
  report.callback_method = callback.method();
  const query = new URL(callback.url()).searchParams;
  for (const name of ["code", "state", "iss", "error"]) {
    if (query.has(name)) report[name] = query.get(name);
  }
} catch (err) {
  report.error = String(err && err.stack ? err.stack : err);
  try {
    const page = browser.contexts()[0]?.pages()[0];
    if (page) {
      report.at = page.url();
      report.page_text = (await page.locator("body").innerText({ timeout: 2000 })).slice(0, 1000);
    }
  } catch {
    // nothing more to say
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
