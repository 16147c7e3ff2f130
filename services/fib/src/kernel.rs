//! Programming the table into a kernel: path nexthops, ECMP groups, and for sticky routes a
//! resilient group of per-bucket "slot" nexthops that are repointed with `NLM_F_REPLACE`.
//!
//! ```text
//!   route 192.0.2.0/24 ─ nhid G (resilient, N buckets, N members)
//!                          ├ bucket 0 → slot S0 ─ via 10.0.0.1 dev eth0
//!                          ├ bucket 1 → slot S1 ─ via 10.0.0.2 dev eth1   (repointed when a
//!                          └ ...                                           path fails)
//!   route 198.51.100.0/24 ─ nhid E (hash-threshold group) ─ path nexthops P1, P2
//! ```
//!
//! A load distribution table is indexed by the kernel's bucket index: the kernel's bucket → slot
//! map is read back (`RTM_GETNEXTHOPBUCKET`), and a new group is verified and corrected slot by
//! slot before any route points to it. [`Programmer::sync`] compares what the table wants with
//! what the kernel has (a mirror, read back at start) and sends only the difference, in three
//! phases: nexthops and groups, then slot corrections, then routes and deletions. So a restarted
//! FIB never flushes, and groups the kernel already has are found by content.
//!
//! When a link goes down the kernel deletes the nexthops on it and moves the buckets of a
//! resilient group's deleted slots to the remaining ones. [`Programmer::kernel_distribution`]
//! reads that back so the table can adopt it; the next sync rebuilds the group with one slot per
//! bucket and the same bucket → path map, so no flow moves a second time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};

use crate::backend::is_resilient;
pub use crate::backend::{Backend, KState, Kernel, Memory};
use crate::netlink::{Nexthop, NhKind, Resilient, Route, RtMsg};
use crate::table::{Entry, Path, Prefix, Table};

/// What one [`Programmer::sync`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub ops: usize,
    pub routes_added: usize,
    pub routes_replaced: usize,
    pub routes_deleted: usize,
    pub slots_repointed: usize,
    pub groups_created: usize,
    pub errors: Vec<String>,
}

type Gw = (IpAddr, u32);

pub struct Programmer {
    pub backend: Box<dyn Backend>,
    pub mirror: KState,
    /// Bucket → slot of the resilient groups we have looked at (read back from the kernel).
    bmap: HashMap<u32, Vec<u32>>,
    proto: u8,
    next_id: u32,
    /// Routes per nexthop id in the mirror.
    users: HashMap<u32, usize>,
    /// An operation failed since the last full sync: the next sync is a full one.
    resync: bool,
}

/// Nexthop ids this FIB allocates start here, above what people type by hand.
const FIRST_ID: u32 = 0x0010_0000;

fn gw_of(nh: &Nexthop) -> Option<Gw> {
    match nh.kind {
        NhKind::Gateway { gw, oif } => Some((gw, oif)),
        _ => None,
    }
}

