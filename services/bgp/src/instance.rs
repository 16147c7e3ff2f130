//! The bgp instance: one owner of every session FSM and the RIBs, fed by one `select!`.
//!
//! ```text
//!   TCP 179 listener ────────┐
//!   connect tasks ───────────┤                ┌── writer task per connection ──▶ peers
//!   reader task per conn ────┼──▶ Instance ───┼── fib (MTS): best paths, End-of-RIB
//!   FSM timers ──────────────┤   (FSMs, RIB)  └── shows (MTS)
//!   MTS, SIGTERM ────────────┘
//! ```
//!
//! First slice: sessions, Adj-RIB-In, Loc-RIB and the FIB. Not yet: advertising routes,
//! Graceful Restart, BFD, PSS checkpoints, route refresh, IPv6 (issue 7 lists them).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fib::proto::{self as fp, Prefix};
use mts::client::{Client, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use crate::BgpError;
use crate::checkpoint::{self, Ckpt, SessionCk, Side};
use crate::config::{Config, Neighbor};
use crate::export::{self, OutAttrs, Target};
use crate::fsm::{Action, Event, Fsm};
use crate::proto::{self, NeighborRow, PathRow, RouteRow, Summary};
use crate::rib::{PeerInfo, Rib};
use crate::wire::{self, Msg};

/// How long a peer's routes stay stale after its BoRR without an EoRR (RFC 7313 §4).
const REFRESH_STALE: Duration = Duration::from_secs(300);

/// How long restored routes stay stale without Graceful Restart configured, seconds.
const DEFAULT_STALE_SECS: u16 = 120;

pub struct Options {
    pub config: PathBuf,
}

enum ConnEv {
    Up(Ipv4Addr, u64, TcpStream),
    ConnectFailed(Ipv4Addr, u64),
    /// A message, and its bytes as received (for the checkpoint log).
    Message(Ipv4Addr, u64, Result<Msg, wire::Malformed>, Vec<u8>),
    Closed(Ipv4Addr, u64),
}

struct Conn {
    id: u64,
    /// We opened it (else the peer did): connection collision keeps the one the higher BGP
    /// Identifier opened.
    outgoing: bool,
    /// Our address on it (next hop self).
    local: Option<Ipv4Addr>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    /// The reader stops at once; the writer finishes what was queued (a NOTIFICATION, say)
    /// and closes the connection when its queue closes.
    fn drop(&mut self) {
        self.reader.abort();
    }
}

struct Peer {
    cfg: Neighbor,
    fsm: Fsm,
    conn: Option<Conn>,
    /// A connect attempt in flight (its id), and its task: aborted when the attempt is
    /// given up, or its SYN retransmissions could still open a connection the peer would
    /// take for our restart (RFC 4724) while the session is up.
    connecting: Option<u64>,
    connect_task: Option<tokio::task::JoinHandle<()>>,
    four_octet: bool,
    /// RFC 7313 negotiated (we always offer it).
    enhanced_refresh: bool,
    router_id: Option<Ipv4Addr>,
    msgs_in: u64,
    msgs_out: u64,
    /// End-of-RIB received for every family of the session (IPv4, and IPv6 if negotiated).
    eor: bool,
    eor4: bool,
    eor6: bool,
    /// IPv6 unicast negotiated (RFC 4760).
    ipv6: bool,
    changed_at: Instant,
    /// Our address on the current connection (next hop self).
    local_addr: Option<Ipv4Addr>,
    /// What this neighbour has from us.
    adj_out: BTreeMap<Prefix, Arc<OutAttrs>>,
    /// Its Graceful Restart capability, from its last OPEN.
    gr: Option<wire::Gr>,
    /// Its routes are stale (it is restarting) until End-of-RIB or this instant.
    stale_until: Option<Instant>,
    /// Our OPENs carry the R bit until this session is up (we restarted).
    send_restarted: bool,
    /// Connection collision (RFC 4271 §6.8): the peer's own connection, accepted while ours
    /// is in OpenSent/OpenConfirm, until its OPEN tells whose connection stays.
    incoming: Option<Conn>,
    /// Its stale routes are ours from a checkpoint (we restarted), not its own restart: kept
    /// until its End-of-RIB whatever its forwarding-state bit says.
    stale_restored: bool,
}

pub struct Instance {
    cfg: Config,
    mts: Client,
    /// Our SAP (notifications from bfd arrive on it).
    sap: u32,
    fib_sap: Option<u32>,
    /// Prefixes whose FIB state is still to be sent, and the requests [`fib_writer`] has not
    /// finished (a chunk goes only when it has none). Requests go in order on its own MTS connection, so the
    /// sessions never wait for the kernel.
    fib_tx: mpsc::UnboundedSender<ToFib>,
    fib_done: mpsc::UnboundedReceiver<()>,
    fib_pending: rustc_hash::FxHashSet<Prefix>,
    fib_inflight: usize,
    peers: HashMap<Ipv4Addr, Peer>,
    rib: Rib,
    listener: Option<TcpListener>,
    ev_tx: mpsc::UnboundedSender<ConnEv>,
    ev_rx: mpsc::UnboundedReceiver<ConnEv>,
    next_conn: u64,
    /// Loc-RIB prefixes not yet sent to the FIB.
    dirty: rustc_hash::FxHashSet<Prefix>,
    /// This batch's checkpoint operations, and where they go ([`checkpoint::writer`]).
    ckpt: Ckpt,
    ckpt_tx: mpsc::UnboundedSender<Vec<pss::proto::Op>>,
    fib_eor_sent: bool,
    fib_eor_at: Instant,
    /// Next-hop → interface (the connected subnet that contains it).
    ifaces: Vec<Iface>,
}

/// The receive buffer of every BGP connection (accepted ones inherit the listener's). Set
/// before the handshake so the window scale covers it: a sender feeding a full table then
/// never waits on our window, which stalls some (BIRD 2.0 holds its last UPDATE for its 3 s
/// poll timeout after a write that would block).
const RECV_BUFFER: u32 = 4 << 20;

fn listen_179() -> std::io::Result<TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.set_recv_buffer_size(RECV_BUFFER)?;
    s.bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 179).into())?;
    s.listen(64)
}

