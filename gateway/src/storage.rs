//! Client for the storage nodes' internal routes (`/v1/upload`, `/v1/files`, `/v1/meta`) and their public
//! download route (proxy mode).
//!
//! Operations on an existing file go to the members the tracker located, in order: a member that cannot be
//! reached or does not have the file (404, perhaps not synced yet) is skipped; any other answer is final.
//!
//! Gray failures: a node that is frozen (SIGSTOP, a hung disk, a stalled VM) still accepts connections, so a
//! request to it would wait for its whole timeout. Every call is watched instead: once a node has not answered
//! for `unresponsive_ms`, its `/livez` is asked (bounded by half that); a node that does not answer that either
//! is given up at once (an upload whose body is still held goes to another node, a read or delete to another
//! member) and is a suspect for [`SUSPECT_FOR`]: it is tried last for reads, left out of upload assignments and
//! redirects. A node that is merely slow answers its `/livez` and is waited for as long as it works.
//!
//! A redirect sends the client to a node the gateway does not talk to itself, so nothing would notice that
//! node freezing: before one, [`StorageClient::answers`] makes sure the node answered its `/livez` within the
//! last [`StorageClient::fresh`] (one probe at a time per node, shared by every request waiting on it).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fdfs_common::internal::WithSecret;
use fdfs_common::wire::{Metadata, UploadResult};
use fdfs_common::FileId;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{GatewayError, Result};

/// Where and how to store one upload.
#[derive(Debug, Clone, Default)]
pub struct UploadParams {
    /// Lower-cased extension, validated by [`fdfs_common::fileid::ext_from_filename`].
    pub ext: Option<String>,
    /// Master file of a slave upload, with its prefix.
    pub master: Option<(FileId, String)>,
    /// Metadata stored with the file.
    pub meta: Metadata,
}

/// Header naming an upload attempt (the storage node's `write::abandon::ATTEMPT_HEADER`).
const ATTEMPT_HEADER: &str = "x-fdfs-attempt";

/// How long the gateway keeps telling a node that it gave an upload attempt up (the node remembers attempts
/// for longer).
const ABANDON_FOR: Duration = Duration::from_secs(10 * 60);

/// How long a node that did not answer (nor its `/livez`) stays a suspect.
pub const SUSPECT_FOR: Duration = Duration::from_secs(30);

/// Storage nodes found unresponsive lately, by address; each newly found one is also sent to the reporter
/// (the gateway tells the trackers, which probe it themselves).
#[derive(Debug, Default)]
pub struct Suspects {
    map: Mutex<HashMap<String, Instant>>,
    reporter: Mutex<Option<tokio::sync::mpsc::UnboundedSender<String>>>,
}

impl Suspects {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Send each newly found suspect's address to `tx`.
    pub fn report_to(&self, tx: tokio::sync::mpsc::UnboundedSender<String>) {
        *self
            .reporter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
    }

    /// Note `addr` as unresponsive now.
    pub fn mark(&self, addr: &str) {
        let fresh = {
            let mut map = self.lock();
            let now = Instant::now();
            map.retain(|_, since| now.duration_since(*since) < SUSPECT_FOR);
            map.insert(addr.to_owned(), now).is_none()
        };
        if fresh {
            if let Some(tx) = &*self
                .reporter
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
            {
                let _ = tx.send(addr.to_owned());
            }
        }
    }

    /// Whether `addr` was unresponsive within [`SUSPECT_FOR`].
    pub fn contains(&self, addr: &str) -> bool {
        self.lock()
            .get(addr)
            .is_some_and(|since| since.elapsed() < SUSPECT_FOR)
    }

    /// `addr` answers again: no longer a suspect.
    pub fn clear(&self, addr: &str) {
        self.lock().remove(addr);
    }

    /// `items` with the suspects (by the address `addr_of` gives) moved last, order otherwise kept.
    pub fn last<T>(&self, items: &mut [T], addr_of: impl Fn(&T) -> &str) {
        items.sort_by_key(|i| self.contains(addr_of(i)));
    }
}

/// When a node last answered its `/livez`, and the one probe of it in flight.
#[derive(Debug, Default)]
struct Heard {
    at: Mutex<Option<Instant>>,
    probe: tokio::sync::Mutex<()>,
}

impl Heard {
    fn within(&self, fresh: Duration) -> bool {
        self.at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < fresh)
    }
}

/// A node that neither answered nor answered its `/livez` in time (see the module doc).
#[derive(Debug)]
pub struct Unresponsive;

