//! The tracker's FastDFS protocol door (`fastdfs_listen`): FastDFS clients ask it where to upload and where to
//! read, and `fdfs_monitor`-style tools list groups and storage nodes. Every answer comes from the same
//! [`Registry`] the HTTP routes use; the storage address it gives is the member's FastDFS port (from its
//! heartbeat) on the host of its announced address. Codec and connection loop: [`fdfs_common::fastdfs`].

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use fdfs_common::fastdfs::{
    cmd, errno, fixed_str, host_of, put_fixed, put_u64, Conn, IpWidth, DOMAIN_LEN, GROUP_LEN,
    STORAGE_ID_LEN, VERSION_LEN,
};
use fdfs_common::wire::{GroupInfo, MemberInfo, MemberState};
use fdfs_common::{FileId, GroupName};

use crate::registry::Registry;
use crate::Error;

/// Largest request body a tracker command takes (a group name and a file name); longer ones are refused.
const MAX_BODY: u64 = 1024;
/// FastDFS storage states (`FDFS_STORAGE_STATUS_*`).
const STATUS_SYNCING: u8 = 2;
const STATUS_OFFLINE: u8 = 5;
const STATUS_ACTIVE: u8 = 7;
/// `subdir_count_per_path`: two levels of 256 directories.
const SUBDIRS: u64 = 256;

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct Door {
    /// The tracker's registry, shared with its HTTP routes.
    pub registry: Arc<Mutex<Registry>>,
    /// Width of the address fields of replies (`fastdfs_ip_width`).
    pub width: IpWidth,
}

