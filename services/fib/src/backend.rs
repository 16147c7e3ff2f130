//! Where routes go: the Linux kernel over rtnetlink, or memory (unit tests, unprivileged labs).

use std::collections::{BTreeMap, BTreeSet};

use crate::netlink::{Bucket, Errno, Nexthop, NhKind, Route, RtMsg};
use crate::table::Prefix;

/// What the kernel holds of ours (objects with our protocol number).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KState {
    pub nexthops: BTreeMap<u32, Nexthop>,
    pub routes: BTreeMap<Prefix, Route>,
}

pub trait Backend: Send {
    /// Everything of protocol `proto`; also the highest nexthop id in use by anyone.
    fn read(&mut self, proto: u8) -> Result<(KState, u32), String>;
    fn apply(&mut self, ops: Vec<(RtMsg, u16)>) -> Result<Vec<Result<(), Errno>>, String>;
    /// The slot nexthop of each bucket of a resilient group, by bucket index.
    fn buckets(&mut self, group: u32) -> Result<Vec<u32>, String>;
    fn ifindex(&self, name: &str) -> Option<u32>;
    /// The interface is administratively up (a down one has no nexthops in the kernel).
    fn link_up(&self, name: &str) -> bool;
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
    fn buckets(&mut self, group: u32) -> Result<Vec<u32>, String> {
        let mut v: Vec<Bucket> = self
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
        Ok(v.into_iter().map(|b| b.nh_id).collect())
    }
    fn ifindex(&self, name: &str) -> Option<u32> {
        nix::net::if_::if_nametoindex(name).ok()
    }
    fn link_up(&self, name: &str) -> bool {
        // sysmgr runs in this namespace's mount of /sys (`ip netns exec` makes one).
        std::fs::read_to_string(format!("/sys/class/net/{name}/flags"))
            .ok()
            .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
            .is_some_and(|f| f & libc::IFF_UP as u32 != 0)
    }
    fn name(&self) -> &'static str {
        "kernel"
    }
}

/// A pretend kernel: applies the same operations to a map. A new resilient group assigns bucket
/// `b` to member `n-1-b`, as Linux does.
#[derive(Default)]
pub struct Memory {
    pub state: KState,
    /// Interfaces the tests declared down.
    pub down: BTreeSet<String>,
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
    fn buckets(&mut self, group: u32) -> Result<Vec<u32>, String> {
        match self.state.nexthops.get(&group).map(|n| &n.kind) {
            Some(NhKind::Group {
                members,
                resilient: Some(r),
            }) => Ok((0..usize::from(r.buckets))
                .map(|b| members[members.len() - 1 - b % members.len()].0)
                .collect()),
            _ => Err(format!("no resilient group {group}")),
        }
    }
    fn ifindex(&self, name: &str) -> Option<u32> {
        // Stable made-up indexes: names are all a memory kernel has.
        Some(
            name.bytes()
                .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
                | 1,
        )
    }
    fn link_up(&self, name: &str) -> bool {
        !self.down.contains(name)
    }
    fn name(&self) -> &'static str {
        "memory"
    }
}

/// Whether a nexthop object is a resilient group (its members are slots).
pub fn is_resilient(nh: &Nexthop) -> bool {
    matches!(
        nh.kind,
        NhKind::Group {
            resilient: Some(_),
            ..
        }
    )
}
