// Drives the approver page's task timeline in headless Chromium (Debian's), as a person
// would. Choreographed with tests/e2e/browser.rs over stdin/stdout:
//   prints READY once signed in with the event stream live;
//   on "OPEN <task id>" finds the task by searching for its agent, opens its timeline
//     with the keyboard, waits for its first entries, prints OPENED;
//   on "EXPECT <n>" waits (no reload) until the timeline shows n calls, prints
//     SEEN <json>: what the page shows (every entry's kind, the arguments text);
//   on "REVOKE" screenshots, clicks "Revoke task" on the timeline, waits for the
//     revocation to appear in it, prints REVOKED;
//   on "EVIDENCE" opens the printable evidence, screenshots it, prints EVIDENCE <json>.
// Usage: node timeline.mjs <broker-url> <approver-credential> <screenshot-dir>
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [url, credential, shots] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin });
const queued = [];
const waiting = [];
lines.on("line", (line) => (waiting.length ? waiting.shift()(line) : queued.push(line)));
const nextLine = () => new Promise((resolve) => (queued.length ? resolve(queued.shift()) : waiting.push(resolve)));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  const violations = [];
  page.on("pageerror", (err) => { console.error("page error:", err.message); process.exitCode = 1; });
  page.on("console", (message) => {
    if (/Content Security Policy/i.test(message.text())) violations.push(message.text());
  });
  await page.goto(url + "/ui");
  await page.getByTestId("credential").fill(credential);
  await page.getByTestId("signin").click();
  await page.locator("#live.on").waitFor({ timeout: 10000 });
  console.log("READY");

  const open = (await nextLine()).trim().split(" ");
  if (open[0] !== "OPEN") throw new Error("expected OPEN");
  const taskId = open[1];
  // Search by agent, as an approver would; then open the task with the keyboard.
  await page.getByLabel("Agent").fill("worker");
  await page.getByLabel("Agent").press("Enter");
  const found = page.locator(`[data-listed-task="${taskId}"] a`);
  await found.waitFor({ timeout: 10000 });
  await found.focus();
  await page.keyboard.press("Enter");
  await page.getByTestId("task-view").waitFor({ timeout: 10000 });
  await page.locator("#timeline .entry").first().waitFor({ timeout: 10000 });
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.id);
  if (focused !== "task-title") throw new Error("the task's title should have the focus, not " + focused);
  console.log("OPENED");

  const expect = (await nextLine()).trim().split(" ");
  if (expect[0] !== "EXPECT") throw new Error("expected EXPECT");
  const calls = Number(expect[1]);
  await page.waitForFunction(
    (n) => document.querySelectorAll('#timeline .entry[data-kind^="call."]').length >= n,
    calls, { timeout: 15000 });
  const seen = await page.evaluate(() => ({
    kinds: [...document.querySelectorAll("#timeline .entry")].map((e) => e.dataset.kind),
    args: [...document.querySelectorAll("#timeline .entry .args")].map((e) => e.textContent),
    text: document.getElementById("timeline").textContent,
  }));
  console.log("SEEN " + JSON.stringify(seen));

  if ((await nextLine()).trim() !== "REVOKE") throw new Error("expected REVOKE");
  await page.screenshot({ path: shots + "/task-timeline.png", fullPage: true });
  await page.setViewportSize({ width: 390, height: 800 });
  await page.screenshot({ path: shots + "/task-timeline-phone.png", fullPage: true });
  await page.setViewportSize({ width: 1100, height: 900 });
  await page.getByTestId("timeline-revoke").click();
  await page.locator('#timeline .entry[data-kind="task.revoked"]').waitFor({ timeout: 15000 });
  await page.getByTestId("timeline-revoke").waitFor({ state: "hidden", timeout: 5000 });
  console.log("REVOKED");

  if ((await nextLine()).trim() !== "EVIDENCE") throw new Error("expected EVIDENCE");
  await page.getByTestId("evidence").click();
  await page.getByTestId("evidence-view").waitFor({ timeout: 10000 });
  await page.locator("#evidence-rows tr").first().waitFor({ timeout: 10000 });
  await page.emulateMedia({ media: "print" });
  await page.screenshot({ path: shots + "/task-evidence-print.png", fullPage: true });
  const printed = await page.evaluate(() => ({
    rows: document.querySelectorAll("#evidence-rows tr").length,
    facts: document.getElementById("evidence-facts").textContent,
    searchShown: getComputedStyle(document.getElementById("app")).display !== "none",
  }));
  console.log("EVIDENCE " + JSON.stringify({ ...printed, violations }));
} catch (err) {
  console.error(err);
  process.exitCode = 1;
} finally {
  await browser.close();
  lines.close();
}