/// HTTP clients for storage nodes.
#[derive(Debug, Clone)]
pub struct StorageClient {
    /// For streamed bodies (uploads, proxied downloads): connect timeout only.
    streaming: reqwest::Client,
    /// For small requests: bounded end to end.
    small: reqwest::Client,
    cluster_secret: Option<String>,
    /// Silence after which a node's `/livez` is asked.
    unresponsive: Duration,
    /// Nodes found unresponsive lately.
    pub(crate) suspects: Arc<Suspects>,
    /// When each node redirected to last answered its `/livez`.
    heard: Arc<Mutex<HashMap<String, Arc<Heard>>>>,
}

impl StorageClient {
    pub(crate) fn new(
        cluster_secret: Option<String>,
        timeout: Duration,
        unresponsive: Duration,
    ) -> Result<Self, reqwest::Error> {
        let streaming = fdfs_common::internal::builder()
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let small = fdfs_common::internal::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()?;
        Ok(Self {
            streaming,
            small,
            cluster_secret,
            unresponsive,
            suspects: Arc::default(),
            heard: Arc::default(),
        })
    }

    /// Whether `addr`'s `/livez` answers within half the unresponsive bound.
    async fn livez(&self, addr: &str) -> bool {
        self.small
            .get(format!("http://{addr}/livez"))
            .timeout(self.unresponsive / 2)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Note that `addr` answers nothing: a suspect from now on (reported to the trackers).
    fn give_up(&self, addr: &str) {
        self.suspects.mark(addr);
        metrics::counter!("fdfs_gateway_unresponsive_total", "peer" => "storage").increment(1);
        tracing::warn!(
            storage = addr,
            silent_ms = self.unresponsive.as_millis() as u64,
            "storage node answers nothing, not even /livez (frozen?): giving up on it"
        );
    }

    /// How recently a node must have answered its `/livez` for a redirect to go to it without asking again: a
    /// quarter of the unresponsive bound, at most half a second (so at most two probes a second per node).
    pub fn fresh(&self) -> Duration {
        (self.unresponsive / 4).min(Duration::from_millis(500))
    }

    /// Whether `addr` can be sent a client: its `/livez` answered within [`Self::fresh`] (asked now if not, by
    /// one request for everyone waiting). A node that does not answer becomes a suspect; a suspect that does is
    /// one no longer.
    pub async fn answers(&self, addr: &str) -> bool {
        let heard = {
            let mut map = self
                .heard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(map.entry(addr.to_owned()).or_default())
        };
        let fresh = self.fresh();
        if heard.within(fresh) {
            return true;
        }
        let _one = heard.probe.lock().await;
        if heard.within(fresh) {
            return true;
        }
        if self.livez(addr).await {
            *heard
                .at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
            self.suspects.clear(addr);
            true
        } else {
            self.give_up(addr);
            false
        }
    }

    /// Run `call` against `addr`, giving it up when the node has gone silent: every `unresponsive` without an
    /// answer its `/livez` is asked, and a node that does not answer that either is a suspect from now on.
    pub async fn watched<T>(
        &self,
        addr: &str,
        call: impl Future<Output = T>,
    ) -> Result<T, Unresponsive> {
        let probe = async {
            loop {
                tokio::time::sleep(self.unresponsive).await;
                if !self.livez(addr).await {
                    return;
                }
            }
        };
        tokio::select! {
            out = call => Ok(out),
            () = probe => {
                self.give_up(addr);
                Err(Unresponsive)
            }
        }
    }

    /// The cluster secret and the request id on an outgoing request.
    fn with_secret(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        crate::request_id::propagate(req).secret(self.cluster_secret.as_deref())
    }

    /// `POST http://{addr}/v1/upload` with a streamed body.
    pub async fn upload(
        &self,
        addr: &str,
        store_path: u8,
        params: &UploadParams,
        body: reqwest::Body,
    ) -> Result<UploadResult> {
        let mut query = vec![("store_path", store_path.to_string())];
        if let Some(ext) = &params.ext {
            query.push(("ext", ext.clone()));
        }
        if let Some((master, prefix)) = &params.master {
            query.push(("master", master.to_string()));
            query.push(("prefix", prefix.clone()));
        }
        if !params.meta.is_empty() {
            let json = serde_json::to_string(&params.meta)
                .map_err(|e| GatewayError::BadRequest(format!("metadata: {e}")))?;
            query.push(("meta", json));
        }
        // Named, so that the node can be told to drop what it stores should this attempt be given up.
        let attempt = format!("{:032x}", rand::random::<u128>());
        let req = self
            .streaming
            .post(format!("http://{addr}/v1/upload"))
            .query(&query)
            .header(ATTEMPT_HEADER, &attempt)
            .body(body);
        let sent = match self.watched(addr, self.with_secret(req).send()).await {
            Ok(sent) => sent,
            Err(Unresponsive) => {
                self.abandon(addr, attempt);
                return Err(GatewayError::StorageLost(addr.to_owned()));
            }
        };
        let resp = sent.map_err(|e| {
            tracing::warn!(storage = addr, error = %e, "upload to storage node failed");
            if e.is_connect() && !e.is_timeout() {
                // Nothing reached the node.
                return GatewayError::StorageRefused(addr.to_owned());
            }
            self.abandon(addr, attempt.clone());
            if !e.is_timeout() {
                GatewayError::StorageLost(addr.to_owned())
            } else {
                GatewayError::BadGateway("storage node unreachable or upload interrupted".into())
            }
        })?;
        if !resp.status().is_success() {
            if resp.status().is_server_error() {
                // e.g. stored there but short of its write quorum: the client will not be told that file.
                self.abandon(addr, attempt);
            }
            return Err(GatewayError::from_upstream("storage node", resp).await);
        }
        resp.json().await.map_err(|e| {
            tracing::warn!(storage = addr, error = %e, "bad upload answer");
            self.abandon(addr, attempt);
            GatewayError::BadGateway("bad answer from storage node".into())
        })
    }

    /// Tell `addr` that upload `attempt` is given up (the client gets another node's file, or an error), so
    /// that it keeps no file of it; retried in the background, with growing pauses, for [`ABANDON_FOR`]. See
    /// the storage node's `write::abandon`.
    fn abandon(&self, addr: &str, attempt: String) {
        metrics::counter!("fdfs_gateway_upload_attempts_abandoned_total").increment(1);
        let (http, secret, addr) = (
            self.small.clone(),
            self.cluster_secret.clone(),
            addr.to_owned(),
        );
        tokio::spawn(async move {
            let until = Instant::now() + ABANDON_FOR;
            let mut pause = Duration::from_millis(500);
            loop {
                let req = http
                    .post(format!("http://{addr}/v1/abandon/{attempt}"))
                    .timeout(Duration::from_secs(5))
                    .secret(secret.as_deref());
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let removed = r.json::<serde_json::Value>().await.ok();
                        let removed = removed.as_ref().map(|v| &v["removed"]);
                        tracing::info!(storage = %addr, attempt, ?removed, "abandoned upload attempt dropped");
                        return;
                    }
                    Ok(r) if r.status().is_client_error() => {
                        tracing::warn!(storage = %addr, attempt, status = %r.status(), "storage node cannot drop an abandoned upload attempt");
                        return;
                    }
                    _ => {}
                }
                if Instant::now() + pause > until {
                    tracing::warn!(storage = %addr, attempt, "gave up telling the storage node to drop an abandoned upload attempt: it may keep an orphan");
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        });
    }

    /// Send an internal request about `id` to the located members in turn; see the module doc.
    pub async fn on_holder<T: DeserializeOwned>(
        &self,
        addrs: &[String],
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<T> {
        let mut not_found = None;
        for addr in addrs {
            match self.one(addr, method.clone(), path, body).await {
                MemberAnswer::Ok(v) => return Ok(v),
                MemberAnswer::NotFound(e) => not_found = Some(e),
                MemberAnswer::Final(e) => return Err(e),
                MemberAnswer::Unreachable => {}
            }
        }
        Err(not_found.unwrap_or_else(|| {
            GatewayError::BadGateway("no storage member of the group could be reached".into())
        }))
    }

    /// GET `path` on every address at once; the indexes of the addresses that answered 200, with their
    /// answers, in order. Errors other than 404 and unreachable members are logged and skipped.
    pub async fn on_all<T: DeserializeOwned>(
        &self,
        addrs: &[String],
        path: &str,
    ) -> Result<Vec<(usize, T)>> {
        let answers = futures_util::future::join_all(
            addrs
                .iter()
                .map(|a| self.one::<T>(a, Method::GET, path, None::<&()>)),
        )
        .await;
        let mut found = Vec::new();
        let mut not_found = None;
        for (i, answer) in answers.into_iter().enumerate() {
            match answer {
                MemberAnswer::Ok(v) => found.push((i, v)),
                MemberAnswer::NotFound(e) => not_found = Some(e),
                MemberAnswer::Final(e) => {
                    tracing::warn!(storage = %addrs[i], error = %e, "skipping member");
                }
                MemberAnswer::Unreachable => {}
            }
        }
        if found.is_empty() {
            return Err(not_found.unwrap_or_else(|| {
                GatewayError::BadGateway("no storage member of the group could be reached".into())
            }));
        }
        Ok(found)
    }

    async fn one<T: DeserializeOwned>(
        &self,
        addr: &str,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + Sync)>,
    ) -> MemberAnswer<T> {
        let mut req = self.small.request(method, format!("http://{addr}{path}"));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = match self.watched(addr, self.with_secret(req).send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(storage = addr, error = %e, "storage node unreachable");
                return MemberAnswer::Unreachable;
            }
            Err(Unresponsive) => return MemberAnswer::Unreachable,
        };
        let status = resp.status();
        if status.is_success() {
            return match resp.json().await {
                Ok(v) => MemberAnswer::Ok(v),
                Err(e) => {
                    tracing::warn!(storage = addr, error = %e, "bad answer from storage node");
                    MemberAnswer::Final(GatewayError::BadGateway(
                        "bad answer from storage node".into(),
                    ))
                }
            };
        }
        let err = GatewayError::from_upstream("storage node", resp).await;
        if status == StatusCode::NOT_FOUND {
            MemberAnswer::NotFound(err)
        } else {
            MemberAnswer::Final(err)
        }
    }

