//! The hostile inputs, by family: targets that try to leave the store or are no file IDs, requests that are not
//! proper HTTP, multipart bodies that break the upload form's rules, metadata and upload parameters a route
//! does not take, Range and conditional headers no client should send, and seeded random mutations of valid
//! file IDs (replayable from [`SEED`]).

use fdfs_testkit::raw::request;
use rand::rngs::StdRng;
use rand::Rng;

/// Random mutations of valid IDs sent to each target.
pub const MUTATIONS: usize = 600;
/// Seed of the mutation corpus (printed, so a failure can be replayed).
pub const SEED: u64 = 0x00f0_0d5e_ed00;
/// The multipart boundary of every form here.
pub const BOUNDARY: &str = "XbOuNdArY";

/// Paths that try to leave the store, or are not file IDs at all; `id` is a real file's ID. The flag says
/// whether every node must refuse the path with a 4xx: the rest name a real file in an unusual but harmless
/// spelling (a `%2F` the router decodes, a leading `//`, a long query) or a file of the other group, and may be
/// served, as long as what is served is that file.
pub fn hostile_paths(id: &str, other_group_id: &str) -> Vec<(Vec<u8>, bool)> {
    let (dir, name) = id.rsplit_once('/').unwrap();
    let refused = [
        "/../../../../etc/passwd".to_owned(),
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd".to_owned(),
        "/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd".to_owned(),
        format!("/{dir}/../../../../.fdfs/db"),
        format!("/{dir}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/.fdfs/db"),
        format!("/{dir}/..%2F..%2F..%2F..%2F.fdfs%2Fdb"),
        format!("/{dir}/..%5C..%5C..%5C{name}"),
        format!("/{dir}/..\\..\\..\\{name}"),
        format!("/{}", id.replace('/', "\\")),
        format!("/{id}%00"),
        format!("/{id}%00.png"),
        format!("/{id}-m"),
        format!("/{id}/.."),
        format!("/{id}/../{name}"),
        format!("/{dir}/./{name}"),
        format!("/{dir}//{name}"),
        format!("/{dir}/"),
        format!("/{dir}/{}", &name[..10]),
        format!("/{dir}/{name}{name}"),
        format!("/{dir}/{name}.toolongext"),
        format!("/{}", id.replacen("M00", "M0G", 1)),
        format!("/{}", id.replacen("M00", "m00", 1)),
        format!("/nosuchgroup/{}", id.split_once('/').unwrap().1),
        format!("/group_name_too_long_x/{}", id.split_once('/').unwrap().1),
        format!("/info/../{id}"),
        format!("/meta/..%2F..%2F{name}"),
        format!("/meta/{dir}/%2e%2e"),
        "/.fdfs/db".to_owned(),
        "/data/00/00/x".to_owned(),
        "/v1/../health".to_owned(),
        format!("/{}", "a/".repeat(4000)),
        format!("/{}", "A".repeat(60_000)),
        format!("/{}", "A".repeat(70_000)),
    ];
    let harmless = [
        format!("/{}", id.replace('/', "%2F")),
        format!("//{id}"),
        format!("/{id}?{}", "q=1&".repeat(10_000)),
        format!("/{}", id.replacen("M00", "MFF", 1)),
        format!("/{other_group_id}"),
    ];
    let mut p: Vec<(Vec<u8>, bool)> = refused
        .into_iter()
        .map(|s| (s.into_bytes(), true))
        .chain(harmless.into_iter().map(|s| (s.into_bytes(), false)))
        .collect();
    // Bytes no URL may hold: NUL, a raw high byte, a raw space inside the target.
    let mut nul = format!("/{dir}/").into_bytes();
    nul.extend_from_slice(name.as_bytes());
    nul.push(0);
    p.push((nul, true));
    let mut high = format!("/{dir}/").into_bytes();
    high.extend_from_slice(&[0xff, 0xfe, b'.', b'.']);
    p.push((high, true));
    p.push((format!("/{dir}/a b").into_bytes(), true));
    p
}

