// Two headless Chromium tabs, one on each host, chat through the page: each sees the
// other's message. Usage: node two-tabs.mjs http://HOST1 http://HOST2
// Uses the system's Chromium (CHROMIUM, default /usr/bin/chromium); downloads nothing.
import { chromium } from "playwright-core";

const [one, two] = process.argv.slice(2);
if (!one || !two) {
  console.error("usage: node two-tabs.mjs http://HOST1 http://HOST2");
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  const open = async (base, name) => {
    const page = await browser.newPage();
    await page.goto(base + "/chat");
    await page.waitForSelector("#state[data-open]", { timeout: 10000 });
    await page.waitForSelector("#log li", { timeout: 10000 }); // the welcome
    await page.fill("#name", name);
    return page;
  };
  const alice = await open(one, "alice");
  const bob = await open(two, "bob");
  const say = async (page, text) => {
    await page.fill("#text", text);
    await page.click("button");
  };
  const sees = (page, text) =>
    page.waitForSelector(`#log li:text-is("${text}")`, { timeout: 10000 });
  await say(alice, "hello from host one");
  await sees(bob, "alice: hello from host one");
  await sees(alice, "alice: hello from host one");
  await say(bob, "hi from host two");
  await sees(alice, "bob: hi from host two");
  await sees(bob, "bob: hi from host two");
  console.log("ok: both tabs saw both messages");
} finally {
  await browser.close();
}
