//! Helpers for the tests of the gateway's S3 door: a cluster spec with the door on a free port, and a client
//! that signs by presigned URLs (`sigv4::presign`, checked against AWS's own example in the gateway's unit tests),
//! so any `reqwest` request can carry a signature.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use fdfs_gateway::s3::{sigv4, S3Key};
use fdfs_testkit::{Cluster, ClusterSpec};

/// Signs requests to one S3 door.
#[derive(Clone)]
pub struct Door {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The key that signs.
    pub key: S3Key,
}

impl Door {
    /// `spec` with the gateway flags that open the door (on a loopback port the gateway picks, with the key pair
    /// of [`Door::key`]), its embedded namespace under `ns_dir`.
    pub fn spec(spec: ClusterSpec, ns_dir: &Path) -> ClusterSpec {
        let key = Door::key();
        spec.gateway(&[
            "--s3-listen",
            "127.0.0.1:0",
            "--s3-data-dir",
            &ns_dir.display().to_string(),
            "--s3-access-key",
            &key.access_key,
            "--s3-secret-key",
            &key.secret_key,
        ])
    }

    /// The door of `c`, started from [`Door::spec`].
    pub fn of(c: &Cluster) -> Door {
        let addr = c.gateway.s3.expect("the gateway runs with --s3-listen");
        Door {
            base: format!("http://{addr}"),
            key: Door::key(),
        }
    }

    /// The key pair the doors of these tests take.
    pub fn key() -> S3Key {
        S3Key {
            access_key: "SHOPAPP".into(),
            secret_key: "s3-door-test-secret-key-0123456789abcdef".into(),
            buckets: Vec::new(),
            read_only: false,
        }
    }

    /// A presigned URL for `method` on `path` (`/bucket/key`) with `query`, valid 10 minutes.
    pub fn url(&self, method: &str, path: &str, query: &[(&str, &str)]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        sigv4::presign(
            &self.key,
            "us-east-1",
            method,
            &self.base,
            path,
            query,
            now as i64,
            600,
        )
    }

    /// Create `bucket`, waiting out the door's first start (503 while a new namespace is rebuilt).
    pub async fn create_bucket(&self, http: &reqwest::Client, bucket: &str) {
        let what = format!("the door at {} to create bucket {bucket}", self.base);
        fdfs_testkit::eventually_ok(fdfs_testkit::STATE_TIMEOUT, &what, || async {
            let r = http
                .put(self.url("PUT", &format!("/{bucket}"), &[]))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status().is_success() {
                return Ok(());
            }
            let status = r.status();
            Err(format!("{status}: {}", r.text().await.unwrap_or_default()))
        })
        .await;
    }

    /// `bucket/key`'s bytes as the door answers them (`Err` when it does not answer as S3 would).
    pub async fn get(
        &self,
        http: &reqwest::Client,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, String> {
        let r = http
            .get(self.url("GET", &format!("/{bucket}/{key}"), &[]))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match r.status().as_u16() {
            200 => Ok(Some(r.bytes().await.map_err(|e| e.to_string())?.to_vec())),
            404 => Ok(None),
            s => Err(format!("GET {key}: {s}")),
        }
    }

    /// Every key of `bucket`, by ListObjectsV2 pages of 100.
    pub async fn list(&self, http: &reqwest::Client, bucket: &str) -> Result<Vec<String>, String> {
        let mut keys = Vec::new();
        let mut token = String::new();
        loop {
            let mut q = vec![("list-type", "2"), ("max-keys", "100")];
            if !token.is_empty() {
                q.push(("continuation-token", &token));
            }
            let r = http
                .get(self.url("GET", &format!("/{bucket}"), &q))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("list: {}", r.status()));
            }
            let xml = r.text().await.map_err(|e| e.to_string())?;
            keys.extend(between(&xml, "Key"));
            match between(&xml, "NextContinuationToken").pop() {
                Some(t) => token = t,
                None => return Ok(keys),
            }
        }
    }
}

/// The text of every `<tag>` element of `xml`.
pub fn between(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|s| s.split_once(&close).map(|(v, _)| v.to_owned()))
        .collect()
}
