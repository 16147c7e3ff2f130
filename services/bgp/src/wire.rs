//! The one module that knows the BGP codec crate (`rustbgpd-wire`: encode/decode of OPEN,
//! UPDATE, KEEPALIVE, NOTIFICATION, ROUTE-REFRESH, never a panic on input). Everything else in the
//! speaker sees [`Msg`] and [`Routes`].

use std::net::Ipv4Addr;
use std::sync::Arc;

use bytes::Bytes;
use fib::proto::Prefix;
use rustbgpd_wire as w;

use crate::rib::Attrs;

pub const MAX_LEN: u16 = 4096;
pub const AS_TRANS: u16 = 23456;

/// A decoded message, as the speaker needs it.
#[derive(Debug, Clone)]
pub enum Msg {
    Open {
        asn: u32,
        hold: u16,
        router_id: Ipv4Addr,
        four_octet: bool,
        route_refresh: bool,
        /// Enhanced route refresh (RFC 7313): refreshes are framed by BoRR and EoRR.
        enhanced_refresh: bool,
        /// Multiprotocol IPv6 unicast (RFC 4760).
        ipv6: bool,
        /// The peer's Graceful Restart capability (RFC 4724), if any.
        gr: Option<Gr>,
    },
    Update(w::UpdateMessage),
    Notification {
        code: u8,
        subcode: u8,
    },
    Keepalive,
    /// ROUTE-REFRESH for (AFI, SAFI), with the RFC 7313 subtype: 0 a request, 1 BoRR,
    /// 2 EoRR (others are ignored, as RFC 7313 says).
    RouteRefresh {
        afi: u16,
        safi: u8,
        subtype: u8,
    },
}

/// ROUTE-REFRESH subtypes (RFC 7313).
pub const REFRESH_REQUEST: u8 = 0;
pub const REFRESH_BEGIN: u8 = 1;
pub const REFRESH_END: u8 = 2;

/// A Graceful Restart capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Gr {
    /// R bit: the sender has just restarted.
    pub restarted: bool,
    /// Seconds the sender wants its routes kept while it restarts.
    pub restart_time: u16,
    /// F bit for IPv4 unicast: the sender kept forwarding across its restart.
    pub ipv4_forwarding: bool,
}

/// A message that could not be decoded: the NOTIFICATION (code, subcode) to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub code: u8,
    pub subcode: u8,
    pub why: String,
}

/// Length of the complete message at the head of `buf`, if it is all there.
pub fn complete_len(buf: &[u8]) -> Result<Option<usize>, Malformed> {
    w::peek_message_length(buf, MAX_LEN)
        .map(|o| o.map(usize::from))
        .map_err(malformed)
}

fn malformed(e: w::DecodeError) -> Malformed {
    let (code, subcode, _) = e.to_notification();
    Malformed {
        code: code.as_u8(),
        subcode,
        why: e.to_string(),
    }
}

/// Decode one complete message.
pub fn decode(bytes: &[u8]) -> Result<Msg, Malformed> {
    let mut b = Bytes::copy_from_slice(bytes);
    Ok(
        match w::decode_message(&mut b, MAX_LEN).map_err(malformed)? {
            w::Message::Open(o) => {
                let mut m = Msg::Open {
                    asn: u32::from(o.my_as),
                    hold: o.hold_time,
                    router_id: o.bgp_identifier,
                    four_octet: false,
                    route_refresh: false,
                    enhanced_refresh: false,
                    ipv6: false,
                    gr: None,
                };
                if let Msg::Open {
                    asn,
                    four_octet,
                    route_refresh,
                    enhanced_refresh,
                    ipv6,
                    gr,
                    ..
                } = &mut m
                {
                    for c in &o.capabilities {
                        match c {
                            w::Capability::FourOctetAs { asn: a } => {
                                *asn = *a;
                                *four_octet = true;
                            }
                            w::Capability::RouteRefresh => *route_refresh = true,
                            w::Capability::EnhancedRouteRefresh => *enhanced_refresh = true,
                            w::Capability::MultiProtocol {
                                afi: w::Afi::Ipv6,
                                safi: w::Safi::Unicast,
                            } => *ipv6 = true,
                            w::Capability::GracefulRestart {
                                restart_state,
                                restart_time,
                                families,
                                ..
                            } => {
                                *gr = Some(Gr {
                                    restarted: *restart_state,
                                    restart_time: *restart_time,
                                    ipv4_forwarding: families.iter().any(|f| {
                                        f.afi == w::Afi::Ipv4
                                            && f.safi == w::Safi::Unicast
                                            && f.forwarding_preserved
                                    }),
                                })
                            }
                            _ => {}
                        }
                    }
                }
                m
            }
            w::Message::Update(u) => Msg::Update(u),
            w::Message::Notification(n) => Msg::Notification {
                code: n.code.as_u8(),
                subcode: n.subcode,
            },
            w::Message::Keepalive => Msg::Keepalive,
            w::Message::RouteRefresh(r) => Msg::RouteRefresh {
                afi: r.afi_raw,
                safi: r.safi_raw,
                subtype: r.subtype_raw,
            },
        },
    )
}

