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
//! [`Programmer::sync`] reconciles: it reads nothing from the table's history, only compares
//! what the table wants with what the kernel has (a mirror, read back at start), and sends only
//! the difference. So a restarted FIB never flushes: it reads the kernel and changes what
//! differs. Groups the kernel already has are found by content, so their ids survive restarts
//! without being stored anywhere.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};

use crate::netlink::{Errno, Nexthop, NhKind, Resilient, Route, RtMsg};
use crate::table::{Path, Prefix, Table};

/// What the kernel holds of ours (objects with our protocol number).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KState {
    pub nexthops: BTreeMap<u32, Nexthop>,
    pub routes: BTreeMap<Prefix, Route>,
}

/// Where routes go: the Linux kernel over rtnetlink, or memory (unit tests, unprivileged labs).
pub trait Backend: Send {
    /// Everything of protocol `proto`; also the highest nexthop id in use by anyone.
    fn read(&mut self, proto: u8) -> Result<(KState, u32), String>;
    fn apply(&mut self, ops: Vec<(RtMsg, u16)>) -> Result<Vec<Result<(), Errno>>, String>;
    fn ifindex(&self, name: &str) -> Option<u32>;
    fn name(&self) -> &'static str;
}

/// The kernel of this network namespace.
pub struct Kernel {
    nl: crate::netlink::Socket,
}

impl Kernel {
    pub fn open() -> Result<Kernel, String> {
        Ok(Kernel {
            nl: crate::netlink::Socket::open().map_err(|e| format!("netlink socket: {e}"))?,
        })
    }

    /// The buckets of a resilient group (`ip nexthop bucket show id G`).
    pub fn buckets(&mut self, group: u32) -> Result<Vec<crate::netlink::Bucket>, String> {
        let mut v: Vec<_> = self
            .nl
            .dump(RtMsg::GetBuckets(group))
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter_map(|m| match m {
                RtMsg::Bucket(b) if b.group == group => Some(b),
                _ => None,
            })
            .collect();
        v.sort_by_key(|b| b.index);
        Ok(v)
    }
}

impl Backend for Kernel {
    fn read(&mut self, proto: u8) -> Result<(KState, u32), String> {
        let mut k = KState::default();
        let mut max = 0;
        for m in self
            .nl
            .dump(RtMsg::GetNexthops)
            .map_err(|e| e.to_string())?
        {
            if let RtMsg::NewNexthop(nh) = m {
                max = max.max(nh.id);
                if nh.protocol == proto {
                    k.nexthops.insert(nh.id, nh);
                }
            }
        }
        for m in self.nl.dump(RtMsg::GetRoutes).map_err(|e| e.to_string())? {
            if let RtMsg::NewRoute(r) = m
                && r.protocol == proto
                && let Some(p) = Prefix::new(r.dst, r.dst_len)
            {
                k.routes.insert(p, r);
            }
        }
        Ok((k, max))
    }
    fn apply(&mut self, ops: Vec<(RtMsg, u16)>) -> Result<Vec<Result<(), Errno>>, String> {
        self.nl.apply(ops).map_err(|e| e.to_string())
    }
    fn ifindex(&self, name: &str) -> Option<u32> {
        nix::net::if_::if_nametoindex(name).ok()
    }
    fn name(&self) -> &'static str {
        "kernel"
    }
}

/// A pretend kernel: applies the same operations to a map.
#[derive(Default)]
pub struct Memory {
    pub state: KState,
    /// Every operation applied (for tests).
    pub ops: usize,
}

impl Backend for Memory {
    fn read(&mut self, _proto: u8) -> Result<(KState, u32), String> {
        let max = self.state.nexthops.keys().max().copied().unwrap_or(0);
        Ok((self.state.clone(), max))
    }
    fn apply(&mut self, ops: Vec<(RtMsg, u16)>) -> Result<Vec<Result<(), Errno>>, String> {
        self.ops += ops.len();
        Ok(ops
            .into_iter()
            .map(|(m, _)| {
                match m {
                    RtMsg::NewNexthop(nh) => {
                        self.state.nexthops.insert(nh.id, nh);
                    }
                    RtMsg::DelNexthop(id) if self.state.nexthops.remove(&id).is_none() => {
                        return Err(Errno(libc::ENOENT));
                    }
                    RtMsg::NewRoute(r) => {
                        if let Some(p) = Prefix::new(r.dst, r.dst_len) {
                            self.state.routes.insert(p, r);
                        }
                    }
                    RtMsg::DelRoute(r) => {
                        if let Some(p) = Prefix::new(r.dst, r.dst_len) {
                            self.state.routes.remove(&p);
                        }
                    }
                    _ => {}
                }
                Ok(())
            })
            .collect())
    }
    fn ifindex(&self, name: &str) -> Option<u32> {
        // Stable made-up indexes: names are all a memory kernel has.
        Some(
            name.bytes()
                .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
                | 1,
        )
    }
    fn name(&self) -> &'static str {
        "memory"
    }
}

