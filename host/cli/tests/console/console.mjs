// The operator console in a real headless Chromium, on a host `weft up` runs with an
// admin token: the console shows the deployed components, its counters rise after
// requests, a trap appears in the failures with its message, and an undeploy removes
// the component. Usage: node console.mjs ADMIN_URL HTTP_URL TOKEN [SCREENSHOT.png]
// Uses the system's Chromium (CHROMIUM, default /usr/bin/chromium); downloads nothing.
import { chromium } from "playwright-core";

const [admin, http, token, screenshot] = process.argv.slice(2);
if (!admin || !http || !token) {
  console.error("usage: node console.mjs ADMIN_URL HTTP_URL TOKEN [SCREENSHOT.png]");
  process.exit(2);
}
const step = (what) => console.log("step: " + what);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } }); // a phone
  const card = (name) => `article.component[data-name="${name}"]`;
  const stat = async (name, key) => Number((await page.textContent(`${card(name)} [data-stat="${key}"]`)).trim());

  step("without the token the page asks for it");
  await page.goto(admin + "/console");
  await page.waitForSelector("#token-form.shown", { timeout: 10000 });

  step("with the token it shows the deployed components and the backends");
  await page.fill("#token", token);
  await page.click("#token-form button");
  await page.waitForSelector(card("hello"), { timeout: 10000 });
  await page.waitForSelector(card("faults"), { timeout: 10000 });
  await page.waitForSelector('#backends [data-backend="messaging"]', { timeout: 10000 });
  await page.waitForSelector('#backends [data-backend="key-value"]', { timeout: 10000 });
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  if (width > 390) throw new Error(`the page is wider than a phone: ${width}px`);

  step("its counters rise after requests");
  const before = await stat("hello", "calls");
  for (let i = 0; i < 5; i++) {
    const r = await fetch(http + "/hello/console-" + i);
    if (r.status !== 200) throw new Error("hello answered " + r.status);
  }
  await page.waitForFunction(
    ([sel, want]) => Number(document.querySelector(sel)?.textContent) >= want,
    [`${card("hello")} [data-stat="calls"]`, before + 5],
    { timeout: 10000 },
  );

  step("a trap appears in the failures with its message");
  const trap = await fetch(http + "/f/trap");
  if (trap.status !== 500) throw new Error("the trap answered " + trap.status);
  await page.waitForSelector('#failures li[data-component="faults"]:has-text("deliberate trap")', { timeout: 10000 });
  await page.waitForFunction(
    (sel) => Number(document.querySelector(sel)?.textContent) >= 1,
    `${card("faults")} [data-stat="errors"]`,
    { timeout: 10000 },
  );
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });

  step("an undeploy removes the component");
  const gone = await fetch(admin + "/v1/components/faults", { method: "DELETE", headers: { Authorization: "Bearer " + token } });
  if (!gone.ok) throw new Error("undeploy answered " + gone.status);
  await page.waitForSelector(card("faults"), { state: "detached", timeout: 10000 });
  await page.waitForSelector(card("hello"), { timeout: 1000 });

  step("the token stays out of the address bar");
  await page.goto(admin + "/console#token=" + encodeURIComponent(token));
  await page.waitForSelector(card("hello"), { timeout: 10000 });
  if (page.url().includes(token)) throw new Error("the token is still in the address: " + page.url());
  console.log("ok: the console showed, counted, failed and removed");
} finally {
  await browser.close();
}
