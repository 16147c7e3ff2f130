//! rtnetlink messages for nexthop objects and routes that use them, on netlink-packet-core.
//!
//! No Rust netlink crate speaks `RTM_NEWNEXTHOP` (`NHA_GROUP`, `NHA_RES_GROUP`, buckets), so this
//! module encodes them itself, attribute for attribute in the order iproute2 does (the tests in
//! `tests/tests/fib.rs` compare our bytes with what `ip nexthop` sends, captured with strace).
//! Framing (`NetlinkMessage`) and the socket (`netlink-sys`) come from the netlink crates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable, NlaBuffer, NlasIterator,
};

pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWNEXTHOP: u16 = 104;
pub const RTM_DELNEXTHOP: u16 = 105;
pub const RTM_GETNEXTHOP: u16 = 106;
pub const RTM_NEWNEXTHOPBUCKET: u16 = 116;
pub const RTM_GETNEXTHOPBUCKET: u16 = 118;

const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_GROUP_TYPE: u16 = 3;
const NHA_BLACKHOLE: u16 = 4;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const NHA_RES_GROUP: u16 = 12;
const NHA_RES_BUCKET: u16 = 13;
const NHA_RES_GROUP_BUCKETS: u16 = 1;
const NHA_RES_GROUP_IDLE_TIMER: u16 = 2;
const NHA_RES_GROUP_UNBALANCED_TIMER: u16 = 3;
const NHA_RES_BUCKET_INDEX: u16 = 1;
const NHA_RES_BUCKET_NH_ID: u16 = 3;
const NEXTHOP_GRP_TYPE_RES: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RTA_NH_ID: u16 = 30;

pub const RT_TABLE_MAIN: u32 = 254;
const RTN_UNICAST: u8 = 1;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_NOWHERE: u8 = 255;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

fn family(a: &IpAddr) -> u8 {
    if a.is_ipv6() { AF_INET6 } else { AF_INET }
}