/// Requests that are not proper HTTP.
pub fn garbage() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("binary noise", vec![0x00, 0x01, 0x02, 0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']),
        ("no version", b"GET /health\r\n\r\n".to_vec()),
        ("bad version", b"GET /health HTTP/9.9\r\n\r\n".to_vec()),
        ("lower-case version", b"GET /health http/1.1\r\n\r\n".to_vec()),
        ("empty request line", b"\r\n\r\n\r\n\r\n".to_vec()),
        ("header without colon", b"GET /health HTTP/1.1\r\nHost x\r\n\r\n".to_vec()),
        ("space before colon", b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n".to_vec()),
        ("NUL in header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_vec()),
        ("bad method token", b"G(E)T /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("unknown method", request("FROB", b"/health", "", b"")),
        ("TRACE", request("TRACE", b"/", "", b"")),
        ("CONNECT", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n".to_vec()),
        ("absolute-form target", b"GET http://evil.test/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("asterisk target", b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("negative content-length", b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec()),
        ("two content-lengths", b"PUT /upload/a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde".to_vec()),
        ("content-length overflow", b"PUT /upload/a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\nabc".to_vec()),
        ("CL and TE", b"PUT /upload/a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\nGET /health HTTP/1.1\r\n\r\n".to_vec()),
        ("bad chunk size", b"PUT /upload/a.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec()),
        ("huge chunk size", b"PUT /upload/a.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nffffffffffffffffff\r\nabc\r\n".to_vec()),
        ("unknown transfer-encoding", b"PUT /upload/a.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, zstd\r\nConnection: close\r\n\r\nabc".to_vec()),
        ("header folding", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  folded\r\nConnection: close\r\n\r\n".to_vec()),
        ("HTTP/2 preface on HTTP/1", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("TLS hello", vec![0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03]),
    ]
}

/// A random mutation of `id`, as raw target bytes (seeded, so replayable).
pub fn mutate(rng: &mut StdRng, id: &str) -> Vec<u8> {
    const SPICE: [&[u8]; 20] = [
        b".",
        b"..",
        b"/",
        b"%2e%2e",
        b"%2F",
        b"%2f",
        b"%00",
        b"\\",
        b"%5C",
        b"%",
        b"%zz",
        b"?",
        b"#",
        b"-m",
        b"\xc3\xa9",
        b"\xff",
        b"M00",
        b"../",
        b"~",
        b"%252e",
    ];
    let mut t: Vec<u8> = format!("/{id}").into_bytes();
    let rounds = rng.random_range(1..=3);
    for _ in 0..rounds {
        let at = rng.random_range(0..=t.len());
        match rng.random_range(0..7) {
            0 => {
                // Replace one byte with a random printable one.
                if at < t.len() {
                    t[at] = rng.random_range(0x21..0x7f);
                }
            }
            1 => {
                let s = SPICE[rng.random_range(0..SPICE.len())];
                t.splice(at..at, s.iter().copied());
            }
            2 => {
                // Delete a run.
                let end = (at + rng.random_range(1..6)).min(t.len());
                t.drain(at..end);
            }
            3 => t.truncate(at.max(1)),
            4 => {
                // Duplicate a segment.
                let s = t.clone();
                let end = (at + rng.random_range(1..20)).min(s.len());
                t.splice(at..at, s[at..end].iter().copied());
            }
            5 => {
                // Flip case of a byte (hex dirs must be upper-case, base64 is case-sensitive).
                if at < t.len() {
                    t[at] = if t[at].is_ascii_lowercase() {
                        t[at].to_ascii_uppercase()
                    } else {
                        t[at].to_ascii_lowercase()
                    };
                }
            }
            _ => {
                // A random byte anywhere, control characters included.
                t.insert(at, rng.random::<u8>());
            }
        }
    }
    if t.first() != Some(&b'/') {
        t.insert(0, b'/');
    }
    t
}

/// The head of a multipart file part (`name="file"`) called `filename`.
pub fn multipart_head(boundary: &str, filename: &str) -> String {
    format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
}

/// A form field part `name=value`.
fn field(name: &str, value: &str) -> String {
    format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
}

/// A whole upload form: the fields, then a file part called `filename` holding `payload`, then the end.
fn form(fields: &str, filename: &str) -> Vec<u8> {
    let mut body = fields.as_bytes().to_vec();
    body.extend_from_slice(multipart_head(BOUNDARY, filename).as_bytes());
    body.extend_from_slice(format!("payload\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Upload forms the gateway must refuse, each with its description: fields that try to leave the store or
/// break the name rules, and metadata too large for one file (it would not fit the storage node's URI, and
/// would pile up in memory). `id` is a real file's ID (the master of the slave cases).
pub fn bad_forms(id: &str) -> Vec<(String, Vec<u8>)> {
    // (A slave `<master>-m` without extension would be the master's metadata file name: refused. With an
    // extension, `<master>-m.bin`, it is an ordinary slave name.)
    let mut forms: Vec<(String, Vec<u8>)> = [
        ("group", "../../etc", "f.bin"),
        ("group", "group_name_too_long_x", "f.bin"),
        ("master_file_id", "../../../.fdfs/db", "f.bin"),
        ("prefix", "../x", "f.bin"),
        ("prefix", "-m", "f"),
        ("meta.", "x", "f.bin"),
    ]
    .into_iter()
    .map(|(name, value, filename)| {
        let mut fields = field(name, value);
        if name == "prefix" {
            fields = field("master_file_id", id) + &fields;
        }
        let what = format!("multipart field {name}={value:?} file {filename}");
        (what, form(&fields, filename))
    })
    .collect();
    let fat: String = (0..3)
        .map(|i| field(&format!("meta.k{i}"), &"v".repeat(60_000)))
        .collect();
    forms.push((
        "multipart with 180 KB of metadata".into(),
        form(&fat, "f.txt"),
    ));
    forms.push((
        "multipart without a file part".into(),
        format!("{}--{BOUNDARY}--\r\n", field("group", "group1")).into_bytes(),
    ));
    forms
}

/// A form whose file part is called `filename` (an attempt to name the stored file).
pub fn form_with_filename(filename: &str) -> Vec<u8> {
    form("", filename)
}

/// Bodies for `PUT`/`PATCH /meta/{id}` that are not a JSON object of strings.
pub const BAD_METADATA: [&[u8]; 7] = [
    b"not json",
    b"[1,2,3]",
    b"{\"k\": {\"nested\": 1}}",
    b"{\"k\": 5}",
    b"{\"k\": \"v\"",
    b"\xff\xfe{}",
    b"{\"\": \"empty key\"}",
];

/// Queries of a storage node's `POST /v1/upload` that it must refuse (`id` a real file, `other` one of
/// another group).
pub fn bad_upload_queries(id: &str, other: &str) -> Vec<String> {
    let mut q: Vec<String> = [
        "ext=..%2F..%2Fx",
        "ext=%00",
        "store_path=300",
        "store_path=7",
        "meta=%5B1%5D",
        "meta=not-json",
    ]
    .map(str::to_owned)
    .to_vec();
    q.extend([
        format!("master={other}&prefix=_s"),
        format!("master={id}&prefix=-m"),
        format!("master={id}&prefix=..%2F.."),
        format!("master={id}"),
    ]);
    q
}

/// Range and conditional request headers no client should send (one header line each, without `\r\n`).
pub fn header_abuse() -> Vec<String> {
    let many_ranges: String = (0..2000).map(|i| format!("{i}-{i},")).collect();
    let many_tags: String = (0..2000).map(|i| format!("\"{i}\", ")).collect();
    vec![
        "Range: bytes=99999999999999999999-".to_owned(),
        "Range: bytes=-0".to_owned(),
        "Range: bytes=5-1".to_owned(),
        "Range: bytes=--5".to_owned(),
        "Range: bytes=".to_owned(),
        "Range: bytes=a-b".to_owned(),
        "Range: items=0-5".to_owned(),
        "Range: bytes=0-0,-1".to_owned(),
        format!("Range: bytes={}", many_ranges.trim_end_matches(',')),
        "Range: bytes=18446744073709551615-18446744073709551615".to_owned(),
        "Range: bytes=0-18446744073709551615".to_owned(),
        "Range: bytes=0-9".to_owned(),
        "If-Range: garbage\r\nRange: bytes=0-9".to_owned(),
        "If-Match: \"nope\"".to_owned(),
        "If-None-Match: *".to_owned(),
        format!("If-None-Match: {many_tags}"),
        "If-Modified-Since: Tue, 99 Foo 99999 99:99:99 GMT".to_owned(),
        "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT".to_owned(),
        "Accept-Encoding: gzip;q=garbage, *;q=-1".to_owned(),
    ]
}
