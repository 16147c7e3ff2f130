//! The Adj-RIBs-In and the Loc-RIB in one table, with best-path selection (RFC 4271 §9.1.2.2
//! order) and `maximum-paths` multipath. Pure: no I/O.
//!
//! One entry per prefix holds every peer's path for it, the selected ones first: a route
//! costs one hash-table operation and one entry (48 bytes for a single path), where an
//! Adj-RIB-In per peer plus a Loc-RIB cost two of each. At a million prefixes the growth of
//! those tables (rehashing, page faults) was a third of bgp's CPU. What is per peer (a
//! peer's Adj-RIB-In for a snapshot or a show, a peer going down) walks the table.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::sync::Arc;

use fib::proto::Prefix;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// The attributes best-path selection and the FIB need.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attrs {
    /// 0 IGP, 1 EGP, 2 INCOMPLETE.
    pub origin: u8,
    /// AS_PATH flattened (an AS_SET counts once, RFC 4271 §9.1.2.2).
    pub as_path: Vec<u32>,
    pub as_path_len: usize,
    pub next_hop: std::net::IpAddr,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    pub communities: Vec<u32>,
}

/// What selection needs to know about a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub addr: Ipv4Addr,
    pub router_id: Ipv4Addr,
    pub remote_as: u32,
    pub ebgp: bool,
}

/// A path: the peer it came from and its attributes.
pub type Path = (Ipv4Addr, Arc<Attrs>);

/// A prefix whose selection changed, with its selected paths as the change left them (the
/// best first; none: it left the Loc-RIB). Handed on as they are, the FIB and the
/// Adj-RIBs-Out do not look the prefix up again: in a table of a million, each lookup was a
/// cache miss, and two of them per change were a fifth of bgp's time in a full-table load.
pub type Change = (Prefix, SmallVec<[Path; 1]>);

/// A prefix: every peer's path to it, the selected ones first (the best, then its equals
/// for multipath). One path is kept inline: a full table is one allocation fewer per prefix.
#[derive(Debug)]
struct Dest {
    prefix: Prefix,
    /// How many of `paths` are selected: at least one whenever there is a path.
    nsel: u8,
    paths: SmallVec<[Path; 1]>,
}

impl Dest {
    fn selected(&self) -> &[Path] {
        &self.paths[..usize::from(self.nsel)]
    }

    fn change(&self) -> Change {
        (self.prefix, self.selected().iter().cloned().collect())
    }

    fn position(&self, peer: Ipv4Addr) -> Option<usize> {
        self.paths.iter().position(|(x, _)| *x == peer)
    }
}

#[derive(Debug, Default)]
pub struct Rib {
    /// Hashed with a fast hash (the keys are ours to trust: prefixes), unordered: the shows
    /// sort what they print.
    table: HashTable<Dest>,
    /// The size of each peer's Adj-RIB-In.
    received: HashMap<Ipv4Addr, usize>,
    pub peers: HashMap<Ipv4Addr, PeerInfo>,
    pub max_paths: usize,
    /// Routes kept from a restarting peer (Graceful Restart helper) until it re-sends them.
    pub stale: HashMap<Ipv4Addr, BTreeSet<Prefix>>,
}

const DEFAULT_LOCAL_PREF: u32 = 100;

fn hash(p: &Prefix) -> u64 {
    FxBuildHasher.hash_one(p)
}

/// Steps a–c of the decision (RFC 4271 §9.1.2.2 after the degree of preference): highest
/// local preference, shortest AS path, lowest origin. Lower is better.
fn key_abc(a: &Attrs) -> (std::cmp::Reverse<u32>, usize, u8) {
    (
        std::cmp::Reverse(a.local_pref.unwrap_or(DEFAULT_LOCAL_PREF)),
        a.as_path_len,
        a.origin,
    )
}

fn ebgp(peers: &HashMap<Ipv4Addr, PeerInfo>, p: &Ipv4Addr) -> bool {
    peers.get(p).is_some_and(|i| i.ebgp)
}

