// Browser check of the gateway's cluster dashboard (GET /dashboard): every member of /cluster is rendered with
// its state, space bar, file count, sync and rates, and the charts of rates and sync lag; a screenshot is saved;
// then one storage node is frozen (SIGSTOP, the pid given by run.sh: `fdfs up` would restart a killed one) and
// the page must show it offline within the trackers' heartbeat timeout; it is thawed (SIGCONT) at the end.
// Uses the system chromium (never downloads a browser).
//
// usage: node dashboard.test.mjs GATEWAY_URL OUT_DIR VICTIM_PID VICTIM_ADDR
// Prints `PASS name` / `FAIL name: why` lines; exit code 0 only when every check passed.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [gateway, outDir, victimPid, victimAddr] = process.argv.slice(2);
if (!gateway || !outDir || !victimPid || !victimAddr) {
  console.error("usage: node dashboard.test.mjs GATEWAY_URL OUT_DIR VICTIM_PID VICTIM_ADDR");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
// The trackers' default heartbeat timeout is 6 s; the page polls every 2 s. Generous for a loaded machine.
const OFFLINE_DEADLINE_MS = 45_000;
let failed = 0;
const pass = (name) => console.log(`PASS dashboard: ${name}`);
const fail = (name, why) => { failed++; console.log(`FAIL dashboard: ${name}: ${why}`); };
function check(name, ok, why) { ok ? pass(name) : fail(name, why); return ok; }

const profile = mkdtempSync(join(tmpdir(), "fdfs-e2e-chromium-"));
let context;
try {
  const cluster = await (await fetch(gateway + "/cluster")).json();
  const members = cluster.groups.flatMap((g) => g.members.map((m) => ({ ...m, group: g.name })));
  const victim = members.find((m) => m.addr === victimAddr);
  if (!victim) throw new Error(`no member at ${victimAddr} in /cluster`);

  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    viewport: { width: 1280, height: 800 },
    timeout: 60_000,
  });
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const external = [];
  page.on("request", (r) => { if (!r.url().startsWith(gateway)) external.push(r.url()); });

  const resp = await page.goto(gateway + "/dashboard", { waitUntil: "load", timeout: 30_000 });
  check("dashboard loads as HTML", resp && resp.status() === 200 &&
    (resp.headers()["content-type"] || "").startsWith("text/html"), `status ${resp && resp.status()}`);

  // Every member active, and a second poll done (so rates are numbers, not placeholders).
  await page.waitForFunction((n) => document.querySelectorAll("tr.member[data-state=active]").length === n,
    members.length, { timeout: 60_000 });
  const first = await page.evaluate(() => document.body.dataset.updated);
  await page.waitForFunction((t) => document.body.dataset.updated !== t, first, { timeout: 30_000 });

  const rows = await page.$$eval("tr.member", (trs) => trs.map((tr) => ({
    node: tr.dataset.node, group: tr.dataset.group, state: tr.dataset.state,
    cells: [...tr.querySelectorAll("td")].map((td) => td.textContent.trim()),
    bar: !!tr.querySelector(".bar > span"),
  })));
  check("renders every member of /cluster", rows.length === members.length &&
    members.every((m) => rows.some((r) => r.node === String(m.node_id) && r.group === m.group)),
    `rows ${JSON.stringify(rows.map((r) => r.node))}, members ${members.map((m) => m.node_id)}`);
  const groups = await page.$$eval("section.group", (s) => s.map((e) => e.dataset.group));
  check("renders every group", cluster.groups.every((g) => groups.includes(g.name)), JSON.stringify(groups));
  check("every member has a space bar, file count, sync state and rates", rows.every((r) =>
    r.bar && /^\d+$/.test(r.cells[4]) && /sync|pending/.test(r.cells[5]) &&
    /^\d+\.\d\/s$/.test(r.cells[6]) && /^\d+\.\d\/s$/.test(r.cells[7])), JSON.stringify(rows[0]));

  // Traffic makes the rates move: uploads and downloads through the gateway, then a rate above zero.
  for (let i = 0; i < 6; i++) {
    const up = await fetch(`${gateway}/upload/dashboard-${i}.txt`, { method: "PUT", body: `dashboard ${i}\n` });
    const { file_id } = await up.json();
    await (await fetch(`${gateway}/${file_id}`)).arrayBuffer();
  }
  const moving = await page.waitForFunction(() => {
    const rate = (td) => parseFloat(td.textContent);
    const rows = [...document.querySelectorAll("tr.member")];
    return rows.some((tr) => rate(tr.children[6]) > 0) && rows.some((tr) => rate(tr.children[7]) > 0);
  }, null, { timeout: 30_000 }).then(() => true, () => false);
  check("upload and download rates move with traffic", moving, "every rate stayed 0.0/s");
  const charted = await page.waitForFunction(() => {
    const last = (id) => parseFloat(document.getElementById(id)?.dataset.last ?? "0");
    return last("chart-uploads") > 0 || last("chart-downloads") > 0;
  }, null, { timeout: 30_000 }).then(() => true, () => false);
  const charts = await page.$$eval(".chart", (cs) => cs.map((c) => c.id + ":" + c.dataset.points));
  check("charts of uploads, downloads and sync lag, moving with traffic", charted && charts.length === 3 &&
    (await page.$$(".chart svg polyline")).length === 3, JSON.stringify(charts));
  const legend = await page.textContent(".legend");
  check("the space bars say what they show", /used/.test(legend) && /fullest/.test(legend), legend);
  const barLabel = await page.textContent("tr.member .bar-label");
  check("a bar's label gives used, free and total", /used · .* free of /.test(barLabel), barLabel);
  await page.screenshot({ path: join(outDir, "dashboard.png"), fullPage: true });

  process.kill(Number(victimPid), "SIGSTOP");
  const started = Date.now();
  let offline = false;
  try {
    await page.waitForSelector(`tr.member[data-node="${victim.node_id}"][data-state=offline]`,
      { timeout: OFFLINE_DEADLINE_MS });
    offline = true;
  } catch (e) { /* reported below */ }
  check(`frozen member ${victim.node_id} (${victimAddr}) shows offline`, offline,
    `not offline after ${OFFLINE_DEADLINE_MS / 1000}s`);
  if (offline) console.log(`  (offline after ${((Date.now() - started) / 1000).toFixed(1)} s)`);
  const others = await page.$$eval("tr.member", (trs, id) =>
    trs.filter((tr) => tr.dataset.node !== id).map((tr) => tr.dataset.state), String(victim.node_id));
  check("the other members stay active", others.every((s) => s === "active"), JSON.stringify(others));
  const offlineCount = await page.textContent("#count-offline");
  check("summary counts one member offline", offlineCount === "1", `got ${offlineCount}`);
  await page.screenshot({ path: join(outDir, "dashboard-offline.png"), fullPage: true });

  check("no request leaves the gateway (no CDN)", external.length === 0, external.join(", "));
  check("no JavaScript errors on the page", errors.length === 0, errors.join("; "));
} catch (e) {
  fail("browser run", e && e.stack ? e.stack.split("\n").slice(0, 3).join(" | ") : String(e));
} finally {
  try { process.kill(Number(victimPid), "SIGCONT"); } catch (e) { /* gone already */ }
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
