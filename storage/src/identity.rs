//! Who this node is: its node id, and the addresses it tells the others.
//!
//! The node id is written into every file ID the node creates and keys the node at the trackers and in its
//! peers' sync positions, so it must never change with an address. It is chosen once and kept in
//! `<store path 0>/.fdfs/node_id` (decimal): the `node_id` setting when given (as FastDFS's `storage_ids.conf`
//! assigns ids), else a random one for a new store. A store that has run before this file existed keeps the id
//! it had then (crc32 of `<group>/<host:port>`), so existing file IDs and peer positions stay valid. A store
//! whose file says another id than the `node_id` setting is refused: one of the two is a mistake.
//!
//! The addresses are checked before anything is announced: `0.0.0.0` (a bind-everything address nobody can
//! connect to) and a loopback address while a tracker is on another host are refused with the setting to fix.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use fdfs_common::state::StateError;
use fdfs_common::GroupName;

/// The node id file, under store path 0.
pub const FILE: &str = ".fdfs/node_id";

/// Where the node id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from the store's node id file.
    Store,
    /// The `node_id` setting, recorded in a store that had none.
    Setting,
    /// A store from before the node id file: the id derived from the address as it was then, now recorded.
    Derived,
    /// A new store: a random id, now recorded.
    Generated,
}

/// Why the node id cannot be settled.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The node id file cannot be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The node id file holds no node id.
    #[error("store_path {}: {} does not hold a node id (a number from 1 to 4294967295): {text:?}", root.display(), FILE)]
    Corrupt {
        /// Store path 0.
        root: PathBuf,
        /// The start of what the file holds.
        text: String,
    },
    /// The `node_id` setting differs from the store's.
    #[error(
        "node_id = {configured} is set, but store_path {} belongs to node {stored} ({}): a store keeps the id its \
         files were created under. Remove node_id from the config (or set it to {stored}); to give this host a new \
         id, start it on an empty store path",
        root.display(), FILE
    )]
    Mismatch {
        /// The `node_id` setting.
        configured: u32,
        /// The store's id.
        stored: u32,
        /// Store path 0.
        root: PathBuf,
    },
    /// `node_id = 0`.
    #[error("node_id = 0 is not a valid node id (use 1 to 4294967295)")]
    Zero,
}

/// The id of the store at `root` (store path 0), settling and recording it on first use. `derived` is the
/// pre-`node_id`-file id for this node (used only for a store that has run before). Blocking.
pub fn settle(
    root: &Path,
    configured: Option<u32>,
    derived: impl FnOnce() -> u32,
) -> Result<(u32, Origin), IdentityError> {
    if configured == Some(0) {
        return Err(IdentityError::Zero);
    }
    let path = root.join(FILE);
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            text.trim()
                .parse::<u32>()
                .ok()
                .filter(|id| *id != 0)
                .ok_or_else(|| IdentityError::Corrupt {
                    root: root.to_owned(),
                    text: text.trim().chars().take(40).collect(),
                })?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(StateError::new("store_path", &path, "cannot read the node id", e).into())
        }
    };
    let (id, origin) = match (stored, configured) {
        (Some(stored), Some(configured)) if stored != configured => {
            return Err(IdentityError::Mismatch {
                configured,
                stored,
                root: root.to_owned(),
            })
        }
        (Some(stored), _) => return Ok((stored, Origin::Store)),
        (None, Some(configured)) => (configured, Origin::Setting),
        // The index exists: this store has run before, under the id derived from its address.
        (None, None) if root.join(".fdfs/db").exists() => (derived(), Origin::Derived),
        (None, None) => (rand::random_range(1..=u32::MAX), Origin::Generated),
    };
    let state = root.join(".fdfs");
    fdfs_common::state::check_writable(&state, "store_path")?;
    fdfs_common::state::write_atomic(&path, format!("{id}\n").as_bytes())
        .map_err(|e| StateError::new("store_path", &path, "cannot write the node id", e))?;
    Ok((id, origin))
}

/// The id a node got before ids were recorded: crc32 of `group/addr`.
pub fn derived_id(group: &GroupName, addr: &str) -> u32 {
    crc32fast::hash(format!("{group}/{addr}").as_bytes())
}

