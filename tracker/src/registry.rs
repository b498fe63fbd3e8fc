//! The tracker's in-memory view of storage members, fed by heartbeats, and the scheduling decisions made on it:
//! which group, member and store path receive an upload ([`Registry::assign`]) and which members can serve a
//! file ([`Registry::locate`]). Synchronous and clock-free: callers pass `now`, so tests control time.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use fdfs_common::config::Size;
use fdfs_common::wire::{
    Assignment, ClusterView, GroupInfo, Heartbeat, Locations, MemberInfo, MemberState,
    StorePathStat,
};
use fdfs_common::{FileId, GroupName};

use crate::{Config, Error, StoreLookup, StorePathPolicy};

/// What the tracker remembers of one storage node: its latest heartbeat.
struct Member {
    hb: Heartbeat,
    last_seen: Instant,
    /// Round-robin position over this member's store paths.
    path_cursor: usize,
}

impl Member {
    fn state(&self, timeout: Duration, now: Instant) -> MemberState {
        if now.saturating_duration_since(self.last_seen) > timeout {
            MemberState::Offline
        } else if self.hb.syncing {
            MemberState::Syncing
        } else {
            MemberState::Active
        }
    }
}

/// All members (any state, any group), keyed by node id, plus the round-robin cursors.
pub struct Registry {
    timeout: Duration,
    store_lookup: StoreLookup,
    store_group: Option<GroupName>,
    store_path: StorePathPolicy,
    reserved: Size,
    members: BTreeMap<u32, Member>,
    /// Round-robin position over groups (`store_lookup = round_robin`).
    group_cursor: usize,
    /// Round-robin position over each group's active members.
    member_cursors: HashMap<GroupName, usize>,
    /// Membership changed (a new or moved member, a file count) since [`Registry::take_dirty`].
    dirty: bool,
    /// Members an operator drains (`fdfs monitor drain`): never assigned uploads, still located for reads.
    draining: BTreeSet<u32>,
    /// Members a gateway found unresponsive and this tracker's own probe confirmed, and when: not assigned
    /// uploads and located last until they heartbeat again (a frozen node sends none).
    suspects: HashMap<u32, Instant>,
}

impl Registry {
    /// An empty registry with the config's timeout, lookup and reserve rules.
    pub fn new(config: &Config) -> Self {
        Registry {
            timeout: config.heartbeat_timeout(),
            store_lookup: config.store_lookup,
            store_group: config.store_group.clone(),
            store_path: config.store_path,
            reserved: config.reserved_storage_space,
            members: BTreeMap::new(),
            group_cursor: 0,
            member_cursors: HashMap::new(),
            dirty: false,
            draining: BTreeSet::new(),
            suspects: HashMap::new(),
        }
    }

    /// Members remembered from an earlier run (see [`Registry::snapshot`]): listed as offline until they send
    /// a heartbeat, so that a member of their group that lost its data knows they hold files and waits for them.
    pub fn restore(&mut self, members: Vec<Heartbeat>, now: Instant) {
        let long_ago = now
            .checked_sub(self.timeout + Duration::from_secs(1))
            .unwrap_or(now);
        for hb in members {
            self.members.entry(hb.node_id).or_insert(Member {
                hb,
                last_seen: long_ago,
                path_cursor: 0,
            });
        }
    }

    /// The latest heartbeat of every member, for persisting.
    pub fn snapshot(&self) -> Vec<Heartbeat> {
        self.members.values().map(|m| m.hb.clone()).collect()
    }

    /// The members being drained, for persisting.
    pub fn draining(&self) -> Vec<u32> {
        self.draining.iter().copied().collect()
    }

    /// Drains remembered from an earlier run.
    pub fn restore_draining(&mut self, ids: Vec<u32>) {
        self.draining.extend(ids);
    }

    /// Start (`on`) or stop draining a member: a draining member gets no new uploads; reads still go to it.
    pub fn drain(&mut self, group: &GroupName, node_id: u32, on: bool) -> Result<(), Error> {
        if self
            .members
            .get(&node_id)
            .is_none_or(|m| m.hb.group != *group)
        {
            return Err(Error::UnknownMember(group.clone(), node_id));
        }
        let changed = if on {
            self.draining.insert(node_id)
        } else {
            self.draining.remove(&node_id)
        };
        if changed {
            self.dirty = true;
            tracing::info!(node_id, group = %group, draining = on, "member drain changed");
        }
        Ok(())
    }

