//! What we advertise to a neighbour (its Adj-RIB-Out) and how it is packed into UPDATEs.
//!
//! To an eBGP neighbour: the best path of every prefix not learnt from it, and our own
//! networks, with our AS prepended and ourselves as next hop; MED and LOCAL_PREF are not sent.
//! To an iBGP neighbour: eBGP-learnt and own routes only (no iBGP → iBGP), with LOCAL_PREF.
//! Per-neighbour export prefix lists filter the result. Packing: one UPDATE carries every prefix
//! that shares the same attributes, up to the 4096-byte message limit.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use fib::proto::Prefix;
use rustbgpd_wire as w;

use crate::rib::{Path, PeerInfo};

/// Attributes of an advertised route.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct OutAttrs {
    pub origin: u8,
    pub as_path: Vec<u32>,
    pub next_hop: IpAddr,
    pub local_pref: Option<u32>,
}

/// Who we advertise to.
pub struct Target<'a> {
    pub addr: Ipv4Addr,
    pub ebgp: bool,
    pub local_as: u32,
    /// Our address on the session (next hop self).
    pub local_addr: Ipv4Addr,
    /// Our IPv6 address on the session's interface (next hop self for IPv6), if any.
    pub local_addr6: Option<Ipv6Addr>,
    /// IPv6 unicast negotiated with this neighbour.
    pub ipv6: bool,
    /// Export prefix list: empty = everything.
    pub export: &'a [Prefix],
}

/// Prefixes inside any of `list` pass; an empty list passes everything.
pub fn passes(list: &[Prefix], p: &Prefix) -> bool {
    list.is_empty() || list.iter().any(|l| l.covers(p))
}

/// What `t` should have for prefix `p` (None: nothing, i.e. withdraw if advertised).
pub fn export(
    t: &Target<'_>,
    p: &Prefix,
    sel: Option<&[Path]>,
    own: bool,
    peers: &HashMap<Ipv4Addr, PeerInfo>,
) -> Option<OutAttrs> {
    if !passes(t.export, p) || (p.is_ipv6() && !t.ipv6) {
        return None;
    }
    // Next hop self: our address of the prefix's family on the session (none: not sent).
    let me: Option<IpAddr> = if p.is_ipv6() {
        t.local_addr6.map(IpAddr::V6)
    } else {
        Some(IpAddr::V4(t.local_addr))
    };
    let (origin, mut as_path, next_hop, lp) = if own {
        (0, Vec::new(), me?, 100)
    } else {
        let (from, a) = sel?.first()?;
        if *from == t.addr {
            return None; // never back to where it came from
        }
        let from_ebgp = peers.get(from).is_some_and(|i| i.ebgp);
        if !t.ebgp && !from_ebgp {
            return None; // iBGP split horizon
        }
        if t.ebgp
            && a.as_path
                .contains(&peers.get(&t.addr).map_or(0, |i| i.remote_as))
        {
            return None; // the neighbour would drop it (its AS is in the path)
        }
        let nh = if t.ebgp { me? } else { a.next_hop };
        (a.origin, a.as_path.clone(), nh, a.local_pref.unwrap_or(100))
    };
    if t.ebgp {
        as_path.insert(0, t.local_as);
    }
    Some(OutAttrs {
        origin,
        as_path,
        next_hop,
        local_pref: (!t.ebgp).then_some(lp),
    })
}

fn attributes(a: &OutAttrs) -> Vec<w::PathAttribute> {
    let mut v = vec![
        w::PathAttribute::Origin(match a.origin {
            0 => w::Origin::Igp,
            1 => w::Origin::Egp,
            _ => w::Origin::Incomplete,
        }),
        w::PathAttribute::AsPath(w::AsPath {
            segments: if a.as_path.is_empty() {
                vec![]
            } else {
                vec![w::AsPathSegment::AsSequence(a.as_path.clone())]
            },
        }),
    ];
    // IPv6 carries its next hop in MP_REACH_NLRI instead.
    if let IpAddr::V4(nh) = a.next_hop {
        v.push(w::PathAttribute::NextHop(nh));
    }
    if let Some(lp) = a.local_pref {
        v.push(w::PathAttribute::LocalPref(lp));
    }
    v
}

fn nlri(p: &Prefix) -> Option<w::Ipv4NlriEntry> {
    match p.addr {
        IpAddr::V4(a) => Some(w::Ipv4NlriEntry {
            path_id: 0,
            prefix: w::Ipv4Prefix::new(a, p.len),
        }),
        IpAddr::V6(_) => None,
    }
}