fn ip_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Resilient group parameters (`type resilient buckets N idle_timer 0 unbalanced_timer 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resilient {
    pub buckets: u16,
    pub idle_timer: u32,
    pub unbalanced_timer: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NhKind {
    /// `via GW dev OIF`
    Gateway {
        gw: IpAddr,
        oif: u32,
    },
    /// `group ID[,W]/...`, hash-threshold or resilient.
    Group {
        members: Vec<(u32, u8)>,
        resilient: Option<Resilient>,
    },
    Blackhole,
}

/// A nexthop object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nexthop {
    pub id: u32,
    pub protocol: u8,
    pub kind: NhKind,
}

/// An IPv4 or IPv6 route (only what the FIB programs and reads back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub dst_len: u8,
    pub table: u32,
    pub protocol: u8,
    /// `nhid N`: the route uses a nexthop object.
    pub nh_id: Option<u32>,
    /// Old-style single path (routes of others, read back only).
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub rtype: u8,
}

impl Route {
    pub fn new(dst: IpAddr, dst_len: u8, protocol: u8, nh_id: u32) -> Route {
        Route {
            dst,
            dst_len,
            table: RT_TABLE_MAIN,
            protocol,
            nh_id: Some(nh_id),
            gateway: None,
            oif: None,
            rtype: RTN_UNICAST,
        }
    }
}

/// One bucket of a resilient group (`ip nexthop bucket`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub group: u32,
    pub index: u16,
    pub nh_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtMsg {
    NewNexthop(Nexthop),
    DelNexthop(u32),
    GetNexthops,
    NewRoute(Route),
    DelRoute(Route),
    GetRoutes,
    GetBuckets(u32),
    Bucket(Bucket),
    /// A message type this module does not decode.
    Other(u16),
}

fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn nhmsg(out: &mut Vec<u8>, family: u8, protocol: u8) {
    out.extend_from_slice(&[family, RT_SCOPE_UNIVERSE, protocol, 0, 0, 0, 0, 0]);
}

impl RtMsg {
    fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        match self {
            RtMsg::NewNexthop(nh) => match &nh.kind {
                NhKind::Gateway { gw, oif } => {
                    nhmsg(&mut b, family(gw), nh.protocol);
                    attr(&mut b, NHA_ID, &nh.id.to_ne_bytes());
                    attr(&mut b, NHA_GATEWAY, &ip_bytes(gw));
                    attr(&mut b, NHA_OIF, &oif.to_ne_bytes());
                }
                NhKind::Group { members, resilient } => {
                    nhmsg(&mut b, 0, nh.protocol);
                    attr(&mut b, NHA_ID, &nh.id.to_ne_bytes());
                    let mut g = Vec::with_capacity(members.len() * 8);
                    for (id, w) in members {
                        g.extend_from_slice(&id.to_ne_bytes());
                        // struct nexthop_grp: weight is stored minus one.
                        g.extend_from_slice(&[w.saturating_sub(1), 0, 0, 0]);
                    }
                    attr(&mut b, NHA_GROUP, &g);
                    if let Some(r) = resilient {
                        let mut n = Vec::new();
                        attr(&mut n, NHA_RES_GROUP_BUCKETS, &r.buckets.to_ne_bytes());
                        attr(
                            &mut n,
                            NHA_RES_GROUP_IDLE_TIMER,
                            &r.idle_timer.to_ne_bytes(),
                        );
                        attr(
                            &mut n,
                            NHA_RES_GROUP_UNBALANCED_TIMER,
                            &r.unbalanced_timer.to_ne_bytes(),
                        );
                        attr(&mut b, NHA_RES_GROUP | NLA_F_NESTED, &n);
                        attr(&mut b, NHA_GROUP_TYPE, &NEXTHOP_GRP_TYPE_RES.to_ne_bytes());
                    }
                }
                NhKind::Blackhole => {
                    nhmsg(&mut b, 0, nh.protocol);
                    attr(&mut b, NHA_ID, &nh.id.to_ne_bytes());
                    attr(&mut b, NHA_BLACKHOLE, &[]);
                }
            },
            RtMsg::DelNexthop(id) => {
                nhmsg(&mut b, 0, 0);
                attr(&mut b, NHA_ID, &id.to_ne_bytes());
            }
            RtMsg::GetNexthops => nhmsg(&mut b, 0, 0),
            RtMsg::GetBuckets(id) => {
                nhmsg(&mut b, 0, 0);
                attr(&mut b, NHA_ID, &id.to_ne_bytes());
            }
            RtMsg::NewRoute(r) | RtMsg::DelRoute(r) => {
                let del = matches!(self, RtMsg::DelRoute(_));
                let table = if r.table < 256 { r.table as u8 } else { 252 };
                let (scope, rtype) = if del {
                    (RT_SCOPE_NOWHERE, 0)
                } else {
                    (RT_SCOPE_UNIVERSE, r.rtype)
                };
                b.extend_from_slice(&[
                    family(&r.dst),
                    r.dst_len,
                    0,
                    0,
                    table,
                    r.protocol,
                    scope,
                    rtype,
                    0,
                    0,
                    0,
                    0,
                ]);
                attr(&mut b, RTA_DST, &ip_bytes(&r.dst));
                if r.table >= 256 {
                    attr(&mut b, RTA_TABLE, &r.table.to_ne_bytes());
                }
                if !del && let Some(id) = r.nh_id {
                    attr(&mut b, RTA_NH_ID, &id.to_ne_bytes());
                }
            }
            // AF_UNSPEC: IPv4 and IPv6 alike.
            RtMsg::GetRoutes => b.extend_from_slice(&[0; 12]),
            RtMsg::Bucket(_) | RtMsg::Other(_) => {}
        }
        b
    }
}

impl NetlinkSerializable for RtMsg {
    fn message_type(&self) -> u16 {
        match self {
            RtMsg::NewNexthop(_) => RTM_NEWNEXTHOP,
            RtMsg::DelNexthop(_) => RTM_DELNEXTHOP,
            RtMsg::GetNexthops => RTM_GETNEXTHOP,
            RtMsg::NewRoute(_) => RTM_NEWROUTE,
            RtMsg::DelRoute(_) => RTM_DELROUTE,
            RtMsg::GetRoutes => RTM_GETROUTE,
            RtMsg::GetBuckets(_) => RTM_GETNEXTHOPBUCKET,
            RtMsg::Bucket(_) => RTM_NEWNEXTHOPBUCKET,
            RtMsg::Other(t) => *t,
        }
    }
    fn buffer_len(&self) -> usize {
        self.body().len()
    }
    fn serialize(&self, buffer: &mut [u8]) {
        buffer.copy_from_slice(&self.body());
    }
}

fn u32_of(v: &[u8]) -> Result<u32, DecodeError> {
    v.get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| DecodeError::from("short u32 attribute"))
}

fn u16_of(v: &[u8]) -> Result<u16, DecodeError> {
    v.get(..2)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or_else(|| DecodeError::from("short u16 attribute"))
}

fn ip_of(v: &[u8], fam: u8) -> Result<IpAddr, DecodeError> {
    if fam == AF_INET6 {
        v.get(..16)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(|b| IpAddr::V6(Ipv6Addr::from(b)))
            .ok_or_else(|| DecodeError::from("short IPv6 attribute"))
    } else {
        v.get(..4)
            .map(|b| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
            .ok_or_else(|| DecodeError::from("short IPv4 attribute"))
    }
}

fn attrs(b: &[u8]) -> impl Iterator<Item = Result<NlaBuffer<&[u8]>, DecodeError>> {
    NlasIterator::new(b)
}

fn parse_nexthop(p: &[u8]) -> Result<Nexthop, DecodeError> {
    if p.len() < 8 {
        return Err("short nhmsg".into());
    }
    let fam = p[0];
    let protocol = p[2];
    let (mut id, mut gw, mut oif, mut group, mut res, mut black) = (0, None, 0, None, None, false);
    for a in attrs(&p[8..]) {
        let a = a?;
        let v = a.value();
        match a.kind() & !NLA_F_NESTED {
            NHA_ID => id = u32_of(v)?,
            NHA_GATEWAY => gw = Some(ip_of(v, fam)?),
            NHA_OIF => oif = u32_of(v)?,
            NHA_BLACKHOLE => black = true,
            NHA_GROUP => {
                group = Some(
                    v.chunks_exact(8)
                        .map(|c| (u32::from_ne_bytes([c[0], c[1], c[2], c[3]]), c[4] + 1))
                        .collect::<Vec<_>>(),
                )
            }
            NHA_RES_GROUP => {
                let mut r = Resilient {
                    buckets: 0,
                    idle_timer: 0,
                    unbalanced_timer: 0,
                };
                for n in attrs(v) {
                    let n = n?;
                    match n.kind() {
                        NHA_RES_GROUP_BUCKETS => r.buckets = u16_of(n.value())?,
                        NHA_RES_GROUP_IDLE_TIMER => r.idle_timer = u32_of(n.value())?,
                        NHA_RES_GROUP_UNBALANCED_TIMER => r.unbalanced_timer = u32_of(n.value())?,
                        _ => {}
                    }
                }
                res = Some(r);
            }
            _ => {}
        }
    }
    let kind = match (group, gw) {
        (Some(members), _) => NhKind::Group {
            members,
            resilient: res,
        },
        (None, Some(gw)) => NhKind::Gateway { gw, oif },
        _ if black => NhKind::Blackhole,
        _ => return Err("nexthop without gateway or group".into()),
    };
    Ok(Nexthop { id, protocol, kind })
}

fn parse_route(p: &[u8]) -> Result<Route, DecodeError> {
    if p.len() < 12 {
        return Err("short rtmsg".into());
    }
    let fam = p[0];
    if fam != AF_INET && fam != AF_INET6 {
        return Err("not IPv4 or IPv6".into());
    }
    let mut r = Route {
        dst: if fam == AF_INET6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        },
        dst_len: p[1],
        table: u32::from(p[4]),
        protocol: p[5],
        nh_id: None,
        gateway: None,
        oif: None,
        rtype: p[7],
    };
    for a in attrs(&p[12..]) {
        let a = a?;
        let v = a.value();
        match a.kind() {
            RTA_DST => r.dst = ip_of(v, fam)?,
            RTA_TABLE => r.table = u32_of(v)?,
            RTA_NH_ID => r.nh_id = Some(u32_of(v)?),
            RTA_GATEWAY => r.gateway = Some(ip_of(v, fam)?),
            RTA_OIF => r.oif = Some(u32_of(v)?),
            _ => {}
        }
    }
    Ok(r)
}

fn parse_bucket(p: &[u8]) -> Result<Bucket, DecodeError> {
    if p.len() < 8 {
        return Err("short nhmsg".into());
    }
    let mut b = Bucket {
        group: 0,
        index: 0,
        nh_id: 0,
    };
    for a in attrs(&p[8..]) {
        let a = a?;
        match a.kind() & !NLA_F_NESTED {
            NHA_ID => b.group = u32_of(a.value())?,
            NHA_RES_BUCKET => {
                for n in attrs(a.value()) {
                    let n = n?;
                    match n.kind() {
                        NHA_RES_BUCKET_INDEX => b.index = u16_of(n.value())?,
                        NHA_RES_BUCKET_NH_ID => b.nh_id = u32_of(n.value())?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(b)
}

impl NetlinkDeserializable for RtMsg {
    type Error = DecodeError;
    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        Ok(match header.message_type {
            RTM_NEWNEXTHOP => RtMsg::NewNexthop(parse_nexthop(payload)?),
            RTM_NEWROUTE => match parse_route(payload) {
                Ok(r) => RtMsg::NewRoute(r),
                Err(_) => RtMsg::Other(RTM_NEWROUTE),
            },
            RTM_NEWNEXTHOPBUCKET => RtMsg::Bucket(parse_bucket(payload)?),
            t => RtMsg::Other(t),
        })
    }
}

/// Encode one request with the given flags and sequence number (what goes on the socket).
pub fn encode(msg: RtMsg, flags: u16, seq: u32) -> Vec<u8> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = flags;
    hdr.sequence_number = seq;
    let mut m = NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let mut buf = vec![0u8; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

/// A kernel refusal of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

/// A blocking rtnetlink socket that pipelines requests.
pub struct Socket {
    sock: netlink_sys::Socket,
    seq: u32,
    rx: Vec<u8>,
}

/// Requests per `sendmsg`: their acks must fit in the receive buffer.
const BATCH: usize = 512;

impl Socket {
    pub fn open() -> std::io::Result<Socket> {
        let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(false);
        let _ = sock.set_rx_buf_sz(8 << 20);
        Ok(Socket {
            sock,
            seq: 1,
            rx: vec![0u8; 1 << 20],
        })
    }

    /// Send `reqs` (each with its `NLM_F_*` flags besides REQUEST|ACK), pipelined; one result
    /// per request, in order.
    pub fn apply(&mut self, reqs: Vec<(RtMsg, u16)>) -> std::io::Result<Vec<Result<(), Errno>>> {
        let mut results = Vec::with_capacity(reqs.len());
        let mut it = reqs.into_iter().peekable();
        while it.peek().is_some() {
            let first = self.seq;
            let mut out = Vec::with_capacity(BATCH * 64);
            let mut n = 0u32;
            for (m, flags) in it.by_ref().take(BATCH) {
                out.extend(encode(m, flags | NLM_F_REQUEST | NLM_F_ACK, self.seq));
                self.seq = self.seq.wrapping_add(1);
                n += 1;
            }
            self.sock.send(&out, 0)?;
            let mut got: Vec<Option<Result<(), Errno>>> = vec![None; n as usize];
            let mut pending = n;
            while pending > 0 {
                let len = self.sock.recv(&mut &mut self.rx[..], 0)?;
                let mut at = 0;
                while at + 16 <= len {
                    let mlen = u32::from_ne_bytes([
                        self.rx[at],
                        self.rx[at + 1],
                        self.rx[at + 2],
                        self.rx[at + 3],
                    ]) as usize;
                    if mlen < 16 || at + mlen > len {
                        break;
                    }
                    let mtype = u16::from_ne_bytes([self.rx[at + 4], self.rx[at + 5]]);
                    let seq = u32::from_ne_bytes([
                        self.rx[at + 8],
                        self.rx[at + 9],
                        self.rx[at + 10],
                        self.rx[at + 11],
                    ]);
                    if mtype == netlink_packet_core::NLMSG_ERROR && mlen >= 20 {
                        let code = i32::from_ne_bytes([
                            self.rx[at + 16],
                            self.rx[at + 17],
                            self.rx[at + 18],
                            self.rx[at + 19],
                        ]);
                        let i = seq.wrapping_sub(first) as usize;
                        if i < got.len() && got[i].is_none() {
                            got[i] = Some(if code == 0 { Ok(()) } else { Err(Errno(-code)) });
                            pending -= 1;
                        }
                    }
                    at += (mlen + 3) & !3;
                }
            }
            results.extend(got.into_iter().map(|g| g.unwrap_or(Err(Errno(libc::EIO)))));
        }
        Ok(results)
    }

    /// A dump request; every decoded message until `NLMSG_DONE`.
    pub fn dump(&mut self, req: RtMsg) -> std::io::Result<Vec<RtMsg>> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.sock
            .send(&encode(req, NLM_F_REQUEST | NLM_F_DUMP, seq), 0)?;
        let mut out = Vec::new();
        loop {
            let len = self.sock.recv(&mut &mut self.rx[..], 0)?;
            let mut at = 0;
            while at + 16 <= len {
                let buf = &self.rx[at..len];
                let mlen = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if mlen < 16 || mlen > buf.len() {
                    break;
                }
                match NetlinkMessage::<RtMsg>::deserialize(&buf[..mlen]) {
                    Ok(m) if m.header.sequence_number == seq => match m.payload {
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::Error(e) => {
                            if let Some(c) = e.code {
                                // ENOENT etc.: e.g. no buckets for a group without them.
                                if -c.get() == libc::ENODEV || -c.get() == libc::ENOENT {
                                    return Ok(out);
                                }
                                return Err(std::io::Error::from_raw_os_error(-c.get()));
                            }
                            return Ok(out);
                        }
                        NetlinkPayload::InnerMessage(m) => out.push(m),
                        _ => {}
                    },
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "undecodable netlink message skipped"),
                }
                at += (mlen + 3) & !3;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes `ip nexthop add id 7 via 10.9.0.2 dev va proto 199` sent (strace, va = 3).
    #[test]
    fn gateway_nexthop_matches_iproute2() {
        let b = encode(
            RtMsg::NewNexthop(Nexthop {
                id: 7,
                protocol: 199,
                kind: NhKind::Gateway {
                    gw: Ipv4Addr::new(10, 9, 0, 2).into(),
                    oif: 3,
                },
            }),
            0x0600,
            0,
        );
        let ip: [u8; 48] = [
            0x30, 0, 0, 0, 0x68, 0, 0x05, 0x06, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0xc7, 0, 0, 0, 0, 0,
            8, 0, 1, 0, 7, 0, 0, 0, 8, 0, 6, 0, 10, 9, 0, 2, 8, 0, 5, 0, 3, 0, 0, 0,
        ];
        let mut ours = b.clone();
        ours[6] |= 0x05; // REQUEST|ACK as the socket adds them
        assert_eq!(ours, ip);
        let m = NetlinkMessage::<RtMsg>::deserialize(&b).expect("parse");
        assert!(
            matches!(m.payload, NetlinkPayload::InnerMessage(RtMsg::NewNexthop(n)) if n.id == 7)
        );
    }

    #[test]
    fn resilient_group_round_trips() {
        let nh = Nexthop {
            id: 21,
            protocol: 199,
            kind: NhKind::Group {
                members: vec![(7, 1), (8, 1)],
                resilient: Some(Resilient {
                    buckets: 8,
                    idle_timer: 0,
                    unbalanced_timer: 0,
                }),
            },
        };
        let b = encode(RtMsg::NewNexthop(nh.clone()), 0, 0);
        assert_eq!(b.len(), 88);
        let m = NetlinkMessage::<RtMsg>::deserialize(&b).expect("parse");
        assert_eq!(
            m.payload,
            NetlinkPayload::InnerMessage(RtMsg::NewNexthop(nh))
        );
    }
}
