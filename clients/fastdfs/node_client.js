// The npm FastDFS client `fdfs` (https://www.npmjs.com/package/fdfs) against fdfs's FastDFS door, as an
// application would use it, with the same files checked over HTTP through the gateway.
//
// Usage: node node_client.js TRACKER_HOST:PORT GATEWAY_URL   (run by check.sh; NODE_PATH finds `fdfs`)
'use strict';

const assert = require('assert');
const crypto = require('crypto');
const { Writable } = require('stream');
const FdfsClient = require('fdfs');

const [trackerAddr, gateway] = process.argv.slice(2);
const [host, port] = trackerAddr.split(':');
const fdfs = new FdfsClient({
  trackers: [{ host, port: Number(port) }],
  timeout: 30000,
  logger: { log() {} },
});

/** Download through the library (whole, or `bytes` from `offset`) into a Buffer. */
async function download(fileId, offset, bytes) {
  const chunks = [];
  const target = new Writable({
    write(chunk, _enc, done) {
      chunks.push(chunk);
      done();
    },
  });
  const options = { target };
  if (offset !== undefined) {
    options.offset = offset;
    options.bytes = bytes;
  }
  await fdfs.download(fileId, options);
  return Buffer.concat(chunks);
}

/** GET over HTTP (the gateway redirects to a storage node). */
async function httpGet(url) {
  const r = await fetch(url);
  return { status: r.status, body: Buffer.from(await r.arrayBuffer()) };
}

/** Poll `check` until it is true (deadline 60 s). */
async function eventually(what, check) {
  const deadline = Date.now() + 60000;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function main() {
  // Upload over FastDFS; the same bytes come back over HTTP under the same ID.
  const data = crypto.randomBytes(300000);
  const fileId = await fdfs.upload(data, { ext: 'jpg' });
  assert.match(fileId, /^group1\/M00\/[0-9A-F]{2}\/[0-9A-F]{2}\/[A-Za-z0-9_-]{27}[0-9]*\.jpg$/);
  const viaHttp = await httpGet(`${gateway}/${fileId}`);
  assert.strictEqual(viaHttp.status, 200);
  assert.ok(viaHttp.body.equals(data), 'HTTP bytes differ from the FastDFS upload');

  // Whole and ranged downloads over FastDFS.
  assert.ok((await download(fileId)).equals(data), 'whole download differs');
  assert.ok((await download(fileId, 1000, 777)).equals(data.subarray(1000, 1777)), 'ranged download differs');

  // File info: size and CRC32 as encoded in the ID.
  const info = await fdfs.getFileInfo(fileId);
  assert.strictEqual(Number(info.size), data.length);

  // Metadata: overwrite, then merge; the HTTP side sees the result.
  await fdfs.setMetaData(fileId, { width: '1024', height: '768' });
  await fdfs.setMetaData(fileId, { height: '800', author: 'ann' }, 'M');
  const meta = await fdfs.getMetaData(fileId);
  assert.deepStrictEqual(meta, { width: '1024', height: '800', author: 'ann' });
  const httpMeta = await (await fetch(`${gateway}/meta/${fileId}`)).json();
  assert.deepStrictEqual(httpMeta, meta);

  // Upload over HTTP, download over FastDFS.
  const httpData = crypto.randomBytes(100000);
  const put = await fetch(`${gateway}/upload/notes.txt`, { method: 'PUT', body: httpData });
  assert.strictEqual(put.status, 200);
  const httpId = (await put.json()).file_id;
  assert.ok((await download(httpId)).equals(httpData), 'FastDFS download of an HTTP upload differs');

  // The monitor view.
  const groups = await fdfs.listGroups();
  assert.strictEqual(groups.count, 1);
  assert.strictEqual(groups.groups[0].groupName, 'group1');
  assert.strictEqual(groups.groups[0].storageCount, 2);
  assert.strictEqual(groups.groups[0].activeCount, 2);

  // Appender files are not supported: a clear errno (ENOTSUP), not a dropped connection.
  await assert.rejects(fdfs.upload(Buffer.from('abc'), { method: 'uploadAppender', ext: 'log' }), (e) => e.errno === 95);

  // Delete over FastDFS: gone on every member once the delete reaches it.
  await fdfs.del(fileId);
  const cluster = await (await fetch(`${gateway}/cluster`)).json();
  const members = cluster.groups[0].members.map((m) => m.public_url);
  assert.strictEqual(members.length, 2);
  for (const base of members) {
    await eventually(`the delete to reach ${base}`, async () => (await httpGet(`${base}/${fileId}`)).status === 404);
  }
  await assert.rejects(download(fileId), (e) => e.errno === 2);
  console.log(`npm fdfs: upload, download (whole, ranged), file info, metadata, HTTP both ways, list groups, delete: ok`);
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
