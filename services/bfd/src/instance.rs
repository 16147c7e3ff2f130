//! The bfd instance: one owner of every session, fed by one `select!`.
//!
//! ```text
//!   UDP 3784 (rx socket) ──┐
//!   session deadlines ─────┤            ┌── tx socket per session (TTL 255) ──▶ peers
//!   MTS (requests, shows) ─┼──▶ Instance ┼── PSS checkpoints (before the packets that show them)
//!   heartbeat tick ────────┤            └── MTS notifications (session up/down)
//!   SIGTERM ───────────────┘
//! ```
//!
//! Start kinds (`SYSMGR_START`): `stateful` restores every session from PSS and takes its
//! sockets back from the fd store, so the first packet of the new instance carries the same
//! discriminators and state; `fresh`, `stateless` and `switchover` start every session in Down.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mts::client::{Client, Incoming};
use pss::client::Pss;
use pss::proto::{Durability, Scope};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::BfdError;
use crate::fsm::{Action, Session, Snapshot};
use crate::network;
use crate::packet::ControlPacket;
use crate::proto::{self, Event, Neighbor, SessionKey, SessionSpec};

/// PSS key prefix of the session checkpoints (private scope).
const KEY_PREFIX: &str = "session/";

/// What is checkpointed per session.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    spec: SessionSpec,
    snap: Snapshot,
}

struct Sess {
    spec: SessionSpec,
    fsm: Session,
    /// Sent on directly (non-blocking `sendto`): a tokio socket refuses to write until the
    /// reactor has reported it writable, which would drop the first packet after a restart.
    tx: std::net::UdpSocket,
    source_port: u16,
    ifindex: u32,
}

pub struct Options {
    pub config: Option<PathBuf>,
}

pub struct Instance {
    mts: Client,
    sap: u32,
    start: String,
    sessions: BTreeMap<SessionKey, Sess>,
    by_disc: HashMap<u32, SessionKey>,
    rx: Option<UdpSocket>,
    /// Descriptors handed back by sysmgr, by fd-store name, until a session claims them.
    stored_fds: HashMap<String, OwnedFd>,
    /// Received packets dropped, by reason (for the log and `show`).
    dropped: BTreeMap<String, u64>,
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: the buffer is valid for 8 bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        t ^ (u64::from(std::process::id()) << 32)
    }
}

fn fd_name(key: &SessionKey) -> String {
    // ':' separates LISTEN_FDNAMES, so it must not appear in a name.
    format!("tx-{}", key.to_string().replace(':', "_"))
}

fn store_fd(name: &str, fd: &impl AsFd) {
    let msg = format!("FDSTORE=1\nFDNAME={name}\n");
    if let Err(e) = mts::notify::notify_with_fds(&msg, &[fd.as_fd()]) {
        tracing::warn!(name, error = %e, "could not hand a socket to the fd store");
    }
}

impl Instance {
    /// Connect to MTS, bind the bfd SAP, and restore or create the sessions.
    pub async fn start(opts: &Options) -> Result<Instance, BfdError> {
        let start = std::env::var("SYSMGR_START").unwrap_or_else(|_| "fresh".into());
        let config = match &opts.config {
            Some(p) => crate::config::load(p)?,
            None => Vec::new(),
        };
        let mts = Client::connect_from_env().await?;
        let sap = mts.bind(proto::SAP_NAME).await?;
        let stored_fds: HashMap<String, OwnedFd> =
            mts::notify::take_listen_fds().into_iter().collect();
        let mut me = Instance {
            mts,
            sap,
            start,
            sessions: BTreeMap::new(),
            by_disc: HashMap::new(),
            rx: None,
            stored_fds,
            dropped: BTreeMap::new(),
        };
        let now = Instant::now();
        let stored = me.load_checkpoints().await?;
        if me.start == "stateful" {
            for st in stored {
                let keep = st.spec.owner != "config" || config.iter().any(|c| c.key == st.spec.key);
                if keep {
                    let fsm = Session::restore(st.snap, now, random_u64());
                    me.add(st.spec, fsm)?;
                } else {
                    me.forget(&st.spec.key).await;
                }
            }
        } else {
            for st in stored {
                let _ = Pss::new(&me.mts)
                    .delete(
                        Scope::Private,
                        Self::pss_key(&st.spec.key),
                        Durability::Fast,
                    )
                    .await;
            }
        }
        for spec in config {
            me.configure(now, spec).await?;
        }
        // Every restored session has its first packet due now: send before anything else.
        me.on_timers(now).await;
        tracing::info!(
            start = %me.start,
            sessions = me.sessions.len(),
            "bfd running"
        );
        let _ = me.mts.publish(
            me.sap,
            proto::OP_EVENT,
            &Event::Started {
                start: me.start.clone(),
            },
        );
        Ok(me)
    }