impl Door {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A command's failure: the status to answer.
struct Refused(u8);

impl From<Error> for Refused {
    fn from(e: Error) -> Self {
        Refused(match e {
            Error::Invalid(_) => errno::EINVAL,
            Error::InsufficientStorage(_) => errno::ENOSPC,
            _ => errno::ENOENT,
        })
    }
}

/// Serve one connection until the client quits or closes it, or breaks the protocol.
pub(crate) async fn handle(door: Door, mut conn: Conn) {
    loop {
        let Some(header) = conn.next_request().await else {
            return;
        };
        if header.len > MAX_BODY {
            // Not worth reading: answer and close.
            tracing::info!(peer = %conn.peer(), cmd = header.cmd, len = header.len, "fastdfs request too long");
            fdfs_common::fastdfs::count("tracker", header.cmd, errno::EINVAL);
            let _ = conn.reply(errno::EINVAL, &[]).await;
            return;
        }
        let body = match conn
            .read_body(usize::try_from(header.len).unwrap_or(0))
            .await
        {
            Ok(b) => b,
            Err(_) => return,
        };
        let (status, reply) = match answer(&door, header.cmd, &body) {
            Ok(reply) => (0, reply),
            Err(Refused(status)) => (status, Vec::new()),
        };
        fdfs_common::fastdfs::count("tracker", header.cmd, status);
        if status != 0 {
            tracing::debug!(cmd = header.cmd, status, "fastdfs request refused");
        }
        if conn.reply(status, &reply).await.is_err() {
            return;
        }
    }
}

fn answer(door: &Door, command: u8, body: &[u8]) -> Result<Vec<u8>, Refused> {
    let now = Instant::now();
    match command {
        cmd::ACTIVE_TEST => Ok(Vec::new()),
        cmd::QUERY_STORE_WITHOUT_GROUP_ONE
        | cmd::QUERY_STORE_WITH_GROUP_ONE
        | cmd::QUERY_STORE_WITHOUT_GROUP_ALL
        | cmd::QUERY_STORE_WITH_GROUP_ALL => {
            let with_group = matches!(
                command,
                cmd::QUERY_STORE_WITH_GROUP_ONE | cmd::QUERY_STORE_WITH_GROUP_ALL
            );
            let group = if with_group {
                Some(group_field(body, true)?)
            } else if body.is_empty() {
                None
            } else {
                return Err(Refused(errno::EINVAL));
            };
            let all = matches!(
                command,
                cmd::QUERY_STORE_WITHOUT_GROUP_ALL | cmd::QUERY_STORE_WITH_GROUP_ALL
            );
            query_store(door, group.as_ref(), all, now)
        }
        cmd::QUERY_FETCH_ONE | cmd::QUERY_UPDATE | cmd::QUERY_FETCH_ALL => {
            let id = file_id(body)?;
            query_fetch(door, &id, command == cmd::QUERY_FETCH_ALL, now)
        }
        cmd::LIST_ALL_GROUPS | cmd::LIST_ONE_GROUP => {
            let only = if command == cmd::LIST_ONE_GROUP {
                Some(group_field(body, true)?)
            } else if body.is_empty() {
                None
            } else {
                return Err(Refused(errno::EINVAL));
            };
            list_groups(door, only.as_ref(), now)
        }
        cmd::LIST_STORAGE => list_storage(door, body, now),
        _ => Err(Refused(errno::EINVAL)),
    }
}

/// The group name field at the start of `body`; `exact`: the body is only that field.
fn group_field(body: &[u8], exact: bool) -> Result<GroupName, Refused> {
    if body.len() < GROUP_LEN || (exact && body.len() != GROUP_LEN) {
        return Err(Refused(errno::EINVAL));
    }
    std::str::from_utf8(fixed_str(&body[..GROUP_LEN]))
        .ok()
        .and_then(|g| g.parse().ok())
        .ok_or(Refused(errno::EINVAL))
}

/// `group(16) + remote file name` as a file ID.
fn file_id(body: &[u8]) -> Result<FileId, Refused> {
    let group = group_field(body, false)?;
    let name =
        std::str::from_utf8(fixed_str(&body[GROUP_LEN..])).map_err(|_| Refused(errno::EINVAL))?;
    format!("{group}/{name}")
        .parse()
        .map_err(|_| Refused(errno::EINVAL))
}

/// `ip(W-1) + port(8)` of a member's FastDFS door.
fn put_addr(out: &mut Vec<u8>, width: IpWidth, addr: &str, port: u16) {
    put_fixed(out, host_of(addr).as_bytes(), width.size() - 1);
    put_u64(out, u64::from(port));
}

/// Active members of a group with a FastDFS port, in node id order.
fn active_doors(door: &Door, group: &GroupName, now: Instant) -> Vec<(MemberInfo, u16)> {
    let registry = door.registry();
    let view = registry.cluster(now);
    view.groups
        .into_iter()
        .filter(|g| g.name == *group)
        .flat_map(|g| g.members)
        .filter(|m| m.state == MemberState::Active)
        .filter_map(|m| registry.fastdfs_port(m.node_id).map(|p| (m, p)))
        .collect()
}

fn query_store(
    door: &Door,
    group: Option<&GroupName>,
    all: bool,
    now: Instant,
) -> Result<Vec<u8>, Refused> {
    // Members without a FastDFS port cannot take a FastDFS upload: ask again (round robin moves on).
    let tries = door
        .registry()
        .cluster(now)
        .groups
        .iter()
        .map(|g| g.members.len())
        .sum::<usize>()
        .max(1);
    let mut chosen = None;
    for _ in 0..tries {
        let a = door.registry().assign(group, 0, now)?;
        if let Some(port) = door.registry().fastdfs_port(a.node_id) {
            chosen = Some((a, port));
            break;
        }
    }
    let Some((a, port)) = chosen else {
        return Err(Refused(errno::ENOENT));
    };
    let mut out = Vec::new();
    put_fixed(&mut out, a.group.as_str().as_bytes(), GROUP_LEN);
    put_addr(&mut out, door.width, &a.addr, port);
    if all {
        for (m, p) in active_doors(door, &a.group, now) {
            if m.node_id != a.node_id {
                put_addr(&mut out, door.width, &m.addr, p);
            }
        }
    }
    out.push(a.store_path);
    Ok(out)
}

fn query_fetch(door: &Door, id: &FileId, all: bool, now: Instant) -> Result<Vec<u8>, Refused> {
    let located = door.registry().locate(id, now)?;
    let registry = door.registry();
    let doors: Vec<(&MemberInfo, u16)> = located
        .members
        .iter()
        .filter_map(|m| registry.fastdfs_port(m.node_id).map(|p| (m, p)))
        .collect();
    drop(registry);
    let Some(&(first, port)) = doors.first() else {
        return Err(Refused(errno::ENOENT));
    };
    let mut out = Vec::new();
    put_fixed(&mut out, id.group.as_str().as_bytes(), GROUP_LEN);
    put_addr(&mut out, door.width, &first.addr, port);
    if all {
        // The reply carries one port for every address: list the members reachable on it.
        for (m, _) in doors.iter().skip(1).filter(|(_, p)| *p == port) {
            put_fixed(&mut out, host_of(&m.addr).as_bytes(), door.width.size() - 1);
        }
    }
    Ok(out)
}

/// Port of an HTTP address or URL, 0 when it has none.
fn port_of(addr: &str) -> u64 {
    let authority = addr.split_once("://").map_or(addr, |(_, r)| r);
    let authority = authority.split('/').next().unwrap_or(authority);
    authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0)
}

const MB: u64 = 1 << 20;

/// One `FDFSGroupStat` record (105 bytes).
fn group_record(door: &Door, g: &GroupInfo) -> Vec<u8> {
    let registry = door.registry();
    let first = g.members.first();
    let active = g
        .members
        .iter()
        .filter(|m| m.state == MemberState::Active)
        .count();
    let mut out = Vec::with_capacity(105);
    put_fixed(&mut out, g.name.as_str().as_bytes(), GROUP_LEN + 1);
    put_u64(&mut out, g.total_bytes / MB);
    put_u64(&mut out, g.free_bytes / MB);
    put_u64(&mut out, 0); // trunk free
    put_u64(&mut out, g.members.len() as u64);
    put_u64(
        &mut out,
        first
            .and_then(|m| registry.fastdfs_port(m.node_id))
            .map_or(0, u64::from),
    );
    put_u64(&mut out, first.map_or(0, |m| port_of(&m.public_url)));
    put_u64(&mut out, active as u64);
    put_u64(&mut out, 0); // current write server
    put_u64(&mut out, first.map_or(0, |m| m.store_paths.len() as u64));
    put_u64(&mut out, SUBDIRS);
    put_u64(&mut out, 0); // current trunk file id
    out
}

