// A real tus client (tus-js-client, from npm) against the gateway's /tus/: a 5 MiB upload in 1 MiB chunks is
// aborted after its second chunk, then resumed by a new Upload that only knows the upload URL; the finished
// upload's GET /tus/{id} answer must have the size and CRC32 of what was sent, and the file must download.
// usage: node tus.test.mjs GATEWAY_URL. Prints PASS/FAIL lines; exit code 1 if anything failed.
import { crc32 } from "node:zlib";
import * as tus from "tus-js-client";

const gateway = process.argv[2].replace(/\/$/, "");
let failed = 0;
const pass = (what) => console.log(`PASS tus-js-client: ${what}`);
const fail = (what) => {
  failed += 1;
  console.log(`FAIL tus-js-client: ${what}`);
};

const size = 5 * 1024 * 1024 + 321;
const data = Buffer.alloc(size);
for (let i = 0; i < size; i++) data[i] = (i * 7 + (i >> 10)) & 0xff;

function upload(options) {
  return new tus.Upload(data, {
    endpoint: `${gateway}/tus/`,
    chunkSize: 1024 * 1024,
    retryDelays: [],
    metadata: { filename: "tus-js.bin", "meta.client": "tus-js-client" },
    ...options,
  });
}

try {
  // First client: stops after two chunks.
  const url = await new Promise((resolve, reject) => {
    let chunks = 0;
    const up = upload({
      onError: reject,
      onChunkComplete: () => {
        chunks += 1;
        if (chunks === 2) up.abort().then(() => resolve(up.url), reject);
      },
      onSuccess: () => reject(new Error("finished before it was aborted")),
    });
    up.start();
  });
  const head = await fetch(url, { method: "HEAD", headers: { "Tus-Resumable": "1.0.0" } });
  const offset = Number(head.headers.get("upload-offset"));
  if (head.status === 200 && offset === 2 * 1024 * 1024) pass(`aborted after 2 chunks at ${offset}`);
  else fail(`HEAD after the abort: ${head.status} offset ${offset}`);

  // Second client: only the URL.
  let fileId = null;
  const resumedFrom = await new Promise((resolve, reject) => {
    let first = null;
    const up = upload({
      uploadUrl: url,
      onError: reject,
      onProgress: (sent) => {
        if (first === null) first = sent;
      },
      onAfterResponse: (_req, res) => {
        const id = res.getHeader("Fdfs-File-Id");
        if (id) fileId = id;
      },
      onSuccess: () => resolve(first),
    });
    up.start();
  });
  if (resumedFrom !== null && resumedFrom >= 2 * 1024 * 1024) pass("a new client resumed from the URL");
  else fail(`the new client started at ${resumedFrom}`);

  const res = await fetch(url);
  const j = await res.json();
  const want = (crc32(data) >>> 0).toString(16).padStart(8, "0");
  if (res.status === 200 && j.size === size && j.crc32 === want && j.file_id === fileId) {
    pass(`finished as ${j.file_id} (Fdfs-File-Id, size, crc32)`);
  } else {
    fail(`GET ${url}: ${res.status} ${JSON.stringify(j)}; Fdfs-File-Id ${fileId}; want crc32 ${want}`);
  }
  const file = await fetch(`${gateway}/${j.file_id}`);
  const body = Buffer.from(await file.arrayBuffer());
  if (file.status === 200 && body.equals(data)) pass("the file downloads with the same bytes");
  else fail(`download: ${file.status}, ${body.length} bytes`);
} catch (e) {
  fail(`${e && e.stack ? e.stack : e}`);
}
process.exit(failed ? 1 : 0);
