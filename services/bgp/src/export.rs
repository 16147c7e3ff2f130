//! What we advertise to a neighbour (its Adj-RIB-Out) and how it is packed into UPDATEs.
//!
//! To an eBGP neighbour: the best path of every prefix not learnt from it, and our own
//! networks, with our AS prepended and ourselves as next hop; MED and LOCAL_PREF are not sent.
//! To an iBGP neighbour: eBGP-learnt and own routes only (no iBGP → iBGP), with LOCAL_PREF.
//! Per-neighbour export prefix lists filter the result. Packing: one UPDATE carries every prefix
//! that shares the same attributes, up to the 4096-byte message limit.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use fib::proto::Prefix;
use rustbgpd_wire as w;

use crate::rib::{PeerInfo, Selected};

/// Attributes of an advertised route.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct OutAttrs {
    pub origin: u8,
    pub as_path: Vec<u32>,
    pub next_hop: Ipv4Addr,
    pub local_pref: Option<u32>,
}

/// Who we advertise to.
pub struct Target<'a> {
    pub addr: Ipv4Addr,
    pub ebgp: bool,
    pub local_as: u32,
    /// Our address on the session (next hop self).
    pub local_addr: Ipv4Addr,
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
    sel: Option<&Selected>,
    own: bool,
    peers: &HashMap<Ipv4Addr, PeerInfo>,
) -> Option<OutAttrs> {
    if !passes(t.export, p) {
        return None;
    }
    let (origin, mut as_path, next_hop, lp) = if own {
        (0, Vec::new(), t.local_addr, 100)
    } else {
        let (from, a) = sel?.paths.first()?;
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
        let nh = if t.ebgp { t.local_addr } else { a.next_hop };
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
        w::PathAttribute::NextHop(a.next_hop),
    ];
    if let Some(lp) = a.local_pref {
        v.push(w::PathAttribute::LocalPref(lp));
    }
    v
}

fn nlri(p: &Prefix) -> w::Ipv4NlriEntry {
    w::Ipv4NlriEntry {
        path_id: 0,
        prefix: w::Ipv4Prefix::new(p.addr, p.len),
    }
}

fn nlri_len(p: &Prefix) -> usize {
    1 + usize::from(p.len).div_ceil(8)
}

fn encode(ann: &[Prefix], wd: &[Prefix], attrs: &[w::PathAttribute], four: bool) -> Vec<u8> {
    let a: Vec<w::Ipv4NlriEntry> = ann.iter().map(nlri).collect();
    let d: Vec<w::Ipv4NlriEntry> = wd.iter().map(nlri).collect();
    let u = w::UpdateMessage::build(&a, &d, attrs, four, false, w::Ipv4UnicastMode::Body);
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

/// UPDATEs that withdraw `prefixes` (nothing else).
pub fn withdrawals(prefixes: &[Prefix]) -> Vec<Vec<u8>> {
    runs(prefixes, 23)
        .into_iter()
        .map(|run| encode(&[], run, &[], true))
        .collect()
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
    // 19 header + 2 withdrawn length + 2 attributes length.
    for run in runs(&withdraw, 23) {
        msgs.push(encode(&[], run, &[], four_octet));
    }
    let mut groups: BTreeMap<Arc<OutAttrs>, Vec<Prefix>> = BTreeMap::new();
    for (p, a) in changes {
        if let Some(a) = a {
            groups.entry(a.clone()).or_default().push(*p);
        }
    }
    for (a, ps) in groups {
        let attrs = attributes(&a);
        let fixed = encode(&[], &[], &attrs, four_octet).len();
        for run in runs(&ps, fixed) {
            msgs.push(encode(run, &[], &attrs, four_octet));
        }
    }
    msgs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rib::Attrs;

    fn sel(from: u8, path: &[u32]) -> Selected {
        Selected {
            paths: vec![(
                Ipv4Addr::new(10, 0, 0, from),
                Arc::new(Attrs {
                    origin: 0,
                    as_path: path.to_vec(),
                    as_path_len: path.len(),
                    next_hop: Ipv4Addr::new(10, 0, 0, from),
                    local_pref: None,
                    med: Some(5),
                    communities: vec![],
                }),
            )],
        }
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
            export: &[],
        }
    }

    #[test]
    fn ebgp_gets_our_as_prepended_and_next_hop_self_never_its_own_routes() {
        let p: Prefix = "192.0.2.0/24".parse().expect("p");
        let s = sel(1, &[65001]);
        let a = export(&target(2, true), &p, Some(&s), false, &peers()).expect("exported");
        assert_eq!(a.as_path, vec![65000, 65001]);
        assert_eq!(a.next_hop, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(a.local_pref, None);
        assert!(export(&target(1, true), &p, Some(&s), false, &peers()).is_none());
    }

    #[test]
    fn ibgp_split_horizon_and_export_filters() {
        let p: Prefix = "192.0.2.0/24".parse().expect("p");
        let from_ibgp = sel(3, &[]);
        let mut ib = target(4, false);
        assert!(export(&ib, &p, Some(&from_ibgp), false, &peers()).is_none());
        let from_ebgp = sel(1, &[65001]);
        let a = export(&ib, &p, Some(&from_ebgp), false, &peers()).expect("to iBGP");
        assert_eq!((a.as_path.clone(), a.local_pref), (vec![65001], Some(100)));
        let only: [Prefix; 1] = ["198.51.100.0/22".parse().expect("p")];
        ib.export = &only;
        assert!(export(&ib, &p, Some(&from_ebgp), false, &peers()).is_none());
    }

    #[test]
    fn many_prefixes_with_the_same_attributes_share_updates() {
        let a = Arc::new(OutAttrs {
            origin: 0,
            as_path: vec![65000, 65001],
            next_hop: Ipv4Addr::new(10, 0, 0, 100),
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