fn nlri6(p: &Prefix) -> Option<w::NlriEntry> {
    match p.addr {
        IpAddr::V6(a) => Some(w::NlriEntry {
            path_id: 0,
            prefix: w::Prefix::V6(w::Ipv6Prefix::new(a, p.len)),
        }),
        IpAddr::V4(_) => None,
    }
}

fn nlri_len(p: &Prefix) -> usize {
    1 + usize::from(p.len).div_ceil(8)
}

/// One UPDATE; IPv6 prefixes go into MP_REACH_NLRI (next hop `nh6`) and MP_UNREACH_NLRI.
fn encode(
    ann: &[Prefix],
    wd: &[Prefix],
    attrs: &[w::PathAttribute],
    four: bool,
    nh6: Option<Ipv6Addr>,
) -> Vec<u8> {
    let a: Vec<w::Ipv4NlriEntry> = ann.iter().filter_map(nlri).collect();
    let d: Vec<w::Ipv4NlriEntry> = wd.iter().filter_map(nlri).collect();
    let a6: Vec<w::NlriEntry> = ann.iter().filter_map(nlri6).collect();
    let d6: Vec<w::NlriEntry> = wd.iter().filter_map(nlri6).collect();
    let mut attrs = attrs.to_vec();
    if let Some(nh) = nh6
        && !a6.is_empty()
    {
        attrs.insert(
            0,
            w::PathAttribute::MpReachNlri(w::MpReachNlri {
                afi: w::Afi::Ipv6,
                safi: w::Safi::Unicast,
                next_hop: IpAddr::V6(nh),
                link_local_next_hop: None,
                announced: a6,
                flowspec_announced: vec![],
                evpn_announced: vec![],
            }),
        );
    }
    if !d6.is_empty() {
        attrs.insert(
            0,
            w::PathAttribute::MpUnreachNlri(w::MpUnreachNlri {
                afi: w::Afi::Ipv6,
                safi: w::Safi::Unicast,
                withdrawn: d6,
                flowspec_withdrawn: vec![],
                evpn_withdrawn: vec![],
            }),
        );
    }
    let u = w::UpdateMessage::build(&a, &d, &attrs, four, false, w::Ipv4UnicastMode::Body);
    w::encode_message(&w::Message::Update(u))
        .map(|b| b.to_vec())
        .unwrap_or_default()
}

/// Split `prefixes` into runs that fit in one message next to `fixed` bytes.
fn runs(prefixes: &[Prefix], fixed: usize) -> Vec<&[Prefix]> {
    let room = usize::from(crate::wire::MAX_LEN) - fixed;
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, p) in prefixes.iter().enumerate() {
        let n = nlri_len(p);
        if used + n > room && i > start {
            out.push(&prefixes[start..i]);
            start = i;
            used = 0;
        }
        used += n;
    }
    if start < prefixes.len() {
        out.push(&prefixes[start..]);
    }
    out
}

/// UPDATEs that withdraw `prefixes` (nothing else): IPv4 in the body, IPv6 in MP_UNREACH_NLRI.
pub fn withdrawals(prefixes: &[Prefix]) -> Vec<Vec<u8>> {
    let (v6, v4): (Vec<Prefix>, Vec<Prefix>) = prefixes.iter().partition(|p| p.is_ipv6());
    // 19 header + 2 withdrawn length + 2 attributes length (+ the MP_UNREACH_NLRI header).
    let mut out: Vec<Vec<u8>> = runs(&v4, 23)
        .into_iter()
        .map(|run| encode(&[], run, &[], true, None))
        .collect();
    out.extend(
        runs(&v6, 23 + 7)
            .into_iter()
            .map(|run| encode(&[], run, &[], true, None)),
    );
    out
}