/// The decision without MED, a total order: steps a–c, then eBGP over iBGP, the lowest router
/// id, the lowest peer address.
fn cmp(peers: &HashMap<Ipv4Addr, PeerInfo>, a: &Path, b: &Path) -> Ordering {
    let rid = |p: &Ipv4Addr| peers.get(p).map(|i| i.router_id).unwrap_or(*p);
    key_abc(&a.1)
        .cmp(&key_abc(&b.1))
        .then(ebgp(peers, &b.0).cmp(&ebgp(peers, &a.0)))
        .then(rid(&a.0).cmp(&rid(&b.0)))
        .then(a.0.cmp(&b.0))
}

/// MED (step c of §9.1.2.2): a path is out of the running when another that ties with it on
/// steps a–c and comes from the same neighbouring AS has a lower MED. A filter, not part of
/// the sort: MED compares only some pairs, which no order can express (inside a comparison it
/// made cycles, which a sort may answer with a panic).
fn med_out(paths: &[Path], i: usize) -> bool {
    let a = &paths[i].1;
    paths.iter().any(|(_, o)| {
        key_abc(o) == key_abc(a)
            && o.as_path.first() == a.as_path.first()
            && o.med.unwrap_or(0) < a.med.unwrap_or(0)
    })
}

/// Order `d`'s paths (at least one) and count the selected ones.
fn select(peers: &HashMap<Ipv4Addr, PeerInfo>, max_paths: usize, d: &mut Dest) {
    d.paths.sort_by(|x, y| cmp(peers, x, y));
    let mut out: SmallVec<[bool; 4]> = (0..d.paths.len()).map(|i| med_out(&d.paths, i)).collect();
    // The best: the first in that order that MED leaves in (among the paths that tie on
    // steps a–c, the lowest MED of each neighbouring AS always is).
    let b = out.iter().position(|o| !o).unwrap_or(0);
    d.paths[..=b].rotate_right(1);
    out[..=b].rotate_right(1);
    // Then its equals for multipath (steps a–c, MED and eBGP/iBGP) with the same AS path and
    // another next hop, moved up behind it in order.
    let mut n = 1;
    for i in 1..d.paths.len() {
        if n >= max_paths.min(usize::from(u8::MAX)) {
            break;
        }
        let (best, c) = (&d.paths[0], &d.paths[i]);
        if !out[i]
            && key_abc(&c.1) == key_abc(&best.1)
            && ebgp(peers, &c.0) == ebgp(peers, &best.0)
            && c.1.as_path == best.1.as_path
            && !d.paths[..n].iter().any(|(_, a)| a.next_hop == c.1.next_hop)
        {
            d.paths[n..=i].rotate_right(1);
            out[n..=i].rotate_right(1);
            n += 1;
        }
    }
    d.nsel = n as u8;
}

/// Change `d`'s paths with `f` (they stay at least one), select again; whether the
/// selection changed.
fn reselect(
    peers: &HashMap<Ipv4Addr, PeerInfo>,
    max_paths: usize,
    d: &mut Dest,
    f: impl FnOnce(&mut SmallVec<[Path; 1]>),
) -> bool {
    let before: SmallVec<[Path; 4]> = d.selected().iter().cloned().collect();
    f(&mut d.paths);
    select(peers, max_paths, d);
    d.selected() != &before[..]
}

impl Rib {
    pub fn new(max_paths: usize) -> Rib {
        Rib {
            max_paths: max_paths.max(1),
            ..Default::default()
        }
    }

    /// The Loc-RIB entry of `p`: its selected paths, the best first.
    pub fn selected(&self, p: &Prefix) -> Option<&[Path]> {
        self.table
            .find(hash(p), |d| d.prefix == *p)
            .map(Dest::selected)
    }

    /// Prefixes in the Loc-RIB (every prefix with a path has a selection).
    pub fn loc_len(&self) -> usize {
        self.table.len()
    }

    /// Every prefix: its paths (from every peer) and how many of them, from the first, are
    /// selected.
    pub fn routes(&self) -> impl Iterator<Item = (&Prefix, &[Path], usize)> {
        self.table
            .iter()
            .map(|d| (&d.prefix, &d.paths[..], usize::from(d.nsel)))
    }

    /// The size of `peer`'s Adj-RIB-In; None if it has none: no UPDATE since its session
    /// came up (or, while a restarted speaker starts, since its RIBs were restored).
    pub fn received(&self, peer: &Ipv4Addr) -> Option<usize> {
        self.received.get(peer).copied()
    }