    /// A member stopping cleanly says so: it is offline at once (no uploads, no reads, and it can be removed
    /// without waiting for the heartbeat timeout). Only the run that beats (`instance`) can take itself out.
    pub fn leave(
        &mut self,
        group: &GroupName,
        node_id: u32,
        instance: u64,
        now: Instant,
    ) -> Result<(), Error> {
        let long_ago = now
            .checked_sub(self.timeout + Duration::from_secs(1))
            .unwrap_or(now);
        match self.members.get_mut(&node_id) {
            Some(m) if m.hb.group == *group && (instance == 0 || m.hb.instance == instance) => {
                m.last_seen = m.last_seen.min(long_ago);
                tracing::info!(node_id, group = %group, "member stopped (left cleanly)");
                Ok(())
            }
            Some(_) => Ok(()),
            None => Err(Error::UnknownMember(group.clone(), node_id)),
        }
    }

    /// Whether membership changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Forget an offline member (an operator decommissioned it, like FastDFS's `fdfs_monitor delete`): its
    /// peers stop keeping binlog records for it. If it comes back it is a new member, and catches up.
    pub fn remove(&mut self, group: &GroupName, node_id: u32, now: Instant) -> Result<(), Error> {
        let Some(m) = self.members.get(&node_id).filter(|m| m.hb.group == *group) else {
            return Err(Error::UnknownMember(group.clone(), node_id));
        };
        match m.state(self.timeout, now) {
            MemberState::Offline => {}
            MemberState::Active => return Err(Error::MemberLive(node_id, "active")),
            MemberState::Syncing => return Err(Error::MemberLive(node_id, "syncing")),
        }
        self.members.remove(&node_id);
        self.draining.remove(&node_id);
        self.dirty = true;
        tracing::info!(node_id, group = %group, "member removed");
        Ok(())
    }

    /// Mark membership as changed (a save failed: try again).
    pub fn dirty_again(&mut self) {
        self.dirty = true;
    }

    /// Refuse a heartbeat that claims the id or the address of another live member (two nodes with one id,
    /// or one address: a copied store, node_id setting or public_url). A restart of a member (same id, same
    /// address, another run) is no conflict; an offline member whose address a new member of its group takes
    /// (the host was wiped or reinstalled) is replaced.
    fn check_conflicts(&mut self, hb: &Heartbeat, now: Instant) -> Result<(), Error> {
        let seen = |m: &Member| now.saturating_duration_since(m.last_seen);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if let Some(m) = self.members.get(&hb.node_id) {
            let live = m.state(self.timeout, now) != MemberState::Offline;
            let other_run = m.hb.instance != 0 && hb.instance != 0 && m.hb.instance != hb.instance;
            if live && other_run && m.hb.addr != hb.addr {
                return Err(Error::NodeIdConflict {
                    node_id: hb.node_id,
                    addr: m.hb.addr.clone(),
                    seen_ms: ms(seen(m)),
                    retry_after: self.timeout.saturating_sub(seen(m)),
                });
            }
        }
        let same_addr: Vec<(u32, bool, bool)> = self
            .members
            .values()
            .filter(|m| m.hb.node_id != hb.node_id && m.hb.addr == hb.addr)
            .map(|m| {
                (
                    m.hb.node_id,
                    m.state(self.timeout, now) != MemberState::Offline,
                    m.hb.group == hb.group,
                )
            })
            .collect();
        if let Some((other, _, _)) = same_addr.iter().find(|(_, live, _)| *live) {
            let m = &self.members[other];
            return Err(Error::AddressConflict {
                addr: hb.addr.clone(),
                other: *other,
                seen_ms: ms(seen(m)),
                retry_after: self.timeout.saturating_sub(seen(m)),
            });
        }
        for (old, _, same_group) in same_addr {
            if same_group {
                tracing::warn!(
                    old,
                    new = hb.node_id,
                    addr = %hb.addr,
                    group = %hb.group,
                    "offline member replaced by a new node at its address (wiped or reinstalled)"
                );
                self.members.remove(&old);
                self.draining.remove(&old);
                self.dirty = true;
            }
        }
        Ok(())
    }

    /// Record a heartbeat; returns the other members of the sender's group and whether the sender is being
    /// drained. Refused when it conflicts with another live member (see `check_conflicts`).
    pub fn heartbeat(
        &mut self,
        hb: Heartbeat,
        now: Instant,
    ) -> Result<(Vec<MemberInfo>, bool), Error> {
        self.check_conflicts(&hb, now)?;
        let (id, group) = (hb.node_id, hb.group.clone());
        match self.members.get_mut(&id) {
            Some(m) => {
                if m.hb.addr != hb.addr || m.hb.group != hb.group {
                    tracing::info!(node_id = id, group = %hb.group, addr = %hb.addr, "member moved");
                } else if m.state(self.timeout, now) == MemberState::Offline {
                    tracing::info!(node_id = id, group = %hb.group, "member back online");
                }
                self.dirty |= m.hb.addr != hb.addr
                    || m.hb.group != hb.group
                    || m.hb.file_count != hb.file_count;
                m.hb = hb;
                m.last_seen = now;
            }
            None => {
                tracing::info!(node_id = id, group = %hb.group, addr = %hb.addr, "new member");
                let member = Member {
                    hb,
                    last_seen: now,
                    path_cursor: 0,
                };
                self.members.insert(id, member);
                self.dirty = true;
            }
        }
        let peers = self
            .in_group(&group)
            .filter(|m| m.hb.node_id != id)
            .map(|m| self.info(m, now))
            .collect();
        Ok((peers, self.draining.contains(&id)))
    }