fn reader(
    peer: Ipv4Addr,
    id: u64,
    mut rd: tokio::net::tcp::OwnedReadHalf,
    tx: mpsc::UnboundedSender<ConnEv>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::with_capacity(65536);
        let mut chunk = vec![0u8; 65536];
        loop {
            // Every complete message, then the partial rest moves to the front once.
            let mut at = 0;
            loop {
                match wire::complete_len(&buf[at..]) {
                    Ok(Some(n)) if buf.len() - at >= n => {
                        let raw = &buf[at..at + n];
                        let m = wire::decode(raw);
                        // Only UPDATEs are logged.
                        let raw = if matches!(m, Ok(Msg::Update(_))) {
                            raw.to_vec()
                        } else {
                            Vec::new()
                        };
                        at += n;
                        if tx.send(ConnEv::Message(peer, id, m, raw)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => break,
                    Err(e) => {
                        let _ = tx.send(ConnEv::Message(peer, id, Err(e), Vec::new()));
                        return;
                    }
                }
            }
            buf.drain(..at);
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send(ConnEv::Closed(peer, id));
                    return;
                }
                Ok(n) => {
                    tracing::trace!(peer = %peer, bytes = n, "read");
                    buf.extend_from_slice(&chunk[..n])
                }
            }
        }
    })
}

/// Routes per FIB request (about 3 MB on the wire).
const FIB_CHUNK: usize = 100_000;

/// What goes to the FIB, in order.
enum ToFib {
    Update(fp::Update),
    EndOfRib,
}

/// Send FIB requests in order on the writer's own MTS connection, and say when each is done:
/// the owner builds the next chunk only then, from the Loc-RIB as it is at that moment (a pull,
/// so a full table never sits in memory twice and a prefix that changed meanwhile goes once).
async fn fib_writer(
    fib: u32,
    mut rx: mpsc::UnboundedReceiver<ToFib>,
    done: mpsc::UnboundedSender<()>,
) {
    let mts = match Client::connect_from_env().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "fib writer: no MTS connection");
            return;
        }
    };
    while let Some(m) = rx.recv().await {
        match m {
            ToFib::Update(u) => {
                let r: Result<Result<(), String>, _> = mts
                    .request(0, fib, fp::OP_UPDATE, &u, Duration::from_secs(120))
                    .await;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "fib refused routes"),
                    Err(e) => tracing::warn!(error = %e, "fib unreachable"),
                }
            }
            ToFib::EndOfRib => {
                let r: Result<Result<u64, String>, _> = mts
                    .request(
                        0,
                        fib,
                        fp::OP_END_OF_RIB,
                        &"bgp".to_string(),
                        Duration::from_secs(30),
                    )
                    .await;
                tracing::info!(?r, "fib: End-of-RIB");
            }
        }
        if done.send(()).is_err() {
            return;
        }
    }
}

/// A local address: (address, prefix length, interface).
type Iface = (IpAddr, u8, String);

/// The interface of the connected subnet that holds `nh` (the list is re-read once on a miss).
fn ifname_for(ifaces: &mut Vec<Iface>, nh: IpAddr) -> Option<String> {
    let find = |v: &[Iface]| {
        v.iter()
            .filter(|(a, len, _)| {
                Prefix::new(nh, *len)
                    .is_some_and(|p| Prefix::new(*a, *len).is_some_and(|q| q.addr == p.addr))
            })
            .max_by_key(|(_, len, _)| *len)
            .map(|(_, _, n)| n.clone())
    };
    find(ifaces).or_else(|| {
        *ifaces = local_ifaces();
        find(ifaces)
    })
}

/// Our global IPv6 address on the interface that holds `v4` (next hop self for IPv6).
fn v6_beside(ifaces: &mut Vec<Iface>, v4: Ipv4Addr) -> Option<Ipv6Addr> {
    let find = |v: &[Iface]| {
        let name = v
            .iter()
            .find(|(a, _, _)| *a == IpAddr::V4(v4))
            .map(|(_, _, n)| n.clone())?;
        v.iter().find_map(|(a, _, n)| match a {
            IpAddr::V6(a) if *n == name && (a.segments()[0] & 0xffc0) != 0xfe80 => Some(*a),
            _ => None,
        })
    };
    find(ifaces).or_else(|| {
        *ifaces = local_ifaces();
        find(ifaces)
    })
}

fn local_ifaces() -> Vec<Iface> {
    let mut v = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let (Some(addr), Some(mask)) = (a.address, a.netmask) else {
                continue;
            };
            if let (Some(ad), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
                let len = u32::from(m.ip()).count_ones() as u8;
                v.push((IpAddr::V4(ad.ip()), len, a.interface_name.clone()));
            } else if let (Some(ad), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                let len = u128::from(m.ip()).count_ones() as u8;
                v.push((IpAddr::V6(ad.ip()), len, a.interface_name.clone()));
            }
        }
    }
    v
}