    /// The paths in all Adj-RIBs-In.
    pub fn received_total(&self) -> usize {
        self.received.values().sum()
    }

    /// `peer`'s Adj-RIB-In (a walk over the whole table).
    pub fn adj_in(&self, peer: Ipv4Addr) -> impl Iterator<Item = (&Prefix, &Arc<Attrs>)> {
        self.table.iter().filter_map(move |d| {
            d.paths
                .iter()
                .find(|(x, _)| *x == peer)
                .map(|(_, a)| (&d.prefix, a))
        })
    }

    /// Apply one UPDATE from `peer`: the withdrawals, then the announcements. Returns the
    /// prefixes whose selection changed, with their new selection. A prefix that appears
    /// more than once in the UPDATE is reported at each change, so it may be listed twice,
    /// or though it changed back (a speaker does not send such UPDATEs; the callers tolerate
    /// both).
    pub fn update(
        &mut self,
        peer: Ipv4Addr,
        announce: Vec<(Prefix, Arc<Attrs>)>,
        withdraw: Vec<Prefix>,
    ) -> Vec<Change> {
        if let Some(st) = self.stale.get_mut(&peer) {
            for (p, _) in &announce {
                st.remove(p);
            }
            for p in &withdraw {
                st.remove(p);
            }
        }
        let mut changed = Vec::with_capacity(announce.len() + withdraw.len());
        let mut count = self.received(&peer).unwrap_or(0);
        for p in withdraw {
            changed.extend(self.remove(peer, &p, &mut count));
        }
        self.table.reserve(announce.len(), |d| hash(&d.prefix));
        let Rib {
            table,
            peers,
            max_paths,
            ..
        } = self;
        for (p, a) in announce {
            let d = match table.entry(hash(&p), |d| d.prefix == p, |d| hash(&d.prefix)) {
                Entry::Vacant(v) => {
                    let sel: SmallVec<[Path; 1]> = smallvec::smallvec![(peer, a)];
                    changed.push((p, sel.clone()));
                    v.insert(Dest {
                        prefix: p,
                        nsel: 1,
                        paths: sel,
                    });
                    count += 1;
                    continue;
                }
                Entry::Occupied(o) => o.into_mut(),
            };
            let ch = match d.position(peer) {
                Some(i) if d.paths[i].1 == a => false, // the same path again
                Some(_) if d.paths.len() == 1 => {
                    d.paths[0].1 = a; // the only path, replaced
                    true
                }
                Some(i) => reselect(peers, *max_paths, d, |ps| ps[i].1 = a),
                None => {
                    count += 1;
                    reselect(peers, *max_paths, d, |ps| ps.push((peer, a)))
                }
            };
            if ch {
                changed.push(d.change());
            }
        }
        self.received.insert(peer, count);
        changed
    }

    /// Remove `peer`'s path to `p`, if any (counted in `count`); the change of selection, if
    /// it changed.
    fn remove(&mut self, peer: Ipv4Addr, p: &Prefix, count: &mut usize) -> Option<Change> {
        let mut o = self.table.find_entry(hash(p), |d| d.prefix == *p).ok()?;
        let d = o.get_mut();
        let i = d.position(peer)?;
        *count -= 1;
        if d.paths.len() == 1 {
            o.remove();
            return Some((*p, SmallVec::new()));
        }
        // Even a path that was not selected may have kept another out (MED).
        reselect(&self.peers, self.max_paths, d, |ps| {
            ps.remove(i);
        })
        .then(|| d.change())
    }

    /// The peer is restarting (RFC 4724 helper): keep its routes, marked stale.
    pub fn peer_stale(&mut self, peer: Ipv4Addr) {
        let all: BTreeSet<Prefix> = self.adj_in(peer).map(|(p, _)| *p).collect();
        self.stale.insert(peer, all);
    }