    /// `PUT http://{addr}/v1/import/{id}` with a streamed body (see `crate::import`); the node's JSON answer.
    pub async fn import(
        &self,
        addr: &str,
        id: &FileId,
        query: &[(String, String)],
        length: Option<u64>,
        body: reqwest::Body,
    ) -> Result<serde_json::Value> {
        let mut req = self
            .streaming
            .put(format!("http://{addr}/v1/import/{id}"))
            .query(query)
            .body(body);
        if let Some(n) = length {
            req = req.header(reqwest::header::CONTENT_LENGTH, n);
        }
        let resp = self.with_secret(req).send().await.map_err(|e| {
            tracing::warn!(storage = addr, error = %e, "import to storage node failed");
            GatewayError::BadGateway("storage node unreachable or import interrupted".into())
        })?;
        if !resp.status().is_success() {
            return Err(GatewayError::from_upstream("storage node", resp).await);
        }
        resp.json().await.map_err(|e| {
            tracing::warn!(storage = addr, error = %e, "bad import answer");
            GatewayError::BadGateway("bad answer from storage node".into())
        })
    }

    /// Start a public download request (GET or HEAD) on `url`, for proxy mode; the caller streams the answer.
    pub async fn fetch(
        &self,
        method: Method,
        url: &str,
        headers: reqwest::header::HeaderMap,
    ) -> Result<reqwest::Response, reqwest::Error> {
        crate::request_id::propagate(self.streaming.request(method, url).headers(headers))
            .send()
            .await
    }
}