/// `host` of a `host:port` (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// `host:port` of a tracker given as `host:port` or a base URL.
fn tracker_authority(tracker: &str) -> &str {
    let rest = tracker.split_once("://").map_or(tracker, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// Whether `host` names this machine only (a loopback address or `localhost`).
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuse addresses the other processes cannot use: `what` is the address as announced (`host:port`), `setting`
/// the setting that gives it, `trackers` the configured trackers (a loopback address is fine only when every
/// tracker is on this machine too).
pub fn check_address(
    what: &str,
    addr: &str,
    setting: &str,
    trackers: &[String],
) -> Result<(), String> {
    let host = host_of(addr);
    if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        return Err(format!(
            "the {what} is {addr}, which no other host can connect to: set {setting} to an address this host is \
             reached at (see docs/DEPLOY.md)"
        ));
    }
    if is_loopback(host) {
        if let Some(remote) = trackers
            .iter()
            .map(|t| tracker_authority(t))
            .find(|t| !is_loopback(host_of(t)))
        {
            return Err(format!(
                "the {what} is {addr}, a loopback address, but tracker {remote} is on another host: the trackers, \
                 gateways and peers there could not reach this node. Set {setting} to an address of this host \
                 that they can reach"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_store_gets_a_random_id_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let (id, origin) = settle(dir.path(), None, || unreachable!()).unwrap();
        assert_eq!(origin, Origin::Generated);
        assert_ne!(id, 0);
        assert_eq!(
            settle(dir.path(), None, || 7).unwrap(),
            (id, Origin::Store),
            "the recorded id wins over any derivation"
        );
        assert_eq!(
            settle(dir.path(), Some(id), || 7).unwrap(),
            (id, Origin::Store)
        );
        let e = settle(dir.path(), Some(id ^ 1), || 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("belongs to node {id}")), "{e}");
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
    }

    #[test]
    fn an_old_store_keeps_its_derived_id_and_a_setting_is_recorded() {
        let old = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(old.path().join(".fdfs/db")).unwrap();
        let group: GroupName = "group1".parse().unwrap();
        let want = derived_id(&group, "10.0.0.5:23000");
        assert_eq!(
            settle(old.path(), None, || want).unwrap(),
            (want, Origin::Derived)
        );
        assert_eq!(
            std::fs::read_to_string(old.path().join(FILE)).unwrap(),
            format!("{want}\n")
        );

        let set = tempfile::tempdir().unwrap();
        assert_eq!(
            settle(set.path(), Some(42), || 7).unwrap(),
            (42, Origin::Setting)
        );
        assert_eq!(settle(set.path(), None, || 7).unwrap(), (42, Origin::Store));
        assert!(matches!(
            settle(set.path(), Some(0), || 7),
            Err(IdentityError::Zero)
        ));

        std::fs::write(set.path().join(FILE), "banana\n").unwrap();
        let e = settle(set.path(), None, || 7).unwrap_err().to_string();
        assert!(e.contains("does not hold a node id"), "{e}");
    }

    #[test]
    fn unusable_addresses_are_refused_with_the_setting() {
        let remote = ["10.1.2.3:22122".to_owned()];
        let local = [
            "127.0.0.1:22122".to_owned(),
            "http://localhost:22122/".to_owned(),
        ];
        let e = check_address("public address", "0.0.0.0:23000", "public_url", &local).unwrap_err();
        assert!(e.contains("public_url"), "{e}");
        assert!(check_address("a", "[::]:23000", "public_url", &local).is_err());
        let e = check_address("a", "127.0.0.1:23000", "public_url", &remote).unwrap_err();
        assert!(e.contains("10.1.2.3:22122"), "{e}");
        assert!(check_address("a", "localhost:23000", "x", &remote).is_err());
        assert!(check_address("a", "127.0.0.1:23000", "x", &local).is_ok());
        assert!(check_address("a", "10.0.0.7:23000", "x", &remote).is_ok());
        assert!(check_address("a", "storage1.example:23000", "x", &remote).is_ok());
    }
}