impl Instance {
    pub async fn start(opts: &Options) -> Result<Instance, BgpError> {
        let cfg = crate::config::load(&opts.config)?;
        let mts = Client::connect_from_env().await?;
        let sap = mts.bind(proto::SAP_NAME).await?;
        if cfg.neighbors.iter().any(|n| n.bfd.is_some()) {
            mts.subscribe(sap, bfd::proto::OP_EVENT).await?;
        }
        let fib_sap = mts.lookup(fp::SAP_NAME).await.ok();
        // Listen only when there is someone to listen for.
        let listener = if cfg.neighbors.is_empty() {
            None
        } else {
            match listen_179() {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen on TCP 179: active sessions only");
                    None
                }
            }
        };
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (fib_tx, fib_rx) = mpsc::unbounded_channel();
        let (done_tx, fib_done) = mpsc::unbounded_channel();
        if let Some(f) = fib_sap {
            tokio::spawn(fib_writer(f, fib_rx, done_tx));
        }
        let now = Instant::now();
        // Any start but the first is a restart our peers should hear about (R bit).
        let start = std::env::var("SYSMGR_START").unwrap_or_else(|_| "fresh".into());
        let restarted = start != "fresh";
        // A stateful restart finds the previous instance's RIBs; any other start clears them.
        let restored = if start == "stateful" {
            match checkpoint::restore().await {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "checkpoint: cannot restore; starting empty");
                    None
                }
            }
        } else {
            None
        };
        let (ckpt_tx, ckpt_rx) = mpsc::unbounded_channel();
        tokio::spawn(checkpoint::writer(ckpt_rx, restored.is_none()));
        let mut rib = Rib::new(cfg.maximum_paths);
        let mut peers = HashMap::new();
        for n in &cfg.neighbors {
            rib.peers.insert(
                n.address,
                PeerInfo {
                    addr: n.address,
                    router_id: n.address,
                    remote_as: n.remote_as,
                    ebgp: n.remote_as != cfg.local_as,
                },
            );
            peers.insert(
                n.address,
                Peer {
                    cfg: n.clone(),
                    fsm: Fsm::new(cfg.hold_time, cfg.connect_retry),
                    conn: None,
                    connecting: None,
                    connect_task: None,
                    four_octet: false,
                    enhanced_refresh: false,
                    router_id: None,
                    msgs_in: 0,
                    msgs_out: 0,
                    eor: false,
                    eor4: false,
                    eor6: false,
                    ipv6: false,
                    changed_at: now,
                    local_addr: None,
                    adj_out: BTreeMap::new(),
                    gr: None,
                    stale_until: None,
                    send_restarted: restarted,
                    incoming: None,
                    stale_restored: false,
                },
            );
        }
        let mut me = Instance {
            cfg,
            mts,
            sap,
            fib_sap,
            fib_tx,
            fib_done,
            fib_pending: rustc_hash::FxHashSet::default(),
            fib_inflight: 0,
            peers,
            rib,
            listener,
            ev_tx,
            ev_rx,
            next_conn: 1,
            dirty: rustc_hash::FxHashSet::default(),
            ckpt: Ckpt::default(),
            ckpt_tx,
            fib_eor_sent: false,
            fib_eor_at: now + Duration::from_secs(60),
            ifaces: local_ifaces(),
        };
        if let Some(r) = restored {
            me.adopt(r, now);
        }
        // Our routes in the FIB from a previous life are stale until we have re-learnt them.
        if let Some(f) = me.fib_sap {
            let r: Result<Result<u64, String>, _> = me
                .mts
                .request(
                    0,
                    f,
                    fp::OP_PRODUCER_START,
                    &"bgp".to_string(),
                    Duration::from_secs(10),
                )
                .await;
            tracing::info!(?r, "fib: bgp routes marked stale until End-of-RIB");
        }
        me.ask_bfd().await;
        let addrs: Vec<Ipv4Addr> = me.peers.keys().copied().collect();
        for a in addrs {
            let passive = me.peers[&a].cfg.passive;
            me.event(a, Event::ManualStart { passive }).await;
        }
        Ok(me)
    }

    fn connect(&mut self, addr: Ipv4Addr) {
        let id = self.next_conn;
        self.next_conn += 1;
        let local = self.peers.get(&addr).and_then(|p| p.cfg.local_address);
        if let Some(p) = self.peers.get_mut(&addr) {
            p.connecting = Some(id);
        }
        let tx = self.ev_tx.clone();
        let task = tokio::spawn(async move {
            let r = async {
                let s = TcpSocket::new_v4()?;
                s.set_recv_buffer_size(RECV_BUFFER)?;
                if let Some(l) = local {
                    s.bind(SocketAddrV4::new(l, 0).into())?;
                }
                tokio::time::timeout(
                    Duration::from_secs(5),
                    s.connect(SocketAddrV4::new(addr, 179).into()),
                )
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
            }
            .await;
            let _ = tx.send(match r {
                Ok(st) => ConnEv::Up(addr, id, st),
                Err(_) => ConnEv::ConnectFailed(addr, id),
            });
        });
        if let Some(p) = self.peers.get_mut(&addr)
            && let Some(old) = p.connect_task.replace(task)
        {
            old.abort();
        }
    }

    /// Reader and writer tasks for a new connection.
    fn open_conn(&self, addr: Ipv4Addr, id: u64, st: TcpStream, outgoing: bool) -> Conn {
        let _ = st.set_nodelay(true);
        let local = match st.local_addr() {
            Ok(std::net::SocketAddr::V4(a)) => Some(*a.ip()),
            _ => None,
        };
        let (rd, mut wr) = st.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                match tokio::time::timeout(Duration::from_secs(10), wr.write_all(&b)).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
        });
        let reader = reader(addr, id, rd, self.ev_tx.clone());
        Conn {
            id,
            outgoing,
            local,
            tx,
            reader,
        }
    }

    fn attach(&mut self, addr: Ipv4Addr, id: u64, st: TcpStream, outgoing: bool) {
        let c = self.open_conn(addr, id, st, outgoing);
        if let Some(p) = self.peers.get_mut(&addr) {
            p.local_addr = c.local;
            p.conn = Some(c);
        }
    }

    /// A connection from a peer: taken when the session waits for one; held for collision
    /// resolution when ours is in OpenSent/OpenConfirm; refused otherwise (Cease /
    /// Connection Collision Resolution).
    async fn on_accept(&mut self, ip: Ipv4Addr, st: TcpStream) {
        let Some(p) = self.peers.get(&ip) else {
            return; // not a neighbour: dropped
        };
        let state = p.fsm.state;
        if p.conn.is_none()
            && matches!(
                state,
                crate::fsm::State::Connect | crate::fsm::State::Active
            )
        {
            let id = self.next_conn;
            self.next_conn += 1;
            // Our own attempt in flight would be a second connection.
            if let Some(p) = self.peers.get_mut(&ip) {
                p.connecting = None;
                if let Some(t) = p.connect_task.take() {
                    t.abort();
                }
            }
            self.attach(ip, id, st, false);
            self.event(ip, Event::TcpConnectionConfirmed).await;
            return;
        }
        let ours_out = p.conn.as_ref().is_some_and(|c| c.outgoing);
        if matches!(
            state,
            crate::fsm::State::OpenSent | crate::fsm::State::OpenConfirm
        ) && ours_out
            && p.incoming.is_none()
        {
            let id = self.next_conn;
            self.next_conn += 1;
            let c = self.open_conn(ip, id, st, false);
            let _ = c.tx.send(self.open_msg(ip));
            tracing::info!(peer = %ip, "connection collision: the peer's connection waits for its OPEN");
            if let Some(p) = self.peers.get_mut(&ip) {
                p.incoming = Some(c);
            }
            return;
        }
        tracing::info!(peer = %ip, state = state.word(), "connection from the peer refused (connection collision)");
        let c = self.open_conn(ip, 0, st, false);
        let _ = c.tx.send(wire::notification(6, 7));
    }

    /// A message on the peer's connection held for collision resolution: its OPEN decides.
    async fn on_incoming(&mut self, addr: Ipv4Addr, m: Result<Msg, wire::Malformed>, raw: Vec<u8>) {
        let Ok(Msg::Open { router_id, .. }) = &m else {
            if let Some(p) = self.peers.get_mut(&addr) {
                p.incoming = None;
            }
            return;
        };
        if u32::from(self.cfg.router_id) > u32::from(*router_id) {
            tracing::info!(peer = %addr, "connection collision: our connection stays (our BGP Identifier is higher)");
            if let Some(c) = self.peers.get_mut(&addr).and_then(|p| p.incoming.take()) {
                let _ = c.tx.send(wire::notification(6, 7));
            }
            return;
        }
        tracing::info!(peer = %addr, "connection collision: the peer's connection stays (its BGP Identifier is higher)");
        let Some(theirs) = self.peers.get_mut(&addr).and_then(|p| p.incoming.take()) else {
            return;
        };
        self.event(addr, Event::OpenCollisionDump).await;
        let now = Instant::now();
        if let Some(p) = self.peers.get_mut(&addr) {
            p.local_addr = theirs.local;
            p.conn = Some(theirs);
            p.connecting = None;
            p.fsm.take_over_connection(now);
        }
        self.on_message(addr, m, raw).await;
    }

    /// Our OPEN for `addr`.
    fn open_msg(&self, addr: Ipv4Addr) -> Vec<u8> {
        let r = self.peers.get(&addr).is_some_and(|p| p.send_restarted);
        let gr = self.cfg.graceful_restart.map(|t| wire::Gr {
            restarted: r,
            restart_time: t,
            ipv4_forwarding: true,
        });
        wire::open(
            self.cfg.local_as,
            self.cfg.hold_time,
            self.cfg.router_id,
            gr,
        )
    }

    fn send(&mut self, addr: Ipv4Addr, bytes: Vec<u8>) {
        if let Some(p) = self.peers.get_mut(&addr)
            && let Some(c) = &p.conn
        {
            p.msgs_out += 1;
            let _ = c.tx.send(bytes);
        }
    }

    /// Feed one event to a peer's FSM and carry out what it says.
    async fn event(&mut self, addr: Ipv4Addr, ev: Event) {
        let now = Instant::now();
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        let before = p.fsm.state;
        // RFC 4724: a session that ends without a NOTIFICATION (the TCP connection failed)
        // is a restart the helper waits for.
        let restarting = matches!(ev, Event::TcpConnectionFails)
            && self.cfg.graceful_restart.is_some()
            && p.gr.is_some();
        let actions = p.fsm.handle(now, ev);
        if p.fsm.state != before {
            p.changed_at = now;
            tracing::info!(peer = %addr, from = before.word(), to = p.fsm.state.word(), "%BGP-5-ADJCHANGE");
            let ck = SessionCk {
                state: p.fsm.state.word().to_string(),
                router_id: p.router_id,
                four_octet: p.four_octet,
                local_addr: p.local_addr,
                gr_restart_time: p.gr.map(|g| g.restart_time),
                flaps: p.fsm.flaps,
            };
            self.ckpt.session(addr, &ck);
        }
        for a in actions {
            match a {
                Action::Connect => self.connect(addr),
                Action::Disconnect => {
                    if let Some(p) = self.peers.get_mut(&addr) {
                        p.conn = None;
                        p.incoming = None;
                        p.connecting = None;
                        if let Some(t) = p.connect_task.take() {
                            t.abort();
                        }
                        p.eor = false;
                        p.eor4 = false;
                        p.eor6 = false;
                    }
                }
                Action::SendOpen => {
                    let b = self.open_msg(addr);
                    self.send(addr, b);
                }
                Action::SendKeepalive => self.send(addr, wire::keepalive()),
                Action::SendNotification { code, subcode } => {
                    self.send(addr, wire::notification(code, subcode))
                }
                Action::Established => {
                    if let Some(p) = self.peers.get_mut(&addr) {
                        p.send_restarted = false;
                        // Back without forwarding preserved: its stale routes cannot be trusted.
                        if p.stale_until.is_some()
                            && !p.stale_restored
                            && !p.gr.is_some_and(|g| g.ipv4_forwarding)
                        {
                            p.stale_until = None;
                            self.sweep(addr);
                        }
                    }
                    self.advertise_all(addr);
                    self.send(addr, wire::end_of_rib());
                    if self.peers.get(&addr).is_some_and(|p| p.ipv6) {
                        self.send(addr, wire::end_of_rib_v6());
                    }
                }
                Action::Down => {
                    let mut keep = None;
                    self.ckpt.forget(Side::Out, addr);
                    if let Some(p) = self.peers.get_mut(&addr) {
                        p.adj_out.clear();
                        if p.stale_restored {
                            // Routes from our checkpoint wait for the peer (or their time).
                            keep = p.stale_until;
                        } else if restarting && let Some(g) = p.gr {
                            keep = Some(now + Duration::from_secs(u64::from(g.restart_time)));
                            p.stale_until = keep;
                        } else {
                            p.stale_until = None;
                        }
                    }
                    let restored = self.peers.get(&addr).is_some_and(|p| p.stale_restored);
                    if keep.is_some() {
                        if !restored {
                            tracing::info!(peer = %addr, "peer restarting: its routes are kept stale (Graceful Restart helper)");
                        }
                        self.rib.peer_stale(addr);
                    } else {
                        let gone = self.rib.peer_down(addr);
                        self.dirty.extend(gone);
                        self.ckpt.forget(Side::In, addr);
                    }
                }
                Action::ProcessUpdate => {}
            }
        }
    }

    async fn on_message(&mut self, addr: Ipv4Addr, m: Result<Msg, wire::Malformed>, raw: Vec<u8>) {
        if let Some(p) = self.peers.get_mut(&addr) {
            p.msgs_in += 1;
        }
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(peer = %addr, why = %e.why, "malformed message");
                self.event(
                    addr,
                    Event::BgpOpenMsgErr {
                        code: e.code,
                        subcode: e.subcode,
                    },
                )
                .await;
                return;
            }
        };
        match m {
            Msg::Open {
                asn,
                hold,
                router_id,
                four_octet,
                enhanced_refresh,
                ipv6,
                gr,
                ..
            } => {
                let want = self.peers.get(&addr).map(|p| p.cfg.remote_as);
                if want != Some(asn) {
                    tracing::warn!(peer = %addr, asn, "bad peer AS");
                    self.event(
                        addr,
                        Event::BgpOpenMsgErr {
                            code: 2,
                            subcode: 2,
                        },
                    )
                    .await;
                    return;
                }
                if hold == 1 || hold == 2 {
                    self.event(
                        addr,
                        Event::BgpOpenMsgErr {
                            code: 2,
                            subcode: 6,
                        },
                    )
                    .await;
                    return;
                }
                if let Some(p) = self.peers.get_mut(&addr) {
                    p.four_octet = four_octet;
                    p.enhanced_refresh = enhanced_refresh;
                    p.ipv6 = ipv6;
                    p.router_id = Some(router_id);
                    p.gr = gr;
                }
                if let Some(i) = self.rib.peers.get_mut(&addr) {
                    i.router_id = router_id;
                }
                self.event(addr, Event::BgpOpen { hold }).await;
            }
            Msg::Keepalive => self.event(addr, Event::KeepAliveMsg).await,
            Msg::Notification { code, subcode } => {
                tracing::warn!(peer = %addr, code, subcode, "NOTIFICATION received");
                self.event(addr, Event::NotifMsg).await;
            }
            Msg::RouteRefresh { afi, safi, subtype } => {
                if (afi, safi) != (1, 1) {
                    return; // a family we did not negotiate
                }
                self.on_route_refresh(addr, subtype);
            }
            Msg::Update(u) => {
                let four = self.peers.get(&addr).is_some_and(|p| p.four_octet);
                match wire::routes(&u, four) {
                    Ok(r) => {
                        self.event(addr, Event::UpdateMsg).await;
                        if self.peers.get(&addr).map(|p| p.fsm.state)
                            != Some(crate::fsm::State::Established)
                        {
                            return;
                        }
                        if r.end_of_rib || r.end_of_rib_v6 {
                            // Graceful Restart ends when every family's End-of-RIB is in.
                            let mut sweep = false;
                            let mut all = false;
                            if let Some(p) = self.peers.get_mut(&addr) {
                                p.eor4 |= r.end_of_rib;
                                p.eor6 |= r.end_of_rib_v6;
                                all = p.eor4 && (p.eor6 || !p.ipv6);
                                if all && !p.eor {
                                    p.eor = true;
                                    sweep = p.stale_until.take().is_some();
                                    p.stale_restored = false;
                                }
                            }
                            let family = if r.end_of_rib { "ipv4" } else { "ipv6" };
                            tracing::info!(peer = %addr, family, all, loc_rib = self.rib.loc.len(), "End-of-RIB received");
                            if sweep {
                                let n = self.sweep(addr);
                                tracing::info!(peer = %addr, swept = n, "End-of-RIB: stale routes swept");
                            }
                        } else {
                            self.apply_routes(addr, r);
                            self.ckpt.append(Side::In, addr, &raw);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(peer = %addr, why = %e.why, "UPDATE error");
                        self.event(
                            addr,
                            Event::UpdateMsgErr {
                                code: e.code,
                                subcode: e.subcode,
                            },
                        )
                        .await;
                    }
                }
            }
        }
    }

    /// ROUTE-REFRESH (RFC 2918) and its RFC 7313 framing. A request: the whole Adj-RIB-Out
    /// again (between BoRR and EoRR when enhanced refresh was negotiated). The peer's BoRR:
    /// its routes turn stale; its EoRR: what it did not re-send goes (or when the time runs
    /// out). Other subtypes are ignored.
    fn on_route_refresh(&mut self, addr: Ipv4Addr, subtype: u8) {
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        if p.fsm.state != crate::fsm::State::Established {
            return;
        }
        let enhanced = p.enhanced_refresh;
        match subtype {
            wire::REFRESH_REQUEST => {
                p.adj_out.clear();
                self.ckpt.forget(Side::Out, addr);
                tracing::info!(peer = %addr, enhanced, "ROUTE-REFRESH: Adj-RIB-Out sent again");
                if enhanced {
                    self.send(addr, wire::route_refresh(wire::REFRESH_BEGIN));
                }
                self.advertise_all(addr);
                if enhanced {
                    self.send(addr, wire::route_refresh(wire::REFRESH_END));
                }
            }
            wire::REFRESH_BEGIN if enhanced => {
                if p.stale_until.is_none() {
                    p.stale_until = Some(Instant::now() + REFRESH_STALE);
                }
                tracing::info!(peer = %addr, "BoRR: its routes are stale until EoRR");
                self.rib.peer_stale(addr);
            }
            wire::REFRESH_END if enhanced => {
                if p.stale_until.take().is_some() {
                    p.stale_restored = false;
                    let n = self.sweep(addr);
                    tracing::info!(peer = %addr, swept = n, "EoRR: stale routes swept");
                }
            }
            _ => tracing::debug!(peer = %addr, subtype, "ROUTE-REFRESH subtype ignored"),
        }
    }

    /// `clear bgp ADDR soft in|out`.
    fn clear_soft(&mut self, addr: Ipv4Addr, inbound: bool) -> Result<String, String> {
        let p = self
            .peers
            .get(&addr)
            .ok_or_else(|| format!("{addr} is not a neighbour"))?;
        if p.fsm.state != crate::fsm::State::Established {
            return Err(format!("{addr}: the session is {}", p.fsm.state.word()));
        }
        if inbound {
            self.send(addr, wire::route_refresh(wire::REFRESH_REQUEST));
            Ok(format!("{addr}: ROUTE-REFRESH sent"))
        } else {
            self.on_route_refresh(addr, wire::REFRESH_REQUEST);
            Ok(format!("{addr}: Adj-RIB-Out sent again"))
        }
    }

    /// Apply the routes of one UPDATE from `addr` through its import list.
    fn apply_routes(&mut self, addr: Ipv4Addr, r: wire::Routes) {
        let import = self
            .peers
            .get(&addr)
            .map(|p| p.cfg.import.clone())
            .unwrap_or_default();
        // Our own AS in the path: a loop (RFC 4271 §9.1.2), dropped like what the import list
        // refuses, and withdrawn if we had it.
        let local_as = self.cfg.local_as;
        let (announce, refused): (Vec<_>, Vec<_>) = r
            .announce
            .into_iter()
            .partition(|(p, a)| export::passes(&import, p) && !a.as_path.contains(&local_as));
        let mut withdraw = r.withdraw;
        withdraw.extend(refused.into_iter().map(|(p, _)| p));
        let ch = self.rib.update(addr, announce, withdraw);
        self.dirty.extend(ch);
    }

    /// Drop what a restarted peer did not re-send; the checkpoint log gets the withdrawals.
    fn sweep(&mut self, addr: Ipv4Addr) -> usize {
        let gone = self.rib.sweep_stale(addr);
        for m in export::withdrawals(&gone) {
            self.ckpt.append(Side::In, addr, &m);
        }
        let n = gone.len();
        self.dirty.extend(gone);
        n
    }

    /// Everything we have for a neighbour: the whole Loc-RIB and our networks.
    fn advertise_all(&mut self, addr: Ipv4Addr) {
        let mut all: Vec<Prefix> = self
            .rib
            .loc
            .keys()
            .chain(self.cfg.networks.iter())
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        self.advertise(addr, &all);
    }

    /// Bring a neighbour's Adj-RIB-Out up to date for `prefixes`, packed into UPDATEs.
    /// `prefixes` sorted, without duplicates.
    fn advertise(&mut self, addr: Ipv4Addr, prefixes: &[Prefix]) {
        let Some(p) = self.peers.get(&addr) else {
            return;
        };
        if p.fsm.state != crate::fsm::State::Established {
            return;
        }
        let Some(local_addr) = p.local_addr else {
            return;
        };
        let ipv6 = p.ipv6;
        let local_addr6 = if ipv6 {
            v6_beside(&mut self.ifaces, local_addr)
        } else {
            None
        };
        let Some(p) = self.peers.get(&addr) else {
            return;
        };
        let t = Target {
            addr,
            ebgp: p.cfg.remote_as != self.cfg.local_as,
            local_as: self.cfg.local_as,
            local_addr,
            local_addr6,
            ipv6,
            export: &p.cfg.export,
        };
        let mut changes: BTreeMap<Prefix, Option<Arc<OutAttrs>>> = BTreeMap::new();
        for x in prefixes {
            let own = self.cfg.networks.contains(x);
            let new =
                export::export(&t, x, self.rib.loc.get(x), own, &self.rib.peers).map(Arc::new);
            if p.adj_out.get(x) != new.as_ref() {
                changes.insert(*x, new);
            }
        }
        if changes.is_empty() {
            return;
        }
        let msgs = export::pack(&changes, p.four_octet);
        if let Some(p) = self.peers.get_mut(&addr) {
            for (x, a) in changes {
                match a {
                    Some(a) => p.adj_out.insert(x, a),
                    None => p.adj_out.remove(&x),
                };
            }
        }
        for m in msgs {
            self.ckpt.append(Side::Out, addr, &m);
            self.send(addr, m);
        }
    }

    /// Send the changed part of the Loc-RIB to the FIB and to every neighbour.
    fn flush_fib(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let mut dirty: Vec<Prefix> = self.dirty.drain().collect();
        dirty.sort_unstable();
        tracing::debug!(
            changed = dirty.len(),
            loc_rib = self.rib.loc.len(),
            "Loc-RIB batch"
        );
        let addrs: Vec<Ipv4Addr> = self.peers.keys().copied().collect();
        for a in addrs {
            self.advertise(a, &dirty);
        }
        if self.fib_sap.is_none() {
            return;
        }
        self.fib_pending.extend(dirty);
        self.feed_fib();
    }

    /// The next chunk of pending prefixes to the FIB writer, if it is idle.
    fn feed_fib(&mut self) {
        if self.fib_inflight > 0 || self.fib_pending.is_empty() {
            return;
        }
        let chunk: Vec<Prefix> = self.fib_pending.iter().take(FIB_CHUNK).copied().collect();
        for p in &chunk {
            self.fib_pending.remove(p);
        }
        let mut u = fp::Update {
            producer: "bgp".into(),
            announce: Vec::new(),
            withdraw: Vec::new(),
        };
        // Next hop → interface, once per chunk.
        let mut via: HashMap<IpAddr, Option<String>> = HashMap::new();
        for p in chunk {
            let mut paths: Vec<fp::Path> = Vec::new();
            if let Some(sel) = self.rib.loc.get(&p) {
                for (_, a) in sel.paths.iter() {
                    let nh = a.next_hop;
                    let ifname = match via.get(&nh) {
                        Some(i) => i.clone(),
                        None => {
                            let i = ifname_for(&mut self.ifaces, nh);
                            via.insert(nh, i.clone());
                            i
                        }
                    };
                    if let Some(ifname) = ifname {
                        paths.push(fp::Path { gw: nh, ifname });
                    }
                }
            }
            if paths.is_empty() {
                u.withdraw.push(p);
            } else {
                let sticky = self.cfg.sticky.iter().any(|s| s.covers(&p));
                u.announce.push(fp::RouteIn {
                    prefix: p,
                    paths,
                    sticky,
                });
            }
        }
        self.fib_inflight += 1;
        let _ = self.fib_tx.send(ToFib::Update(u));
    }

    /// Hand this batch's checkpoint to the writer, compacting the logs that outgrew their
    /// tables.
    fn checkpoint(&mut self) {
        let logs: Vec<(Side, Ipv4Addr)> = self.ckpt.logs().collect();
        for (side, peer) in logs {
            match side {
                Side::In => {
                    let Some(t) = self.rib.adj_in.get(&peer) else {
                        continue;
                    };
                    if self.ckpt.wants_compaction(side, peer, t.len()) {
                        self.ckpt.snapshot_in(peer, t);
                    }
                }
                Side::Out => {
                    let Some(p) = self.peers.get(&peer) else {
                        continue;
                    };
                    if self.ckpt.wants_compaction(side, peer, p.adj_out.len()) {
                        let all = p
                            .adj_out
                            .iter()
                            .map(|(x, a)| (*x, Some(a.clone())))
                            .collect();
                        let msgs = export::pack(&all, p.four_octet);
                        self.ckpt.rewrite_out(peer, &msgs);
                    }
                }
            }
        }
        let ops = self.ckpt.take();
        if !ops.is_empty() {
            let _ = self.ckpt_tx.send(ops);
        }
    }

    /// Take over a previous instance's RIBs (stateful restart): each peer's Adj-RIB-In is
    /// rebuilt from its snapshot and log and stays, stale, until the peer has re-sent it
    /// (End-of-RIB) or the restart time runs out; the Loc-RIB is selected from it at once, so
    /// the FIB keeps forwarding. The sessions did not survive, so the Adj-RIBs-Out go.
    fn adopt(&mut self, r: checkpoint::Restored, now: Instant) {
        self.ckpt.adopt(&r);
        let keep = Duration::from_secs(u64::from(
            self.cfg.graceful_restart.unwrap_or(DEFAULT_STALE_SECS),
        ));
        let mut peers: BTreeSet<Ipv4Addr> = r.snapshots.keys().copied().collect();
        peers.extend(r.received.keys());
        let mut snapshots = r.snapshots;
        let mut received = r.received;
        for peer in peers {
            self.ckpt.forget(Side::Out, peer);
            if !self.peers.contains_key(&peer) {
                self.ckpt.forget(Side::In, peer); // no longer a neighbour
                continue;
            }
            for (a, prefixes) in snapshots.remove(&peer).unwrap_or_default() {
                let a = Arc::new(a);
                let routes = prefixes.into_iter().map(|p| (p, a.clone())).collect();
                let ch = self.rib.update(peer, routes, Vec::new());
                self.dirty.extend(ch);
            }
            let four = r.sessions.get(&peer).is_none_or(|s| s.four_octet);
            for raw in received.remove(&peer).unwrap_or_default() {
                match wire::decode(&raw) {
                    Ok(Msg::Update(u)) => match wire::routes(&u, four) {
                        Ok(routes) => self.apply_routes(peer, routes),
                        Err(e) => {
                            tracing::warn!(peer = %peer, why = %e.why, "checkpoint: logged UPDATE skipped")
                        }
                    },
                    _ => {
                        tracing::warn!(peer = %peer, "checkpoint: logged message is not an UPDATE")
                    }
                }
            }
            self.rib.peer_stale(peer);
            if let Some(p) = self.peers.get_mut(&peer) {
                p.stale_until = Some(now + keep);
                p.stale_restored = true;
            }
        }
        let n: usize = self.rib.adj_in.values().map(|t| t.len()).sum();
        tracing::info!(
            prefixes = n,
            loc_rib = self.rib.loc.len(),
            "checkpoint: RIBs restored, stale until the peers re-send them"
        );
    }

    fn maybe_fib_eor(&mut self) {
        if self.fib_eor_sent {
            return;
        }
        let all = self.peers.values().all(|p| p.eor);
        // After every route the FIB is owed (the writer keeps the order).
        if (all || Instant::now() >= self.fib_eor_at)
            && self.fib_sap.is_some()
            && self.fib_pending.is_empty()
        {
            self.fib_eor_sent = true;
            self.fib_inflight += 1;
            let _ = self.fib_tx.send(ToFib::EndOfRib);
        }
    }

    fn summary(&self) -> Summary {
        let now = Instant::now();
        let mut neighbors: Vec<NeighborRow> = self
            .peers
            .iter()
            .map(|(a, p)| NeighborRow {
                addr: *a,
                remote_as: p.cfg.remote_as,
                state: p.fsm.state.word().to_string(),
                up_secs: now.duration_since(p.changed_at).as_secs(),
                prefixes_received: self.rib.adj_in.get(a).map_or(0, |t| t.len()),
                prefixes_sent: p.adj_out.len(),
                msgs_in: p.msgs_in,
                msgs_out: p.msgs_out,
                flaps: p.fsm.flaps,
                router_id: p.router_id,
                hold_time: p.fsm.negotiated_hold,
                end_of_rib_received: p.eor,
            })
            .collect();
        neighbors.sort_by_key(|n| n.addr);
        Summary {
            router_id: self.cfg.router_id,
            local_as: self.cfg.local_as,
            loc_rib_prefixes: self.rib.loc.len(),
            neighbors,
        }
    }

    fn routes(&self, only: Option<Prefix>) -> Vec<RouteRow> {
        let mut all: BTreeSet<Prefix> = BTreeSet::new();
        for t in self.rib.adj_in.values() {
            all.extend(
                t.keys()
                    .filter(|p| only.is_none_or(|o| o.covers(p) || **p == o)),
            );
        }
        all.into_iter()
            .map(|p| {
                let sel = self.rib.loc.get(&p);
                let mut paths: Vec<PathRow> = self
                    .rib
                    .adj_in
                    .iter()
                    .filter_map(|(peer, t)| {
                        t.get(&p).map(|a| PathRow {
                            peer: *peer,
                            next_hop: a.next_hop,
                            as_path: a.as_path.clone(),
                            origin: a.origin,
                            local_pref: a.local_pref,
                            med: a.med,
                            selected: sel.is_some_and(|s| s.paths.iter().any(|(x, _)| x == peer)),
                        })
                    })
                    .collect();
                paths.sort_by_key(|r| (!r.selected, r.peer));
                RouteRow { prefix: p, paths }
            })
            .collect()
    }

    /// Ask the bfd service for a session to every neighbour configured with `bfd` (again
    /// whenever bfd starts without its state).
    async fn ask_bfd(&mut self) {
        let wanted: Vec<(Ipv4Addr, Option<Ipv4Addr>, (u32, u8))> = self
            .peers
            .values()
            .filter_map(|p| p.cfg.bfd.map(|b| (p.cfg.address, p.cfg.local_address, b)))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let Ok(dst) = self.mts.lookup(bfd::proto::SAP_NAME).await else {
            tracing::warn!("no bfd service: BFD for BGP neighbours is off");
            return;
        };
        for (peer, local, (iv, mult)) in wanted {
            let spec = bfd::proto::SessionSpec {
                key: bfd::proto::SessionKey {
                    peer,
                    interface: ifname_for(&mut self.ifaces, peer.into()),
                },
                local,
                timers: bfd::fsm::Timers {
                    desired_min_tx: iv,
                    required_min_rx: iv,
                    detect_mult: mult,
                },
                owner: proto::SAP_NAME.into(),
            };
            let r: Result<Result<u32, String>, _> = self
                .mts
                .request(
                    self.sap,
                    dst,
                    bfd::proto::OP_SESSION_ADD,
                    &spec,
                    Duration::from_secs(10),
                )
                .await;
            tracing::info!(peer = %peer, ?r, "BFD session requested");
        }
    }

    async fn on_notification(&mut self, m: &Incoming) {
        if m.header.opcode != bfd::proto::OP_EVENT {
            return;
        }
        match m.decode::<bfd::proto::Event>() {
            Ok(bfd::proto::Event::StateChange { key, from, to, .. })
                if from == bfd::packet::State::Up
                    && to != bfd::packet::State::Up
                    && self
                        .peers
                        .get(&key.peer)
                        .is_some_and(|p| p.cfg.bfd.is_some()) =>
            {
                tracing::warn!(peer = %key.peer, "BFD down: resetting the BGP session");
                self.event(key.peer, Event::BfdDown).await;
                self.flush_fib();
            }
            Ok(bfd::proto::Event::Started { start }) if start != "stateful" => self.ask_bfd().await,
            _ => {}
        }
    }

    async fn on_request(&mut self, m: Incoming) {
        if m.needs_ack() {
            self.mts.ack(&[m.id()]);
        }
        if !m.is_request() {
            self.on_notification(&m).await;
            return;
        }
        let r = match m.header.opcode {
            proto::OP_SHOW_SUMMARY => self.mts.respond(&m, &self.summary()),
            proto::OP_SHOW_ROUTES => {
                let only = m.decode::<Option<Prefix>>().ok().flatten();
                self.mts.respond(&m, &self.routes(only))
            }
            proto::OP_CLEAR_SOFT => {
                let r = match m.decode::<(Ipv4Addr, bool)>() {
                    Ok((addr, inbound)) => self.clear_soft(addr, inbound),
                    Err(e) => Err(format!("malformed request: {e}")),
                };
                self.mts.respond(&m, &r)
            }
            op => self
                .mts
                .respond(&m, &Err::<(), String>(format!("unknown opcode {op}"))),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not answer");
        }
    }

    pub async fn run(mut self) -> Result<(), BgpError> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| BgpError::Io(e.to_string()))?;
        let hb = mts::notify::watchdog_interval().map(|d| d / 3);
        let mut heartbeat = tokio::time::interval(hb.unwrap_or(Duration::from_secs(3600)));
        let _ = mts::notify::notify("READY=1\n");
        loop {
            let deadline = self
                .peers
                .values()
                .filter_map(|p| p.fsm.deadline())
                .chain(self.peers.values().filter_map(|p| p.stale_until))
                .chain(
                    (!self.fib_eor_sent && self.fib_pending.is_empty()).then_some(self.fib_eor_at),
                )
                .min();
            tokio::select! {
                a = async {
                    match &self.listener {
                        Some(l) => l.accept().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Ok((st, std::net::SocketAddr::V4(f))) = a {
                        self.on_accept(*f.ip(), st).await;
                    }
                }
                Some(()) = self.fib_done.recv() => {
                    self.fib_inflight = self.fib_inflight.saturating_sub(1);
                    self.feed_fib();
                    self.maybe_fib_eor();
                }
                Some(ev) = self.ev_rx.recv() => {
                    self.on_conn(ev).await;
                    // Drain what else is ready, then program the FIB once.
                    while let Ok(ev) = self.ev_rx.try_recv() {
                        self.on_conn(ev).await;
                    }
                    self.flush_fib();
                    self.maybe_fib_eor();
                    self.checkpoint();
                }
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = Instant::now();
                    let due: Vec<(Ipv4Addr, Vec<Event>)> = self
                        .peers
                        .iter()
                        .map(|(a, p)| (*a, p.fsm.expired(now)))
                        .filter(|(_, e)| !e.is_empty())
                        .collect();
                    for (a, evs) in due {
                        for e in evs {
                            self.event(a, e).await;
                        }
                    }
                    let expired: Vec<Ipv4Addr> = self
                        .peers
                        .iter()
                        .filter(|(_, p)| p.stale_until.is_some_and(|t| t <= now))
                        .map(|(a, _)| *a)
                        .collect();
                    for a in expired {
                        if let Some(p) = self.peers.get_mut(&a) {
                            p.stale_until = None;
                            p.stale_restored = false;
                        }
                        let n = self.sweep(a);
                        tracing::warn!(peer = %a, swept = n, "restart time ran out: stale routes swept");
                    }
                    self.flush_fib();
                    self.maybe_fib_eor();
                }
                m = self.mts.recv() => match m {
                    Some(m) => self.on_request(m).await,
                    None => return Err(BgpError::Io("sysmgr closed the connection".into())),
                },
                _ = heartbeat.tick(), if hb.is_some() => {
                    let _ = mts::notify::notify("WATCHDOG=1\n");
                }
                _ = term.recv() => {
                    tracing::info!("SIGTERM: stopping");
                    let addrs: Vec<Ipv4Addr> = self.peers.keys().copied().collect();
                    for a in addrs {
                        self.event(a, Event::ManualStop).await;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Ok(());
                }
            }
        }
    }

    async fn on_conn(&mut self, ev: ConnEv) {
        match ev {
            ConnEv::Up(addr, id, st) => {
                let ours = self
                    .peers
                    .get(&addr)
                    .is_some_and(|p| p.connecting == Some(id) && p.conn.is_none());
                if ours {
                    self.attach(addr, id, st, true);
                    self.event(addr, Event::TcpConnectionConfirmed).await;
                }
            }
            ConnEv::ConnectFailed(addr, id) => {
                if self
                    .peers
                    .get(&addr)
                    .is_some_and(|p| p.connecting == Some(id))
                {
                    if let Some(p) = self.peers.get_mut(&addr) {
                        p.connecting = None;
                    }
                    self.event(addr, Event::TcpConnectionFails).await;
                }
            }
            ConnEv::Message(addr, id, m, raw) => {
                let Some(p) = self.peers.get(&addr) else {
                    return;
                };
                if p.conn.as_ref().is_some_and(|c| c.id == id) {
                    self.on_message(addr, m, raw).await;
                } else if p.incoming.as_ref().is_some_and(|c| c.id == id) {
                    self.on_incoming(addr, m, raw).await;
                }
            }
            ConnEv::Closed(addr, id) => {
                let Some(p) = self.peers.get_mut(&addr) else {
                    return;
                };
                if p.conn.as_ref().is_some_and(|c| c.id == id) {
                    self.event(addr, Event::TcpConnectionFails).await;
                } else if p.incoming.as_ref().is_some_and(|c| c.id == id) {
                    p.incoming = None;
                }
            }
        }
    }
}
