//! Gateway behaviour that needs no storage node: routing, validation, auth, limits, tracker fail-over.

use crate::common::{client, closed_addr, error_of, gateway, tracker};
use fdfs_gateway::Config;

fn config(trackers: Vec<String>) -> Config {
    Config {
        trackers,
        ..Config::default()
    }
}

const SOME_ID: &str = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg";

#[tokio::test]
async fn health_page_and_route_order() {
    let gw = gateway(config(vec![closed_addr()])).await;
    let c = client();
    // Alive, but not ready without a reachable tracker.
    let live: serde_json::Value = c
        .get(gw.url("/livez"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(live["status"], "ok");
    assert_eq!(live["role"], "gateway");
    let r = c.get(gw.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let health: serde_json::Value = r.json().await.unwrap();
    assert_eq!(health["status"], "unavailable");
    assert!(
        health["reason"]
            .as_str()
            .unwrap()
            .contains("no tracker reachable"),
        "{health}"
    );

    let page = c.get(gw.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
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

    let metrics = c.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(
        metrics.status(),
        200,
        "/metrics is not shadowed by the file route"
    );

    // Malformed IDs are 400 before any tracker is asked, on every file route.
    for path in [
        "/not-a-file-id",
        "/group1/M00/00/00/short.jpg",
        "/info/x/y",
        "/meta/../../etc/passwd",
    ] {
        let r = c.get(gw.url(path)).send().await.unwrap();
        assert_eq!(
            error_of(r).await,
            (400, "invalid_file_id".to_owned()),
            "{path}"
        );
    }
    let r = c.delete(gw.url("/nope")).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 400);
    // The upload route takes POST only; it is not a file ID.
    let r = c.get(gw.url("/upload")).send().await.unwrap();
    assert_eq!(error_of(r).await, (405, "method_not_allowed".to_owned()));
    let r = c.post(gw.url(&format!("/{SOME_ID}"))).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 405);
    // Percent-encoding that is not UTF-8: a JSON 400, not a plain-text rejection.
    let r = c.get(gw.url("/%FF%FE/M00/00/00/x")).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 400);
    let r = c
        .put(gw.url("/upload/%FF.txt"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 400);
}

#[tokio::test]
async fn all_trackers_down_is_503() {
    let gw = gateway(config(vec![closed_addr(), closed_addr()])).await;
    let c = client();
    let r = c.get(gw.url(&format!("/{SOME_ID}"))).send().await.unwrap();
    assert_eq!(error_of(r).await, (503, "no_tracker".to_owned()));
    let r = c.get(gw.url("/cluster")).send().await.unwrap();
    assert_eq!(error_of(r).await, (503, "no_tracker".to_owned()));
    let r = c
        .put(gw.url("/upload/a.txt"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (503, "no_tracker".to_owned()));
}

#[tokio::test]
async fn api_key_guards_writes_only() {
    let gw = gateway(Config {
        api_key: Some("k3y".into()),
        ..config(vec![closed_addr()])
    })
    .await;
    let c = client();
    let r = c
        .put(gw.url("/upload/a.txt"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (401, "unauthorized".to_owned()));
    let form = reqwest::multipart::Form::new().text("file", "x");
    let r = c
        .post(gw.url("/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 401);
    let r = c
        .put(gw.url("/upload/a.txt"))
        .header("x-api-key", "wrong")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 401);
    let r = c
        .delete(gw.url(&format!("/{SOME_ID}")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 401);
    let r = c
        .put(gw.url(&format!("/meta/{SOME_ID}")))
        .json(&serde_json::json!({"a": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 401);
    let r = c
        .patch(gw.url(&format!("/meta/{SOME_ID}")))
        .json(&serde_json::json!({"a": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 401);
    // With the key, the request gets past auth (and then finds no tracker).
    let r = c
        .put(gw.url("/upload/a.txt"))
        .header("x-api-key", "k3y")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 503);
    // Reads need no key.
    let r = c
        .get(gw.url(&format!("/meta/{SOME_ID}")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 503);
}

#[tokio::test]
async fn bad_uploads_are_4xx() {
    let gw = gateway(Config {
        max_upload_size: 1000,
        ..config(vec![closed_addr()])
    })
    .await;
    let c = client();
    // Declared length over the limit: refused before anything else.
    let r = c
        .put(gw.url("/upload/big.bin"))
        .body(vec![0u8; 1001])
        .send()
        .await
        .unwrap();
    // The refused body was drained, so the client read the answer, not a broken pipe.
    assert!(r.headers().get("connection").is_none());
    assert_eq!(error_of(r).await, (413, "payload_too_large".to_owned()));
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(vec![0u8; 2 << 20]));
    let r = c
        .post(gw.url("/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 413);
    // Not multipart at all.
    let r = c
        .post(gw.url("/upload"))
        .body("plain")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 400);
    // Multipart without a file part.
    let form = reqwest::multipart::Form::new().text("meta.a", "b");
    let r = c
        .post(gw.url("/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (400, "bad_request".to_owned()));
    // A bad group field is refused before any upload.
    let form = reqwest::multipart::Form::new()
        .text("group", "no/slash")
        .text("file", "x");
    let r = c
        .post(gw.url("/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 400);
    // Truncated multipart body: boundary never closed.
    let body = "--XYZ\r\nContent-Disposition: form-data; name=\"meta.a\"\r\n\r\nvalue";
    let r = c
        .post(gw.url("/upload"))
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 400);
    // Metadata that is not a JSON object of strings.
    let r = c
        .put(gw.url(&format!("/meta/{SOME_ID}")))
        .header("content-type", "application/json")
        .body("[1,2]")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 400);
}

#[tokio::test]
async fn cors_when_configured() {
    let gw = gateway(Config {
        cors_origins: vec!["https://app.example".into()],
        ..config(vec![closed_addr()])
    })
    .await;
    let c = client();
    let r = c
        .request(reqwest::Method::OPTIONS, gw.url("/upload"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-api-key")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let r = c
        .get(gw.url("/health"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));

    let plain = gateway(config(vec![closed_addr()])).await;
    let r = c
        .get(plain.url("/health"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn fails_over_to_a_live_tracker() {
    let t = tracker(fdfs_tracker::Config {
        heartbeat_timeout_ms: 300,
        ..fdfs_tracker::Config::default()
    })
    .await;
    let down = closed_addr();
    let gw = gateway(config(vec![down.clone(), t.addr.to_string()])).await;
    let c = client();
    let view: serde_json::Value = c
        .get(gw.url("/cluster"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        view["trackers"],
        serde_json::json!([{"addr": down, "up": false}, {"addr": t.addr.to_string(), "up": true}])
    );
    assert_eq!(view["groups"], serde_json::json!([]));
    // The live tracker answers (no storage yet, and past its warm-up): its 503 is passed through, not "no
    // tracker".
    crate::common::eventually(20, "the tracker past its warm-up", || async {
        let r = c
            .get(format!("http://{}/health", t.addr))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let r = c
        .put(gw.url("/upload/a.txt"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (503, "no_storage".to_owned()));
    // Unknown group: the tracker's 404 passes through.
    let r = c.get(gw.url(&format!("/{SOME_ID}"))).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 404);
}

/// Send `head` (request line, headers and part of a body), then nothing; return what the gateway answers.
async fn stall(addr: std::net::SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.ends_with(b"}") {
                break;
            }
        }
    })
    .await
    .expect("gateway answered a stalled body");
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn stalled_bodies_are_cut_with_408() {
    let gw = gateway(Config {
        body_timeout_secs: 1,
        request_timeout_secs: 1,
        ..config(vec![closed_addr()])
    })
    .await;
    let part = "--XYZ\r\nContent-Disposition: form-data; name=\"meta.a\"\r\n\r\nval";
    let text = stall(
        gw.addr,
        &format!(
            "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-type: multipart/form-data; boundary=XYZ\r\ncontent-length: 1000\r\n\r\n{part}"
        ),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    let text = stall(
        gw.addr,
        &format!(
            "PATCH /meta/{SOME_ID} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"a\""
        ),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
}

/// A client that waits for `100 Continue` (curl does for bodies over 1 MiB) gets the refusal at once, before
/// sending any of its body, and the connection is closed rather than left with a body in flight.
#[tokio::test]
async fn refusals_answer_expect_continue_without_the_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = gateway(Config {
        max_upload_size: 1000,
        api_key: Some("k".into()),
        ..config(vec![closed_addr()])
    })
    .await;
    for (head, status) in [
        // Over the limit, with the right key.
        (
            "PUT /upload/a.bin HTTP/1.1\r\nhost: x\r\nx-api-key: k\r\ncontent-length: 5000000000\r\nexpect: 100-continue\r\n\r\n",
            "413",
        ),
        // No key.
        (
            "PUT /upload/a.bin HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\nexpect: 100-continue\r\n\r\n",
            "401",
        ),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut resp = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tcp.read_to_string(&mut resp),
        )
        .await
        .expect("answered and closed without waiting for the body")
        .unwrap();
        assert!(resp.starts_with(&format!("HTTP/1.1 {status}")), "{resp}");
        assert!(!resp.contains("100 Continue"), "{resp}");
        assert!(resp.to_ascii_lowercase().contains("connection: close"), "{resp}");
    }
}
