//! The forwarding table as the FIB means it, independent of the kernel: routes from producers,
//! ECMP path sets, and for sticky routes the load distribution table (LDT) of buckets.
//!
//! Sticky ECMP (persistent load balancing): a sticky route has `buckets` buckets, each assigned
//! to one path. When a path fails only its buckets move (spread over the survivors, marked
//! replaced); every other bucket keeps its path. When it comes back: with auto-recovery exactly
//! the buckets that moved return; without, nothing moves until a new path appears or the operator
//! clears the route (a full recompute).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 or IPv6 prefix, host bits cleared (IPv4 sorts before IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn new(addr: impl Into<IpAddr>, len: u8) -> Option<Prefix> {
        let addr = match addr.into() {
            IpAddr::V4(a) => {
                if len > 32 {
                    return None;
                }
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                if len > 128 {
                    return None;
                }
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Some(Prefix { addr, len })
    }

    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// `other` lies inside `self`.
    pub fn covers(&self, other: &Prefix) -> bool {
        other.len >= self.len
            && other.is_ipv6() == self.is_ipv6()
            && Prefix::new(other.addr, self.len).is_some_and(|p| p.addr == self.addr)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Prefix, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?}: bad IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv6() { 128 } else { 32 };
        let len: u8 = match l {
            Some(l) => l.parse().map_err(|_| format!("{s:?}: bad prefix length"))?,
            None => max,
        };
        Prefix::new(addr, len).ok_or_else(|| format!("{s:?}: prefix length above {max}"))
    }
}

/// One path: a gateway reached through an interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Path {
    pub gw: IpAddr,
    pub ifname: String,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dev {}", self.gw, self.ifname)
    }
}

/// The load distribution table of a sticky route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ldt {
    /// The path of each bucket.
    pub slots: Vec<Path>,
    /// The path each bucket had at the last full computation (what auto-recovery restores).
    pub original: Vec<Path>,
}

impl Ldt {
    /// Spread `buckets` buckets over `paths` round robin (a full computation).
    pub fn compute(paths: &[Path], buckets: usize) -> Ldt {
        let slots: Vec<Path> = (0..buckets)
            .map(|i| paths[i % paths.len()].clone())
            .collect();
        Ldt {
            original: slots.clone(),
            slots,
        }
    }

    /// Buckets whose path is not their original one (`*` in `show cef`).
    pub fn replaced(&self, i: usize) -> bool {
        self.slots[i] != self.original[i]
    }

    fn count(&self, p: &Path) -> usize {
        self.slots.iter().filter(|s| *s == p).count()
    }

    /// Move the buckets of paths no longer in `live` to the least loaded survivors.
    fn drop_dead(&mut self, live: &[Path]) {
        for i in 0..self.slots.len() {
            if live.contains(&self.slots[i]) {
                continue;
            }
            let to = live
                .iter()
                .min_by_key(|p| (self.count(p), (*p).clone()))
                .cloned();
            if let Some(to) = to {
                self.slots[i] = to;
            }
        }
    }

    /// Auto-recovery: buckets whose original path is live again go back to it.
    fn restore(&mut self, live: &[Path]) {
        for i in 0..self.slots.len() {
            if self.slots[i] != self.original[i] && live.contains(&self.original[i]) {
                self.slots[i] = self.original[i].clone();
            }
        }
    }
}

/// A route in the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub producer: String,
    /// Sorted, without duplicates.
    pub paths: Vec<Path>,
    pub sticky: bool,
    /// From a producer that restarted and has not re-sent it yet.
    pub stale: bool,
    pub ldt: Option<Ldt>,
}

/// How sticky routes behave (from the service configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StickyConfig {
    pub buckets: usize,
    pub auto_recovery: bool,
    /// Routes inside these prefixes are sticky whatever the producer says.
    pub prefixes: Vec<Prefix>,
}