/// What one [`Programmer::sync`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub ops: usize,
    pub routes_added: usize,
    pub routes_replaced: usize,
    pub routes_deleted: usize,
    pub slots_repointed: usize,
    pub errors: Vec<String>,
}

type Gw = (Ipv4Addr, u32);

pub struct Programmer {
    pub backend: Box<dyn Backend>,
    pub mirror: KState,
    proto: u8,
    next_id: u32,
}

/// Nexthop ids this FIB allocates start here, above what people type by hand.
const FIRST_ID: u32 = 0x0010_0000;

fn gw_of(nh: &Nexthop) -> Option<Gw> {
    match nh.kind {
        NhKind::Gateway { gw, oif } => Some((gw, oif)),
        _ => None,
    }
}

impl Programmer {
    /// Read what the kernel has of ours.
    pub fn new(mut backend: Box<dyn Backend>, proto: u8) -> Result<Programmer, String> {
        let (mirror, max) = backend.read(proto)?;
        Ok(Programmer {
            backend,
            mirror,
            proto,
            next_id: (max + 1).max(FIRST_ID),
        })
    }

    /// Re-read the kernel (after an error, or when it changed behind our back).
    pub fn reread(&mut self) -> Result<(), String> {
        let (m, max) = self.backend.read(self.proto)?;
        self.mirror = m;
        self.next_id = self.next_id.max(max + 1);
        Ok(())
    }

