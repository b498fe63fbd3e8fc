//! A server future run in this process on `127.0.0.1:0`: `Server::start(|listener, shutdown| run(listener,
//! config, shutdown))` works for `fdfs_tracker::run`, `fdfs_storage::run` and `fdfs_gateway::run`; and
//! [`closed_addr`], an address where nothing listens.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Resolves when the [`Server`] is stopped or dropped (the `shutdown` future a server's `run` takes).
pub struct Shutdown(oneshot::Receiver<()>);

impl Future for Shutdown {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A dropped sender also means "stop".
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// A server running in this process; asked to stop (gracefully) when dropped.
pub struct Server {
    /// The bound address (with the port the kernel picked when asked for port 0).
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), String>>>,
}

impl Server {
    /// Bind `127.0.0.1:0` and spawn `run(listener, shutdown)` on the current runtime.
    pub async fn start<F, Fut, E>(run: F) -> Server
    where
        F: FnOnce(TcpListener, Shutdown) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        Server::start_on("127.0.0.1:0", run).await
    }

    /// [`Server::start`] on a given address (e.g. to restart on the same port: while the old socket lingers,
    /// the bind is retried for up to 10 s).
    pub async fn start_on<F, Fut, E>(listen: &str, run: F) -> Server
    where
        F: FnOnce(TcpListener, Shutdown) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let t0 = std::time::Instant::now();
        let listener = loop {
            match TcpListener::bind(listen).await {
                Ok(l) => break l,
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && t0.elapsed() < Duration::from_secs(10) =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("bind {listen}: {e}"),
            }
        };
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel();
        let fut = run(listener, Shutdown(rx));
        let task = tokio::spawn(async move { fut.await.map_err(|e| format!("{e:#}")) });
        Server {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://ADDR`.
    pub fn base(&self) -> String {
        self.url("")
    }

    /// Whether the server's task has ended (it failed, or it was stopped).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Wait until `GET /health` (ready) answers 2xx; panics if the server exits first or after `timeout`.
    pub async fn wait_healthy(&self, timeout: Duration) {
        self.wait_answering("/health", timeout).await;
    }

    /// Wait until `GET /livez` (alive, whether or not ready: a storage node without a tracker) answers 2xx.
    pub async fn wait_live(&self, timeout: Duration) {
        self.wait_answering("/livez", timeout).await;
    }

    async fn wait_answering(&self, path: &str, timeout: Duration) {
        let client = crate::client();
        let url = self.url(path);
        crate::eventually(
            timeout.as_secs().max(1),
            &format!("{url} to answer"),
            || {
                assert!(!self.is_finished(), "server at {} exited early", self.addr);
                let req = client.get(&url).send();
                async move {
                    req.await
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|_| ())
                }
            },
        )
        .await;
    }

    /// Stop gracefully: signal, then wait (up to 60 s) for `run` to return; panics if it failed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("server task");
        match tokio::time::timeout(Duration::from_secs(60), task).await {
            Err(_) => panic!("server at {} did not stop within 60s", self.addr),
            Ok(Err(e)) => panic!("server at {} panicked: {e}", self.addr),
            Ok(Ok(Err(e))) => panic!("server at {} failed: {e}", self.addr),
            Ok(Ok(Ok(()))) => {}
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An address where nothing listens, and nothing will while the test process runs: a socket bound to
/// `127.0.0.1:0` and never listening holds the port (connections to it are refused), so no server of a test
/// running alongside can be given it, as it could if the port were bound and released.
pub fn closed_addr() -> String {
    use rustix::net::{AddressFamily, SocketType};
    static HELD: std::sync::Mutex<Vec<std::os::fd::OwnedFd>> = std::sync::Mutex::new(Vec::new());
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).expect("socket");
    let any = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0);
    rustix::net::bind(&fd, &any).expect("bind 127.0.0.1:0");
    let addr = std::net::SocketAddr::try_from(rustix::net::getsockname(&fd).expect("getsockname"))
        .expect("an IP address");
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(fd);
    addr.to_string()
}
