//! Gateway behaviour that needs no storage node: routing, validation, auth, limits, tracker fail-over.

use crate::common::{gateway_for, html};
use fdfs_testkit::inproc::tracker;
use fdfs_testkit::raw::{self, How};
use fdfs_testkit::{client, closed_addr, RequestExt, Server};
use reqwest::multipart::{Form, Part};
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

const SOME_ID: &str = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg";

/// A gateway whose only tracker is a closed port, with `adjust` applied to its config.
async fn alone(adjust: impl FnOnce(&mut fdfs_gateway::Config)) -> Server {
    gateway_for(vec![closed_addr()], adjust).await
}

/// `method <gateway><path>`.
fn req(gw: &Server, method: Method, path: &str) -> RequestBuilder {
    client().request(method, gw.url(path))
}

/// Each request must be refused with `status` (and, when given, `code`).
async fn refused(cases: Vec<(RequestBuilder, u16, Option<&str>)>) {
    for (i, (r, status, code)) in cases.into_iter().enumerate() {
        let (got, got_code) = r.error().await;
        assert_eq!(got, status, "case {i}: {got_code}");
        if let Some(code) = code {
            assert_eq!(got_code, code, "case {i}");
        }
    }
}

#[tokio::test]
async fn health_page_and_route_order() {
    let gw = alone(|_| {}).await;
    // Alive, but not ready without a reachable tracker.
    let live: Value = req(&gw, Method::GET, "/livez").ok_json().await;
    assert_eq!(live["status"], "ok");
    assert_eq!(live["role"], "gateway");
    let (status, body) = {
        let r = req(&gw, Method::GET, "/health").go().await;
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 503);
    assert_eq!(body["status"], "unavailable");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("no tracker reachable"),
        "{body}"
    );

    let html = html(&gw, "/").await;
    for needle in [
        "id=\"file-input\"",
        "id=\"upload-button\"",
        "id=\"results\"",
        "x-api-key",
        "localStorage",
    ] {
        assert!(html.contains(needle), "page lacks {needle}");
    }
    assert!(!html.contains("src=\"http"), "page must be self-contained");

    let metrics = req(&gw, Method::GET, "/metrics").go().await;
    assert_eq!(
        metrics.status(),
        200,
        "/metrics is not shadowed by the file route"
    );

    // Malformed IDs are 400 before any tracker is asked, on every file route.
    let mut cases: Vec<_> = [
        "/not-a-file-id",
        "/group1/M00/00/00/short.jpg",
        "/info/x/y",
        "/meta/../../etc/passwd",
    ]
    .into_iter()
    .map(|p| (req(&gw, Method::GET, p), 400, Some("invalid_file_id")))
    .collect();
    let some = format!("/{SOME_ID}");
    cases.extend([
        (req(&gw, Method::DELETE, "/nope"), 400, None),
        // The upload route takes POST only; it is not a file ID.
        (
            req(&gw, Method::GET, "/upload"),
            405,
            Some("method_not_allowed"),
        ),
        (req(&gw, Method::POST, &some), 405, None),
        // Percent-encoding that is not UTF-8: a JSON 400, not a plain-text rejection.
        (req(&gw, Method::GET, "/%FF%FE/M00/00/00/x"), 400, None),
        (
            req(&gw, Method::PUT, "/upload/%FF.txt").body("x"),
            400,
            None,
        ),
    ]);
    refused(cases).await;
}

#[tokio::test]
async fn all_trackers_down_is_503() {
    let gw = gateway_for(vec![closed_addr(), closed_addr()], |_| {}).await;
    let some = format!("/{SOME_ID}");
    refused(vec![
        (req(&gw, Method::GET, &some), 503, Some("no_tracker")),
        (req(&gw, Method::GET, "/cluster"), 503, Some("no_tracker")),
        (
            req(&gw, Method::PUT, "/upload/a.txt").body("hello"),
            503,
            Some("no_tracker"),
        ),
    ])
    .await;
}

#[tokio::test]
async fn api_key_guards_writes_only() {
    let gw = alone(|c| c.api_key = Some("k3y".into())).await;
    let (some, meta) = (format!("/{SOME_ID}"), format!("/meta/{SOME_ID}"));
    let put = || req(&gw, Method::PUT, "/upload/a.txt").body("x");
    refused(vec![
        (put(), 401, Some("unauthorized")),
        (
            req(&gw, Method::POST, "/upload").multipart(Form::new().text("file", "x")),
            401,
            None,
        ),
        (put().header("x-api-key", "wrong"), 401, None),
        (req(&gw, Method::DELETE, &some), 401, None),
        (
            req(&gw, Method::PUT, &meta).json(&json!({"a": "b"})),
            401,
            None,
        ),
        (
            req(&gw, Method::PATCH, &meta).json(&json!({"a": "b"})),
            401,
            None,
        ),
        // With the key, the request gets past auth (and then finds no tracker).
        (put().header("x-api-key", "k3y"), 503, None),
        // Reads need no key.
        (req(&gw, Method::GET, &meta), 503, None),
    ])
    .await;
}