impl Default for StickyConfig {
    fn default() -> StickyConfig {
        StickyConfig {
            buckets: 64,
            auto_recovery: false,
            prefixes: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Table {
    pub routes: BTreeMap<Prefix, Entry>,
    pub sticky: StickyConfig,
    /// Interfaces that are administratively down: their paths are not usable (the kernel
    /// deleted their nexthops), whatever the producers say.
    pub down: std::collections::BTreeSet<String>,
}

fn norm(mut paths: Vec<Path>) -> Vec<Path> {
    paths.sort();
    paths.dedup();
    paths
}

impl Table {
    pub fn new(sticky: StickyConfig) -> Table {
        Table {
            routes: BTreeMap::new(),
            sticky,
            down: Default::default(),
        }
    }

    /// The paths of `e` that can carry traffic now.
    pub fn live(&self, e: &Entry) -> Vec<Path> {
        e.paths
            .iter()
            .filter(|p| !self.down.contains(&p.ifname))
            .cloned()
            .collect()
    }

    /// An interface went down or came back: sticky distributions follow (a path on a down link
    /// has failed; one coming back is restored only with auto-recovery). Returns the sticky
    /// routes whose distribution changed.
    pub fn set_link(&mut self, ifname: &str, up: bool) -> Vec<Prefix> {
        let changed = if up {
            self.down.remove(ifname)
        } else {
            self.down.insert(ifname.to_string())
        };
        if !changed {
            return Vec::new();
        }
        let auto = self.sticky.auto_recovery;
        let down = self.down.clone();
        let mut out = Vec::new();
        for (p, e) in self.routes.iter_mut() {
            let live: Vec<Path> = e
                .paths
                .iter()
                .filter(|x| !down.contains(&x.ifname))
                .cloned()
                .collect();
            let Some(ldt) = e.ldt.as_mut() else { continue };
            if live.is_empty() {
                continue;
            }
            let before = ldt.clone();
            ldt.drop_dead(&live);
            if auto {
                ldt.restore(&live);
            }
            if *ldt != before {
                out.push(*p);
            }
        }
        out
    }

    /// The kernel already moved a sticky route's buckets (a link went down and took its slot
    /// nexthops): take its per-bucket paths as they are, so nothing moves a second time.
    pub fn adopt(&mut self, prefix: &Prefix, per_bucket: Vec<Path>) -> bool {
        match self.routes.get_mut(prefix).and_then(|e| e.ldt.as_mut()) {
            Some(ldt) if ldt.slots.len() == per_bucket.len() && ldt.slots != per_bucket => {
                ldt.slots = per_bucket;
                true
            }
            _ => false,
        }
    }

    fn is_sticky(&self, p: &Prefix, flag: bool) -> bool {
        flag || self.sticky.prefixes.iter().any(|s| s.covers(p))
    }

    /// Announce (or re-announce) a route; returns whether anything changed.
    pub fn announce(
        &mut self,
        prefix: Prefix,
        producer: &str,
        paths: Vec<Path>,
        sticky: bool,
    ) -> bool {
        let paths = norm(paths);
        if paths.is_empty() {
            return self.withdraw(&prefix, producer);
        }
        let sticky = self.is_sticky(&prefix, sticky);
        let buckets = self.sticky.buckets.max(1);
        let auto = self.sticky.auto_recovery;
        let down = &self.down;
        // The paths that can carry traffic now; with every path on a down link the
        // distribution is kept for when they return. Only sticky routes need them.
        let live = |paths: &[Path]| -> Vec<Path> {
            let live: Vec<Path> = paths
                .iter()
                .filter(|p| !down.contains(&p.ifname))
                .cloned()
                .collect();
            if live.is_empty() {
                paths.to_vec()
            } else {
                live
            }
        };
        let old = match self.routes.entry(prefix) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(Entry {
                    producer: producer.to_string(),
                    ldt: sticky.then(|| Ldt::compute(&live(&paths), buckets)),
                    paths,
                    sticky,
                    stale: false,
                });
                return true;
            }
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
        };
        let ldt = match (sticky, old.ldt.clone()) {
            (false, _) => None,
            (true, None) => Some(Ldt::compute(&live(&paths), buckets)),
            (true, Some(mut ldt)) => {
                let known = |p: &Path| {
                    ldt.original.contains(p) || ldt.slots.contains(p) || old.paths.contains(p)
                };
                let live = live(&paths);
                if paths.iter().any(|p| !known(p)) {
                    // A new path: full recompute.
                    Some(Ldt::compute(&live, buckets))
                } else {
                    ldt.drop_dead(&live);
                    if auto {
                        ldt.restore(&live);
                    }
                    Some(ldt)
                }
            }
        };
        let changed = old.producer != producer
            || old.stale
            || old.sticky != sticky
            || old.ldt != ldt
            || old.paths != paths;
        if changed {
            *old = Entry {
                producer: producer.to_string(),
                ldt,
                paths,
                sticky,
                stale: false,
            };
        }
        changed
    }

    /// Withdraw a route; only its producer may.
    pub fn withdraw(&mut self, prefix: &Prefix, producer: &str) -> bool {
        if self
            .routes
            .get(prefix)
            .is_some_and(|e| e.producer == producer)
        {
            self.routes.remove(prefix);
            return true;
        }
        false
    }

    /// `clear route PREFIX`: recompute the distribution from the current paths.
    pub fn clear(&mut self, prefix: &Prefix) -> Result<(), String> {
        let buckets = self.sticky.buckets.max(1);
        let e = self
            .routes
            .get_mut(prefix)
            .ok_or_else(|| format!("no route {prefix}"))?;
        let e: &mut Entry = e;
        let live: Vec<Path> = e
            .paths
            .iter()
            .filter(|p| !self.down.contains(&p.ifname))
            .cloned()
            .collect();
        if e.sticky && !live.is_empty() {
            e.ldt = Some(Ldt::compute(&live, buckets));
        }
        Ok(())
    }

    /// A producer restarted: its routes are stale until it re-sends them.
    pub fn mark_stale(&mut self, producer: &str) -> Vec<Prefix> {
        let mut out = Vec::new();
        for (p, e) in self.routes.iter_mut() {
            if e.producer == producer && !e.stale {
                e.stale = true;
                out.push(*p);
            }
        }
        out
    }

    /// End-of-RIB (or the stale timer): remove what the producer did not re-send.
    pub fn sweep(&mut self, producer: &str) -> Vec<Prefix> {
        let gone: Vec<Prefix> = self
            .routes
            .iter()
            .filter(|(_, e)| e.producer == producer && e.stale)
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            self.routes.remove(p);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(n: u8) -> Path {
        Path {
            gw: Ipv4Addr::new(10, 0, 0, n).into(),
            ifname: "eth0".into(),
        }
    }
    fn pfx() -> Prefix {
        "192.0.2.0/24".parse().expect("prefix")
    }
    fn table(auto: bool) -> Table {
        Table::new(StickyConfig {
            buckets: 12,
            auto_recovery: auto,
            prefixes: vec![],
        })
    }
    fn slots(t: &Table) -> Vec<Path> {
        t.routes[&pfx()].ldt.clone().expect("ldt").slots
    }

    #[test]
    fn prefixes_of_both_families() {
        let p: Prefix = "2001:db8:1:2::5/48".parse().expect("v6");
        assert_eq!(p.to_string(), "2001:db8:1::/48");
        assert!(p.is_ipv6());
        let host: Prefix = "2001:db8::1".parse().expect("host");
        assert_eq!(host.len, 128);
        assert!(p.covers(&"2001:db8:1:ff::/64".parse().expect("in")));
        let v4: Prefix = "10.1.2.3/8".parse().expect("v4");
        assert_eq!(v4.to_string(), "10.0.0.0/8");
        // ::/0 covers no IPv4 prefix, 0.0.0.0/0 no IPv6 one.
        assert!(!"::/0".parse::<Prefix>().expect("d6").covers(&v4));
        assert!(!"0.0.0.0/0".parse::<Prefix>().expect("d4").covers(&p));
        assert!("2001:db8::/129".parse::<Prefix>().is_err());
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        // IPv4 sorts first.
        assert!(v4 < p);
    }

    #[test]
    fn prefixes_parse_and_normalise() {
        let p: Prefix = "10.1.2.3/16".parse().expect("p");
        assert_eq!(p.to_string(), "10.1.0.0/16");
        assert!(p.covers(&"10.1.200.0/24".parse().expect("p")));
        assert!(!p.covers(&"10.0.0.0/8".parse().expect("p")));
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
    }

    #[test]
    fn a_failed_path_moves_only_its_buckets() {
        let mut t = table(false);
        t.announce(pfx(), "bgp", vec![path(1), path(2), path(3)], true);
        let before = slots(&t);
        t.announce(pfx(), "bgp", vec![path(1), path(3)], true);
        let after = slots(&t);
        for i in 0..12 {
            if before[i] == path(2) {
                assert_ne!(after[i], path(2));
                assert!(t.routes[&pfx()].ldt.as_ref().expect("ldt").replaced(i));
            } else {
                assert_eq!(after[i], before[i], "bucket {i} moved");
            }
        }
        // Spread evenly over the survivors.
        assert_eq!(after.iter().filter(|p| **p == path(1)).count(), 6);
    }

    #[test]
    fn a_returning_path_moves_nothing_without_auto_recovery() {
        let mut t = table(false);
        t.announce(pfx(), "bgp", vec![path(1), path(2), path(3)], true);
        t.announce(pfx(), "bgp", vec![path(1), path(3)], true);
        let degraded = slots(&t);
        t.announce(pfx(), "bgp", vec![path(1), path(2), path(3)], true);
        assert_eq!(slots(&t), degraded);
        // clear route: full recompute.
        t.clear(&pfx()).expect("clear");
        assert_eq!(
            slots(&t),
            Ldt::compute(&[path(1), path(2), path(3)], 12).slots
        );
    }

    #[test]
    fn auto_recovery_restores_exactly_the_moved_buckets() {
        let mut t = table(true);
        t.announce(pfx(), "bgp", vec![path(1), path(2), path(3)], true);
        let orig = slots(&t);
        t.announce(pfx(), "bgp", vec![path(1), path(3)], true);
        t.announce(pfx(), "bgp", vec![path(1), path(2), path(3)], true);
        assert_eq!(slots(&t), orig);
    }

    #[test]
    fn a_new_path_recomputes() {
        let mut t = table(false);
        t.announce(pfx(), "bgp", vec![path(1), path(2)], true);
        t.announce(pfx(), "bgp", vec![path(1), path(2), path(4)], true);
        assert_eq!(
            slots(&t),
            Ldt::compute(&[path(1), path(2), path(4)], 12).slots
        );
    }

    #[test]
    fn stale_routes_go_only_at_sweep() {
        let mut t = table(false);
        t.announce(pfx(), "bgp", vec![path(1)], false);
        let other: Prefix = "198.51.100.0/24".parse().expect("p");
        t.announce(other, "bgp", vec![path(1)], false);
        assert_eq!(t.mark_stale("bgp").len(), 2);
        t.announce(other, "bgp", vec![path(1)], false);
        assert!(t.routes[&pfx()].stale && !t.routes[&other].stale);
        assert_eq!(t.sweep("bgp"), vec![pfx()]);
        assert!(t.routes.contains_key(&other));
    }

    #[test]
    fn sticky_by_configured_prefix_list() {
        let mut t = Table::new(StickyConfig {
            buckets: 4,
            auto_recovery: false,
            prefixes: vec!["192.0.0.0/8".parse().expect("p")],
        });
        t.announce(pfx(), "static", vec![path(1), path(2)], false);
        assert!(t.routes[&pfx()].sticky);
    }
}