/// Resumable uploads (`/tus/`): calls to the one node that holds an appender file.
impl StorageClient {
    /// A small request to a node's `/v1/appender` routes; a node that cannot be reached is a 503 (the upload
    /// may come back with it).
    pub async fn appender_call<T: DeserializeOwned>(
        &self,
        addr: &str,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<T> {
        match self.one(addr, method, path, body).await {
            MemberAnswer::Ok(v) => Ok(v),
            MemberAnswer::NotFound(e) | MemberAnswer::Final(e) => Err(e),
            MemberAnswer::Unreachable => Err(GatewayError::Upstream {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "storage_unreachable".into(),
                message: "the storage node holding this upload cannot be reached; try again later"
                    .into(),
            }),
        }
    }

    /// `PATCH http://{addr}/v1/appender/{name}` with a streamed chunk and the append headers.
    pub async fn appender_append<T: DeserializeOwned>(
        &self,
        addr: &str,
        name: &str,
        headers: &[(&'static str, String)],
        body: reqwest::Body,
    ) -> Result<T> {
        let mut req = self
            .streaming
            .patch(format!("http://{addr}/v1/appender/{name}"))
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = self.with_secret(req).send().await.map_err(|e| {
            tracing::warn!(storage = addr, error = %e, "append to storage node failed");
            if e.is_connect() {
                GatewayError::Upstream {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "storage_unreachable".into(),
                    message:
                        "the storage node holding this upload cannot be reached; try again later"
                            .into(),
                }
            } else {
                GatewayError::BadGateway("storage node unreachable or append interrupted".into())
            }
        })?;
        if !resp.status().is_success() {
            return Err(GatewayError::from_upstream("storage node", resp).await);
        }
        resp.json().await.map_err(|e| {
            tracing::warn!(storage = addr, error = %e, "bad append answer");
            GatewayError::BadGateway("bad answer from storage node".into())
        })
    }
}

enum MemberAnswer<T> {
    Ok(T),
    NotFound(GatewayError),
    Final(GatewayError),
    Unreachable,
}
