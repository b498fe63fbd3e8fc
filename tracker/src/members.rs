//! The members a tracker has heard from, persisted in `<data_dir>/members.json` (their latest heartbeats) so
//! that a restarted tracker still lists them, offline until they beat again (FastDFS keeps the same in
//! `storage_servers_new.dat`). Written at most once a second when something changed (a new or moved member, a
//! file count), atomically (temp file, fsync, rename).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fdfs_common::wire::Heartbeat;

use crate::registry::Registry;

const FILE: &str = "members.json";
const EVERY: Duration = Duration::from_secs(1);

/// Read the remembered members (none when the file does not exist yet). Blocking.
pub fn load(dir: &Path) -> anyhow::Result<Vec<Heartbeat>> {
    std::fs::create_dir_all(dir)?;
    match std::fs::read(dir.join(FILE)) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(FILE).display()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn save(dir: &Path, members: &[Heartbeat]) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(members)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(FILE))?;
    std::fs::File::open(dir)?.sync_all()?;
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
