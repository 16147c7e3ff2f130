//! Adj-RIB-In per peer and the Loc-RIB with best-path selection (RFC 4271 §9.1.2.2 order) and
//! `maximum-paths` multipath. Pure: no I/O.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use fib::proto::Prefix;
use rustc_hash::FxHashMap;
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

/// The selected path(s) of a prefix: the best first, then its equals for multipath (one path
/// is kept inline: a full table is one allocation fewer per prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub paths: SmallVec<[(Ipv4Addr, Arc<Attrs>); 1]>,
}

#[derive(Debug, Default)]
pub struct Rib {
    /// Hash maps with a fast hash (the keys are ours to trust: prefixes), unordered: the
    /// shows sort what they print.
    pub adj_in: HashMap<Ipv4Addr, FxHashMap<Prefix, Arc<Attrs>>>,
    pub loc: FxHashMap<Prefix, Selected>,
    pub peers: HashMap<Ipv4Addr, PeerInfo>,
    pub max_paths: usize,
    /// Routes kept from a restarting peer (Graceful Restart helper) until it re-sends them.
    pub stale: HashMap<Ipv4Addr, BTreeSet<Prefix>>,
}

const DEFAULT_LOCAL_PREF: u32 = 100;

/// Put `p`'s new selection (None: no path) into the Loc-RIB; whether it changed.
fn set_selection(loc: &mut FxHashMap<Prefix, Selected>, p: Prefix, new: Option<Selected>) -> bool {
    match (loc.entry(p), new) {
        (Entry::Occupied(mut e), Some(s)) => {
            if *e.get() == s {
                return false;
            }
            e.insert(s);
        }
        (Entry::Occupied(e), None) => {
            e.remove();
        }
        (Entry::Vacant(e), Some(s)) => {
            e.insert(s);
        }
        (Entry::Vacant(_), None) => return false,
    }
    true
}

impl Rib {
    pub fn new(max_paths: usize) -> Rib {
        Rib {
            max_paths: max_paths.max(1),
            ..Default::default()
        }
    }

    /// Steps 1–5 of the decision: what must be equal for multipath.
    fn cmp_multipath(&self, a: (&Ipv4Addr, &Attrs), b: (&Ipv4Addr, &Attrs)) -> Ordering {
        let (pa, aa) = a;
        let (pb, ab) = b;
        let lp = |x: &Attrs| x.local_pref.unwrap_or(DEFAULT_LOCAL_PREF);
        let ebgp = |p: &Ipv4Addr| self.peers.get(p).is_some_and(|i| i.ebgp);
        lp(ab)
            .cmp(&lp(aa))
            .then(aa.as_path_len.cmp(&ab.as_path_len))
            .then(aa.origin.cmp(&ab.origin))
            .then_with(|| {
                // MED only between paths from the same neighbouring AS.
                if aa.as_path.first() == ab.as_path.first() {
                    aa.med.unwrap_or(0).cmp(&ab.med.unwrap_or(0))
                } else {
                    Ordering::Equal
                }
            })
            .then(ebgp(pb).cmp(&ebgp(pa)))
    }

    /// The full decision: then lowest router id, then lowest peer address.
    fn cmp(&self, a: (&Ipv4Addr, &Attrs), b: (&Ipv4Addr, &Attrs)) -> Ordering {
        let rid = |p: &Ipv4Addr| self.peers.get(p).map(|i| i.router_id).unwrap_or(*p);
        self.cmp_multipath(a, b)
            .then(rid(a.0).cmp(&rid(b.0)))
            .then(a.0.cmp(b.0))
    }

