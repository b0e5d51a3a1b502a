// Loads the dashboard in headless Chromium (Debian's, through playwright-core) and waits for the
// builds and the live events to appear, then opens build 1's page and waits for its jobs by stage
// and its job's log. Then the token's safety: the address and the page's script never hold it
// (an HttpOnly cookie carries it), a change without X-Requested-With is refused, and a page of
// another origin on this host (same site: another port) gets nothing with the cookie. Prints
// what it saw as JSON; exits non-zero if the page never shows its builds.
// Arguments: the dashboard URL, the list's screenshot path, the build page's screenshot path.
import http from "node:http";
import { chromium } from "playwright-core";

const [url, shot, buildShot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  // One context (one cookie jar) for the dashboard and the foreign page below.
  const context = await browser.newContext({ viewport: { width: 1400, height: 600 } });
  const page = await context.newPage();
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
  // What the page's own script can reach: no token anywhere, and its cookie cannot act alone.
  seen.token = await page.evaluate(async () => ({
    address: location.href,
    cookie: document.cookie,
    storage: Object.keys(sessionStorage).length + Object.keys(localStorage).length,
    bareRetry: (await fetch("/v1/builds/1/retry", { method: "POST" })).status,
  }));

  // A page of another origin on this host (another port, so same site for the cookie) tries the
  // API with the browser's cookie; what the API answered is read off the network.
  const foreign = http.createServer((_, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<!doctype html><title>elsewhere</title>");
  });
  await new Promise((ok) => foreign.listen(0, "127.0.0.1", ok));
  const api = new URL(url).origin;
  const attacker = await context.newPage();
  await attacker.goto(`http://127.0.0.1:${foreign.address().port}/`);
  // A read the page may not see (CORS blocks it), and blind ones (no-cors): the API's answers
  // to the blind ones are read off the network.
  const answered = (method, path) => attacker.waitForResponse(
    (r) => r.url() === api + path && r.request().method() === method, { timeout: 10000 });
  const [getAnswer, postAnswer] = [answered("GET", "/v1/builds?blind"), answered("POST", "/v1/builds/1/retry")];
  seen.foreign = await attacker.evaluate(async (api) => {
    const tries = [
      () => fetch(api + "/v1/builds", { credentials: "include" }).then((r) => r.status),
      () => fetch(api + "/v1/builds?blind", { mode: "no-cors", credentials: "include" }).then((r) => r.type),
      () => fetch(api + "/v1/builds/1/retry", { method: "POST", mode: "no-cors", credentials: "include" })
        .then((r) => r.type),
    ];
    const out = [];
    for (const t of tries) out.push(await t().catch((e) => "blocked: " + e.name));
    return out;
  }, api);
  seen.foreignAnswers = [(await getAnswer).status(), (await postAnswer).status()];
  await attacker.close();
  foreign.close();
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}