#[tokio::test]
async fn bad_uploads_are_4xx() {
    let gw = alone(|c| c.max_upload_size = 1000).await;
    // Declared length over the limit: refused before anything else.
    let r = req(&gw, Method::PUT, "/upload/big.bin")
        .body(vec![0u8; 1001])
        .go()
        .await;
    // The refused body was drained, so the client read the answer, not a broken pipe.
    assert!(r.headers().get("connection").is_none());
    assert_eq!(
        fdfs_testkit::error_of(r).await,
        (413, "payload_too_large".to_owned())
    );
    let post = |form: Form| req(&gw, Method::POST, "/upload").multipart(form);
    // Truncated multipart body: boundary never closed.
    let truncated = "--XYZ\r\nContent-Disposition: form-data; name=\"meta.a\"\r\n\r\nvalue";
    refused(vec![
        (
            post(Form::new().part("file", Part::bytes(vec![0u8; 2 << 20]))),
            413,
            None,
        ),
        // Not multipart at all.
        (req(&gw, Method::POST, "/upload").body("plain"), 400, None),
        // Multipart without a file part.
        (
            post(Form::new().text("meta.a", "b")),
            400,
            Some("bad_request"),
        ),
        // A bad group field is refused before any upload.
        (
            post(Form::new().text("group", "no/slash").text("file", "x")),
            400,
            None,
        ),
        (
            req(&gw, Method::POST, "/upload")
                .header("content-type", "multipart/form-data; boundary=XYZ")
                .body(truncated),
            400,
            None,
        ),
        // Metadata that is not a JSON object of strings.
        (
            req(&gw, Method::PUT, &format!("/meta/{SOME_ID}"))
                .header("content-type", "application/json")
                .body("[1,2]"),
            400,
            None,
        ),
    ])
    .await;
}

#[tokio::test]
async fn cors_when_configured() {
    let gw = alone(|c| c.cors_origins = vec!["https://app.example".into()]).await;
    let r = req(&gw, Method::OPTIONS, "/upload")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-api-key")
        .go()
        .await;
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let plain = alone(|_| {}).await;
    for (gw, origin) in [
        (&gw, "https://evil.example"),
        (&plain, "https://app.example"),
    ] {
        let r = req(gw, Method::GET, "/health")
            .header("origin", origin)
            .go()
            .await;
        assert!(
            !r.headers().contains_key("access-control-allow-origin"),
            "{origin}"
        );
    }
}

#[tokio::test]
async fn fails_over_to_a_live_tracker() {
    let t = tracker(fdfs_tracker::Config {
        heartbeat_timeout_ms: 300,
        ..fdfs_tracker::Config::default()
    })
    .await;
    let down = closed_addr();
    let gw = gateway_for(vec![down.clone(), t.addr.to_string()], |_| {}).await;
    let view: Value = req(&gw, Method::GET, "/cluster").ok_json().await;
    assert_eq!(
        view["trackers"],
        json!([{"addr": down, "up": false}, {"addr": t.addr.to_string(), "up": true}])
    );
    assert_eq!(view["groups"], json!([]));
    // The live tracker answers once past its warm-up (no storage yet): its 503 is passed through, not "no
    // tracker".
    fdfs_testkit::eventually(20, "the tracker past its warm-up", || async {
        let r = client().get(t.url("/health")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    refused(vec![
        (
            req(&gw, Method::PUT, "/upload/a.txt").body("hello"),
            503,
            Some("no_storage"),
        ),
        // Unknown group: the tracker's 404 passes through.
        (req(&gw, Method::GET, &format!("/{SOME_ID}")), 404, None),
    ])
    .await;
}

#[tokio::test]
async fn stalled_bodies_are_cut_with_408() {
    let gw = alone(|c| {
        c.body_timeout_secs = 1;
        c.request_timeout_secs = 1;
    })
    .await;
    let part = "--XYZ\r\nContent-Disposition: form-data; name=\"meta.a\"\r\n\r\nval";
    for head in [
        format!(
            "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-type: multipart/form-data; boundary=XYZ\r\ncontent-length: 1000\r\n\r\n{part}"
        ),
        format!(
            "PATCH /meta/{SOME_ID} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"a\""
        ),
    ] {
        // Send part of the body, then nothing: the gateway answers.
        let how = How {
            until_answered: true,
            ..How::within(10)
        };
        let a = raw::send(gw.addr, head.as_bytes(), how).await;
        assert!(!a.timed_out, "gateway answered a stalled body: {}", a.summary());
        assert_eq!(a.status, Some(408), "{}", a.summary());
        assert!(a.text().contains("request_timeout"), "{}", a.summary());
    }
}

/// A client that waits for `100 Continue` (curl does for bodies over 1 MiB) gets the refusal at once, before
/// sending any of its body, and the connection is closed rather than left with a body in flight.
#[tokio::test]
async fn refusals_answer_expect_continue_without_the_body() {
    let gw = alone(|c| {
        c.max_upload_size = 1000;
        c.api_key = Some("k".into());
    })
    .await;
    for (head, status) in [
        // Over the limit, with the right key.
        (
            "PUT /upload/a.bin HTTP/1.1\r\nhost: x\r\nx-api-key: k\r\ncontent-length: 5000000000\r\nexpect: 100-continue\r\n\r\n",
            413,
        ),
        // No key.
        (
            "PUT /upload/a.bin HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\nexpect: 100-continue\r\n\r\n",
            401,
        ),
    ] {
        let a = raw::send(gw.addr, head.as_bytes(), How::within(10)).await;
        assert!(
            !a.timed_out,
            "answered and closed without waiting for the body: {}",
            a.summary()
        );
        assert_eq!(a.status, Some(status), "{}", a.summary());
        assert!(
            a.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close")),
            "{:?}",
            a.headers
        );
    }
}
