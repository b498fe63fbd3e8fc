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
/// The members being drained (node ids), beside the members.
const DRAINING: &str = "draining.json";
const EVERY: Duration = Duration::from_secs(1);

/// Create `data_dir` if needed and prove it writable (a tracker that could not remember its members must not
/// start as if it could). Blocking.
pub fn check_dir(dir: &Path) -> Result<(), fdfs_common::state::StateError> {
    fdfs_common::state::check_writable(dir, "data_dir")
}

/// Read a JSON file of the data dir (the default when it does not exist yet). Blocking.
fn read<T: serde::de::DeserializeOwned + Default>(dir: &Path, file: &str) -> anyhow::Result<T> {
    let path = dir.join(file);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("data_dir {}: {e}", path.display()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(anyhow::anyhow!("data_dir {}: {e}", path.display())),
    }
}

/// Read the remembered members and the drained ones (none when the files do not exist yet). Blocking.
pub fn load(dir: &Path) -> anyhow::Result<(Vec<Heartbeat>, Vec<u32>)> {
    check_dir(dir)?;
    Ok((read(dir, FILE)?, read(dir, DRAINING)?))
}

fn save(dir: &Path, members: &[Heartbeat], draining: &[u32]) -> anyhow::Result<()> {
    for (file, bytes) in [
        (FILE, serde_json::to_vec(members)?),
        (DRAINING, serde_json::to_vec(draining)?),
    ] {
        let path = dir.join(file);
        fdfs_common::state::write_atomic(&path, &bytes)
            .map_err(|e| anyhow::anyhow!("data_dir {}: cannot save: {e}", path.display()))?;
    }
    Ok(())
}

/// Persist the registry's members whenever they changed; runs until aborted. A failure is kept in `error`
/// (the tracker's `/health` turns unready with it) until a save succeeds again.
pub async fn persist(
    registry: Arc<Mutex<Registry>>,
    dir: std::path::PathBuf,
    error: Arc<Mutex<Option<String>>>,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = {
            let mut r = registry.lock().unwrap_or_else(PoisonError::into_inner);
            if !r.take_dirty() {
                continue;
            }
            (r.snapshot(), r.draining())
        };
        let d = dir.clone();
        let saved = tokio::task::spawn_blocking(move || save(&d, &snapshot.0, &snapshot.1)).await;
        *error.lock().unwrap_or_else(PoisonError::into_inner) = match &saved {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(e) => Some(e.to_string()),
        };
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "saving the member list");
                registry
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .dirty_again();
            }
            Err(e) => tracing::warn!(error = %e, "saving the member list"),
        }
    }
}
