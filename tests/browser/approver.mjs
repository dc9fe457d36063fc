// Drives the approver page in headless Chromium (Debian's), as a person would.
// Choreographed with tests/e2e/browser.rs over stdin/stdout:
//   prints READY     once signed in with the event stream live;
//   waits for a pending approval to appear (pushed live, no reload), approves it,
//   waits for the active task to appear, screenshots, prints APPROVED;
//   waits for a REVOKE line on stdin, revokes the task, waits for it to vanish,
//   prints REVOKED;
//   waits for a DEFINITION line on stdin, waits for that approval (a changed upstream
//   tool definition) to appear, prints KIND <the label the page gives it>.
// Usage: node approver.mjs <broker-url> <approver-credential> <screenshot-dir>
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [url, credential, shots] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 720 } });
  page.on("pageerror", (err) => { console.error("page error:", err.message); process.exitCode = 1; });
  await page.goto(url + "/ui");
  await page.getByTestId("credential").fill(credential);
  await page.getByTestId("signin").click();
  await page.locator("#live.on").waitFor({ timeout: 10000 });
  console.log("READY");

  const card = page.locator("[data-approval-id]");
  await card.first().waitFor({ timeout: 15000 });
  await card.first().locator(".note").fill("checked the invoice");
  // Any event rebuilds the cards; the note being typed must survive it.
  await page.evaluate(() => refresh());
  await page.screenshot({ path: shots + "/approver-pending.png", fullPage: true });
  await card.first().getByRole("button", { name: "Approve" }).click();
  const task = page.locator("[data-task-id]");
  await task.first().waitFor({ timeout: 15000 });
  await page.locator("[data-approval-id]").waitFor({ state: "detached", timeout: 15000 });
  await page.screenshot({ path: shots + "/approver-active.png", fullPage: true });
  await page.setViewportSize({ width: 390, height: 800 });
  await page.screenshot({ path: shots + "/approver-phone.png", fullPage: true });
  await page.setViewportSize({ width: 1100, height: 720 });
  console.log("APPROVED");

  if ((await nextLine()).trim() !== "REVOKE") throw new Error("expected REVOKE");
  await task.first().getByRole("button", { name: "Revoke task" }).click();
  await task.first().waitFor({ state: "detached", timeout: 15000 });
  console.log("REVOKED");

  if ((await nextLine()).trim() !== "DEFINITION") throw new Error("expected DEFINITION");
  await card.first().waitFor({ timeout: 15000 });
  console.log("KIND " + (await card.first().locator(".kind").textContent()).trim());
} catch (err) {
  console.error(err);
  process.exitCode = 1;
} finally {
  await browser.close();
  lines.close();
}
