//! HTTP client for the gateway's public API (see `openapi.yaml`): upload, download, delete, info, metadata and
//! the cluster view. Every non-2xx answer becomes [`CliError::Api`] carrying the server's JSON error message.

use std::time::Duration;

use fdfs_common::wire::{ClusterView, ErrorBody, FileInfo, Metadata};
use fdfs_common::FileId;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::{CliError, Result};

/// Default gateway URL when neither `--gateway` nor `FDFS_GATEWAY` is given.
pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8080";

/// A gateway client. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// Sent as `x-api-key` on every request when set.
    api_key: Option<String>,
}

/// Turn what a user typed into a file ID: a bare ID (`group1/M00/..`), `/group1/M00/..`, or a full download
/// URL (`http://host:port/group1/M00/..?token=..`) are all accepted.
pub fn parse_file_id(input: &str) -> Result<FileId> {
    let mut s = input.trim();
    for scheme in ["http://", "https://"] {
        if let Some(rest) = s.strip_prefix(scheme) {
            s = rest.find('/').map_or("", |i| &rest[i..]);
        }
    }
    let s = s.split(['?', '#']).next().unwrap_or(s);
    s.parse().map_err(|source| CliError::InvalidId {
        input: input.to_owned(),
        source,
    })
}

impl Client {
    /// A client for the gateway at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::Usage(format!(
                "gateway URL must start with http:// or https://, got {base:?}"
            )));
        }
        let http = reqwest::Client::builder()
            .pool_idle_timeout(fdfs_common::serve::CLIENT_POOL_IDLE)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("fdfs-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| CliError::Http {
                url: base.clone(),
                source,
            })?;
        Ok(Client {
            base,
            http,
            api_key: None,
        })
    }

    /// Send `x-api-key: KEY` with every request (gateways configured with `api_key` require it for writes).
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key.filter(|k| !k.is_empty());
        self
    }

    /// The gateway base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Absolute URL of a gateway path (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request to a gateway path.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.api_key {
            Some(k) => req.header(fdfs_common::wire::API_KEY_HEADER, k),
            None => req,
        }
    }

    /// The underlying HTTP client, for requests to absolute URLs (tus upload URLs).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The `x-api-key` header when a key is set (for requests built with [`Client::http`]).
    pub fn key_header(&self) -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        if let Some(v) = self
            .api_key
            .as_deref()
            .and_then(|k| reqwest::header::HeaderValue::from_str(k).ok())
        {
            h.insert(fdfs_common::wire::API_KEY_HEADER, v);
        }
        h
    }

    /// Send a request; a transport failure becomes [`CliError::Http`], a non-2xx answer [`CliError::Api`].
    pub async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let (client, req) = req.build_split();
        let req = req.map_err(|source| CliError::Http {
            url: self.base.clone(),
            source,
        })?;
        let url = req.url().to_string();
        let resp = client
            .execute(req)
            .await
            .map_err(|source| CliError::Http { url, source })?;
        check(resp).await
    }

    async fn send_json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T> {
        let resp = self.send(req).await?;
        let url = resp.url().to_string();
        let bytes = resp.bytes().await.map_err(|source| CliError::Http {
            url: url.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| CliError::Protocol {
            url,
            why: format!("invalid JSON: {e}"),
        })
    }

    /// `GET /cluster`.
    pub async fn cluster(&self) -> Result<ClusterView> {
        self.send_json(self.request(Method::GET, "/cluster")).await
    }

    /// `GET /info/{id}`.
    pub async fn info(&self, id: &FileId) -> Result<FileInfo> {
        self.send_json(self.request(Method::GET, &format!("/info/{id}")))
            .await
    }

    /// `DELETE /{id}`; returns the gateway's JSON answer.
    pub async fn delete(&self, id: &FileId) -> Result<serde_json::Value> {
        let resp = self
            .send(self.request(Method::DELETE, &format!("/{id}")))
            .await?;
        // Some servers answer 204 without a body; treat that as a plain success.
        let url = resp.url().to_string();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| CliError::Http { url, source })?;
        if bytes.is_empty() {
            return Ok(serde_json::json!({ "file_id": id.to_string(), "deleted": true }));
        }
        serde_json::from_slice(&bytes).map_err(|e| CliError::Protocol {
            url: self.url(&format!("/{id}")),
            why: format!("invalid JSON: {e}"),
        })
    }

    /// `GET /meta/{id}`.
    pub async fn meta_get(&self, id: &FileId) -> Result<Metadata> {
        self.send_json(self.request(Method::GET, &format!("/meta/{id}")))
            .await
    }

    /// `PUT /meta/{id}` (replace all, `merge == false`) or `PATCH /meta/{id}` (merge, `merge == true`).
    pub async fn meta_set(&self, id: &FileId, meta: &Metadata, merge: bool) -> Result<Metadata> {
        let method = if merge { Method::PATCH } else { Method::PUT };
        self.send_json(self.request(method, &format!("/meta/{id}")).json(meta))
            .await
    }

    /// `GET /{id}` following the gateway's redirect to a storage node, optionally from byte `from` on.
    /// The caller inspects the status (200, 206 or 416 are returned as is).
    pub async fn download(&self, id: &FileId, from: u64) -> Result<Response> {
        let mut req = self.request(Method::GET, &format!("/{id}"));
        if from > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let (client, req) = req.build_split();
        let req = req.map_err(|source| CliError::Http {
            url: self.base.clone(),
            source,
        })?;
        let url = req.url().to_string();
        let resp = client
            .execute(req)
            .await
            .map_err(|source| CliError::Http { url, source })?;
        if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            return Ok(resp);
        }
        check(resp).await
    }
}

/// Pass a 2xx response through; turn anything else into [`CliError::Api`] with the server's message.
pub async fn check(resp: Response) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.bytes().await.unwrap_or_default();
    Err(api_error(status, &body))
}

/// Build an [`CliError::Api`] from an error status and body (the JSON error shape, or any text).
pub fn api_error(status: StatusCode, body: &[u8]) -> CliError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => CliError::Api {
            status: status.as_u16(),
            code: b.error.code,
            message: b.error.message,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() || text.len() > 200 {
                status
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_owned()
            } else {
                text.replace('\n', " ")
            };
            CliError::Api {
                status: status.as_u16(),
                code: fdfs_common::error::code_for(status).to_owned(),
                message,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_urls() {
        let name = fdfs_common::NameInfo {
            source_id: 1,
            created: 1_700_000_000,
            size: 3,
            crc32: 4,
        }
        .encode(0);
        let id = &format!("group1/M00/00/2A/{name}000.jpg");
        for input in [
            id.clone(),
            format!("/{id}"),
            format!("http://127.0.0.1:8091/{id}"),
            format!("https://cdn.example.com/{id}?token=abc&ts=1"),
        ] {
            assert_eq!(&parse_file_id(&input).unwrap().to_string(), id);
        }
        assert!(parse_file_id("group1/M00/00/2A").is_err());
        assert!(parse_file_id("http://host/").is_err());
    }

    #[test]
    fn api_errors_keep_the_server_message() {
        let body = br#"{"error":{"code":"not_found","message":"file not found"}}"#;
        let e = api_error(StatusCode::NOT_FOUND, body);
        assert_eq!(e.to_string(), "file not found (HTTP 404 not_found)");
        let e = api_error(StatusCode::BAD_GATEWAY, b"");
        assert_eq!(e.to_string(), "Bad Gateway (HTTP 502 bad_gateway)");
    }
}