    fn select(&self, p: &Prefix) -> Option<Selected> {
        // Candidates on the stack for the usual few peers.
        let mut cands: SmallVec<[(Ipv4Addr, Arc<Attrs>); 4]> = self
            .adj_in
            .iter()
            .filter_map(|(peer, t)| t.get(p).map(|a| (*peer, a.clone())))
            .collect();
        if cands.len() <= 1 {
            return cands.pop().map(|c| Selected {
                paths: smallvec::smallvec![c],
            });
        }
        cands.sort_by(|x, y| self.cmp((&x.0, &x.1), (&y.0, &y.1)));
        let best = cands[0].clone();
        let mut paths: SmallVec<[(Ipv4Addr, Arc<Attrs>); 1]> = smallvec::smallvec![best.clone()];
        for c in cands.iter().skip(1) {
            if paths.len() >= self.max_paths {
                break;
            }
            if self.cmp_multipath((&best.0, &best.1), (&c.0, &c.1)) == Ordering::Equal
                && c.1.as_path == best.1.as_path
                && !paths.iter().any(|(_, a)| a.next_hop == c.1.next_hop)
            {
                paths.push(c.clone());
            }
        }
        Some(Selected { paths })
    }

    fn reselect(&mut self, touched: impl IntoIterator<Item = Prefix>) -> Vec<Prefix> {
        let mut changed = Vec::new();
        for p in touched {
            let new = self.select(&p);
            if set_selection(&mut self.loc, p, new) {
                changed.push(p);
            }
        }
        changed
    }

    /// Apply one UPDATE from `peer`; returns the prefixes whose selection changed.
    pub fn update(
        &mut self,
        peer: Ipv4Addr,
        announce: Vec<(Prefix, Arc<Attrs>)>,
        withdraw: Vec<Prefix>,
    ) -> Vec<Prefix> {
        // No other peer has a route: this one's path is the selection, without looking it up
        // again (a single upstream, or the first to send a full table).
        let alone = self.adj_in.iter().all(|(k, t)| *k == peer || t.is_empty());
        let t = self.adj_in.entry(peer).or_default();
        let stale = self.stale.get_mut(&peer);
        let mut touched = Vec::with_capacity(announce.len() + withdraw.len());
        if let Some(st) = stale {
            for (p, _) in &announce {
                st.remove(p);
            }
            for p in &withdraw {
                st.remove(p);
            }
        }
        for p in withdraw {
            if t.remove(&p).is_some() {
                touched.push(p);
            }
        }
        if alone {
            let mut changed = Vec::with_capacity(touched.len() + announce.len());
            for (p, a) in announce {
                t.insert(p, a.clone());
                let s = Selected {
                    paths: smallvec::smallvec![(peer, a)],
                };
                if set_selection(&mut self.loc, p, Some(s)) {
                    changed.push(p);
                }
            }
            // Withdrawn and not announced again in the same UPDATE.
            for p in touched {
                if !t.contains_key(&p) && set_selection(&mut self.loc, p, None) {
                    changed.push(p);
                }
            }
            return changed;
        }
        for (p, a) in announce {
            t.insert(p, a);
            touched.push(p);
        }
        self.reselect(touched)
    }

    /// The peer is restarting (RFC 4724 helper): keep its routes, marked stale.
    pub fn peer_stale(&mut self, peer: Ipv4Addr) {
        let all: BTreeSet<Prefix> = self
            .adj_in
            .get(&peer)
            .map(|t| t.keys().copied().collect())
            .unwrap_or_default();
        self.stale.insert(peer, all);
    }

    /// End-of-RIB from a restarted peer, or its restart time ran out: what it did not re-send
    /// goes.
    pub fn sweep_stale(&mut self, peer: Ipv4Addr) -> Vec<Prefix> {
        let gone = self.stale.remove(&peer).unwrap_or_default();
        if let Some(t) = self.adj_in.get_mut(&peer) {
            for p in &gone {
                t.remove(p);
            }
        }
        self.reselect(gone)
    }