fn enc(m: &w::Message) -> Vec<u8> {
    w::encode_message(m).map(|b| b.to_vec()).unwrap_or_default()
}

/// ROUTE-REFRESH for IPv4 unicast with an RFC 7313 subtype.
pub fn route_refresh(subtype: u8) -> Vec<u8> {
    let sub = match subtype {
        REFRESH_BEGIN => w::RouteRefreshSubtype::BoRR,
        REFRESH_END => w::RouteRefreshSubtype::EoRR,
        _ => w::RouteRefreshSubtype::Normal,
    };
    enc(&w::Message::RouteRefresh(
        w::RouteRefreshMessage::new_with_subtype(w::Afi::Ipv4, w::Safi::Unicast, sub),
    ))
}

/// Our OPEN: 4-octet AS, IPv4 unicast, route refresh (enhanced too), and Graceful Restart when configured
/// (forwarding preserved: the FIB keeps the kernel's routes across our restarts).
pub fn open(asn: u32, hold: u16, router_id: Ipv4Addr, gr: Option<Gr>) -> Vec<u8> {
    let mut capabilities = vec![
        w::Capability::MultiProtocol {
            afi: w::Afi::Ipv4,
            safi: w::Safi::Unicast,
        },
        w::Capability::MultiProtocol {
            afi: w::Afi::Ipv6,
            safi: w::Safi::Unicast,
        },
        w::Capability::RouteRefresh,
        w::Capability::EnhancedRouteRefresh,
        w::Capability::FourOctetAs { asn },
    ];
    if let Some(g) = gr {
        capabilities.push(w::Capability::GracefulRestart {
            restart_state: g.restarted,
            notification: false,
            restart_time: g.restart_time.min(4095),
            families: [w::Afi::Ipv4, w::Afi::Ipv6]
                .into_iter()
                .map(|afi| w::GracefulRestartFamily {
                    afi,
                    safi: w::Safi::Unicast,
                    forwarding_preserved: g.ipv4_forwarding,
                })
                .collect(),
        });
    }
    enc(&w::Message::Open(w::OpenMessage {
        version: 4,
        my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
        hold_time: hold,
        bgp_identifier: router_id,
        capabilities,
    }))
}

pub fn keepalive() -> Vec<u8> {
    enc(&w::Message::Keepalive)
}

pub fn notification(code: u8, subcode: u8) -> Vec<u8> {
    enc(&w::Message::Notification(w::NotificationMessage {
        code: w::NotificationCode::from_u8(code),
        subcode,
        data: Bytes::new(),
    }))
}

/// End-of-RIB for IPv4 unicast (RFC 4724): an UPDATE with nothing in it.
pub fn end_of_rib() -> Vec<u8> {
    enc(&w::Message::Update(w::UpdateMessage::build(
        &[],
        &[],
        &[],
        true,
        false,
        w::Ipv4UnicastMode::Body,
    )))
}

/// End-of-RIB for IPv6 unicast: an UPDATE with an empty MP_UNREACH_NLRI.
pub fn end_of_rib_v6() -> Vec<u8> {
    let attrs = [w::PathAttribute::MpUnreachNlri(w::MpUnreachNlri {
        afi: w::Afi::Ipv6,
        safi: w::Safi::Unicast,
        withdrawn: vec![],
        flowspec_withdrawn: vec![],
        evpn_withdrawn: vec![],
    })];
    enc(&w::Message::Update(w::UpdateMessage::build(
        &[],
        &[],
        &attrs,
        true,
        false,
        w::Ipv4UnicastMode::Body,
    )))
}

/// What one UPDATE means for the RIB.
#[derive(Debug, Default)]
pub struct Routes {
    pub announce: Vec<(Prefix, Arc<Attrs>)>,
    pub withdraw: Vec<Prefix>,
    /// An empty UPDATE: the peer's End-of-RIB for IPv4 unicast.
    pub end_of_rib: bool,
    /// An UPDATE with nothing but an empty MP_UNREACH_NLRI for IPv6 unicast.
    pub end_of_rib_v6: bool,
}