    fn pss_key(key: &SessionKey) -> String {
        format!("{KEY_PREFIX}{key}")
    }

    async fn load_checkpoints(&self) -> Result<Vec<Stored>, BfdError> {
        let rows = Pss::new(&self.mts)
            .scan(None, Scope::Private, KEY_PREFIX, u32::MAX)
            .await?;
        let mut out = Vec::new();
        for (k, v) in rows {
            match pss::client::decode::<Stored>(&v) {
                Ok(s) => out.push(s),
                Err(e) => tracing::warn!(
                    key = %String::from_utf8_lossy(&k),
                    error = %e,
                    "unreadable session checkpoint skipped"
                ),
            }
        }
        Ok(out)
    }

    fn ensure_rx(&mut self) -> Result<(), BfdError> {
        if self.rx.is_some() {
            return Ok(());
        }
        let std = match self.stored_fds.remove("rx") {
            Some(fd) => network::udp_from_fd(fd)?,
            None => {
                let s = network::rx_socket()?;
                store_fd("rx", &s);
                s
            }
        };
        self.rx = Some(UdpSocket::from_std(std).map_err(|source| BfdError::Socket {
            step: "register rx socket",
            source,
        })?);
        Ok(())
    }

    /// Install a session (new or restored), with its socket from the fd store when there is one.
    fn add(&mut self, spec: SessionSpec, fsm: Session) -> Result<(), BfdError> {
        self.ensure_rx()?;
        let name = fd_name(&spec.key);
        let std = match self.stored_fds.remove(&name) {
            Some(fd) => network::udp_from_fd(fd)?,
            None => {
                let s =
                    network::tx_socket(spec.local, spec.key.interface.as_deref(), random_u64())?;
                store_fd(&name, &s);
                s
            }
        };
        let source_port = std.local_addr().map(|a| a.port()).unwrap_or(0);
        let tx = std;
        let ifindex = spec
            .key
            .interface
            .as_deref()
            .map(network::ifindex)
            .unwrap_or(0);
        tracing::info!(session = %spec.key, local_disc = fsm.local_disc(), source_port, state = fsm.state().word(), "session installed");
        self.by_disc.insert(fsm.local_disc(), spec.key.clone());
        self.sessions.insert(
            spec.key.clone(),
            Sess {
                spec,
                fsm,
                tx,
                source_port,
                ifindex,
            },
        );
        Ok(())
    }

    fn new_disc(&self) -> u32 {
        loop {
            let d = random_u64() as u32;
            if d != 0 && !self.by_disc.contains_key(&d) {
                return d;
            }
        }
    }

    /// Create a session, or apply new timers to an existing one.
    async fn configure(&mut self, now: Instant, spec: SessionSpec) -> Result<u32, BfdError> {
        if let Some(s) = self.sessions.get_mut(&spec.key) {
            let actions = s.fsm.set_timers(now, spec.timers);
            s.spec.timers = spec.timers;
            let disc = s.fsm.local_disc();
            let key = spec.key.clone();
            self.apply(&key, actions).await;
            return Ok(disc);
        }
        let fsm = Session::new(self.new_disc(), spec.timers, now, random_u64());
        let disc = fsm.local_disc();
        let key = spec.key.clone();
        self.add(spec, fsm)?;
        self.checkpoint(&key).await;
        Ok(disc)
    }