fn new_gw(id: u32, proto: u8, gw: Gw) -> (RtMsg, u16) {
    (
        RtMsg::NewNexthop(Nexthop {
            id,
            protocol: proto,
            kind: NhKind::Gateway {
                gw: gw.0,
                oif: gw.1,
            },
        }),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// Building plain (non-sticky) routes: the nexthops that exist, by content, and what a sync
/// must create first.
struct Plain {
    ifx: HashMap<String, Option<u32>>,
    path_ids: HashMap<Gw, u32>,
    ecmp_ids: HashMap<Vec<u32>, u32>,
    /// New path nexthops, each before the groups that use it.
    phase1: Vec<(RtMsg, u16)>,
}

impl Programmer {
    /// Read what the kernel has of ours.
    pub fn new(mut backend: Box<dyn Backend>, proto: u8) -> Result<Programmer, String> {
        let (mirror, max) = backend.read(proto)?;
        let mut p = Programmer {
            backend,
            mirror,
            bmap: HashMap::new(),
            proto,
            next_id: (max + 1).max(FIRST_ID),
            users: HashMap::new(),
            resync: false,
        };
        p.count_users();
        Ok(p)
    }

    /// Re-read the kernel (after an error, or when it changed behind our back).
    pub fn reread(&mut self) -> Result<(), String> {
        let (m, max) = self.backend.read(self.proto)?;
        self.mirror = m;
        self.count_users();
        self.bmap.clear();
        self.next_id = self.next_id.max(max + 1);
        Ok(())
    }

    /// Hold `id` in the mirror until the nexthop made with it is recorded.
    fn reserve(&mut self, id: u32) {
        let nh = Nexthop {
            id,
            protocol: self.proto,
            kind: NhKind::Blackhole,
        };
        self.mirror.nexthops.insert(id, nh);
    }

    fn alloc(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(FIRST_ID);
            if !self.mirror.nexthops.contains_key(&id) {
                return id;
            }
        }
    }

    /// Bucket → slot of a resilient group (cached).
    fn bucket_map(&mut self, g: u32) -> Option<Vec<u32>> {
        if !self.mirror.nexthops.get(&g).is_some_and(is_resilient) {
            return None;
        }
        if !self.bmap.contains_key(&g) {
            let b = self.backend.buckets(g).ok()?;
            self.bmap.insert(g, b);
        }
        self.bmap.get(&g).cloned()
    }

    /// The gateway of each bucket of group `g`, as the kernel forwards now.
    fn content(&mut self, g: u32) -> Option<Vec<Gw>> {
        let map = self.bucket_map(g)?;
        map.iter()
            .map(|s| self.mirror.nexthops.get(s).and_then(gw_of))
            .collect()
    }

    /// One slot per bucket: the group can be repointed bucket by bucket.
    fn one_to_one(&mut self, g: u32) -> bool {
        let Some(map) = self.bucket_map(g) else {
            return false;
        };
        let distinct: BTreeSet<&u32> = map.iter().collect();
        distinct.len() == map.len()
    }

    /// The per-bucket (gateway, ifindex) a sticky route's kernel group forwards to now, if that
    /// group is degraded (the kernel moved buckets itself when a link went down).
    pub fn kernel_distribution(&mut self, p: &Prefix) -> Option<Vec<Gw>> {
        let g = self.mirror.routes.get(p)?.nh_id?;
        if self.one_to_one(g) {
            return None;
        }
        self.content(g)
    }

    /// (gateway, ifindex) of a path, when its interface exists and is up.
    fn resolve(&self, cache: &mut HashMap<String, Option<u32>>, p: &Path) -> Option<Gw> {
        // One lookup per interface per sync, not one per path of every route.
        let ix = match cache.get(&p.ifname) {
            Some(ix) => *ix,
            None => {
                let ix = if self.backend.link_up(&p.ifname) {
                    self.backend.ifindex(&p.ifname)
                } else {
                    None
                };
                cache.insert(p.ifname.clone(), ix);
                ix
            }
        };
        Some((p.gw, ix?))
    }

    fn run(&mut self, ops: Vec<(RtMsg, u16)>, rep: &mut SyncReport) -> bool {
        if ops.is_empty() {
            return true;
        }
        rep.ops += ops.len();
        let sent = ops.clone();
        match self.backend.apply(ops) {
            Ok(results) => {
                let mut ok = true;
                for ((m, _), r) in sent.into_iter().zip(results) {
                    match r {
                        Ok(()) => self.record(m),
                        Err(e) => {
                            ok = false;
                            rep.errors.push(format!("{m:?}: {e}"));
                        }
                    }
                }
                ok
            }
            Err(e) => {
                rep.errors.push(e);
                false
            }
        }
    }

    /// The path nexthops (gateways that are not slots of a resilient group) and the
    /// hash-threshold groups that exist, by content.
    fn known_ids(&self) -> (HashMap<Vec<u32>, u32>, HashMap<Gw, u32>) {
        let mut slot_ids: BTreeSet<u32> = BTreeSet::new();
        let mut ecmp_ids: HashMap<Vec<u32>, u32> = HashMap::new();
        for (id, nh) in &self.mirror.nexthops {
            if let NhKind::Group { members, resilient } = &nh.kind {
                let ids: Vec<u32> = members.iter().map(|(i, _)| *i).collect();
                if resilient.is_some() {
                    slot_ids.extend(ids);
                } else {
                    ecmp_ids.entry(ids).or_insert(*id);
                }
            }
        }
        let mut path_ids: HashMap<Gw, u32> = HashMap::new();
        for (id, nh) in &self.mirror.nexthops {
            if let Some(g) = gw_of(nh)
                && !slot_ids.contains(id)
            {
                path_ids.entry(g).or_insert(*id);
            }
        }
        (ecmp_ids, path_ids)
    }

    /// The nexthop a plain route wants (a path nexthop, or a hash-threshold group of its live
    /// paths), created in `plain.phase1` if missing; None when no path is usable. `used`: the
    /// full sync collects every nexthop it keeps (it deletes the others).
    fn plain_nh(
        &mut self,
        plain: &mut Plain,
        t: &Table,
        e: &Entry,
        mut used: Option<&mut BTreeSet<u32>>,
    ) -> Option<u32> {
        let proto = self.proto;
        let mut ids = Vec::with_capacity(e.paths.len());
        for path in e.paths.iter().filter(|p| !t.down.contains(&p.ifname)) {
            let Some(gw) = self.resolve(&mut plain.ifx, path) else {
                continue;
            };
            let id = match plain.path_ids.get(&gw) {
                Some(id) => *id,
                None => {
                    let id = self.alloc();
                    plain.phase1.push(new_gw(id, proto, gw));
                    self.mirror.nexthops.insert(
                        id,
                        Nexthop {
                            id,
                            protocol: proto,
                            kind: NhKind::Gateway {
                                gw: gw.0,
                                oif: gw.1,
                            },
                        },
                    );
                    plain.path_ids.insert(gw, id);
                    id
                }
            };
            if let Some(u) = used.as_deref_mut() {
                u.insert(id);
            }
            ids.push(id);
        }
        let nh = match ids.len() {
            0 => return None,
            1 => ids[0],
            _ => match plain.ecmp_ids.get(&ids) {
                Some(g) => *g,
                None => {
                    let g = self.alloc();
                    plain.phase1.push((
                        RtMsg::NewNexthop(Nexthop {
                            id: g,
                            protocol: proto,
                            kind: NhKind::Group {
                                members: ids.iter().map(|i| (*i, 1)).collect(),
                                resilient: None,
                            },
                        }),
                        NLM_F_CREATE | NLM_F_REPLACE,
                    ));
                    self.reserve(g);
                    plain.ecmp_ids.insert(ids, g);
                    g
                }
            },
        };
        if let Some(u) = used {
            u.insert(nh);
        }
        Some(nh)
    }

    /// Program the routes of `changed` only. A full [`sync`](Self::sync) walks every route,
    /// so a full table fed in chunks cost each chunk as much as the table so far. Anything
    /// beyond plain routes (a sticky route, one leaving a resilient group), a nexthop left
    /// unused, or an earlier error takes the full sync, which owns groups and garbage.
    pub fn sync_changed(&mut self, t: &Table, changed: &BTreeSet<Prefix>) -> SyncReport {
        let resilient_now = |k: &Programmer, p: &Prefix| {
            k.mirror
                .routes
                .get(p)
                .and_then(|r| r.nh_id)
                .is_some_and(|g| k.mirror.nexthops.get(&g).is_some_and(is_resilient))
        };
        if self.resync
            || changed
                .iter()
                .any(|p| t.routes.get(p).is_some_and(|e| e.ldt.is_some()) || resilient_now(self, p))
        {
            return self.sync(t);
        }
        let mut rep = SyncReport::default();
        let (ecmp_ids, path_ids) = self.known_ids();
        let mut plain = Plain {
            ifx: HashMap::new(),
            path_ids,
            ecmp_ids,
            phase1: Vec::new(),
        };
        let mut ops: Vec<(RtMsg, u16)> = Vec::new();
        // Nexthops that lose a route here: if one ends up unused, the full sync removes it.
        let mut losing: BTreeSet<u32> = BTreeSet::new();
        for p in changed {
            let want = match t.routes.get(p) {
                Some(e) => match self.plain_nh(&mut plain, t, e, None) {
                    Some(nh) => Some(nh),
                    None => continue, // as the full sync: nothing usable, left as it is
                },
                None => None,
            };
            let have = self.mirror.routes.get(p);
            match (have, want) {
                (Some(r), Some(nh)) if r.nh_id == Some(nh) => {}
                (have, Some(nh)) => {
                    match have {
                        Some(r) => {
                            rep.routes_replaced += 1;
                            losing.extend(r.nh_id);
                        }
                        None => rep.routes_added += 1,
                    }
                    ops.push((
                        RtMsg::NewRoute(Route::new(p.addr, p.len, self.proto, nh)),
                        NLM_F_CREATE | NLM_F_REPLACE,
                    ));
                }
                (Some(r), None) => {
                    rep.routes_deleted += 1;
                    losing.extend(r.nh_id);
                    ops.push((RtMsg::DelRoute(r.clone()), 0));
                }
                (None, None) => {}
            }
        }
        if !self.run(std::mem::take(&mut plain.phase1), &mut rep) || !self.run(ops, &mut rep) {
            return self.after_error(rep);
        }
        if losing.iter().any(|id| !self.in_use(*id)) {
            let full = self.sync(t);
            rep.ops += full.ops;
            rep.routes_deleted += full.routes_deleted;
            rep.errors.extend(full.errors);
        }
        rep
    }

    /// The next [`sync_changed`](Self::sync_changed) is a full sync.
    pub fn force_full_sync(&mut self) {
        self.resync = true;
    }

    /// Some route, or some group, uses nexthop `id`.
    fn in_use(&self, id: u32) -> bool {
        self.users.contains_key(&id)
            || self.mirror.nexthops.values().any(|nh| match &nh.kind {
                NhKind::Group { members, .. } => members.iter().any(|(m, _)| *m == id),
                _ => false,
            })
    }

    /// A route left nexthop `nh`; a count that reaches zero goes (see [`in_use`](Self::in_use)).
    fn unuse(&mut self, nh: Option<u32>) {
        if let Some(n) = nh
            && let Some(c) = self.users.get_mut(&n)
        {
            *c -= 1;
            if *c == 0 {
                self.users.remove(&n);
            }
        }
    }

    /// Routes per nexthop, from the mirror.
    fn count_users(&mut self) {
        self.users.clear();
        for r in self.mirror.routes.values() {
            if let Some(n) = r.nh_id {
                *self.users.entry(n).or_default() += 1;
            }
        }
    }

    /// Make the kernel match `t`; only differences are sent.
    pub fn sync(&mut self, t: &Table) -> SyncReport {
        let mut rep = SyncReport::default();
        let proto = self.proto;
        let mut ifx: HashMap<String, Option<u32>> = HashMap::new();

        // What exists: path nexthops (gateways that are not slots) and ECMP groups by members.
        let (ecmp_ids, path_ids) = self.known_ids();

        let mut phase1: Vec<(RtMsg, u16)> = Vec::new();
        let mut want_routes: BTreeMap<Prefix, u32> = BTreeMap::new();
        let mut used: BTreeSet<u32> = BTreeSet::new();
        // New groups: (group, wanted per-bucket gateways), checked against the kernel's buckets.
        let mut created: Vec<(u32, Vec<Gw>)> = Vec::new();

        // Sticky routes: group them by the resilient group they use now and what they want.
        let mut by_group: BTreeMap<u32, BTreeMap<Vec<Gw>, Vec<Prefix>>> = BTreeMap::new();
        let mut fresh: BTreeMap<Vec<Gw>, Vec<Prefix>> = BTreeMap::new();
        let mut by_content: HashMap<Vec<Gw>, u32> = HashMap::new();
        for (p, e) in &t.routes {
            let Some(ldt) = &e.ldt else { continue };
            let want: Option<Vec<Gw>> = ldt
                .slots
                .iter()
                .map(|s| self.resolve(&mut ifx, s))
                .collect();
            let Some(want) = want else {
                if t.live(e).is_empty() {
                    continue; // every path is on a down link: nothing can be installed
                }
                rep.errors
                    .push(format!("{p}: a path of its distribution is not usable"));
                continue;
            };
            let cur = self.mirror.routes.get(p).and_then(|r| r.nh_id);
            let cur = cur.filter(|g| self.bucket_map(*g).is_some_and(|m| m.len() == want.len()));
            match cur {
                Some(g) if self.one_to_one(g) => by_group
                    .entry(g)
                    .or_default()
                    .entry(want)
                    .or_default()
                    .push(*p),
                // A degraded group (or none): build a complete one.
                _ => fresh.entry(want).or_default().push(*p),
            }
        }
        for (g, wants) in by_group {
            let now = self.content(g).unwrap_or_default();
            // The distribution most of the group's routes want keeps the group (repointed in
            // place: the kernel's bucket → slot map does not change); the others move.
            let keep = wants
                .iter()
                .max_by_key(|(w, ps)| (ps.len(), **w == now))
                .map(|(w, _)| w.clone())
                .unwrap_or_default();
            for (w, ps) in wants {
                if w != keep {
                    fresh.entry(w).or_default().extend(ps);
                    continue;
                }
                let map = self.bucket_map(g).unwrap_or_default();
                for (b, slot) in map.iter().enumerate() {
                    if now.get(b) != Some(&w[b]) {
                        rep.slots_repointed += 1;
                        phase1.push(new_gw(*slot, proto, w[b]));
                    }
                    used.insert(*slot);
                }
                used.insert(g);
                by_content.insert(w.clone(), g);
                for p in ps {
                    want_routes.insert(p, g);
                }
            }
        }
        for (w, ps) in fresh {
            let g = match by_content.get(&w) {
                Some(g) => *g,
                None => {
                    let n = w.len();
                    // Linux gives bucket b to member n-1-b in a new group of n members and n
                    // buckets; whatever it does, phase 2 checks and corrects.
                    let slots: Vec<u32> = (0..n).map(|_| self.alloc()).collect();
                    for (j, s) in slots.iter().enumerate() {
                        phase1.push(new_gw(*s, proto, w[n - 1 - j]));
                        used.insert(*s);
                    }
                    let g = self.alloc();
                    phase1.push((
                        RtMsg::NewNexthop(Nexthop {
                            id: g,
                            protocol: proto,
                            kind: NhKind::Group {
                                members: slots.iter().map(|s| (*s, 1)).collect(),
                                resilient: Some(Resilient {
                                    buckets: n as u16,
                                    idle_timer: 0,
                                    unbalanced_timer: 0,
                                }),
                            },
                        }),
                        NLM_F_CREATE | NLM_F_REPLACE,
                    ));
                    // Reserve the ids before any other allocation.
                    self.reserve(g);
                    for s in &slots {
                        self.reserve(*s);
                    }
                    rep.groups_created += 1;
                    created.push((g, w.clone()));
                    by_content.insert(w.clone(), g);
                    g
                }
            };
            used.insert(g);
            for p in ps {
                want_routes.insert(p, g);
            }
        }

        // Plain routes: a path nexthop, or a hash-threshold group of them (live paths only).
        let mut plain = Plain {
            ifx,
            path_ids,
            ecmp_ids,
            phase1: Vec::new(),
        };
        for (p, e) in &t.routes {
            if e.ldt.is_some() {
                continue;
            }
            if let Some(nh) = self.plain_nh(&mut plain, t, e, Some(&mut used)) {
                want_routes.insert(*p, nh);
            }
        }
        // New path nexthops before the groups that use them.
        plain.phase1.append(&mut phase1);
        let phase1 = plain.phase1;

        // Phase 1: nexthops, slot repoints, groups.
        if !self.run(phase1, &mut rep) {
            return self.after_error(rep);
        }
        // Phase 2: every new group forwards bucket b to the path the distribution says.
        let mut fix = Vec::new();
        for (g, w) in &created {
            self.bmap.remove(g);
            let Some(map) = self.bucket_map(*g) else {
                rep.errors.push(format!("group {g}: buckets unreadable"));
                continue;
            };
            for (b, slot) in map.iter().enumerate() {
                if self.mirror.nexthops.get(slot).and_then(gw_of) != Some(w[b]) {
                    fix.push(new_gw(*slot, proto, w[b]));
                }
            }
        }
        if !self.run(fix, &mut rep) {
            return self.after_error(rep);
        }

        // Phase 3: routes, then what nothing uses any more.
        let mut ops: Vec<(RtMsg, u16)> = Vec::new();
        for (p, nh) in &want_routes {
            match self.mirror.routes.get(p) {
                Some(r) if r.nh_id == Some(*nh) => {}
                have => {
                    if have.is_some() {
                        rep.routes_replaced += 1;
                    } else {
                        rep.routes_added += 1;
                    }
                    ops.push((
                        RtMsg::NewRoute(Route::new(p.addr, p.len, proto, *nh)),
                        NLM_F_CREATE | NLM_F_REPLACE,
                    ));
                }
            }
        }
        for (p, r) in &self.mirror.routes {
            if !want_routes.contains_key(p) && !t.routes.contains_key(p) {
                rep.routes_deleted += 1;
                ops.push((RtMsg::DelRoute(r.clone()), 0));
            }
        }
        let unused: Vec<u32> = self
            .mirror
            .nexthops
            .keys()
            .filter(|id| !used.contains(id))
            .copied()
            .collect();
        let (ug, un): (Vec<u32>, Vec<u32>) = unused
            .into_iter()
            .partition(|id| matches!(self.mirror.nexthops[id].kind, NhKind::Group { .. }));
        ops.extend(ug.into_iter().map(|id| (RtMsg::DelNexthop(id), 0)));
        ops.extend(un.into_iter().map(|id| (RtMsg::DelNexthop(id), 0)));
        if !self.run(ops, &mut rep) {
            return self.after_error(rep);
        }
        self.resync = false;
        rep
    }

    /// The kernel and our mirror disagree: believe the kernel.
    fn after_error(&mut self, mut rep: SyncReport) -> SyncReport {
        self.resync = true;
        if let Err(e) = self.reread() {
            rep.errors.push(e);
        }
        rep
    }

    fn record(&mut self, m: RtMsg) {
        match m {
            RtMsg::NewNexthop(nh) => {
                if is_resilient(&nh) {
                    self.bmap.remove(&nh.id);
                }
                self.mirror.nexthops.insert(nh.id, nh);
            }
            RtMsg::DelNexthop(id) => {
                self.bmap.remove(&id);
                self.mirror.nexthops.remove(&id);
            }
            RtMsg::NewRoute(r) => {
                if let Some(p) = Prefix::new(r.dst, r.dst_len) {
                    let nh = r.nh_id;
                    if let Some(old) = self.mirror.routes.insert(p, r) {
                        self.unuse(old.nh_id);
                    }
                    if let Some(n) = nh {
                        *self.users.entry(n).or_default() += 1;
                    }
                }
            }
            RtMsg::DelRoute(r) => {
                if let Some(p) = Prefix::new(r.dst, r.dst_len)
                    && let Some(old) = self.mirror.routes.remove(&p)
                {
                    self.unuse(old.nh_id);
                }
            }
            _ => {}
        }
    }

    /// The group of a sticky route and its slot nexthop per bucket.
    pub fn slots_of(&mut self, p: &Prefix) -> Option<(u32, Vec<u32>)> {
        let g = self.mirror.routes.get(p)?.nh_id?;
        Some((g, self.bucket_map(g)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn last_octet(a: &IpAddr) -> u8 {
        match a {
            IpAddr::V4(a) => a.octets()[3],
            IpAddr::V6(a) => a.octets()[15],
        }
    }
    use crate::table::StickyConfig;

    fn path(n: u8) -> Path {
        Path {
            gw: Ipv4Addr::new(10, 0, 0, n).into(),
            ifname: format!("eth{n}"),
        }
    }

    fn setup() -> (Table, Programmer) {
        let t = Table::new(StickyConfig {
            buckets: 8,
            auto_recovery: false,
            prefixes: vec![],
        });
        let p = Programmer::new(Box::new(Memory::default()), 199).expect("memory");
        (t, p)
    }

    #[test]
    fn ecmp_routes_share_one_group_and_a_second_sync_is_a_no_op() {
        let (mut t, mut k) = setup();
        for i in 0..10u8 {
            let p = Prefix::new(Ipv4Addr::new(192, 0, i, 0), 24).expect("p");
            t.announce(p, "bgp", vec![path(1), path(2)], false);
        }
        let r = k.sync(&t);
        assert_eq!(r.routes_added, 10);
        // Two path nexthops and one group.
        assert_eq!(k.mirror.nexthops.len(), 3);
        assert_eq!(k.sync(&t).ops, 0);
    }

    #[test]
    fn a_failed_path_repoints_slots_in_place() {
        let (mut t, mut k) = setup();
        let p: Prefix = "192.0.2.0/24".parse().expect("p");
        t.announce(p, "bgp", vec![path(1), path(2)], true);
        k.sync(&t);
        let (g, slots) = k.slots_of(&p).expect("sticky group");
        t.announce(p, "bgp", vec![path(1)], true);
        let r = k.sync(&t);
        assert_eq!(r.slots_repointed, 4);
        assert_eq!(r.routes_replaced, 0, "the route keeps its group");
        assert_eq!(k.slots_of(&p), Some((g, slots)));
    }

    #[test]
    fn a_degraded_group_is_adopted_and_rebuilt_without_moving_a_bucket() {
        let (mut t, mut k) = setup();
        let p: Prefix = "192.0.2.0/24".parse().expect("p");
        t.announce(p, "bgp", vec![path(1), path(2), path(3)], true);
        k.sync(&t);
        let (g, _) = k.slots_of(&p).expect("group");
        // What Linux does when eth2 goes down: its slots vanish from the group.
        let mut state = k.mirror.clone();
        let gone: Vec<u32> = state
            .nexthops
            .iter()
            .filter(|(_, n)| matches!(&n.kind, NhKind::Gateway { gw, .. } if last_octet(gw) == 2))
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            state.nexthops.remove(id);
        }
        if let Some(Nexthop {
            kind: NhKind::Group { members, .. },
            ..
        }) = state.nexthops.get_mut(&g)
        {
            members.retain(|(m, _)| !gone.contains(m));
        }
        let mut down = BTreeSet::new();
        down.insert("eth2".to_string());
        let mut k = Programmer::new(
            Box::new(Memory {
                state,
                down,
                ops: 0,
            }),
            199,
        )
        .expect("k");
        let now = k.kernel_distribution(&p).expect("degraded");
        let paths: Vec<Path> = now.iter().map(|(gw, _)| path(last_octet(gw))).collect();
        assert!(t.adopt(&p, paths));
        t.set_link("eth2", false);
        let r = k.sync(&t);
        assert_eq!(r.groups_created, 1, "{r:?}");
        let (g2, _) = k.slots_of(&p).expect("new group");
        assert_ne!(g2, g);
        assert!(k.one_to_one(g2));
        assert_eq!(k.content(g2), Some(now), "every bucket kept its path");
        assert_eq!(k.sync(&t).ops, 0);
    }

    #[test]
    fn a_restarted_programmer_changes_nothing_that_is_right() {
        let (mut t, mut k) = setup();
        for i in 0..5u8 {
            let p = Prefix::new(Ipv4Addr::new(192, 0, i, 0), 24).expect("p");
            t.announce(p, "bgp", vec![path(1), path(2)], i % 2 == 0);
        }
        k.sync(&t);
        let mem = Memory {
            state: k.mirror.clone(),
            ..Default::default()
        };
        let mut again = Programmer::new(Box::new(mem), 199).expect("read back");
        assert_eq!(again.sync(&t).ops, 0);
        // Withdrawn routes are deleted, unused nexthops collected.
        let mut t2 = t.clone();
        t2.routes.clear();
        again.sync(&t2);
        assert!(again.mirror.routes.is_empty() && again.mirror.nexthops.is_empty());
    }

    #[test]
    fn syncing_only_the_changed_routes_ends_where_a_full_sync_does() {
        let (mut t, mut k) = setup();
        let pfx =
            |i: u16| Prefix::new(Ipv4Addr::new(10, (i >> 8) as u8, i as u8, 0), 24).expect("p");
        // Chunks of plain routes on one path, on two (ECMP), and some sticky ones.
        for chunk in 0..4u16 {
            let mut changed = BTreeSet::new();
            for i in chunk * 100..(chunk + 1) * 100 {
                let paths = match i % 3 {
                    0 => vec![path(1)],
                    1 => vec![path(1), path(2)],
                    _ => vec![path(3)],
                };
                t.announce(pfx(i), "bgp", paths, i == 7);
                changed.insert(pfx(i));
            }
            let r = k.sync_changed(&t, &changed);
            assert!(r.errors.is_empty(), "{:?}", r.errors);
        }
        assert_eq!(k.mirror.routes.len(), 400);
        assert_eq!(k.sync(&t).ops, 0, "a full sync finds nothing left to do");
        // A path change moves routes; the last route off path 3 frees its nexthop.
        let mut changed = BTreeSet::new();
        for i in (0..400u16).filter(|i| i % 3 == 2) {
            t.announce(pfx(i), "bgp", vec![path(2)], false);
            changed.insert(pfx(i));
        }
        k.sync_changed(&t, &changed);
        assert_eq!(k.sync(&t).ops, 0);
        let gws: Vec<u8> = k
            .mirror
            .nexthops
            .values()
            .filter_map(gw_of)
            .map(|(g, _)| last_octet(&g))
            .collect();
        assert!(!gws.contains(&3), "path 3's nexthop is collected: {gws:?}");
        // Withdraw everything in two chunks: routes and nexthops all gone.
        for half in [0..200u16, 200..400u16] {
            let mut changed = BTreeSet::new();
            for i in half {
                t.withdraw(&pfx(i), "bgp");
                changed.insert(pfx(i));
            }
            k.sync_changed(&t, &changed);
        }
        assert!(k.mirror.routes.is_empty(), "{:?}", k.mirror.routes.len());
        assert!(k.mirror.nexthops.is_empty(), "{:?}", k.mirror.nexthops);
    }
}
