// Browser check of the example Django shop (examples/django-shop) running against an fdfs cluster: its product
// list and the admin's product list must load thumbnails the cluster renders, never the pictures as uploaded.
// Every image response the page receives is counted (URL, bytes); each must be a thumbnail slave file
// (`<name>_<W>x<H>[c].<ext>`), decode as an image no larger than its box, and all of them together must weigh a
// small fraction of the pictures uploaded. Uses the system chromium (never downloads a browser).
//
// usage: node shop.test.mjs SHOP_URL MASTER_BYTES ADMIN_USER ADMIN_PASSWORD
// Prints `PASS name` / `FAIL name: why` lines; exit code 0 only when every check passed.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [shop, masterBytesArg, user, password] = process.argv.slice(2);
if (!shop || !masterBytesArg || !user || !password) {
  console.error("usage: node shop.test.mjs SHOP_URL MASTER_BYTES ADMIN_USER ADMIN_PASSWORD");
  process.exit(2);
}
const masterBytes = Number(masterBytesArg);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const THUMB = /_(\d+)x(\d+)c?\.(jpe?g|png|gif|webp)(\?|$)/;
let failed = 0;
const pass = (name) => console.log(`PASS shop: ${name}`);
const fail = (name, why) => { failed++; console.log(`FAIL shop: ${name}: ${why}`); };
function check(name, ok, why) { ok ? pass(name) : fail(name, why); return ok; }

// Load `url` and collect every image response: {url, bytes, box, type}. The thumbnail's own URL (after the
// gateway's redirect) is what a slave name is checked on.
async function images(page, url) {
  const seen = [];
  const pending = [];
  const onResponse = (resp) => {
    if (resp.request().resourceType() !== "image") return;
    pending.push(resp.body().then((b) => {
      const m = THUMB.exec(resp.url());
      seen.push({
        url: resp.url(), status: resp.status(), bytes: b.length,
        box: m ? [Number(m[1]), Number(m[2])] : null, type: resp.headers()["content-type"] || "",
      });
    }, () => {}));
  };
  page.on("response", onResponse);
  await page.goto(url, { waitUntil: "networkidle", timeout: 60_000 });
  await Promise.all(pending);
  page.off("response", onResponse);
  return seen;
}

// Every image rendered on the page fits its box (naturalWidth/Height as decoded by the browser).
async function decodedSizes(page) {
  return page.$$eval("img", (imgs) => imgs.map((i) => ({ src: i.currentSrc, w: i.naturalWidth, h: i.naturalHeight })));
}

const profile = mkdtempSync(join(tmpdir(), "fdfs-e2e-shop-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 900 },
    timeout: 60_000,
  });
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));

  // The list page.
  const list = await images(page, shop + "/");
  const products = await page.$$eval("li.product", (l) => l.length);
  check("the list page shows the six products", products === 6, `${products} products`);
  check("the list page loads one image per product", list.length >= 6, JSON.stringify(list.map((i) => i.url)));
  const notThumbs = list.filter((i) => !i.box);
  check("every image on the list page is a thumbnail", notThumbs.length === 0,
    notThumbs.map((i) => `${i.url} (${i.bytes} B)`).join(", "));
  check("every image answered 200 as an image", list.every((i) => i.status === 200 && i.type.startsWith("image/")),
    JSON.stringify(list.map((i) => [i.url, i.status, i.type])));
  const listBytes = list.reduce((s, i) => s + i.bytes, 0);
  check(`the list page's images weigh ${(listBytes / 1024).toFixed(0)} KiB, under 5% of the ${(masterBytes / 1048576).toFixed(1)} MiB uploaded`,
    listBytes > 0 && listBytes < masterBytes * 0.05, `${listBytes} bytes`);
  const decoded = await decodedSizes(page);
  const oversized = decoded.filter((d) => {
    const m = THUMB.exec(d.src);
    return !m || d.w > Number(m[1]) || d.h > Number(m[2]) || d.w === 0;
  });
  check("each image decodes within its thumbnail box", oversized.length === 0, JSON.stringify(oversized));
  console.log(`  list page: ${list.length} images, ${listBytes} bytes; formats ${[...new Set(list.map((i) => i.type))].join(", ")}`);

  // The admin's product list, after logging in.
  await page.goto(shop + "/admin/login/?next=/admin/catalog/product/", { waitUntil: "load" });
  await page.fill("#id_username", user);
  await page.fill("#id_password", password);
  await Promise.all([page.waitForNavigation({ waitUntil: "load" }), page.click("input[type=submit]")]);
  const admin = await images(page, shop + "/admin/catalog/product/");
  const adminPictures = admin.filter((i) => !/\/static\//.test(i.url));
  check("the admin's product list shows a picture per product", adminPictures.length >= 6,
    JSON.stringify(admin.map((i) => i.url)));
  check("every picture in the admin is a thumbnail", adminPictures.every((i) => i.box),
    adminPictures.filter((i) => !i.box).map((i) => i.url).join(", "));
  const adminBytes = adminPictures.reduce((s, i) => s + i.bytes, 0);
  check(`the admin's pictures weigh ${(adminBytes / 1024).toFixed(0)} KiB, under 5% of what was uploaded`,
    adminBytes > 0 && adminBytes < masterBytes * 0.05, `${adminBytes} bytes`);
  check("no JavaScript errors", errors.length === 0, errors.join("; "));
} catch (e) {
  fail("browser run", e && e.stack ? e.stack.split("\n").slice(0, 3).join(" | ") : String(e));
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