    /// The session with `peer` went down: its routes go.
    pub fn peer_down(&mut self, peer: Ipv4Addr) -> Vec<Prefix> {
        self.stale.remove(&peer);
        let touched: Vec<Prefix> = self
            .adj_in
            .remove(&peer)
            .map(|t| t.into_keys().collect())
            .unwrap_or_default();
        self.reselect(touched)
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

    /// The Loc-RIB after any sequence of updates is what full selection gives for every
    /// prefix, whether one peer had routes (the shortcut) or several.
    #[test]
    fn the_single_peer_shortcut_agrees_with_full_selection() {
        let mut r = rib(2);
        let p = |i: u32| Prefix::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).expect("pfx");
        let mut x = 7u32;
        let mut step = |r: &mut Rib, who: u8| {
            let mut ann = Vec::new();
            let mut wd = Vec::new();
            // One attribute set per UPDATE, as on the wire.
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let a = attrs(&(0..1 + (x >> 12) % 3).collect::<Vec<_>>(), who);
            for _ in 0..20 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let i = (x >> 8) % 16;
                if (x >> 4).is_multiple_of(3) {
                    wd.push(p(i));
                } else {
                    ann.push((p(i), a.clone()));
                }
            }
            let before: Vec<Option<Selected>> =
                (0..16).map(|i| r.loc.get(&p(i)).cloned()).collect();
            let changed = r.update(peer(who), ann, wd);
            let mut want = Vec::new();
            for i in 0..16 {
                assert_eq!(r.loc.get(&p(i)), r.select(&p(i)).as_ref(), "prefix {i}");
                if r.loc.get(&p(i)) != before[i as usize].as_ref() {
                    want.push(p(i));
                }
            }
            let mut got = changed.clone();
            got.sort();
            want.sort();
            assert_eq!(got, want, "changed prefixes");
        };
        for _ in 0..30 {
            step(&mut r, 1);
        }
        for round in 0..60 {
            step(&mut r, 1 + (round % 3) as u8);
        }
        r.peer_down(peer(2));
        r.peer_down(peer(3));
        for _ in 0..30 {
            step(&mut r, 1);
        }
    }

    #[test]
    fn shorter_as_path_wins_and_withdrawal_falls_back() {
        let mut r = rib(1);
        r.update(peer(1), vec![(pfx(), attrs(&[65001, 1, 2], 1))], vec![]);
        r.update(peer(2), vec![(pfx(), attrs(&[65002, 2], 2))], vec![]);
        assert_eq!(r.loc[&pfx()].paths[0].0, peer(2));
        assert_eq!(r.update(peer(2), vec![], vec![pfx()]), vec![pfx()]);
        assert_eq!(r.loc[&pfx()].paths[0].0, peer(1));
        r.peer_down(peer(1));
        assert!(!r.loc.contains_key(&pfx()));
    }

    #[test]
    fn local_pref_beats_as_path_and_router_id_breaks_ties() {
        let mut r = rib(1);
        let mut a = (*attrs(&[65001, 1, 2, 3], 1)).clone();
        a.local_pref = Some(200);
        r.update(peer(1), vec![(pfx(), Arc::new(a))], vec![]);
        r.update(peer(2), vec![(pfx(), attrs(&[65002], 2))], vec![]);
        assert_eq!(r.loc[&pfx()].paths[0].0, peer(1));
        let mut r = rib(1);
        r.update(peer(3), vec![(pfx(), attrs(&[65000], 3))], vec![]);
        r.update(peer(2), vec![(pfx(), attrs(&[65000], 2))], vec![]);
        assert_eq!(r.loc[&pfx()].paths[0].0, peer(2), "lower router id");
    }

    #[test]
    fn maximum_paths_gives_ecmp_over_equal_paths() {
        let mut r = rib(4);
        r.update(peer(1), vec![(pfx(), attrs(&[65000, 7], 1))], vec![]);
        r.update(peer(2), vec![(pfx(), attrs(&[65000, 7], 2))], vec![]);
        r.update(peer(3), vec![(pfx(), attrs(&[65000, 7, 7], 3))], vec![]);
        assert_eq!(r.loc[&pfx()].paths.len(), 2);
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
        assert_eq!(r.loc.len(), 2, "still forwarding");
        r.update(peer(1), vec![(pfx(), attrs(&[65001], 1))], vec![]);
        assert_eq!(r.sweep_stale(peer(1)), vec![other]);
        assert!(r.loc.contains_key(&pfx()));
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
