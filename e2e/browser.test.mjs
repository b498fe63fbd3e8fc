// Browser check of the gateway's upload page: pick a file, upload it, follow the result link, compare bytes
// and content type, and save a screenshot. Uses the system chromium (never downloads a browser).
//
// usage: node browser.test.mjs GATEWAY_URL OUT_DIR
// Prints `PASS name` / `FAIL name: why` lines; exit code 0 only when every check passed.
import { chromium } from "playwright-core";
import { randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [gateway, outDir] = process.argv.slice(2);
if (!gateway || !outDir) {
  console.error("usage: node browser.test.mjs GATEWAY_URL OUT_DIR");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
let failed = 0;
const pass = (name) => console.log(`PASS browser: ${name}`);
const fail = (name, why) => { failed++; console.log(`FAIL browser: ${name}: ${why}`); };
function check(name, ok, why) { ok ? pass(name) : fail(name, why); return ok; }

const profile = mkdtempSync(join(tmpdir(), "fdfs-e2e-chromium-"));
const content = `hello from the fdfs browser test\n${randomBytes(24).toString("hex")}\n`;
const filePath = join(outDir, "browser-upload.txt");
writeFileSync(filePath, content);

let context;
try {
  // launchPersistentContext is how playwright takes --user-data-dir (a fresh profile per run).
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    viewport: { width: 1000, height: 760 },
    timeout: 60_000,
  });
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));

  const resp = await page.goto(gateway + "/", { waitUntil: "load", timeout: 30_000 });
  check("upload page loads", resp && resp.status() === 200, `status ${resp && resp.status()}`);
  check("upload page is HTML", (resp.headers()["content-type"] || "").startsWith("text/html"),
    resp.headers()["content-type"]);

  await page.setInputFiles("#file-input", filePath);
  await page.waitForSelector("#upload-button:not([disabled])", { timeout: 10_000 });
  await page.click("#upload-button");
  const link = await page.waitForSelector("#results a", { timeout: 30_000 });
  const fileId = (await link.textContent()).trim();
  const href = await link.getAttribute("href");
  check("result link shows a file ID", /^group\d+\/M00\/[0-9A-F]{2}\/[0-9A-F]{2}\/[A-Za-z0-9_-]{27}\d{3}\.txt$/.test(fileId),
    `got ${JSON.stringify(fileId)}`);
  await page.screenshot({ path: join(outDir, "upload-page.png"), fullPage: true });

  // Follow the link the way a user would (the gateway redirects to a storage node).
  const target = new URL(href, gateway).toString();
  const file = await context.newPage();
  const got = await file.goto(target, { waitUntil: "load", timeout: 30_000 });
  if (check("result link answers 200", got && got.status() === 200, `status ${got && got.status()}`)) {
    const body = (await got.body()).toString("utf8");
    check("downloaded bytes equal the uploaded ones", body === content,
      `got ${body.length} bytes, want ${content.length}`);
    const ct = got.headers()["content-type"] || "";
    check("content type is text/plain", ct.startsWith("text/plain"), `got ${JSON.stringify(ct)}`);
    const chain = [];
    for (let r = got.request().redirectedFrom(); r; r = r.redirectedFrom()) chain.push(r.url());
    check("link went through the gateway redirect", chain.length >= 1, "no redirect seen");
  }
  // A big file goes through tus in chunks. A chunk whose connection breaks stops it; after a reload, picking the
  // same file again resumes where the server stands (the upload URL is in localStorage).
  const bigPath = join(outDir, "browser-big.bin");
  const big = randomBytes(10 * 1024 * 1024 + 17);
  writeFileSync(bigPath, big);
  const tusPage = await context.newPage();
  tusPage.on("pageerror", (e) => errors.push(String(e)));
  const isTus = (url) => new URL(url).pathname.startsWith("/tus/");
  let patches = 0;
  await tusPage.route(isTus, (route) => {
    if (route.request().method() === "PATCH" && ++patches === 2) return route.abort("connectionreset");
    return route.continue();
  });
  await tusPage.goto(gateway + "/", { waitUntil: "load", timeout: 30_000 });
  await tusPage.setInputFiles("#file-input", bigPath);
  await tusPage.click("#upload-button");
  await tusPage.waitForSelector("#results .status.err", { timeout: 60_000 });
  const kept = await tusPage.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith("fdfs-tus:")));
  check("a broken tus upload keeps its URL in localStorage", kept.length === 1, JSON.stringify(kept));
  await tusPage.unroute(isTus);
  await tusPage.reload({ waitUntil: "load", timeout: 30_000 });
  const offsets = [];
  tusPage.on("request", (r) => {
    if (r.method() === "PATCH" && isTus(r.url())) offsets.push(Number(r.headers()["upload-offset"]));
  });
  await tusPage.setInputFiles("#file-input", bigPath);
  await tusPage.click("#upload-button");
  const bigLink = await tusPage.waitForSelector("#results a", { timeout: 120_000 });
  check("after a reload the tus upload resumes instead of starting over", offsets.length > 0 && offsets[0] > 0,
    `PATCH offsets ${JSON.stringify(offsets)}`);
  const bigGot = await context.request.get(new URL(await bigLink.getAttribute("href"), gateway).toString());
  const bigBody = await bigGot.body();
  check("the resumed upload downloads with the same bytes", bigGot.status() === 200 && big.equals(bigBody),
    `status ${bigGot.status()}, ${bigBody.length} bytes of ${big.length}`);
  const left = await tusPage.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith("fdfs-tus:")));
  check("a finished tus upload forgets its URL", left.length === 0, JSON.stringify(left));

  check("no JavaScript errors on the page", errors.length === 0, errors.join("; "));
} catch (e) {
  fail("browser run", e && e.stack ? e.stack.split("\n").slice(0, 3).join(" | ") : String(e));
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
