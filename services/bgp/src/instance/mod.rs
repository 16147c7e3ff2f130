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
//! Here: start (and a stateful restart's RIBs from PSS), the loop, the FSM actions, UPDATEs into
//! the RIB, checkpoints. `conn`: connections and collisions; `fibio`: best paths to the FIB;
//! `show`: the SAP, route refresh, the Adj-RIB-Out.

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
use crate::checkpoint::{self, After, Ckpt, SessionCk, Side};
use crate::config::{Config, Neighbor};
use crate::export::{self, OutAttrs, Target};
use crate::fsm::{Action, Event, Fsm};
use crate::proto::{self, NeighborRow, PathRow, RouteRow, Summary};
use crate::rib::{PeerInfo, Rib};
use crate::wire::{self, Msg};

mod conn;
mod fibio;
mod resume;
mod show;

use conn::{Conn, ConnEv, listen_179};
use fibio::{Iface, ToFib, fib_writer, local_ifaces};

/// Test-only fault injection (`--features fault-injection`).
#[cfg(feature = "fault-injection")]
mod fault {
    /// Abort, as a crash would, on an UPDATE carrying the community in `BGP_FAULT_COMMUNITY`.
    pub(super) fn check(r: &crate::wire::Routes) {
        let Some(c) = std::env::var("BGP_FAULT_COMMUNITY").ok().and_then(|v| {
            let (a, b) = v.split_once(':')?;
            Some((a.parse::<u32>().ok()? << 16) | b.parse::<u32>().ok()?)
        }) else {
            return;
        };
        if r.announce.iter().any(|(_, a)| a.communities.contains(&c)) {
            eprintln!("fault injection: community in BGP_FAULT_COMMUNITY seen; aborting");
            std::process::abort();
        }
    }
}

/// How long a peer's routes stay stale after its BoRR without an EoRR (RFC 7313 §4).
const REFRESH_STALE: Duration = Duration::from_secs(300);

/// How long restored routes stay stale without Graceful Restart configured, seconds.
const DEFAULT_STALE_SECS: u16 = 120;

pub struct Options {
    pub config: PathBuf,
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
    /// The connection is in sysmgr's fd store.
    stored: bool,
    /// Its slot in the in-flight page.
    inflight_slot: Option<usize>,
    /// The stream offset of a poison message to skip (in flight at two consecutive crashes).
    quarantine: Option<u64>,
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
    fib_pending: fibio::FibQueue,
    fib_inflight: usize,
    peers: HashMap<Ipv4Addr, Peer>,
    rib: Rib,
    listener: Option<TcpListener>,
    ev_tx: mpsc::UnboundedSender<ConnEv>,
    ev_rx: mpsc::UnboundedReceiver<ConnEv>,
    next_conn: u64,
    /// This batch's changes of the Loc-RIB, in order, for the FIB and the neighbours (a
    /// prefix that changed twice is in twice: the later one wins).
    dirty: Vec<crate::rib::Change>,
    /// This batch's checkpoint operations, and where they go ([`checkpoint::writer`]).
    ckpt: Ckpt,
    /// What waits for this batch's checkpoint: messages to write, bytes to consume.
    after: After,
    ckpt_tx: mpsc::UnboundedSender<(Vec<pss::proto::Op>, After)>,
    /// Which message is being applied, in memory that outlives the process.
    inflight: Option<crate::inflight::Inflight>,
    fib_eor_sent: bool,
    fib_eor_at: Instant,
    /// Next-hop → interface (the connected subnet that contains it).
    ifaces: Vec<Iface>,
}

/// What a peer's session negotiated, for its checkpoint.
fn session_ck(p: &Peer) -> SessionCk {
    SessionCk {
        state: p.fsm.state.word().to_string(),
        router_id: p.router_id,
        four_octet: p.four_octet,
        local_addr: p.local_addr,
        gr: p.gr,
        flaps: p.fsm.flaps,
        hold: p.fsm.negotiated_hold,
        enhanced_refresh: p.enhanced_refresh,
        ipv6: p.ipv6,
        eor4: p.eor4,
        eor6: p.eor6,
        up_since_ms: p.fsm.up_since.map_or(0, resume::unix_ms),
        kernel_base: p.conn.as_ref().map_or((0, 0), |c| c.base),
    }
}