    /// End-of-RIB from a restarted peer, or its restart time ran out: what it did not re-send
    /// goes. Returns what went from its Adj-RIB-In, and the changes of selection.
    pub fn sweep_stale(&mut self, peer: Ipv4Addr) -> (Vec<Prefix>, Vec<Change>) {
        let gone: Vec<Prefix> = self
            .stale
            .remove(&peer)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut count = self.received(&peer).unwrap_or(0);
        let changed = gone
            .iter()
            .filter_map(|p| self.remove(peer, p, &mut count))
            .collect();
        if self.received.contains_key(&peer) {
            self.received.insert(peer, count);
        }
        (gone, changed)
    }

    /// The session with `peer` went down: its routes go.
    pub fn peer_down(&mut self, peer: Ipv4Addr) -> Vec<Change> {
        self.stale.remove(&peer);
        if self.received.remove(&peer).unwrap_or(0) == 0 {
            return Vec::new();
        }
        let mut changed = Vec::new();
        let Rib {
            table,
            peers,
            max_paths,
            ..
        } = self;
        table.retain(|d| {
            let Some(i) = d.position(peer) else {
                return true;
            };
            if d.paths.len() == 1 {
                changed.push((d.prefix, SmallVec::new()));
                return false;
            }
            if reselect(peers, *max_paths, d, |ps| {
                ps.remove(i);
            }) {
                changed.push(d.change());
            }
            true
        });
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(path: &[u32], nh: u8) -> Arc<Attrs> {
        Arc::new(Attrs {
            origin: 0,
            as_path: path.to_vec(),
            as_path_len: path.len(),
            next_hop: Ipv4Addr::new(10, 0, 0, nh).into(),
            local_pref: None,
            med: None,
            communities: vec![],
        })
    }
    fn peer(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }
    fn rib(max: usize) -> Rib {
        let mut r = Rib::new(max);
        for n in 1..=3 {
            r.peers.insert(
                peer(n),
                PeerInfo {
                    addr: peer(n),
                    router_id: Ipv4Addr::new(1, 1, 1, n),
                    remote_as: 65000 + u32::from(n),
                    ebgp: true,
                },
            );
        }
        r
    }
    fn pfx() -> Prefix {
        "192.0.2.0/24".parse().expect("p")
    }

    /// Selection from scratch, as a reference: RFC 4271 §9.1.2.2 as a sequence of filters
    /// (local preference, AS path length, origin, MED per neighbouring AS, eBGP over iBGP),
    /// then the lowest router id and peer address; the multipath equals from what the
    /// filters left, in that order.
    fn from_scratch(r: &Rib, p: &Prefix) -> Option<Vec<Path>> {
        let (_, all, _) = r.routes().find(|(x, _, _)| *x == p)?;
        let mut s = all.to_vec();
        let lp = |x: &Path| x.1.local_pref.unwrap_or(100);
        let best_lp = s.iter().map(lp).max()?;
        s.retain(|x| lp(x) == best_lp);
        let len = s.iter().map(|x| x.1.as_path_len).min()?;
        s.retain(|x| x.1.as_path_len == len);
        let origin = s.iter().map(|x| x.1.origin).min()?;
        s.retain(|x| x.1.origin == origin);
        let med = |x: &Path| x.1.med.unwrap_or(0);
        let s0 = s.clone();
        s.retain(|x| {
            !s0.iter()
                .any(|o| o.1.as_path.first() == x.1.as_path.first() && med(o) < med(x))
        });
        let eb = |x: &Path| r.peers.get(&x.0).is_some_and(|i| i.ebgp);
        if s.iter().any(eb) {
            s.retain(eb);
        }
        s.sort_by_key(|x| (r.peers.get(&x.0).map(|i| i.router_id), x.0));
        let best = s[0].clone();
        let mut sel = vec![best.clone()];
        for c in s.iter().skip(1) {
            if sel.len() >= r.max_paths {
                break;
            }
            if c.1.as_path == best.1.as_path && !sel.iter().any(|(_, a)| a.next_hop == c.1.next_hop)
            {
                sel.push(c.clone());
            }
        }
        Some(sel)
    }

    /// The Loc-RIB after any sequence of updates, withdrawals and peers going down is what
    /// selection from scratch gives for every prefix, with one peer (a single path) or
    /// several; every prefix whose selection changed is reported, and nothing else except a
    /// prefix the UPDATE carried twice.
    #[test]
    fn incremental_selection_agrees_with_selection_from_scratch() {
        let mut r = rib(2);
        let p = |i: u32| Prefix::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).expect("pfx");
        let mut x = 7u32;
        let mut step = |r: &mut Rib, who: u8| {
            let mut ann = Vec::new();
            let mut wd = Vec::new();
            // One attribute set per UPDATE, as on the wire.
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let first = [100, 200][(x >> 20) as usize % 2];
            let path: Vec<u32> = std::iter::once(first).chain(0..(x >> 12) % 3).collect();
            let mut a = (*attrs(&path, who)).clone();
            a.med = [None, Some(5), Some(10)][(x >> 16) as usize % 3];
            let a = Arc::new(a);
            for _ in 0..20 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let i = (x >> 8) % 16;
                if (x >> 4).is_multiple_of(3) {
                    wd.push(p(i));
                } else {
                    ann.push((p(i), a.clone()));
                }
            }
            let sel = |r: &Rib, i: u32| r.selected(&p(i)).map(<[Path]>::to_vec);
            let before: Vec<Option<Vec<Path>>> = (0..16).map(|i| sel(r, i)).collect();
            let times = |x: &Prefix| {
                ann.iter().filter(|(y, _)| y == x).count() + wd.iter().filter(|y| *y == x).count()
            };
            let carried: Vec<usize> = (0..16).map(|i| times(&p(i))).collect();
            let got = r.update(peer(who), ann, wd);
            for i in 0..16 {
                assert_eq!(sel(r, i), from_scratch(r, &p(i)), "prefix {i}");
                let changed = sel(r, i) != before[i as usize];
                let last = got.iter().rev().find(|(x, _)| *x == p(i));
                let reported = last.is_some();
                assert!(
                    changed == reported || reported && carried[i as usize] > 1,
                    "prefix {i}: changed {changed}, reported {reported}"
                );
                if let Some((_, s)) = last {
                    assert_eq!(s.to_vec(), sel(r, i).unwrap_or_default(), "prefix {i}");
                }
            }
        };
        for _ in 0..30 {
            step(&mut r, 1);
        }
        for round in 0..60 {
            step(&mut r, 1 + (round % 3) as u8);
        }
        for who in [2, 3] {
            for (x, s) in r.peer_down(peer(who)) {
                assert_eq!(
                    Some(s.to_vec()).filter(|s| !s.is_empty()),
                    r.selected(&x).map(<[Path]>::to_vec)
                );
            }
        }
        for _ in 0..30 {
            step(&mut r, 1);
        }
    }

    #[test]
    fn shorter_as_path_wins_and_withdrawal_falls_back() {
        let mut r = rib(1);
        r.update(peer(1), vec![(pfx(), attrs(&[65001, 1, 2], 1))], vec![]);
        r.update(peer(2), vec![(pfx(), attrs(&[65002, 2], 2))], vec![]);
        assert_eq!(r.selected(&pfx()).expect("selected")[0].0, peer(2));
        let ch = r.update(peer(2), vec![], vec![pfx()]);
        assert_eq!(ch.len(), 1);
        assert_eq!(
            (ch[0].0, ch[0].1[0].0),
            (pfx(), peer(1)),
            "the fallback, carried"
        );
        assert_eq!(r.selected(&pfx()).expect("selected")[0].0, peer(1));
        r.peer_down(peer(1));
        assert!(r.selected(&pfx()).is_none());
    }

    #[test]
    fn local_pref_beats_as_path_and_router_id_breaks_ties() {
        let mut r = rib(1);
        let mut a = (*attrs(&[65001, 1, 2, 3], 1)).clone();
        a.local_pref = Some(200);
        r.update(peer(1), vec![(pfx(), Arc::new(a))], vec![]);
        r.update(peer(2), vec![(pfx(), attrs(&[65002], 2))], vec![]);
        assert_eq!(r.selected(&pfx()).expect("selected")[0].0, peer(1));
        let mut r = rib(1);
        r.update(peer(3), vec![(pfx(), attrs(&[65000], 3))], vec![]);
        r.update(peer(2), vec![(pfx(), attrs(&[65000], 2))], vec![]);
        assert_eq!(
            r.selected(&pfx()).expect("selected")[0].0,
            peer(2),
            "lower router id"
        );
    }

    fn with_med(first_as: u32, med: u32, nh: u8) -> Arc<Attrs> {
        let mut a = (*attrs(&[first_as, 7], nh)).clone();
        a.med = Some(med);
        Arc::new(a)
    }

    /// MED compares only paths from the same neighbouring AS, so as a comparison it makes
    /// cycles: A beats B on MED, B beats C and C beats A on router id. RFC 4271 takes B out
    /// (A has the lower MED from the same AS), then C wins on router id, whatever the order
    /// the paths came in.
    #[test]
    fn med_takes_a_path_out_whatever_the_order_paths_arrive_in() {
        let paths = [
            (peer(3), with_med(100, 10, 3)), // A
            (peer(1), with_med(100, 20, 1)), // B
            (peer(2), with_med(200, 0, 2)),  // C
        ];
        for order in [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ] {
            let mut r = rib(1);
            for i in order {
                r.update(paths[i].0, vec![(pfx(), paths[i].1.clone())], vec![]);
            }
            assert_eq!(
                r.selected(&pfx()).expect("selected")[0].0,
                peer(2),
                "{order:?}"
            );
        }
        // Withdrawing A, which was not selected, lets B back in: B wins on router id.
        let mut r = rib(1);
        for (who, a) in &paths {
            r.update(*who, vec![(pfx(), a.clone())], vec![]);
        }
        let ch = r.update(peer(3), vec![], vec![pfx()]);
        assert_eq!(ch.len(), 1, "a change, though A was not selected");
        assert_eq!(r.selected(&pfx()).expect("selected")[0].0, peer(1));
    }

    /// Many peers with the same prefix (a route server), their MEDs in cycles: selection is
    /// what the RFC's filters give, and never a panic of the sort.
    #[test]
    fn forty_peers_with_med_cycles_select_as_the_rfc_says() {
        let mut r = Rib::new(4);
        for n in 1..=40u8 {
            r.peers.insert(
                peer(n),
                PeerInfo {
                    addr: peer(n),
                    router_id: Ipv4Addr::new(1, 1, 1, 41 - n),
                    remote_as: 65000 + u32::from(n),
                    ebgp: n % 5 != 0,
                },
            );
        }
        for n in 1..=40u8 {
            let a = with_med(100 * u32::from(n % 3), u32::from(n) * 7 % 11, n % 6);
            r.update(peer(n), vec![(pfx(), a)], vec![]);
            assert_eq!(
                r.selected(&pfx()).map(<[Path]>::to_vec),
                from_scratch(&r, &pfx()),
                "after peer {n}"
            );
        }
    }

    #[test]
    fn maximum_paths_gives_ecmp_over_equal_paths() {
        let mut r = rib(4);
        r.update(peer(1), vec![(pfx(), attrs(&[65000, 7], 1))], vec![]);
        r.update(peer(2), vec![(pfx(), attrs(&[65000, 7], 2))], vec![]);
        r.update(peer(3), vec![(pfx(), attrs(&[65000, 7, 7], 3))], vec![]);
        assert_eq!(r.selected(&pfx()).expect("selected").len(), 2);
    }

    #[test]
    fn stale_routes_stay_until_end_of_rib_and_only_unrefreshed_ones_go() {
        let mut r = rib(1);
        let other: Prefix = "198.51.100.0/24".parse().expect("p");
        r.update(
            peer(1),
            vec![(pfx(), attrs(&[65001], 1)), (other, attrs(&[65001], 1))],
            vec![],
        );
        r.peer_stale(peer(1));
        assert_eq!(r.loc_len(), 2, "still forwarding");
        r.update(peer(1), vec![(pfx(), attrs(&[65001], 1))], vec![]);
        let (gone, ch) = r.sweep_stale(peer(1));
        assert_eq!(gone, vec![other]);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].0, other);
        assert!(ch[0].1.is_empty(), "withdrawn");
        assert!(r.selected(&pfx()).is_some());
    }

    #[test]
    fn unchanged_selection_reports_nothing() {
        let mut r = rib(1);
        r.update(peer(1), vec![(pfx(), attrs(&[65001], 1))], vec![]);
        assert!(
            r.update(peer(1), vec![(pfx(), attrs(&[65001], 1))], vec![])
                .is_empty()
        );
    }
}
