//! The fdfs servers run in this process as a [`crate::Server`] on `127.0.0.1:0` (or a given address, to restart one
//! on its port), one function per server, each behind the feature of the same name (`tracker`, `storage`,
//! `gateway`) so a crate's tests link only the servers they start.

/// A tracker with `config`.
#[cfg(feature = "tracker")]
pub async fn tracker(config: fdfs_tracker::Config) -> crate::Server {
    crate::Server::start(|l, stop| fdfs_tracker::run(l, config, stop)).await
}

/// A storage node with `config`, once it answers `/livez` (creating 65536 directories per store path takes
/// a while on a busy machine).
#[cfg(feature = "storage")]
pub async fn storage(config: fdfs_storage::Config) -> crate::Server {
    storage_on("127.0.0.1:0", config).await
}

/// [`storage`] on `listen` (an old address, to restart a node on its port).
#[cfg(feature = "storage")]
pub async fn storage_on(listen: &str, config: fdfs_storage::Config) -> crate::Server {
    let server =
        crate::Server::start_on(listen, |l, stop| fdfs_storage::run(l, config, stop)).await;
    server.wait_live(std::time::Duration::from_secs(300)).await;
    server
}

/// A gateway with `config`.
#[cfg(feature = "gateway")]
pub async fn gateway(config: fdfs_gateway::Config) -> crate::Server {
    crate::Server::start(|l, stop| fdfs_gateway::run(l, config, stop)).await
}