impl Instance {
    pub async fn start(opts: &Options) -> Result<Instance, BgpError> {
        let t0 = Instant::now();
        let cfg = crate::config::load(&opts.config)?;
        let mts = Client::connect_from_env().await?;
        let sap = mts.bind(proto::SAP_NAME).await?;
        if cfg.neighbors.iter().any(|n| n.bfd.is_some()) {
            mts.subscribe(sap, bfd::proto::OP_EVENT).await?;
        }
        let fib_sap = mts.lookup(fp::SAP_NAME).await.ok();
        // What the fd store kept (a stateful restart): the listener, the sessions, the
        // in-flight page.
        let handed = resume::take_fds();
        // Listen only when there is someone to listen for.
        let listener = if cfg.neighbors.is_empty() {
            None
        } else {
            resume::listener(handed.listener)
        };
        let inflight = resume::inflight(handed.inflight);
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
        let t_restore = t0.elapsed();
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
                    stored: false,
                    inflight_slot: None,
                    quarantine: None,
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
            fib_pending: fibio::FibQueue::default(),
            fib_inflight: 0,
            peers,
            rib,
            listener,
            ev_tx,
            ev_rx,
            next_conn: 1,
            dirty: Vec::new(),
            ckpt: Ckpt::default(),
            after: After::default(),
            ckpt_tx,
            inflight,
            fib_eor_sent: false,
            fib_eor_at: now + Duration::from_secs(60),
            ifaces: local_ifaces(),
        };
        if let Some(r) = restored {
            me.ckpt.adopt(&r);
            let resumed = me.resume_sessions(handed.sessions, &r, now);
            // Their KEEPALIVEs go out before the RIBs are rebuilt.
            me.checkpoint();
            let gone: BTreeSet<Ipv4Addr> = r.tx.keys().chain(r.rx.keys()).copied().collect();
            for a in gone.difference(&resumed) {
                me.ckpt.forget_stream(*a);
            }
            let t = Instant::now();
            me.adopt(r, &resumed, now);
            tracing::debug!(ms = t.elapsed().as_millis() as u64, "RIBs rebuilt");
            me.mark_poison();
        } else {
            for a in handed.sessions.keys() {
                tracing::warn!(peer = %a, "a stored session without a checkpoint is closed");
            }
        }
        // Our routes in the FIB from a previous life are stale until we have re-learnt them:
        // the first request of the FIB writer, ahead of every route (it keeps the order), so
        // the start does not wait for the FIB to mark them.
        if me.fib_sap.is_some() {
            me.fib_inflight += 1;
            let _ = me.fib_tx.send(ToFib::ProducerStart);
        }
        me.ask_bfd().await;
        let addrs: Vec<Ipv4Addr> = me.peers.keys().copied().collect();
        for a in addrs {
            if me.peers[&a].fsm.state == crate::fsm::State::Established {
                // Resumed: the rebuilt Loc-RIB is all dirty, so the batch's end compares every
                // prefix with what the peer has (normally nothing differs: the checkpoint held
                // both); our own networks are not in it.
                me.advertise_networks(a);
                continue;
            }
            let passive = me.peers[&a].cfg.passive;
            me.event(a, Event::ManualStart { passive }).await;
        }
        me.end_batch();
        tracing::info!(
            ms = t0.elapsed().as_millis() as u64,
            checkpoint_read_ms = t_restore.as_millis() as u64,
            loc_rib = me.rib.loc_len(),
            "started"
        );
        Ok(me)
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
            let ck = session_ck(p);
            self.ckpt.session(addr, &ck);
        }
        for a in actions {
            match a {
                Action::Connect => self.connect(addr),
                Action::Disconnect => {
                    self.unstore_session(addr);
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
                    self.store_session(addr);
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
                        if self.dirty.is_empty() {
                            self.dirty = gone; // a whole table: not copied
                        } else {
                            self.dirty.extend(gone);
                        }
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
                            if let Some(p) = self.peers.get(&addr) {
                                let ck = session_ck(p);
                                self.ckpt.session(addr, &ck);
                            }
                            let family = if r.end_of_rib { "ipv4" } else { "ipv6" };
                            tracing::info!(peer = %addr, family, all, loc_rib = self.rib.loc_len(), "End-of-RIB received");
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

    /// Apply the routes of one UPDATE from `addr` through its import list.
    fn apply_routes(&mut self, addr: Ipv4Addr, r: wire::Routes) {
        #[cfg(feature = "fault-injection")]
        fault::check(&r);
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
        let (gone, changed) = self.rib.sweep_stale(addr);
        for m in export::withdrawals(&gone) {
            self.ckpt.append(Side::In, addr, &m);
        }
        self.dirty.extend(changed);
        gone.len()
    }

    /// Hand this batch's checkpoint to the writer, compacting the logs that outgrew their
    /// tables.
    fn checkpoint(&mut self) {
        let logs: Vec<(Side, Ipv4Addr)> = self.ckpt.logs().collect();
        for (side, peer) in logs {
            match side {
                Side::In => {
                    // No Adj-RIB-In (yet): its log is all there is.
                    let Some(live) = self.rib.received(&peer) else {
                        continue;
                    };
                    if self.ckpt.wants_compaction(side, peer, live) {
                        tracing::debug!(%peer, prefixes = live, "checkpoint: Adj-RIB-In log compacted into a snapshot");
                        self.ckpt.snapshot_in(peer, self.rib.adj_in(peer));
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
        // Received bytes: applied through rx_done, consumed once that is checkpointed.
        // Sent: records the kernel has all of go.
        for (addr, p) in self.peers.iter_mut() {
            if let Some(c) = &mut p.conn {
                if c.rx_done > c.rx_ckpt {
                    if p.stored {
                        self.ckpt.rx(*addr, c.rx_done);
                    }
                    c.rx_ckpt = c.rx_done;
                    self.after.consumes.push((c.consume_tx.clone(), c.rx_done));
                }
                self.ckpt.tx_trim(*addr, c.written());
            }
            if let Some(c) = &mut p.incoming
                && c.rx_done > c.rx_ckpt
            {
                c.rx_ckpt = c.rx_done;
                self.after.consumes.push((c.consume_tx.clone(), c.rx_done));
            }
        }
        let ops = self.ckpt.take();
        let after = std::mem::take(&mut self.after);
        if !ops.is_empty() || !after.is_empty() {
            let _ = self.ckpt_tx.send((ops, after));
        }
    }

    /// The end of every turn of the loop: best paths to the FIB and the neighbours, then the
    /// checkpoint, after which the turn's messages go out and its received bytes are consumed.
    fn end_batch(&mut self) {
        self.flush_fib();
        self.maybe_fib_eor();
        self.checkpoint();
    }

    /// Take over a previous instance's RIBs (stateful restart): each peer's Adj-RIB-In is
    /// rebuilt from its snapshot and log and stays, stale, until the peer has re-sent it
    /// (End-of-RIB) or the restart time runs out; the Loc-RIB is selected from it at once, so
    /// the FIB keeps forwarding. Sessions that did not survive lose their Adj-RIBs-Out;
    /// `resumed` ones keep everything, current.
    fn adopt(&mut self, r: checkpoint::Restored, resumed: &BTreeSet<Ipv4Addr>, now: Instant) {
        let keep = Duration::from_secs(u64::from(
            self.cfg.graceful_restart.unwrap_or(DEFAULT_STALE_SECS),
        ));
        let mut peers: BTreeSet<Ipv4Addr> = r.snapshots.keys().copied().collect();
        peers.extend(r.received.keys());
        let mut snapshots = r.snapshots;
        let mut received = r.received;
        for peer in peers {
            if !resumed.contains(&peer) {
                self.ckpt.forget(Side::Out, peer);
            }
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
            if resumed.contains(&peer) {
                continue; // the session is still up: its routes are current
            }
            self.rib.peer_stale(peer);
            if let Some(p) = self.peers.get_mut(&peer) {
                p.stale_until = Some(now + keep);
                p.stale_restored = true;
            }
        }
        let n = self.rib.received_total();
        tracing::info!(
            prefixes = n,
            loc_rib = self.rib.loc_len(),
            resumed = resumed.len(),
            "checkpoint: RIBs restored (those of sessions not resumed stale until their peers re-send them)"
        );
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
                }
                Some(ev) = self.ev_rx.recv() => {
                    self.on_conn(ev).await;
                    // Drain what else is ready, then program the FIB once.
                    while let Ok(ev) = self.ev_rx.try_recv() {
                        self.on_conn(ev).await;
                    }
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
                    self.end_batch();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Ok(());
                }
            }
            self.end_batch();
        }
    }
}
