// Loads the dashboard in headless Chromium (Debian's, through playwright-core) and waits for the
// builds and the live events to appear. Prints what it saw as JSON; exits non-zero if they never do.
import { chromium } from "playwright-core";

const url = process.argv[2];
const shot = process.argv[3];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 600 } });
  await page.goto(url);
  await page.waitForSelector('tr[data-build="2"]', { timeout: 10000 });
  await page.waitForSelector("#events li", { timeout: 10000 });
  await page.waitForFunction(() => document.getElementById("conn").textContent === "live", null, { timeout: 10000 });
  const seen = await page.evaluate(() => ({
    conn: document.getElementById("conn").textContent,
    builds: [...document.querySelectorAll("tr[data-build]")].map((r) => [...r.cells].map((c) => c.textContent.trim())),
    events: [...document.querySelectorAll("#events li")].map((li) => li.textContent),
    links: [...document.querySelectorAll("a")].map((a) => a.getAttribute("href")),
  }));
  if (shot) await page.screenshot({ path: shot });
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}
