// Browser form upload by presigned POST to the S3 door: the page s3_post_form.py wrote (a form whose action is
// the door, with boto3's signed policy in hidden fields) is served from its own origin, Chromium picks a file in
// the real `<input type=file>` and submits. The door must store the object under the policy's key with the
// form's Content-Type and answer 201 with S3's XML; then submissions that break the policy (a file over its
// size range, a key outside its prefix) must be refused with S3's XML error and store nothing. Uses the system
// chromium (never downloads a browser).
//
// usage: node s3post.test.mjs FORM_DIR OUT_DIR   (FORM_DIR: form.html and urls.json from s3_post_form.py)
// Prints `PASS name` / `FAIL name: why` lines; exit code 0 only when every check passed.
import { chromium } from "playwright-core";
import { createHash, randomBytes } from "node:crypto";
import { createServer } from "node:http";
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [formDir, outDir] = process.argv.slice(2);
if (!formDir || !outDir) {
  console.error("usage: node s3post.test.mjs FORM_DIR OUT_DIR");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
let failed = 0;
const pass = (name) => console.log(`PASS s3 form: ${name}`);
const fail = (name, why) => { failed++; console.log(`FAIL s3 form: ${name}: ${why}`); };
function check(name, ok, why) { ok ? pass(name) : fail(name, why); return ok; }

const urls = JSON.parse(readFileSync(join(formDir, "urls.json"), "utf8"));
const formHtml = readFileSync(join(formDir, "form.html"));
// The page comes from an origin of its own, as a web shop's would; the form posts across to the door.
const server = createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  res.end(formHtml);
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const pageUrl = `http://127.0.0.1:${server.address().port}/`;

const photo = randomBytes(200_000);
const photoPath = join(outDir, "photo.png");
writeFileSync(photoPath, photo);
const hugePath = join(outDir, "huge.png");
writeFileSync(hugePath, randomBytes(urls.max_size + 1));
const smallPath = join(outDir, "small.png");
writeFileSync(smallPath, randomBytes(1000));

const tag = (xml, name) => (xml.match(new RegExp(`<${name}>([^<]*)</${name}>`)) || [])[1];
const listed = async (request) => {
  const r = await request.get(urls.list);
  const xml = await r.text();
  return [...xml.matchAll(/<Key>([^<]*)<\/Key>/g)].map((m) => m[1]);
};

const profile = mkdtempSync(join(tmpdir(), "fdfs-e2e-chromium-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    viewport: { width: 1000, height: 500 },
    timeout: 60_000,
  });
  const page = context.pages()[0] || (await context.newPage());

  // Submit the form with `file` chosen (and the key field as given); the door's answer, as the browser got it.
  const submit = async (file, key) => {
    const r = await page.goto(pageUrl, { waitUntil: "load", timeout: 30_000 });
    if (!r || r.status() !== 200) throw new Error(`form page answered ${r && r.status()}`);
    if (key !== undefined) await page.fill("#key", key);
    await page.setInputFiles("#file", file);
    const [resp] = await Promise.all([
      page.waitForNavigation({ waitUntil: "load", timeout: 60_000 }),
      page.click("#send"),
    ]);
    return { status: resp.status(), headers: resp.headers(), body: (await resp.body()).toString("utf8") };
  };

  const ok = await submit(photoPath);
  check("the form upload answers 201 (success_action_status)", ok.status === 201, `${ok.status}: ${ok.body}`);
  check("the answer is S3's PostResponse with the key the policy allows",
    tag(ok.body, "Key") === "uploads/photo.png" && tag(ok.body, "Bucket") === urls.bucket,
    ok.body.slice(0, 300));
  const md5 = createHash("md5").update(photo).digest("hex");
  check("its ETag is the MD5 of the chosen file", (tag(ok.body, "ETag") || "").replaceAll("&quot;", "\"") === `"${md5}"`,
    `${tag(ok.body, "ETag")}, want "${md5}"`);
  check("it names the object's FastDFS file ID",
    /^group\d+\/M00\/[0-9A-F]{2}\/[0-9A-F]{2}\/\S+\.png$/.test(ok.headers["x-fdfs-file-id"] || ""),
    JSON.stringify(ok.headers["x-fdfs-file-id"]));
  await page.screenshot({ path: join(outDir, "s3-post-answer.png") });

  const got = await context.request.get(urls.get_photo);
  const body = await got.body();
  check("the stored object has the file's bytes", got.status() === 200 && photo.equals(body),
    `status ${got.status()}, ${body.length} bytes of ${photo.length}`);
  check("the stored object has the form's Content-Type", got.headers()["content-type"] === "image/png",
    JSON.stringify(got.headers()["content-type"]));

  // Breaking the policy: the S3 error, as XML, and nothing stored.
  const big = await submit(hugePath);
  check("a file over the policy's content-length-range is refused (400 EntityTooLarge)",
    big.status === 400 && tag(big.body, "Code") === "EntityTooLarge", `${big.status}: ${big.body.slice(0, 300)}`);
  const away = await submit(smallPath, "elsewhere/${filename}");
  check("a key outside the policy's prefix is refused (403 AccessDenied)",
    away.status === 403 && tag(away.body, "Code") === "AccessDenied", `${away.status}: ${away.body.slice(0, 300)}`);
  check("the refused errors are S3 XML", big.headers["content-type"] === "application/xml"
    && away.body.includes("<Error>"), `${big.headers["content-type"]}`);
  const keys = await listed(context.request);
  check("a refused form stores nothing", JSON.stringify(keys) === JSON.stringify(["uploads/photo.png"]),
    JSON.stringify(keys));
} catch (e) {
  fail("browser run", e && e.stack ? e.stack.split("\n").slice(0, 3).join(" | ") : String(e));
} finally {
  if (context) await context.close().catch(() => {});
  server.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
