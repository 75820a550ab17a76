// Drives the demo page in headless Chromium (Debian's /usr/bin/chromium, no browser download)
// through playwright-core: opens URL (whose query presets the form and starts a run), waits for
// the page to finish or fail, optionally samples again (warm timing), and writes what the page
// reports (state, backend, error, timings, the images' CHW bytes) as JSON, plus a screenshot.
//
//   node web/tests/drive.mjs --url URL --out result.json [--screenshot shot.png]
//        [--repeat K] [--timeout SECONDS] [--webgpu off]
//
// --webgpu off starts Chromium without WebGPU, to exercise the page's CPU fallback.
//
// Used by the Rust test tests/web.rs and by web/bench.sh.

import { chromium } from "playwright-core";
import { writeFileSync } from "node:fs";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
if (!args.url || !args.out) {
  console.error("usage: drive.mjs --url URL --out result.json [--screenshot shot.png] [--repeat K] [--timeout SECONDS]");
  process.exit(2);
}
const timeoutMs = 1000 * Number(args.timeout ?? 600);
const repeat = Number(args.repeat ?? 1);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless=new", "--no-sandbox",
    ...(args.webgpu === "off" ? ["--disable-features=WebGPU"] : ["--enable-unsafe-webgpu"]),
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
  ],
});
const consoleLines = [];
let result;
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 800 } });
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
  await page.goto(args.url);
  const finished = () => ["done", "error"].includes(window.diffnas?.state);
  const runs = [];
  for (let k = 0; k < repeat; k++) {
    if (k > 0) await page.click("#sample");
    await page.waitForFunction((want) => window.diffnas.state === "error" || window.diffnas.runs >= want, k + 1, {
      timeout: timeoutMs, polling: 100,
    });
    const s = await page.evaluate(() => ({ state: window.diffnas.state, r: window.diffnas.result }));
    if (s.state !== "done") break;
    runs.push({ seconds: s.r.seconds, imagesPerSecond: s.r.imagesPerSecond });
  }
  await page.waitForFunction(finished, null, { timeout: 1000 });
  result = await page.evaluate(() => {
    const d = window.diffnas;
    return {
      state: d.state,
      error: d.error,
      backend: d.backend,
      fallbackReason: d.fallbackReason,
      status: document.getElementById("status").textContent,
      errorText: document.getElementById("error").textContent,
      n: d.result?.n ?? null,
      steps: d.result?.steps ?? null,
      size: d.result?.size ?? null,
      channels: d.result?.channels ?? null,
      pixels: d.result ? Array.from(d.result.pixels) : null,
    };
  });
  result.runs = runs;
  result.userAgent = await page.evaluate(() => navigator.userAgent);
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
} catch (e) {
  result = { state: "driver-error", error: String(e?.message ?? e), runs: [] };
} finally {
  await browser.close();
}
result.console = consoleLines;
writeFileSync(args.out, JSON.stringify(result));
console.log(`${result.state}: ${result.backend ?? ""} ${result.error ?? ""} ${result.runs.map((r) => r.seconds.toFixed(2) + " s").join(", ")}`);