    /// Choose a group, an active member and a store path for an upload of `size` bytes.
    pub fn assign(
        &mut self,
        group: Option<&GroupName>,
        size: u64,
        now: Instant,
    ) -> Result<Assignment, Error> {
        self.assign_excluding(group, size, now, &[])
    }

    /// [`Registry::assign`] among the active members not in `exclude` (members that just turned the upload
    /// down: they are down or cannot reach their group's write quorum, and the tracker has not noticed).
    pub fn assign_excluding(
        &mut self,
        group: Option<&GroupName>,
        size: u64,
        now: Instant,
        exclude: &[u32],
    ) -> Result<Assignment, Error> {
        let named = group.or(match self.store_lookup {
            StoreLookup::FixedGroup => self.store_group.as_ref(),
            _ => None,
        });
        let candidates: Vec<GroupName> = match named {
            Some(g) if self.in_group(g).next().is_none() => {
                return Err(Error::UnknownGroup(g.clone()))
            }
            Some(g) => vec![g.clone()],
            None => {
                let mut groups: Vec<GroupName> = self.group_names().into_iter().collect();
                if self.store_lookup == StoreLookup::MostFree {
                    // Stable sort: equal free space keeps name order.
                    groups.sort_by_key(|g| Reverse(self.group_free(g, now).0));
                } else if !groups.is_empty() {
                    let start = self.group_cursor % groups.len();
                    self.group_cursor = self.group_cursor.wrapping_add(1);
                    groups.rotate_left(start);
                }
                groups
            }
        };
        let mut any_active = false;
        for g in candidates {
            let active: Vec<u32> = self
                .in_group(&g)
                .filter(|m| m.state(self.timeout, now) == MemberState::Active)
                .map(|m| m.hb.node_id)
                .filter(|id| {
                    !exclude.contains(id) && !self.draining.contains(id) && !self.is_suspect(*id)
                })
                .collect();
            any_active |= !active.is_empty();
            // Every live member receives the file on the same store path: only paths with room on all of them.
            let full = self.paths_without_room(&g, size, now);
            let cursor = self.member_cursors.entry(g.clone()).or_default();
            for i in 0..active.len() {
                let pos = cursor.wrapping_add(i);
                let member = self
                    .members
                    .get_mut(&active[pos % active.len()])
                    .expect("listed above");
                if let Some(index) = pick_path(member, size, self.store_path, self.reserved, &full)
                {
                    *cursor = pos.wrapping_add(1);
                    return Ok(Assignment {
                        group: g,
                        node_id: member.hb.node_id,
                        addr: member.hb.addr.clone(),
                        public_url: member.hb.public_url.clone(),
                        store_path: index,
                    });
                }
            }
        }
        if any_active {
            Err(Error::InsufficientStorage(size))
        } else {
            Err(Error::NoStorage(named.cloned()))
        }
    }

    /// Active members of the file's group that can serve it, holders first (the source, then by how far its
    /// source has synced to them), then the others, which proxy the read to a holder.
    pub fn locate(&self, id: &FileId, now: Instant) -> Result<Locations, Error> {
        if self.in_group(&id.group).next().is_none() {
            return Err(Error::UnknownGroup(id.group.clone()));
        }
        let info = id.info();
        let source = self
            .members
            .get(&info.source_id)
            .filter(|s| s.hb.group == id.group);
        // A member holds the file when this reaches the file's creation time.
        let synced_until = |m: &Member| {
            if m.hb.node_id == info.source_id {
                return u64::MAX;
            }
            source
                .and_then(|s| s.hb.sync.iter().find(|p| p.peer_id == m.hb.node_id))
                .map_or(0, |p| p.synced_until)
        };
        let mut active: Vec<&Member> = self
            .in_group(&id.group)
            .filter(|m| m.state(self.timeout, now) == MemberState::Active)
            .collect();
        if active.is_empty() {
            return Err(Error::NoStorage(Some(id.group.clone())));
        }
        // Stable: ties stay in node id order. Holders (>= created) sort before non-holders (< created); among
        // equals, members being drained come last.
        // A member found frozen comes last of all: a holder that answers nothing is no use.
        active.sort_by_key(|m| {
            (
                self.is_suspect(m.hb.node_id),
                Reverse(synced_until(m)),
                self.draining.contains(&m.hb.node_id),
            )
        });
        Ok(Locations {
            group: id.group.clone(),
            members: active.into_iter().map(|m| self.info(m, now)).collect(),
        })
    }

