// Loads the dashboard in headless Chromium (Debian's, through playwright-core) and waits for the
// builds and the live events to appear, then opens build 1's page and waits for its jobs by stage
// and its job's log. Prints what it saw as JSON; exits non-zero if they never appear.
// Arguments: the dashboard URL, the list's screenshot path, the build page's screenshot path.
import { chromium } from "playwright-core";

const [url, shot, buildShot] = process.argv.slice(2);
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
    address: location.href,
    builds: [...document.querySelectorAll("tr[data-build]")].map((r) => [...r.cells].map((c) => c.textContent.trim())),
    events: [...document.querySelectorAll("#events li")].map((li) => li.textContent),
    links: [...document.querySelectorAll("a")].map((a) => a.getAttribute("href")),
  }));
  if (shot) await page.screenshot({ path: shot });

  // Build 1's page: reached from the list, as a person would.
  await page.click('tr[data-build="1"] td a');
  await page.waitForSelector("#build-view .job", { timeout: 10000 });
  await page.waitForFunction(() => document.getElementById("log").textContent.includes("Job succeeded"), null,
    { timeout: 15000 });
  seen.build = await page.evaluate(() => ({
    address: location.href,
    title: document.getElementById("b-title").textContent,
    status: document.getElementById("b-status").textContent,
    stages: [...document.querySelectorAll("#stages .stage")].map((s) => ({
      stage: s.dataset.stage,
      jobs: [...s.querySelectorAll(".job")].map((j) => [j.dataset.job, j.querySelector(".job-status").textContent]),
    })),
    selected: document.querySelector(".job.selected")?.dataset.job || null,
    logJob: document.getElementById("log-job").textContent,
    log: document.getElementById("log").textContent,
    links: [...document.querySelectorAll("#b-links a")].map((a) => a.getAttribute("href")),
    cancel: { present: !!document.getElementById("b-cancel"), disabled: document.getElementById("b-cancel").disabled },
    retry: { present: !!document.getElementById("b-retry"), disabled: document.getElementById("b-retry").disabled },
  }));
  // Another job, chosen by a click, shows its own log.
  const other = seen.build.stages.flatMap((s) => s.jobs).map(([n]) => n).find((n) => n !== seen.build.selected);
  if (other) {
    await page.click(`.job[data-job="${other}"]`);
    await page.waitForFunction((n) => document.getElementById("log-job").textContent === "Log · " + n, other,
      { timeout: 10000 });
    seen.build.clicked = { job: other, log: await page.evaluate(() => document.getElementById("log").textContent) };
    // Back to the first job for the screenshot.
    await page.click(`.job[data-job="${seen.build.selected}"]`);
    await page.waitForFunction(() => document.getElementById("log").textContent.includes("Job succeeded"), null,
      { timeout: 10000 });
  }
  if (buildShot) {
    await page.setViewportSize({ width: 1400, height: 900 });
    await page.screenshot({ path: buildShot, fullPage: true });
  }
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}
