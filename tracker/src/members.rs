//! The members a tracker has heard from, persisted in `<data_dir>/members.json` (their latest heartbeats) so
//! that a restarted tracker still lists them, offline until they beat again (FastDFS keeps the same in
//! `storage_servers_new.dat`). Written at most once a second when something changed (a new or moved member, a
//! file count), atomically (temp file, fsync, rename).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fdfs_common::wire::Heartbeat;

use crate::registry::Registry;

const FILE: &str = "members.json";
const EVERY: Duration = Duration::from_secs(1);

/// Create `data_dir` if needed and prove it writable (a tracker that could not remember its members must not
/// start as if it could). Blocking.
pub fn check_dir(dir: &Path) -> Result<(), fdfs_common::state::StateError> {
    fdfs_common::state::check_writable(dir, "data_dir")
}

/// Read the remembered members (none when the file does not exist yet). Blocking.
pub fn load(dir: &Path) -> anyhow::Result<Vec<Heartbeat>> {
    check_dir(dir)?;
    let path = dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("data_dir {}: {e}", path.display()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow::anyhow!("data_dir {}: {e}", path.display())),
    }
}

fn save(dir: &Path, members: &[Heartbeat]) -> anyhow::Result<()> {
    fdfs_common::state::write_atomic(&dir.join(FILE), &serde_json::to_vec(members)?)?;
    Ok(())
}

/// Persist the registry's members whenever they changed; runs until aborted.
pub async fn persist(registry: Arc<Mutex<Registry>>, dir: std::path::PathBuf) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = {
            let mut r = registry.lock().unwrap_or_else(PoisonError::into_inner);
            if !r.take_dirty() {
                continue;
            }
            r.snapshot()
        };
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || save(&d, &snapshot)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "saving the member list");
                registry
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .dirty_again();
            }
            Err(e) => tracing::warn!(error = %e, "saving the member list"),
        }
    }
}