/// The UPDATEs that take a neighbour from `old` to `new` for the prefixes in `changed`:
/// withdrawals packed together, announcements grouped by identical attributes.
pub fn pack(changes: &BTreeMap<Prefix, Option<Arc<OutAttrs>>>, four_octet: bool) -> Vec<Vec<u8>> {
    let mut msgs = Vec::new();
    let withdraw: Vec<Prefix> = changes
        .iter()
        .filter(|(_, a)| a.is_none())
        .map(|(p, _)| *p)
        .collect();
    msgs.extend(withdrawals(&withdraw));
    let mut groups: BTreeMap<Arc<OutAttrs>, Vec<Prefix>> = BTreeMap::new();
    for (p, a) in changes {
        if let Some(a) = a {
            groups.entry(a.clone()).or_default().push(*p);
        }
    }
    for (a, ps) in groups {
        let attrs = attributes(&a);
        let nh6 = match a.next_hop {
            IpAddr::V6(n) => Some(n),
            IpAddr::V4(_) => None,
        };
        // MP_REACH_NLRI's own header and next hop ride along for IPv6.
        let fixed =
            encode(&[], &[], &attrs, four_octet, None).len() + if nh6.is_some() { 24 } else { 0 };
        for run in runs(&ps, fixed) {
            msgs.push(encode(run, &[], &attrs, four_octet, nh6));
        }
    }
    msgs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rib::Attrs;

    fn sel(from: u8, path: &[u32]) -> Vec<Path> {
        vec![(
            Ipv4Addr::new(10, 0, 0, from),
            Arc::new(Attrs {
                origin: 0,
                as_path: path.to_vec(),
                as_path_len: path.len(),
                next_hop: Ipv4Addr::new(10, 0, 0, from).into(),
                local_pref: None,
                med: Some(5),
                communities: vec![],
            }),
        )]
    }

    fn peers() -> HashMap<Ipv4Addr, PeerInfo> {
        (1..=3u8)
            .map(|n| {
                let a = Ipv4Addr::new(10, 0, 0, n);
                (
                    a,
                    PeerInfo {
                        addr: a,
                        router_id: a,
                        remote_as: 65000 + u32::from(n),
                        ebgp: n != 3,
                    },
                )
            })
            .collect()
    }

    fn target(n: u8, ebgp: bool) -> Target<'static> {
        Target {
            addr: Ipv4Addr::new(10, 0, 0, n),
            ebgp,
            local_as: 65000,
            local_addr: Ipv4Addr::new(10, 0, 0, 100),
            local_addr6: Some("2001:db8::100".parse().expect("v6")),
            ipv6: true,
            export: &[],
        }
    }

    #[test]
    fn ebgp_gets_our_as_prepended_and_next_hop_self_never_its_own_routes() {
        let p: Prefix = "192.0.2.0/24".parse().expect("p");
        let s = sel(1, &[65001]);
        let a = export(&target(2, true), &p, Some(&s[..]), false, &peers()).expect("exported");
        assert_eq!(a.as_path, vec![65000, 65001]);
        assert_eq!(a.next_hop, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(a.local_pref, None);
        assert!(export(&target(1, true), &p, Some(&s[..]), false, &peers()).is_none());
    }

    #[test]
    fn ibgp_split_horizon_and_export_filters() {
        let p: Prefix = "192.0.2.0/24".parse().expect("p");
        let from_ibgp = sel(3, &[]);
        let mut ib = target(4, false);
        assert!(export(&ib, &p, Some(&from_ibgp[..]), false, &peers()).is_none());
        let from_ebgp = sel(1, &[65001]);
        let a = export(&ib, &p, Some(&from_ebgp[..]), false, &peers()).expect("to iBGP");
        assert_eq!((a.as_path.clone(), a.local_pref), (vec![65001], Some(100)));
        let only: [Prefix; 1] = ["198.51.100.0/22".parse().expect("p")];
        ib.export = &only;
        assert!(export(&ib, &p, Some(&from_ebgp[..]), false, &peers()).is_none());
    }

    #[test]
    fn many_prefixes_with_the_same_attributes_share_updates() {
        let a = Arc::new(OutAttrs {
            origin: 0,
            as_path: vec![65000, 65001],
            next_hop: Ipv4Addr::new(10, 0, 0, 100).into(),
            local_pref: None,
        });
        let mut ch = BTreeMap::new();
        for i in 0..3000u32 {
            let p = Prefix::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).expect("p");
            ch.insert(p, Some(a.clone()));
        }
        let msgs = pack(&ch, true);
        // 3000 × 4 bytes of NLRI need 3 full messages, not 3000.
        assert_eq!(msgs.len(), 3);
        let mut seen = 0;
        for m in &msgs {
            assert!(m.len() <= 4096);
            match crate::wire::decode(m).expect("decodes") {
                crate::wire::Msg::Update(u) => {
                    let r = crate::wire::routes(&u, true).expect("routes");
                    seen += r.announce.len();
                    assert_eq!(r.announce[0].1.as_path, vec![65000, 65001]);
                }
                m => panic!("{m:?}"),
            }
        }
        assert_eq!(seen, 3000);
    }
}