fn list_groups(door: &Door, only: Option<&GroupName>, now: Instant) -> Result<Vec<u8>, Refused> {
    let view = door.registry().cluster(now);
    let groups: Vec<&GroupInfo> = view
        .groups
        .iter()
        .filter(|g| only.is_none_or(|o| g.name == *o))
        .collect();
    if only.is_some() && groups.is_empty() {
        return Err(Refused(errno::ENOENT));
    }
    Ok(groups
        .into_iter()
        .flat_map(|g| group_record(door, g))
        .collect())
}

/// `TRACKER_PROTO_CMD_SERVER_LIST_STORAGE`: body `group(16)` or `group(16) + storage id(16)`; one
/// `TrackerStorageStat` per member (612 bytes with 16-byte addresses). Fields fdfs has no counterpart for
/// (per-operation counters, trunk, connection counts) are zero.
fn list_storage(door: &Door, body: &[u8], now: Instant) -> Result<Vec<u8>, Refused> {
    if body.len() != GROUP_LEN && body.len() != GROUP_LEN + STORAGE_ID_LEN {
        return Err(Refused(errno::EINVAL));
    }
    let group = group_field(&body[..GROUP_LEN], true)?;
    let only = match body.get(GROUP_LEN..) {
        Some(id) if !id.is_empty() => Some(fixed_str(id).to_vec()),
        _ => None,
    };
    let view = door.registry().cluster(now);
    let Some(g) = view.groups.iter().find(|g| g.name == group) else {
        return Err(Refused(errno::ENOENT));
    };
    let registry = door.registry();
    let unix_now = fdfs_common::time::unix_now();
    let mut out = Vec::new();
    for m in &g.members {
        let id = m.node_id.to_string();
        let host = host_of(&m.addr);
        if only
            .as_deref()
            .is_some_and(|o| o != id.as_bytes() && o != host.as_bytes())
        {
            continue;
        }
        out.push(match m.state {
            MemberState::Active => STATUS_ACTIVE,
            MemberState::Syncing => STATUS_SYNCING,
            MemberState::Offline => STATUS_OFFLINE,
        });
        put_fixed(&mut out, id.as_bytes(), STORAGE_ID_LEN);
        put_fixed(&mut out, host.as_bytes(), door.width.size());
        put_fixed(&mut out, b"", DOMAIN_LEN);
        put_fixed(&mut out, b"", STORAGE_ID_LEN); // source storage id
        put_fixed(&mut out, fdfs_common::VERSION.as_bytes(), VERSION_LEN);
        put_u64(&mut out, 0); // join time
        put_u64(&mut out, 0); // up time
        put_u64(&mut out, m.total_bytes() / MB);
        put_u64(&mut out, m.free_bytes() / MB);
        put_u64(&mut out, 0); // upload priority
        put_u64(&mut out, m.store_paths.len() as u64);
        put_u64(&mut out, SUBDIRS);
        put_u64(&mut out, 0); // current write path
        put_u64(
            &mut out,
            registry.fastdfs_port(m.node_id).map_or(0, u64::from),
        );
        put_u64(&mut out, port_of(&m.public_url));
        out.extend_from_slice(&[0u8; 12]); // connection counts (alloc, current, max)
                                           // 38 operation counters (uploads, deletes, bytes, file opens...): not kept.
        out.resize(out.len() + 38 * 8, 0);
        put_u64(&mut out, 0); // last source update
        put_u64(&mut out, 0); // last sync update
        let synced = m.sync.iter().map(|p| p.synced_until).min().unwrap_or(0);
        put_u64(&mut out, synced);
        put_u64(&mut out, unix_now.saturating_sub(m.last_seen_ms / 1000));
        out.push(0); // not a trunk server
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_of_addresses_and_urls() {
        assert_eq!(port_of("http://127.0.0.1:8080"), 8080);
        assert_eq!(port_of("127.0.0.1:23000"), 23000);
        assert_eq!(port_of("http://files.example.com/"), 0);
    }

    #[test]
    fn file_ids_from_request_bodies() {
        let mut body = Vec::new();
        put_fixed(&mut body, b"group1", GROUP_LEN);
        assert!(file_id(&body).is_err(), "no file name");
        body.extend_from_slice(b"M00/00/00/../../etc/passwd");
        assert!(file_id(&body).is_err());
        assert!(group_field(b"short", true).is_err());
    }
}