fn prefix(p: &w::Ipv4Prefix) -> Option<Prefix> {
    Prefix::new(p.addr, p.len)
}

/// An IPv6 unicast prefix of MP_REACH/MP_UNREACH (other families are not ours).
fn mp_prefix(afi: w::Afi, safi: w::Safi, e: &w::NlriEntry) -> Option<Prefix> {
    match (afi, safi, &e.prefix) {
        (w::Afi::Ipv6, w::Safi::Unicast, w::Prefix::V6(p)) => Prefix::new(p.addr, p.len),
        _ => None,
    }
}

/// Decode an UPDATE's routes. RFC 7606: attribute errors become treat-as-withdraw for the
/// UPDATE's prefixes (returned as withdrawals) rather than a session reset; NLRI that cannot
/// be parsed is an error.
pub fn routes(u: &w::UpdateMessage, four_octet: bool) -> Result<Routes, Malformed> {
    if u.withdrawn_routes.is_empty() && u.path_attributes.is_empty() && u.nlri.is_empty() {
        return Ok(Routes {
            end_of_rib: true,
            ..Default::default()
        });
    }
    let parsed = match u.parse(four_octet, false, &[]) {
        Ok(p) => p,
        Err(e) => {
            // Treat-as-withdraw when the NLRI itself is readable.
            let mut r = Routes::default();
            for raw in [&u.withdrawn_routes, &u.nlri] {
                match w::nlri::decode_nlri(raw) {
                    Ok(v) => r.withdraw.extend(v.iter().filter_map(prefix)),
                    Err(_) => return Err(malformed(e)),
                }
            }
            tracing::warn!(error = %e, prefixes = r.withdraw.len(), "malformed attributes: treat-as-withdraw");
            return Ok(r);
        }
    };
    let mut a = Attrs {
        origin: 2,
        as_path: Vec::new(),
        as_path_len: 0,
        next_hop: Ipv4Addr::UNSPECIFIED.into(),
        local_pref: None,
        med: None,
        communities: Vec::new(),
    };
    let mut has_nh = false;
    // MP-BGP IPv6 unicast: (next hop, announced), withdrawn.
    let mut v6_nh: Option<std::net::IpAddr> = None;
    let mut v6_announce: Vec<Prefix> = Vec::new();
    let mut v6_withdraw: Vec<Prefix> = Vec::new();
    let mut v6_unreach_empty = false;
    for at in &parsed.attributes {
        match at {
            w::PathAttribute::Origin(o) => a.origin = *o as u8,
            w::PathAttribute::AsPath(p) => {
                for s in &p.segments {
                    match s {
                        w::AsPathSegment::AsSequence(v) => {
                            a.as_path.extend(v);
                            a.as_path_len += v.len();
                        }
                        w::AsPathSegment::AsSet(v) => {
                            a.as_path.extend(v);
                            a.as_path_len += usize::from(!v.is_empty());
                        }
                    }
                }
            }
            w::PathAttribute::NextHop(n) => {
                a.next_hop = (*n).into();
                has_nh = true;
            }
            w::PathAttribute::MpReachNlri(m) => {
                v6_announce.extend(
                    m.announced
                        .iter()
                        .filter_map(|e| mp_prefix(m.afi, m.safi, e)),
                );
                if m.afi == w::Afi::Ipv6 && m.next_hop.is_ipv6() {
                    v6_nh = Some(m.next_hop);
                }
            }
            w::PathAttribute::MpUnreachNlri(m) => {
                v6_withdraw.extend(
                    m.withdrawn
                        .iter()
                        .filter_map(|e| mp_prefix(m.afi, m.safi, e)),
                );
                v6_unreach_empty |= m.afi == w::Afi::Ipv6 && m.withdrawn.is_empty();
            }
            w::PathAttribute::LocalPref(l) => a.local_pref = Some(*l),
            w::PathAttribute::Med(m) => a.med = Some(*m),
            w::PathAttribute::Communities(c) => a.communities = c.clone(),
            _ => {}
        }
    }
    let mut r = Routes {
        withdraw: parsed
            .withdrawn
            .iter()
            .filter_map(|e| prefix(&e.prefix))
            .collect(),
        end_of_rib_v6: v6_unreach_empty
            && parsed.attributes.len() == 1
            && parsed.announced.is_empty()
            && parsed.withdrawn.is_empty(),
        ..Default::default()
    };
    r.withdraw.extend(v6_withdraw);
    let announced: Vec<Prefix> = parsed
        .announced
        .iter()
        .filter_map(|e| prefix(&e.prefix))
        .collect();
    if !announced.is_empty() && !has_nh {
        // A missing mandatory attribute: treat-as-withdraw (RFC 7606 §3 d).
        r.withdraw.extend(announced);
        r.withdraw.extend(v6_announce);
        return Ok(r);
    }
    let v6 = match v6_nh {
        Some(nh) if !v6_announce.is_empty() => {
            let mut b = a.clone();
            b.next_hop = nh;
            Some(Arc::new(b))
        }
        _ => {
            // IPv6 NLRI without a usable next hop: treat-as-withdraw.
            r.withdraw.append(&mut v6_announce);
            None
        }
    };
    let a = Arc::new(a);
    r.announce = announced.into_iter().map(|p| (p, a.clone())).collect();
    if let Some(b) = v6 {
        r.announce
            .extend(v6_announce.into_iter().map(|p| (p, b.clone())));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_open_decodes_with_its_capabilities() {
        let gr = Gr {
            restarted: true,
            restart_time: 120,
            ipv4_forwarding: true,
        };
        let b = open(4_200_000_000, 90, Ipv4Addr::new(1, 2, 3, 4), Some(gr));
        assert_eq!(complete_len(&b), Ok(Some(b.len())));
        match decode(&b).expect("open") {
            Msg::Open {
                asn,
                hold,
                four_octet,
                gr: got,
                ..
            } => {
                assert_eq!((asn, hold, four_octet), (4_200_000_000, 90, true));
                assert_eq!(got, Some(gr));
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn ipv6_routes_travel_in_mp_reach_and_mp_unreach() {
        use crate::export::{OutAttrs, pack, withdrawals};
        use std::collections::BTreeMap;
        let nh: std::net::IpAddr = "2001:db8:1::1".parse().expect("nh");
        let a = Arc::new(OutAttrs {
            origin: 0,
            as_path: vec![65001],
            next_hop: nh,
            local_pref: None,
        });
        let v6: Prefix = "2001:db8:100::/48".parse().expect("p");
        let v4: Prefix = "192.0.2.0/24".parse().expect("p");
        let v4a = Arc::new(OutAttrs {
            next_hop: Ipv4Addr::new(10, 0, 0, 1).into(),
            ..(*a).clone()
        });
        let changes: BTreeMap<Prefix, Option<Arc<OutAttrs>>> =
            [(v6, Some(a.clone())), (v4, Some(v4a))]
                .into_iter()
                .collect();
        let mut got = Vec::new();
        for m in pack(&changes, true) {
            let Msg::Update(u) = decode(&m).expect("update") else {
                panic!("not an UPDATE")
            };
            got.extend(routes(&u, true).expect("routes").announce);
        }
        got.sort_by_key(|(p, _)| *p);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, v4);
        assert_eq!(
            got[0].1.next_hop,
            std::net::IpAddr::from(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(got[1].0, v6);
        assert_eq!(got[1].1.next_hop, nh);
        assert_eq!(got[1].1.as_path, vec![65001]);
        let mut gone = Vec::new();
        for m in withdrawals(&[v4, v6]) {
            let Msg::Update(u) = decode(&m).expect("update") else {
                panic!("not an UPDATE")
            };
            gone.extend(routes(&u, true).expect("routes").withdraw);
        }
        gone.sort();
        assert_eq!(gone, vec![v4, v6]);
        let Msg::Update(u) = decode(&end_of_rib_v6()).expect("eor") else {
            panic!("not an UPDATE")
        };
        let r = routes(&u, true).expect("routes");
        assert!(r.end_of_rib_v6 && !r.end_of_rib, "{r:?}");
    }

    #[test]
    fn end_of_rib_is_recognised_and_garbage_is_an_error_not_a_panic() {
        let eor = end_of_rib();
        match decode(&eor).expect("update") {
            Msg::Update(u) => assert!(routes(&u, true).expect("r").end_of_rib),
            m => panic!("{m:?}"),
        }
        let mut bad = keepalive();
        bad[0] = 0;
        assert!(decode(&bad).is_err());
        assert!(complete_len(&[0xff; 10]).expect("short").is_none());
        for n in 0..64usize {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
            let _ = decode(&junk);
        }
    }
}