    /// Every group (sorted by name) with every member (sorted by node id), offline ones included.
    pub fn cluster(&self, now: Instant) -> ClusterView {
        let groups = self
            .group_names()
            .into_iter()
            .map(|name| {
                let (free_bytes, total_bytes) = self.group_free(&name, now);
                let members = self.in_group(&name).map(|m| self.info(m, now)).collect();
                GroupInfo {
                    name,
                    free_bytes,
                    total_bytes,
                    members,
                }
            })
            .collect();
        ClusterView {
            groups,
            trackers: Vec::new(),
        }
    }

    /// Port of a member's FastDFS listener, from its latest heartbeat (`None`: it has none).
    pub fn fastdfs_port(&self, node_id: u32) -> Option<u16> {
        self.members.get(&node_id).and_then(|m| m.hb.fastdfs_port)
    }

    /// The member announcing `addr` (its node id and group).
    pub fn member_at(&self, addr: &str) -> Option<(u32, GroupName)> {
        self.members
            .values()
            .find(|m| m.hb.addr == addr)
            .map(|m| (m.hb.node_id, m.hb.group.clone()))
    }

    /// Note member `node_id` as unresponsive (confirmed by a probe) as of `now`, until it heartbeats again.
    pub fn suspect(&mut self, node_id: u32, now: Instant) {
        self.suspects.retain(|id, _| self.members.contains_key(id));
        self.suspects.insert(node_id, now);
    }

    /// Whether member `node_id` was found unresponsive after its last heartbeat.
    fn is_suspect(&self, node_id: u32) -> bool {
        match (self.suspects.get(&node_id), self.members.get(&node_id)) {
            (Some(since), Some(m)) => *since >= m.last_seen,
            _ => false,
        }
    }

    fn info(&self, m: &Member, now: Instant) -> MemberInfo {
        let last_seen = now.saturating_duration_since(m.last_seen);
        MemberInfo {
            node_id: m.hb.node_id,
            group: m.hb.group.clone(),
            addr: m.hb.addr.clone(),
            public_url: m.hb.public_url.clone(),
            // Confirmed frozen: offline for everyone (gateways, peers capping their write quorum, dashboards)
            // before the heartbeat timeout says so.
            state: if self.is_suspect(m.hb.node_id) {
                MemberState::Offline
            } else {
                m.state(self.timeout, now)
            },
            store_paths: m.hb.store_paths.clone(),
            sync: m.hb.sync.clone(),
            file_count: m.hb.file_count,
            last_seen_ms: u64::try_from(last_seen.as_millis()).unwrap_or(u64::MAX),
            draining: self.draining.contains(&m.hb.node_id),
        }
    }

    /// Store path indices that some live (not offline) member of `group` has and that cannot take `size` bytes
    /// there while keeping its reserve. Every live member receives the file on the same store path, and a full
    /// one would refuse the replica, so the group must not get the upload on such a path.
    fn paths_without_room(&self, group: &GroupName, size: u64, now: Instant) -> BTreeSet<u8> {
        self.in_group(group)
            .filter(|m| m.state(self.timeout, now) != MemberState::Offline)
            .flat_map(|m| &m.hb.store_paths)
            .filter(|p| !fits(p, size, self.reserved))
            .map(|p| p.index)
            .collect()
    }

    fn in_group<'a>(&'a self, group: &'a GroupName) -> impl Iterator<Item = &'a Member> + 'a {
        self.members.values().filter(move |m| m.hb.group == *group)
    }

    fn group_names(&self) -> BTreeSet<GroupName> {
        self.members.values().map(|m| m.hb.group.clone()).collect()
    }

    /// (free, total) of a group: a group can only take what its fullest active member can, so this is the
    /// smallest free space and the smallest capacity among its active members (FastDFS rule); 0 with none.
    fn group_free(&self, group: &GroupName, now: Instant) -> (u64, u64) {
        let active = || {
            self.in_group(group)
                .filter(|m| m.state(self.timeout, now) == MemberState::Active)
                .map(|m| (sum(&m.hb.store_paths, writable_free), &m.hb.store_paths))
        };
        let free = active().map(|(free, _)| free).min().unwrap_or(0);
        let total = active()
            .map(|(_, paths)| sum(paths, |p| p.total_bytes))
            .min()
            .unwrap_or(0);
        (free, total)
    }
}

fn sum(paths: &[StorePathStat], f: impl Fn(&StorePathStat) -> u64) -> u64 {
    paths.iter().map(f).fold(0, u64::saturating_add)
}

/// Free bytes of a store path that can be written: none when its disk fails.
fn writable_free(p: &StorePathStat) -> u64 {
    if p.failed.is_some() {
        0
    } else {
        p.free_bytes
    }
}

