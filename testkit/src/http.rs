//! HTTP as the tests speak it: reqwest clients, the [`RequestExt`] extension (send with the cluster secret,
//! send and panic on transport errors, expect 200 and parse), the JSON error shape every server answers
//! (`{"error": {"code", "message"}}`: [`error_of`]), and Prometheus `/metrics` text ([`metrics`], [`metric`]).
//!
//! ```ignore
//! let info: Value = c.get(url).ok_json().await;          // asserts 200, panics with the body otherwise
//! let st: Value = c.get(sync_url).secret().ok_json().await;  // with the test cluster's secret
//! assert_eq!(c.delete(url).error().await, (404, "not_found".into()));
//! let r = c.put(url).body("x").go().await;                // any status, transport errors panic
//! ```

use std::future::Future;

use fdfs_common::wire::CLUSTER_SECRET_HEADER;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::node::SECRET;

/// A reqwest client that ignores proxy settings and does not follow redirects (to see the gateway's 302s).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client")
}

/// A reqwest client that ignores proxy settings and follows redirects.
pub fn follow_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

/// Shorthands on a request about to be sent.
pub trait RequestExt: Sized {
    /// Carry the test cluster's secret ([`SECRET`]) in the cluster secret header (internal `/v1` routes).
    fn secret(self) -> Self;
    /// Send; panics on a transport error (naming the request). Any status is returned.
    fn go(self) -> impl Future<Output = Response> + Send;
    /// Send, assert `200 OK` (else panic with the body) and parse the JSON answer.
    fn ok_json<T: DeserializeOwned>(self) -> impl Future<Output = T> + Send;
    /// Send, assert `200 OK` and return the body.
    fn ok_bytes(self) -> impl Future<Output = Vec<u8>> + Send;
    /// Send and return the status and `error.code` of the JSON error answer (see [`error_of`]).
    fn error(self) -> impl Future<Output = (u16, String)> + Send;
    /// Send and parse a 2xx JSON answer; `Err` says why not (transport error, status, body): for polling.
    fn try_json<T: DeserializeOwned>(self) -> impl Future<Output = Result<T, String>> + Send;
    /// Send and return the body of a 2xx answer; `Err` says why not: for polling.
    fn try_bytes(self) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
}

impl RequestExt for RequestBuilder {
    fn secret(self) -> Self {
        self.header(CLUSTER_SECRET_HEADER, SECRET)
    }

    async fn go(self) -> Response {
        let (client, req) = self.build_split();
        let req = req.expect("a well-formed request");
        let what = format!("{} {}", req.method(), req.url());
        client
            .execute(req)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"))
    }

    async fn ok_json<T: DeserializeOwned>(self) -> T {
        json_ok(self.go().await).await
    }

    async fn ok_bytes(self) -> Vec<u8> {
        let r = self.go().await;
        let url = r.url().clone();
        let status = r.status();
        let body = r.bytes().await.expect("body").to_vec();
        assert_eq!(
            status,
            StatusCode::OK,
            "{url}: {}",
            String::from_utf8_lossy(&body[..body.len().min(2000)])
        );
        body
    }

    async fn error(self) -> (u16, String) {
        error_of(self.go().await).await
    }

    async fn try_json<T: DeserializeOwned>(self) -> Result<T, String> {
        let body = self.try_bytes().await?;
        serde_json::from_slice(&body)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&body)))
    }

    async fn try_bytes(self) -> Result<Vec<u8>, String> {
        let r = self.send().await.map_err(|e| format!("{e:?}"))?;
        let (url, status) = (r.url().clone(), r.status());
        let body = r.bytes().await.map_err(|e| format!("{url}: {e:?}"))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(2000)]).into_owned();
            return Err(format!("{url}: {status}: {text}"));
        }
        Ok(body.to_vec())
    }
}

/// Assert `200 OK` (else panic with the body) and parse the JSON answer.
pub async fn json_ok<T: DeserializeOwned>(resp: Response) -> T {
    let url = resp.url().clone();
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(status, StatusCode::OK, "{url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"))
}

/// The status and `error.code` of a JSON error answer; panics unless the body is the error shape with a code
/// and a non-empty message.
pub async fn error_of(resp: Response) -> (u16, String) {
    let url = resp.url().clone();
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("error body");
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{url}: {status}: error body is not JSON ({e}): {text}"));
    let code = v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{url}: {status}: no error.code in {text}"));
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{url}: {status}: no error.message in {text}"
    );
    (status, code.to_owned())
}

/// The `error.code` of a JSON error answer (see [`error_of`]).
pub async fn error_code(resp: Response) -> String {
    error_of(resp).await.1
}

/// `GET {base}/metrics`: asserts 200 and Prometheus text; the body. (Servers run in the test process share
/// one process-wide recorder: their counters include every other in-process server's.)
pub async fn metrics(c: &reqwest::Client, base: &str) -> String {
    let r = c.get(format!("{base}/metrics")).go().await;
    assert_eq!(r.status(), StatusCode::OK, "{base}/metrics");
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain"), "{base}/metrics: {ct}");
    r.text().await.expect("metrics body")
}

/// Value of the first sample whose line starts with `prefix` (a name, or a name and the start of its labels).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sum of every sample of the metric `name` (all its label sets); 0 when there is none.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `GET url`, which must redirect (302); then the `Location`, which must answer 200: (location, bytes).
pub async fn redirected(c: &reqwest::Client, url: &str) -> (String, Vec<u8>) {
    let r = c.get(url).go().await;
    assert_eq!(r.status(), StatusCode::FOUND, "GET {url}");
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let body = c.get(&location).ok_bytes().await;
    (location, body)
}