    /// Make the kernel match `t`; only differences are sent.
    pub fn sync(&mut self, t: &Table) -> SyncReport {
        let mut rep = SyncReport::default();
        let proto = self.proto;
        let m = std::mem::take(&mut self.mirror);
        let next = &mut self.next_id;
        let backend = &self.backend;
        // One if_nametoindex per interface per sync, not one per path of every route.
        let ifx: std::cell::RefCell<HashMap<String, Option<u32>>> = Default::default();
        let resolve = |p: &Path| -> Option<Gw> {
            let mut c = ifx.borrow_mut();
            let ix = *c
                .entry(p.ifname.clone())
                .or_insert_with(|| backend.ifindex(&p.ifname));
            Some((p.gw, ix?))
        };
        let mut alloc = || loop {
            let id = *next;
            *next = next.wrapping_add(1).max(FIRST_ID);
            if !m.nexthops.contains_key(&id) {
                break id;
            }
        };
        // Slots are the members of resilient groups; path nexthops are the other gateways.
        let mut slot_ids: BTreeSet<u32> = BTreeSet::new();
        for nh in m.nexthops.values() {
            if let NhKind::Group {
                resilient: Some(_),
                members,
            } = &nh.kind
            {
                slot_ids.extend(members.iter().map(|(id, _)| *id));
            }
        }
        let mut path_ids: HashMap<Gw, u32> = HashMap::new();
        for (id, nh) in &m.nexthops {
            if let Some(g) = gw_of(nh)
                && !slot_ids.contains(id)
            {
                path_ids.entry(g).or_insert(*id);
            }
        }
        let mut ecmp_ids: HashMap<Vec<u32>, u32> = HashMap::new();
        let mut res_ids: HashMap<Vec<Gw>, u32> = HashMap::new();
        let mut res_content: HashMap<u32, Vec<Gw>> = HashMap::new();
        let mut res_members: HashMap<u32, Vec<u32>> = HashMap::new();
        for (id, nh) in &m.nexthops {
            if let NhKind::Group { members, resilient } = &nh.kind {
                let ids: Vec<u32> = members.iter().map(|(i, _)| *i).collect();
                if resilient.is_some() {
                    let gws: Option<Vec<Gw>> = ids
                        .iter()
                        .map(|i| m.nexthops.get(i).and_then(gw_of))
                        .collect();
                    if let Some(g) = gws {
                        res_ids.entry(g.clone()).or_insert(*id);
                        res_content.insert(*id, g);
                    }
                    res_members.insert(*id, ids);
                } else {
                    ecmp_ids.entry(ids).or_insert(*id);
                }
            }
        }

        let mut create: Vec<(RtMsg, u16)> = Vec::new();
        let mut groups: Vec<(RtMsg, u16)> = Vec::new();
        let mut want_routes: BTreeMap<Prefix, u32> = BTreeMap::new();
        let mut used: BTreeSet<u32> = BTreeSet::new();

        // Sticky routes first: decide, per resilient group in use, which distribution it carries.
        let mut by_group: BTreeMap<u32, BTreeMap<Vec<Gw>, Vec<Prefix>>> = BTreeMap::new();
        let mut fresh: BTreeMap<Vec<Gw>, Vec<Prefix>> = BTreeMap::new();
        for (p, e) in &t.routes {
            let Some(ldt) = &e.ldt else { continue };
            let Some(want): Option<Vec<Gw>> = ldt.slots.iter().map(&resolve).collect() else {
                rep.errors
                    .push(format!("{p}: an interface of its paths does not exist"));
                continue;
            };
            let cur = m.routes.get(p).and_then(|r| r.nh_id);
            match cur.filter(|g| res_members.get(g).is_some_and(|s| s.len() == want.len())) {
                Some(g) => by_group
                    .entry(g)
                    .or_default()
                    .entry(want)
                    .or_default()
                    .push(*p),
                None => fresh.entry(want).or_default().push(*p),
            }
        }
        let mut repoint: Vec<(RtMsg, u16)> = Vec::new();
        for (g, wants) in by_group {
            // The distribution most of the group's routes want keeps the group (repointed in
            // place: the kernel's bucket → slot map does not change); the others move.
            let (keep, _) = wants
                .iter()
                .max_by_key(|(w, ps)| (ps.len(), res_ids.get(*w) == Some(&g)))
                .map(|(w, ps)| (w.clone(), ps.len()))
                .unwrap_or_default();
            for (w, ps) in wants {
                if w == keep {
                    let members = res_members.get(&g).cloned().unwrap_or_default();
                    for (slot, gw) in members.iter().zip(w.iter()) {
                        if m.nexthops.get(slot).and_then(gw_of) != Some(*gw) {
                            rep.slots_repointed += 1;
                            repoint.push((
                                RtMsg::NewNexthop(Nexthop {
                                    id: *slot,
                                    protocol: proto,
                                    kind: NhKind::Gateway {
                                        gw: gw.0,
                                        oif: gw.1,
                                    },
                                }),
                                NLM_F_CREATE | NLM_F_REPLACE,
                            ));
                        }
                        used.insert(*slot);
                    }
                    used.insert(g);
                    if let Some(old) = res_content.insert(g, w.clone())
                        && res_ids.get(&old) == Some(&g)
                    {
                        res_ids.remove(&old);
                    }
                    res_ids.insert(w.clone(), g);
                    for p in ps {
                        want_routes.insert(p, g);
                    }
                } else {
                    fresh.entry(w).or_default().extend(ps);
                }
            }
        }
        for (w, ps) in fresh {
            let g = match res_ids.get(&w).copied() {
                Some(g) => g,
                None => {
                    let slots: Vec<u32> = (0..w.len()).map(|_| alloc()).collect();
                    for (s, gw) in slots.iter().zip(w.iter()) {
                        create.push((
                            RtMsg::NewNexthop(Nexthop {
                                id: *s,
                                protocol: proto,
                                kind: NhKind::Gateway {
                                    gw: gw.0,
                                    oif: gw.1,
                                },
                            }),
                            NLM_F_CREATE | NLM_F_REPLACE,
                        ));
                    }
                    let g = alloc();
                    groups.push((
                        RtMsg::NewNexthop(Nexthop {
                            id: g,
                            protocol: proto,
                            kind: NhKind::Group {
                                members: slots.iter().map(|s| (*s, 1)).collect(),
                                resilient: Some(Resilient {
                                    buckets: w.len() as u16,
                                    idle_timer: 0,
                                    unbalanced_timer: 0,
                                }),
                            },
                        }),
                        NLM_F_CREATE | NLM_F_REPLACE,
                    ));
                    res_members.insert(g, slots);
                    res_ids.insert(w.clone(), g);
                    g
                }
            };
            used.insert(g);
            used.extend(res_members.get(&g).cloned().unwrap_or_default());
            for p in ps {
                want_routes.insert(p, g);
            }
        }

        // Plain routes: a path nexthop, or a hash-threshold group of them.
        for (p, e) in &t.routes {
            if e.ldt.is_some() {
                continue;
            }
            let Some(gws): Option<Vec<Gw>> = e.paths.iter().map(&resolve).collect() else {
                rep.errors
                    .push(format!("{p}: an interface of its paths does not exist"));
                continue;
            };
            let mut ids = Vec::with_capacity(gws.len());
            for gw in gws {
                let id = match path_ids.get(&gw) {
                    Some(id) => *id,
                    None => {
                        let id = alloc();
                        create.push((
                            RtMsg::NewNexthop(Nexthop {
                                id,
                                protocol: proto,
                                kind: NhKind::Gateway {
                                    gw: gw.0,
                                    oif: gw.1,
                                },
                            }),
                            NLM_F_CREATE | NLM_F_REPLACE,
                        ));
                        path_ids.insert(gw, id);
                        id
                    }
                };
                used.insert(id);
                ids.push(id);
            }
            let nh = if ids.len() == 1 {
                ids[0]
            } else {
                match ecmp_ids.get(&ids) {
                    Some(g) => *g,
                    None => {
                        let g = alloc();
                        groups.push((
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
                        ecmp_ids.insert(ids.clone(), g);
                        g
                    }
                }
            };
            used.insert(nh);
            want_routes.insert(*p, nh);
        }

        let mut routes: Vec<(RtMsg, u16)> = Vec::new();
        for (p, nh) in &want_routes {
            match m.routes.get(p) {
                Some(r) if r.nh_id == Some(*nh) => {}
                have => {
                    if have.is_some() {
                        rep.routes_replaced += 1;
                    } else {
                        rep.routes_added += 1;
                    }
                    routes.push((
                        RtMsg::NewRoute(Route::new(p.addr, p.len, proto, *nh)),
                        NLM_F_CREATE | NLM_F_REPLACE,
                    ));
                }
            }
        }
        let mut deletes: Vec<(RtMsg, u16)> = Vec::new();
        for (p, r) in &m.routes {
            if !want_routes.contains_key(p) && !t.routes.contains_key(p) {
                rep.routes_deleted += 1;
                deletes.push((RtMsg::DelRoute(r.clone()), 0));
            }
        }
        // Unused groups before the nexthops they contain.
        let unused: Vec<u32> = m
            .nexthops
            .keys()
            .filter(|id| !used.contains(id))
            .copied()
            .collect();
        let (ug, un): (Vec<u32>, Vec<u32>) = unused
            .into_iter()
            .partition(|id| matches!(m.nexthops[id].kind, NhKind::Group { .. }));
        deletes.extend(ug.into_iter().map(|id| (RtMsg::DelNexthop(id), 0)));
        deletes.extend(un.into_iter().map(|id| (RtMsg::DelNexthop(id), 0)));

        let mut all = create;
        all.extend(repoint);
        all.extend(groups);
        all.extend(routes);
        all.extend(deletes);
        rep.ops = all.len();
        self.mirror = m;
        if all.is_empty() {
            return rep;
        }
        let ops = all.clone();
        match self.backend.apply(all) {
            Ok(results) => {
                let mut failed = false;
                for ((m, _), r) in ops.into_iter().zip(results) {
                    match r {
                        Ok(()) => self.record(m),
                        Err(e) => {
                            failed = true;
                            rep.errors.push(format!("{m:?}: {e}"));
                        }
                    }
                }
                if failed {
                    // The kernel and our mirror disagree: believe the kernel.
                    if let Err(e) = self.reread() {
                        rep.errors.push(e);
                    }
                }
            }
            Err(e) => rep.errors.push(e),
        }
        rep
    }

    fn record(&mut self, m: RtMsg) {
        match m {
            RtMsg::NewNexthop(nh) => {
                self.mirror.nexthops.insert(nh.id, nh);
            }
            RtMsg::DelNexthop(id) => {
                self.mirror.nexthops.remove(&id);
            }
            RtMsg::NewRoute(r) => {
                if let Some(p) = Prefix::new(r.dst, r.dst_len) {
                    self.mirror.routes.insert(p, r);
                }
            }
            RtMsg::DelRoute(r) => {
                if let Some(p) = Prefix::new(r.dst, r.dst_len) {
                    self.mirror.routes.remove(&p);
                }
            }
            _ => {}
        }
    }

    /// The slot nexthops (bucket order) of the group a sticky route uses.
    pub fn slots_of(&self, p: &Prefix) -> Option<(u32, Vec<u32>)> {
        let g = self.mirror.routes.get(p)?.nh_id?;
        match &self.mirror.nexthops.get(&g)?.kind {
            NhKind::Group {
                members,
                resilient: Some(_),
            } => Some((g, members.iter().map(|(i, _)| *i).collect())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::StickyConfig;

    fn path(n: u8) -> Path {
        Path {
            gw: Ipv4Addr::new(10, 0, 0, n),
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
    fn a_restarted_programmer_changes_nothing_that_is_right() {
        let (mut t, mut k) = setup();
        for i in 0..5u8 {
            let p = Prefix::new(Ipv4Addr::new(192, 0, i, 0), 24).expect("p");
            t.announce(p, "bgp", vec![path(1), path(2)], i % 2 == 0);
        }
        k.sync(&t);
        let mem = Memory {
            state: k.mirror.clone(),
            ops: 0,
        };
        let mut again = Programmer::new(Box::new(mem), 199).expect("read back");
        assert_eq!(again.sync(&t).ops, 0);
        // Withdrawn routes are deleted, unused nexthops collected.
        let mut t2 = t.clone();
        t2.routes.clear();
        again.sync(&t2);
        assert!(again.mirror.routes.is_empty() && again.mirror.nexthops.is_empty());
    }
}