/// Whether a store path can take `size` bytes and keep its reserve (a failing one takes nothing).
fn fits(p: &StorePathStat, size: u64, reserved: Size) -> bool {
    if p.failed.is_some() {
        return false;
    }
    let reserve = match reserved {
        Size::Bytes(b) => b,
        Size::Percent(pct) => {
            u64::try_from(u128::from(p.total_bytes) * u128::from(pct) / 100).unwrap_or(u64::MAX)
        }
    };
    p.free_bytes
        .checked_sub(size)
        .is_some_and(|left| left >= reserve)
}

/// A store path of `member` outside `full` (paths where another live member of the group lacks room) that can
/// take `size` bytes and keep its reserve, by policy; advances the cursor.
fn pick_path(
    member: &mut Member,
    size: u64,
    policy: StorePathPolicy,
    reserved: Size,
    full: &BTreeSet<u8>,
) -> Option<u8> {
    let paths = &member.hb.store_paths;
    let fits = |p: &StorePathStat| !full.contains(&p.index) && fits(p, size, reserved);
    match policy {
        StorePathPolicy::MostFree => paths
            .iter()
            .filter(|p| fits(p))
            .min_by_key(|p| (Reverse(p.free_bytes), p.index))
            .map(|p| p.index),
        StorePathPolicy::RoundRobin => {
            let n = paths.len();
            let pos = (0..n)
                .map(|i| member.path_cursor.wrapping_add(i))
                .find(|pos| fits(&paths[pos % n]))?;
            member.path_cursor = pos.wrapping_add(1);
            Some(paths[pos % n].index)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fdfs_common::wire::PeerSync;
    use fdfs_common::NameInfo;

    const GB: u64 = 1 << 30;

    fn hb(group: &str, node_id: u32, free: &[u64]) -> Heartbeat {
        Heartbeat {
            node_id,
            group: group.parse().unwrap(),
            addr: format!("127.0.0.1:{}", 20000 + node_id),
            public_url: format!("http://127.0.0.1:{}", 20000 + node_id),
            syncing: false,
            store_paths: (0u8..)
                .zip(free)
                .map(|(index, &free_bytes)| StorePathStat {
                    index,
                    total_bytes: 100 * GB,
                    free_bytes,
                    failed: None,
                })
                .collect(),
            sync: Vec::new(),
            file_count: 0,
            version: "test".into(),
            fastdfs_port: None,
            instance: u64::from(node_id),
        }
    }

    fn registry(config: Config, beats: Vec<Heartbeat>, now: Instant) -> Registry {
        let mut r = Registry::new(&config);
        for b in beats {
            r.heartbeat(b, now).unwrap();
        }
        r
    }

    fn picks(r: &mut Registry, n: usize, now: Instant) -> Vec<(String, u32, u8)> {
        (0..n)
            .map(|_| {
                let a = r.assign(None, 1, now).unwrap();
                (a.group.to_string(), a.node_id, a.store_path)
            })
            .collect()
    }

    fn g(s: &str) -> GroupName {
        s.parse().unwrap()
    }

    #[test]
    fn round_robin_spreads_over_groups_members_and_paths() {
        let now = Instant::now();
        let beats = vec![
            hb("g1", 1, &[50 * GB, 50 * GB]),
            hb("g1", 2, &[50 * GB]),
            hb("g2", 3, &[50 * GB]),
        ];
        let mut r = registry(Config::default(), beats, now);
        let got = picks(&mut r, 6, now);
        let expect = [
            ("g1", 1, 0),
            ("g2", 3, 0),
            ("g1", 2, 0),
            ("g2", 3, 0),
            ("g1", 1, 1),
            ("g2", 3, 0),
        ];
        for (got, (eg, en, ep)) in got.iter().zip(expect) {
            assert_eq!((got.0.as_str(), got.1, got.2), (eg, en, ep), "{got:?}");
        }
    }

    #[test]
    fn remembered_members_are_listed_offline_until_they_beat() {
        let now = Instant::now();
        let mut old = hb("g1", 2, &[50 * GB]);
        old.file_count = 7;
        let mut first = registry(Config::default(), vec![old], now);
        assert!(first.take_dirty(), "a new member is a change");
        assert!(!first.take_dirty());
        let saved = first.snapshot();

        let mut r = Registry::new(&Config::default());
        r.restore(saved, now);
        let peers = r.heartbeat(hb("g1", 1, &[50 * GB]), now).unwrap().0;
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].node_id, 2);
        assert_eq!(peers[0].state, MemberState::Offline);
        assert_eq!(peers[0].file_count, 7);
        assert!(r.assign(None, 1, now).is_ok_and(|a| a.node_id == 1));
        r.heartbeat(hb("g1", 2, &[50 * GB]), now).unwrap();
        let peers = r.heartbeat(hb("g1", 1, &[50 * GB]), now).unwrap().0;
        assert_eq!(peers[0].state, MemberState::Active);
    }

    #[test]
    fn fixed_group_and_named_group() {
        let now = Instant::now();
        let config = Config {
            store_lookup: StoreLookup::FixedGroup,
            store_group: Some(g("g2")),
            ..Config::default()
        };
        let beats = vec![hb("g1", 1, &[50 * GB]), hb("g2", 2, &[50 * GB])];
        let mut r = registry(config, beats, now);
        assert!(picks(&mut r, 3, now).iter().all(|p| p.0 == "g2"));
        assert_eq!(r.assign(Some(&g("g1")), 1, now).unwrap().node_id, 1);
        assert!(matches!(
            r.assign(Some(&g("nope")), 1, now),
            Err(Error::UnknownGroup(_))
        ));
    }

    #[test]
    fn most_free_group_uses_its_fullest_member_and_most_free_path() {
        let now = Instant::now();
        let config = Config {
            store_lookup: StoreLookup::MostFree,
            store_path: StorePathPolicy::MostFree,
            ..Config::default()
        };
        // g1's members have 90 and 20 GB free: the group counts as 20. g2 has 40.
        let beats = vec![
            hb("g1", 1, &[90 * GB]),
            hb("g1", 2, &[20 * GB]),
            hb("g2", 3, &[15 * GB, 25 * GB]),
        ];
        let mut r = registry(config, beats, now);
        assert!(picks(&mut r, 3, now)
            .iter()
            .all(|p| *p == ("g2".into(), 3, 1)));
        assert_eq!(r.cluster(now).groups[0].free_bytes, 20 * GB);
    }

    #[test]
    fn reserved_space_percent_and_bytes() {
        let now = Instant::now();
        // 100 GB total, 12 GB free: 10% reserve leaves room for 2 GB.
        let mut r = registry(Config::default(), vec![hb("g1", 1, &[12 * GB])], now);
        assert!(r.assign(None, 2 * GB, now).is_ok());
        assert!(matches!(
            r.assign(None, 2 * GB + 1, now),
            Err(Error::InsufficientStorage(_))
        ));
        let config = Config {
            reserved_storage_space: Size::Bytes(GB),
            ..Config::default()
        };
        let mut r = registry(config, vec![hb("g1", 1, &[GB, 3 * GB])], now);
        // The first path is skipped, the second has room.
        assert_eq!(r.assign(None, 2 * GB, now).unwrap().store_path, 1);
        assert!(matches!(
            r.assign(None, 3 * GB, now),
            Err(Error::InsufficientStorage(_))
        ));
    }

    #[test]
    fn a_group_with_a_full_member_gets_no_uploads() {
        let now = Instant::now();
        let config = Config {
            reserved_storage_space: Size::Bytes(GB),
            ..Config::default()
        };
        // g1's second member is full (under the reserve); it is still syncing, which counts: it takes replicas.
        let mut full = hb("g1", 2, &[GB / 2]);
        full.syncing = true;
        let beats = vec![hb("g1", 1, &[50 * GB]), full, hb("g2", 3, &[50 * GB])];
        let mut r = registry(config, beats, now);
        // Round robin over groups skips g1, a named g1 has no room, fixed g1 neither.
        assert!(picks(&mut r, 4, now).iter().all(|p| p.0 == "g2"));
        assert!(matches!(
            r.assign(Some(&g("g1")), 1, now),
            Err(Error::InsufficientStorage(_))
        ));
        // Once the full member is offline the group takes uploads again (it catches up when back).
        let later = now + Duration::from_millis(6001);
        r.heartbeat(hb("g1", 1, &[50 * GB]), later).unwrap();
        assert_eq!(r.assign(Some(&g("g1")), 1, later).unwrap().node_id, 1);
        // And once it has room again.
        r.heartbeat(hb("g1", 2, &[10 * GB]), later).unwrap();
        assert!(r.assign(Some(&g("g1")), 1, later).is_ok());
    }

    #[test]
    fn a_store_path_whose_disk_fails_gets_no_uploads_on_any_member() {
        let now = Instant::now();
        // g1's member 2 cannot write its M01; M00 still takes uploads, on both members.
        let mut failing = hb("g1", 2, &[50 * GB, 50 * GB]);
        failing.store_paths[1].failed = Some("Input/output error".into());
        let beats = vec![hb("g1", 1, &[50 * GB, 60 * GB]), failing];
        let mut r = registry(Config::default(), beats, now);
        for _ in 0..4 {
            assert_eq!(r.assign(Some(&g("g1")), 1, now).unwrap().store_path, 0);
        }
        // Every path failing: the group takes nothing, and reports no free space.
        r.heartbeat(
            {
                let mut h = hb("g1", 2, &[50 * GB, 50 * GB]);
                for p in &mut h.store_paths {
                    p.failed = Some("Input/output error".into());
                }
                h
            },
            now,
        )
        .unwrap();
        assert!(r.assign(Some(&g("g1")), 1, now).is_err());
        assert_eq!(r.cluster(now).groups[0].free_bytes, 0);
    }

    #[test]
    fn offline_and_syncing_members_are_not_assigned() {
        let now = Instant::now();
        let mut syncing = hb("g1", 2, &[50 * GB]);
        syncing.syncing = true;
        let mut r = registry(
            Config::default(),
            vec![hb("g1", 1, &[50 * GB]), syncing],
            now,
        );
        assert!(picks(&mut r, 4, now).iter().all(|p| p.1 == 1));
        let later = now + Duration::from_millis(6001);
        assert!(matches!(
            r.assign(None, 1, later),
            Err(Error::NoStorage(None))
        ));
        let view = r.cluster(later);
        let states: Vec<_> = view.groups[0].members.iter().map(|m| m.state).collect();
        assert_eq!(states, [MemberState::Offline, MemberState::Offline]);
        // A fresh heartbeat brings the member back; peers are the rest of the group.
        let peers = r.heartbeat(hb("g1", 1, &[50 * GB]), later).unwrap().0;
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].state, MemberState::Offline);
        assert_eq!(r.assign(None, 1, later).unwrap().node_id, 1);
    }

    #[test]
    fn excluded_members_are_not_assigned_even_with_most_free_space() {
        let now = Instant::now();
        let config = Config {
            store_lookup: StoreLookup::MostFree,
            ..Config::default()
        };
        let mut r = registry(
            config,
            vec![
                hb("g1", 1, &[90 * GB]),
                hb("g1", 2, &[90 * GB]),
                hb("g2", 3, &[50 * GB]),
            ],
            now,
        );
        // g1 has the most room, but both its members just turned the upload down.
        for _ in 0..4 {
            let a = r.assign_excluding(None, 1, now, &[1]).unwrap();
            assert_eq!(a.node_id, 2);
            assert_eq!(
                r.assign_excluding(None, 1, now, &[1, 2]).unwrap().node_id,
                3
            );
        }
        assert!(matches!(
            r.assign_excluding(Some(&g("g1")), 1, now, &[1, 2]),
            Err(Error::NoStorage(Some(_)))
        ));
    }

    #[test]
    fn empty_registry_has_no_storage() {
        let mut r = Registry::new(&Config::default());
        assert!(matches!(
            r.assign(None, 1, Instant::now()),
            Err(Error::NoStorage(None))
        ));
    }

    #[test]
    fn locate_orders_holders_by_synced_until() {
        let now = Instant::now();
        let created = 1_700_000_000u32;
        let mut source = hb("g1", 2, &[50 * GB]);
        source.sync = vec![
            PeerSync {
                peer_id: 1,
                pending_records: 3,
                synced_until: u64::from(created) - 1,
            },
            PeerSync {
                peer_id: 3,
                pending_records: 0,
                synced_until: u64::from(created) + 5,
            },
        ];
        let mut syncing = hb("g1", 5, &[50 * GB]);
        syncing.syncing = true;
        let beats = vec![
            hb("g1", 1, &[50 * GB]),
            source,
            hb("g1", 3, &[50 * GB]),
            hb("g1", 4, &[50 * GB]),
            syncing,
        ];
        let r = registry(Config::default(), beats, now);
        let info = NameInfo {
            source_id: 2,
            created,
            size: 10,
            crc32: 7,
        };
        let name = fdfs_common::FileName::generate(&info, Some("txt")).unwrap();
        let id: FileId = format!("g1/M00/00/00/{}", name.as_str()).parse().unwrap();
        let order: Vec<u32> = r
            .locate(&id, now)
            .unwrap()
            .members
            .iter()
            .map(|m| m.node_id)
            .collect();
        assert_eq!(order, [2, 3, 1, 4]);

        let other: FileId = format!("g9/M00/00/00/{}", name.as_str()).parse().unwrap();
        assert!(matches!(r.locate(&other, now), Err(Error::UnknownGroup(_))));
        let later = now + Duration::from_secs(7);
        assert!(matches!(r.locate(&id, later), Err(Error::NoStorage(_))));
    }

    #[test]
    fn address_change_updates_the_member() {
        let now = Instant::now();
        let mut r = registry(Config::default(), vec![hb("g1", 1, &[50 * GB])], now);
        let mut moved = hb("g1", 1, &[50 * GB]);
        moved.addr = "10.0.0.9:23000".into();
        r.heartbeat(moved, now).unwrap();
        let view = r.cluster(now);
        assert_eq!(view.groups[0].members.len(), 1);
        assert_eq!(view.groups[0].members[0].addr, "10.0.0.9:23000");
    }

    #[test]
    fn a_second_node_with_a_live_members_id_or_address_is_refused() {
        let now = Instant::now();
        let mut r = registry(Config::default(), vec![hb("g1", 1, &[50 * GB])], now);
        // Same id from another address and another run, while the first is live.
        let mut twin = hb("g1", 1, &[50 * GB]);
        twin.addr = "10.0.0.9:23000".into();
        twin.instance = 99;
        let e = r.heartbeat(twin.clone(), now).unwrap_err();
        assert!(matches!(e, Error::NodeIdConflict { node_id: 1, .. }), "{e}");
        assert_eq!(e.status(), axum::http::StatusCode::CONFLICT);
        assert_eq!(r.cluster(now).groups[0].members[0].addr, "127.0.0.1:20001");
        // Another id at the live member's address.
        let mut copy = hb("g1", 2, &[50 * GB]);
        copy.addr = "127.0.0.1:20001".into();
        assert!(matches!(
            r.heartbeat(copy.clone(), now),
            Err(Error::AddressConflict { other: 1, .. })
        ));
        // Once the first is offline: the twin is the member that moved; a new id at an offline member's
        // address replaces it (a wiped host).
        let later = now + Duration::from_secs(7);
        r.heartbeat(twin, later).unwrap();
        assert_eq!(r.cluster(later).groups[0].members[0].addr, "10.0.0.9:23000");
        let much_later = later + Duration::from_secs(7);
        copy.addr = "10.0.0.9:23000".into();
        r.heartbeat(copy, much_later).unwrap();
        let members = &r.cluster(much_later).groups[0].members;
        assert_eq!(members.len(), 1, "{members:?}");
        assert_eq!(members[0].node_id, 2);
    }

    #[test]
    fn a_restart_at_the_same_address_is_no_conflict() {
        let now = Instant::now();
        let mut r = registry(Config::default(), vec![hb("g1", 1, &[50 * GB])], now);
        let mut again = hb("g1", 1, &[50 * GB]);
        again.instance = 1234;
        r.heartbeat(again, now).unwrap();
    }

    #[test]
    fn a_member_that_leaves_is_offline_at_once_and_removable() {
        let now = Instant::now();
        let beats = vec![hb("g1", 1, &[50 * GB]), hb("g1", 2, &[50 * GB])];
        let mut r = registry(Config::default(), beats, now);
        assert!(matches!(
            r.remove(&g("g1"), 2, now),
            Err(Error::MemberLive(2, "active"))
        ));
        // A leave from another run does nothing.
        r.leave(&g("g1"), 2, 777, now).unwrap();
        assert_eq!(
            r.cluster(now).groups[0].members[1].state,
            MemberState::Active
        );
        r.leave(&g("g1"), 2, 2, now).unwrap();
        assert_eq!(
            r.cluster(now).groups[0].members[1].state,
            MemberState::Offline
        );
        for _ in 0..4 {
            assert_eq!(r.assign(None, 1, now).unwrap().node_id, 1);
        }
        r.remove(&g("g1"), 2, now).unwrap();
        assert!(matches!(
            r.leave(&g("g1"), 2, 2, now),
            Err(Error::UnknownMember(..))
        ));
    }

    #[test]
    fn a_draining_member_gets_no_uploads_but_is_still_located() {
        let now = Instant::now();
        let beats = vec![hb("g1", 1, &[50 * GB]), hb("g1", 2, &[50 * GB])];
        let mut r = registry(Config::default(), beats, now);
        r.drain(&g("g1"), 1, true).unwrap();
        assert!(r.take_dirty());
        for _ in 0..4 {
            assert_eq!(r.assign(None, 1, now).unwrap().node_id, 2);
        }
        let (_, draining) = r.heartbeat(hb("g1", 1, &[50 * GB]), now).unwrap();
        assert!(draining, "the node is told");
        let view = r.cluster(now);
        assert!(view.groups[0].members[0].draining);
        let info = NameInfo {
            source_id: 1,
            created: 100,
            size: 1,
            crc32: 1,
        };
        let name = fdfs_common::FileName::generate(&info, None).unwrap();
        let id: FileId = format!("g1/M00/00/00/{}", name.as_str()).parse().unwrap();
        let located: Vec<u32> = r
            .locate(&id, now)
            .unwrap()
            .members
            .iter()
            .map(|m| m.node_id)
            .collect();
        assert_eq!(located, [1, 2], "the draining source still holds it");
        assert_eq!(r.draining(), [1]);
        r.drain(&g("g1"), 1, false).unwrap();
        assert!(r.draining().is_empty());
        assert!(matches!(
            r.drain(&g("g1"), 9, true),
            Err(Error::UnknownMember(..))
        ));
    }
}