    async fn forget(&mut self, key: &SessionKey) {
        if let Some(s) = self.sessions.remove(key) {
            self.by_disc.remove(&s.fsm.local_disc());
        }
        let _ = mts::notify::notify(&format!("FDSTOREREMOVE=1\nFDNAME={}\n", fd_name(key)));
        self.stored_fds.remove(&fd_name(key));
        let _ = Pss::new(&self.mts)
            .delete(Scope::Private, Self::pss_key(key), Durability::Fast)
            .await;
    }

    async fn checkpoint(&self, key: &SessionKey) {
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        let st = Stored {
            spec: s.spec.clone(),
            snap: s.fsm.snapshot(),
        };
        if let Err(e) = Pss::new(&self.mts)
            .put(Scope::Private, Self::pss_key(key), &st, Durability::Fast)
            .await
        {
            tracing::warn!(session = %key, error = %e, "checkpoint failed");
        }
    }

    /// Carry out a session's actions: the checkpoint first, then packets and events.
    async fn apply(&mut self, key: &SessionKey, actions: Vec<Action>) {
        if actions.contains(&Action::Checkpoint) {
            self.checkpoint(key).await;
        }
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        for a in actions {
            match a {
                Action::Checkpoint => {}
                Action::Send(p) => {
                    let to = SocketAddrV4::new(key.peer, network::PORT);
                    if let Err(e) = s.tx.send_to(&p.encode(), to) {
                        tracing::debug!(session = %key, error = %e, "send failed");
                    }
                }
                Action::StateChange { from, to, diag } => {
                    tracing::info!(
                        session = %key,
                        from = from.word(),
                        to = to.word(),
                        diag = diag.word(),
                        "%BFD-5-SESSION_STATE_CHANGE"
                    );
                    let ev = Event::StateChange {
                        key: key.clone(),
                        local_disc: s.fsm.local_disc(),
                        from,
                        to,
                        diag,
                    };
                    if let Err(e) = self.mts.publish(self.sap, proto::OP_EVENT, &ev) {
                        tracing::warn!(error = %e, "could not publish a state change");
                    }
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter_map(|s| s.fsm.deadline())
            .min()
    }

    async fn on_timers(&mut self, now: Instant) {
        let due: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.fsm.deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            if let Some(s) = self.sessions.get_mut(&k) {
                let a = s.fsm.on_timer(now);
                self.apply(&k, a).await;
            }
        }
    }

    fn drop_packet(&mut self, why: &str) {
        *self.dropped.entry(why.to_string()).or_default() += 1;
    }

    /// Drain the rx socket.
    async fn on_readable(&mut self) {
        let mut buf = [0u8; 512];
        loop {
            let Some(rx) = &self.rx else { return };
            let fd = rx.as_raw_fd();
            let got = rx.try_io(Interest::READABLE, || network::recv(fd, &mut buf));
            let r = match got {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "recvmsg failed");
                    return;
                }
            };
            if r.ttl != Some(network::TTL as u8) {
                // RFC 5881 §5 (GTSM): single-hop packets must arrive with TTL 255.
                self.drop_packet("ttl");
                continue;
            }
            let p = match ControlPacket::decode(&buf[..r.len]) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(from = %r.from, error = %e, "packet discarded");
                    self.drop_packet("malformed");
                    continue;
                }
            };
            let Some(key) = self.select(&p, *r.from.ip(), r.ifindex) else {
                self.drop_packet("no session");
                continue;
            };
            let now = Instant::now();
            if let Some(s) = self.sessions.get_mut(&key) {
                let a = s.fsm.on_packet(now, &p);
                self.apply(&key, a).await;
            }
        }
    }

    /// §6.8.6: by Your Discriminator when set, else by source address and interface.
    fn select(&self, p: &ControlPacket, from: Ipv4Addr, ifindex: u32) -> Option<SessionKey> {
        if p.your_disc != 0 {
            let k = self.by_disc.get(&p.your_disc)?;
            // A discriminator is only valid from the peer it belongs to.
            return (k.peer == from).then(|| k.clone());
        }
        self.sessions
            .iter()
            .find(|(k, s)| k.peer == from && (s.ifindex == 0 || s.ifindex == ifindex))
            .map(|(k, _)| k.clone())
    }

    fn neighbors(&self) -> Vec<Neighbor> {
        self.sessions
            .iter()
            .map(|(k, s)| {
                let n = s.fsm.snapshot();
                Neighbor {
                    peer: k.peer,
                    interface: k.interface.clone(),
                    local: s.spec.local,
                    source_port: s.source_port,
                    owner: s.spec.owner.clone(),
                    local_disc: n.local_disc,
                    remote_disc: n.remote_disc,
                    state: n.state,
                    remote_state: n.remote_state,
                    diag: n.diag,
                    since_ms: n.last_change_ms,
                    flaps: n.flaps,
                    timers: n.timers,
                    tx_interval_us: s.fsm.tx_interval().as_micros() as u64,
                    detect_time_us: s.fsm.detection_time().as_micros() as u64,
                    remote_min_rx_us: n.remote_min_rx,
                    remote_desired_min_tx_us: n.remote_desired_min_tx,
                    remote_detect_mult: n.remote_detect_mult,
                    poll: n.poll.is_some(),
                    counters: s.fsm.counters,
                }
            })
            .collect()
    }

    async fn on_message(&mut self, m: Incoming) {
        if m.needs_ack() {
            self.mts.ack(&[m.id()]);
        }
        if !m.is_request() {
            return;
        }
        let now = Instant::now();
        let sent = match m.header.opcode {
            proto::OP_SHOW => self.mts.respond(&m, &self.neighbors()),
            proto::OP_SESSION_ADD => {
                let r = match m.decode::<SessionSpec>() {
                    Ok(spec) => self.configure(now, spec).await.map_err(|e| e.to_string()),
                    Err(e) => Err(format!("bad session request: {e}")),
                };
                self.mts.respond(&m, &r)
            }
            proto::OP_SESSION_DEL => {
                let r = match m.decode::<SessionKey>() {
                    Ok(k) if self.sessions.contains_key(&k) => {
                        self.forget(&k).await;
                        Ok(())
                    }
                    Ok(k) => Err(format!("no session {k}")),
                    Err(e) => Err(format!("bad session key: {e}")),
                };
                self.mts.respond(&m, &r)
            }
            op => self
                .mts
                .respond(&m, &Err::<(), String>(format!("unknown opcode {op}"))),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "could not answer a request");
        }
    }

    /// Serve until SIGTERM or until sysmgr goes away.
    pub async fn run(mut self) -> Result<(), BfdError> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|source| BfdError::Socket {
                step: "SIGTERM handler",
                source,
            })?;
        let hb = mts::notify::watchdog_interval().map(|d| d / 3);
        let mut heartbeat = tokio::time::interval(hb.unwrap_or(Duration::from_secs(3600)));
        let _ = mts::notify::notify("READY=1\nSTATUS=sessions running\n");
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                r = async {
                    match &self.rx {
                        Some(rx) => rx.readable().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if r.is_ok() {
                        self.on_readable().await;
                    }
                }
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.on_timers(Instant::now()).await;
                }
                m = self.mts.recv() => match m {
                    Some(m) => self.on_message(m).await,
                    None => return Err(BfdError::Mts(mts::MtsError::Remote("sysmgr closed the connection".into()))),
                },
                _ = heartbeat.tick(), if hb.is_some() => {
                    let _ = mts::notify::notify("WATCHDOG=1\n");
                }
                _ = term.recv() => {
                    tracing::info!("SIGTERM: stopping");
                    return Ok(());
                }
            }
        }
    }
}
