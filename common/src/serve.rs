//! The HTTP server loop every fdfs process uses instead of `axum::serve`, which sets no header-read timeout:
//! a client that sends half a request head and stops (slowloris) would hold its connection forever. Here each
//! connection is HTTP/1.1 with hyper's `header_read_timeout`, and shutdown is graceful: stop accepting, let
//! requests in flight finish for up to [`SHUTDOWN_GRACE`], then drop what is left.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How long a client may take to send a complete request head. hyper also applies it to an idle keep-alive
/// connection waiting for its next request, so it doubles as the server's keep-alive timeout.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Idle time after which our own HTTP clients drop a pooled connection: well under [`HEADER_READ_TIMEOUT`], so
/// a client never picks a connection the server is about to close (every `reqwest` client here uses it).
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(8);
/// How long requests in flight may run on after shutdown was asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Bind `addr` (port 0 picks a free port) and print `listening on <bound addr>` as one line on stdout, flushed:
/// the line `fdfs up` and the test harnesses wait for to learn where a server is.
pub async fn bind_and_announce(addr: &str) -> std::io::Result<TcpListener> {
    bind_and_announce_as("listening on", addr).await
}

/// [`bind_and_announce`] with another line prefix (a storage node's `internal listening on <addr>`).
pub async fn bind_and_announce_as(what: &str, addr: &str) -> std::io::Result<TcpListener> {
    use std::io::Write;
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{what} {bound}")?;
    out.flush()?;
    Ok(listener)
}

/// The listeners of a server with a FastDFS-protocol door (tracker, storage node): its HTTP listener and,
/// when the caller bound it already, its FastDFS listener. `run(listener, ..)` converts a bare HTTP listener
/// (the server then binds its `fastdfs_listen`, when set); tests pass `(http, fastdfs)`, both on port 0.
#[derive(Debug)]
pub struct Listeners {
    /// The HTTP listener.
    pub http: TcpListener,
    /// The FastDFS listener, already bound; `None`: bind the configured address, if any.
    pub fastdfs: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(http: TcpListener) -> Self {
        Self {
            http,
            fastdfs: None,
        }
    }
}

impl From<(TcpListener, TcpListener)> for Listeners {
    fn from((http, fastdfs): (TcpListener, TcpListener)) -> Self {
        Self {
            http,
            fastdfs: Some(fastdfs),
        }
    }
}

/// The FastDFS address of a server could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("binding the FastDFS address {addr}")]
pub struct BindError {
    /// The configured `fastdfs_listen`.
    pub addr: String,
    #[source]
    source: std::io::Error,
}

impl Listeners {
    /// The HTTP listener and the FastDFS one: the listener given, else `fastdfs_listen` bound here (announced
    /// as `fastdfs listening on ADDR`), else none.
    pub async fn bind_fastdfs(
        self,
        fastdfs_listen: Option<&str>,
    ) -> Result<(TcpListener, Option<TcpListener>), BindError> {
        let fastdfs = match (self.fastdfs, fastdfs_listen) {
            (Some(bound), _) => Some(bound),
            (None, Some(addr)) => Some(
                bind_and_announce_as("fastdfs listening on", addr)
                    .await
                    .map_err(|source| BindError {
                        addr: addr.to_owned(),
                        source,
                    })?,
            ),
            (None, None) => None,
        };
        Ok((self.http, fastdfs))
    }
}

/// At start-up: a loud warning when a server has no cluster secret (none, or empty), logged at `error` so that
/// it shows under any log filter; true when it warned.
pub fn warn_if_no_secret(role: &str, secret: Option<&str>) -> bool {
    if secret.is_some_and(|s| !s.is_empty()) {
        return false;
    }
    tracing::error!(
        "INSECURE: this {role} runs WITHOUT A CLUSTER SECRET: anyone who can reach the cluster's internal \
         routes can upload, overwrite metadata and delete files. Set cluster_secret (env FDFS_CLUSTER_SECRET, \
         e.g. `openssl rand -hex 16`) to the same value on every tracker, storage node and gateway."
    );
    true
}

/// Serve `app` on `listener` until `shutdown` resolves, then drain.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, app, shutdown, HEADER_READ_TIMEOUT).await
}

/// [`serve`] with an explicit header-read timeout.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    header_read_timeout: Duration,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the listener itself stays good.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("requests still running after the shutdown grace period; dropping them");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_stalled_request_head_is_cut_and_shutdown_is_clean() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new().route("/ping", get(|| async { "pong" }));
        let server = tokio::spawn(serve_with(
            listener,
            app,
            async {
                let _ = stop_rx.await;
            },
            Duration::from_millis(300),
        ));

        // A normal request works.
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET /ping HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        ok.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.ends_with("pong"), "{resp}");

        // Half a head, then silence: the server closes the connection after the timeout.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /ping HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a stalled head must not hold the connection");

        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("shutdown finishes")
            .unwrap()
            .unwrap();
    }
}
