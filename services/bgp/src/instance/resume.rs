//! Sessions that outlive the process (issue 8, DESIGN.md §4.2–4.5).
//!
//! An Established session's socket goes to sysmgr's fd store (`FDSTORE=1`, name
//! `peer-<addr>`), with the listener (`listen`) and the in-flight page (`inflight`). After a
//! stateful restart they come back as `LISTEN_FDS`. A session whose checkpoint says Established
//! resumes in place: the bytes the previous instance applied but had not yet consumed are
//! consumed now, the messages it recorded but the kernel did not get (all or part) are
//! written now, and the FSM is Established again with a KEEPALIVE due at once. No OPEN, no
//! NOTIFICATION: the peer sees a pause. A message in flight at two consecutive crashes is
//! quarantined.

use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd};

use super::conn::StreamStart;
use super::*;
use crate::inflight::Inflight;
use crate::tcp;

/// The fd-store name of a session's socket.
pub(super) fn fd_name(peer: Ipv4Addr) -> String {
    format!("peer-{peer}")
}

/// What came back from the fd store.
#[derive(Default)]
pub(super) struct Handed {
    pub(super) listener: Option<OwnedFd>,
    pub(super) inflight: Option<OwnedFd>,
    pub(super) sessions: HashMap<Ipv4Addr, OwnedFd>,
}

pub(super) fn take_fds() -> Handed {
    let mut h = Handed::default();
    for (name, fd) in mts::notify::take_listen_fds() {
        if name == "listen" {
            h.listener = Some(fd);
        } else if name == "inflight" {
            h.inflight = Some(fd);
        } else if let Some(a) = name.strip_prefix("peer-").and_then(|a| a.parse().ok()) {
            h.sessions.insert(a, fd);
        } else {
            tracing::warn!(name, "unknown descriptor from the fd store closed");
        }
    }
    h
}

fn store(name: &str, fd: &impl AsFd) {
    let msg = format!("FDSTORE=1\nFDNAME={name}\n");
    if let Err(e) = mts::notify::notify_with_fds(&msg, &[fd.as_fd()]) {
        tracing::warn!(name, error = %e, "cannot keep a descriptor in the fd store");
    }
}

fn unstore(name: &str) {
    let _ = mts::notify::notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"));
}

/// Unix time in ms of an `Instant` in the past.
pub(super) fn unix_ms(t: Instant) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.saturating_sub(t.elapsed())).as_millis() as u64
}

fn instant_of(ms: u64) -> Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ago = now.saturating_sub(Duration::from_millis(ms));
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}

/// The listener: the one kept in the fd store, or a new one (then kept there).
pub(super) fn listener(handed: Option<OwnedFd>) -> Option<TcpListener> {
    if let Some(fd) = handed {
        // SAFETY: the fd store gave us this descriptor; it is the listener we stored.
        let std = unsafe { std::net::TcpListener::from_raw_fd(fd.into_raw_fd()) };
        if std.set_nonblocking(true).is_ok()
            && let Ok(l) = TcpListener::from_std(std)
        {
            return Some(l);
        }
        tracing::warn!("the stored listener is unusable; listening again");
    }
    match listen_179() {
        Ok(l) => {
            store("listen", &l);
            Some(l)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen on TCP 179: active sessions only");
            None
        }
    }
}

/// The in-flight page: the previous instance's, or a new one (then kept in the fd store).
pub(super) fn inflight(handed: Option<OwnedFd>) -> Option<Inflight> {
    let fresh = handed.is_none();
    match Inflight::open(handed) {
        Ok(f) => {
            if fresh {
                store("inflight", f.fd());
            }
            Some(f)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no in-flight page: poison input cannot be recognised");
            None
        }
    }
}

impl Instance {
    /// A session reached Established: its socket goes to the fd store.
    pub(super) fn store_session(&mut self, addr: Ipv4Addr) {
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        let Some(c) = &p.conn else {
            return;
        };
        if !c.hitless {
            return;
        }
        store(&fd_name(addr), &c.fd);
        p.stored = true;
        if let Some(f) = &self.inflight {
            f.reset(addr);
            p.inflight_slot = f.slot_of(addr);
        }
    }

    /// The session's connection is gone: out of the fd store (or the kernel would keep it),
    /// and its stream records with it.
    pub(super) fn unstore_session(&mut self, addr: Ipv4Addr) {
        if let Some(p) = self.peers.get_mut(&addr)
            && std::mem::take(&mut p.stored)
        {
            unstore(&fd_name(addr));
        }
        self.ckpt.forget_stream(addr);
    }

    /// Resume the sessions whose sockets came back, given what the checkpoint says of them.
    /// Returns the peers resumed; the other sockets are closed (those sessions restart with
    /// Graceful Restart).
    pub(super) fn resume_sessions(
        &mut self,
        mut socks: HashMap<Ipv4Addr, OwnedFd>,
        r: &checkpoint::Restored,
        now: Instant,
    ) -> BTreeSet<Ipv4Addr> {
        let mut resumed = BTreeSet::new();
        let addrs: Vec<Ipv4Addr> = socks.keys().copied().collect();
        for addr in addrs {
            let fd = socks.remove(&addr).expect("listed");
            match self.resume_one(addr, fd, r, now) {
                Ok(()) => {
                    resumed.insert(addr);
                }
                Err(why) => {
                    tracing::warn!(peer = %addr, why, "session not resumed: it restarts with Graceful Restart");
                    unstore(&fd_name(addr));
                    self.ckpt.forget_stream(addr);
                }
            }
        }
        resumed
    }

    fn resume_one(
        &mut self,
        addr: Ipv4Addr,
        fd: OwnedFd,
        r: &checkpoint::Restored,
        now: Instant,
    ) -> Result<(), String> {
        let ck = r.sessions.get(&addr).ok_or("no session checkpoint")?;
        if ck.state != crate::fsm::State::Established.word() {
            return Err(format!("the checkpoint says {}", ck.state));
        }
        if !self.peers.contains_key(&addr) {
            return Err("no longer a neighbour".into());
        }
        // SAFETY: a TCP socket from the fd store, ours alone from here on.
        let std = unsafe { std::net::TcpStream::from_raw_fd(fd.into_raw_fd()) };
        let k = tcp::positions(&std).map_err(|e| e.to_string())?;
        // Only ESTABLISHED: once the peer's FIN is in (CLOSE_WAIT) the session is over anyway,
        // and the FIN counts in the kernel's receive counter.
        if k.state != 1 {
            return Err(format!("TCP state {}", k.state));
        }
        let (b_rx, b_tx) = ck.kernel_base;
        let pos = tcp::Positions {
            consumed: k
                .consumed
                .checked_sub(b_rx)
                .ok_or("kernel counters below the base")?,
            written: k
                .written
                .checked_sub(b_tx)
                .ok_or("kernel counters below the base")?,
            state: k.state,
        };
        // Received: applied through `rx`, the kernel consumed through `pos.consumed`.
        let rx = r.rx.get(&addr).copied().unwrap_or(0);
        if rx < pos.consumed {
            return Err(format!(
                "consumed {} bytes but applied only {rx}",
                pos.consumed
            ));
        }
        let skip = rx - pos.consumed;
        if skip > 0 && tcp::consume(&std, skip).map_err(|e| e.to_string())? != skip {
            return Err("applied bytes no longer queued".into());
        }
        // Sent: the records from where the kernel stands on.
        let recs = r.tx.get(&addr).map(Vec::as_slice).unwrap_or(&[]);
        let mut rest: Vec<Vec<u8>> = Vec::new();
        let mut next = pos.written;
        for (start, m) in recs {
            let end = start + m.len() as u64;
            if end <= pos.written {
                continue;
            }
            if *start > next {
                return Err(format!(
                    "stream gap: kernel at {next}, next record at {start}"
                ));
            }
            rest.push(m[(next - start) as usize..].to_vec());
            next = end;
        }
        let missing: usize = rest.iter().map(Vec::len).sum();
        std.set_nonblocking(true).map_err(|e| e.to_string())?;
        let st = TcpStream::from_std(std).map_err(|e| e.to_string())?;
        let id = self.next_conn;
        self.next_conn += 1;
        let start = StreamStart {
            rx,
            tx: pos.written,
            base: Some(ck.kernel_base),
        };
        let mut c = self
            .open_conn(addr, id, st, false, start)
            .map_err(|e| e.to_string())?;
        if !c.hitless {
            return Err("SO_PEEK_OFF unsupported".into());
        }
        for m in rest {
            let _ = c.tx.send(m);
        }
        c.tx_next = next;
        tracing::info!(
            peer = %addr,
            skipped = skip,
            rewritten = missing,
            rx,
            tx = next,
            "session resumed in place (socket from the fd store)"
        );
        let p = self.peers.get_mut(&addr).expect("checked");
        let passive = p.cfg.passive;
        p.fsm
            .resume(now, passive, ck.hold, instant_of(ck.up_since_ms), ck.flaps);
        p.local_addr = ck.local_addr.or(c.local);
        p.conn = Some(c);
        p.stored = true;
        p.four_octet = ck.four_octet;
        p.enhanced_refresh = ck.enhanced_refresh;
        p.ipv6 = ck.ipv6;
        p.router_id = ck.router_id;
        p.gr = ck.gr;
        p.eor4 = ck.eor4;
        p.eor6 = ck.eor6;
        p.eor = ck.eor4 && (ck.eor6 || !ck.ipv6);
        p.send_restarted = false;
        p.changed_at = now;
        if let Some(rid) = ck.router_id
            && let Some(i) = self.rib.peers.get_mut(&addr)
        {
            i.router_id = rid;
        }
        if let Some(f) = &self.inflight {
            p.inflight_slot = f.slot_of(addr);
        }
        // The first thing the peer hears from us again.
        self.send(addr, wire::keepalive());
        let p = self.peers.get_mut(&addr).expect("checked");
        // What the peer has from us: the Adj-RIB-Out log as we wrote it.
        let four = ck.four_octet;
        for raw in r.sent.get(&addr).map(Vec::as_slice).unwrap_or(&[]) {
            let Ok(Msg::Update(u)) = wire::decode(raw) else {
                continue;
            };
            let Ok(routes) = wire::routes(&u, four) else {
                continue;
            };
            for x in routes.withdraw {
                p.adj_out.remove(&x);
            }
            for (x, a) in routes.announce {
                let o = export::OutAttrs {
                    origin: a.origin,
                    as_path: a.as_path.clone(),
                    next_hop: a.next_hop,
                    local_pref: a.local_pref,
                };
                p.adj_out.insert(x, Arc::new(o));
            }
        }
        Ok(())
    }

    /// Poison from the in-flight page: a peer's message in flight at two consecutive crashes
    /// is skipped when it comes round again.
    pub(super) fn mark_poison(&mut self) {
        let Some(f) = &self.inflight else {
            return;
        };
        for s in f.after_crash() {
            tracing::warn!(peer = %s.peer, offset = s.offset, crashes = s.crashes, "a message was being applied when the previous instance died");
            if s.crashes >= 2
                && let Some(p) = self.peers.get_mut(&s.peer)
            {
                p.quarantine = Some(s.offset);
            }
        }
    }

    /// Skip the poison message at `offset`: its prefixes are withdrawn (treat-as-withdraw),
    /// its bytes logged, the process log told.
    pub(super) fn quarantine(
        &mut self,
        addr: Ipv4Addr,
        m: Result<Msg, wire::Malformed>,
        raw: Vec<u8>,
        offset: u64,
    ) {
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut prefixes = Vec::new();
        let four = self.peers.get(&addr).is_some_and(|p| p.four_octet);
        if let Ok(Msg::Update(u)) = &m
            && let Ok(r) = wire::routes(u, four)
        {
            prefixes.extend(r.withdraw);
            prefixes.extend(r.announce.into_iter().map(|(p, _)| p));
        }
        tracing::error!(
            peer = %addr,
            offset,
            bytes = raw.len(),
            prefixes = prefixes.len(),
            message = hex,
            "%BGP-3-POISON: UPDATE in flight at two consecutive crashes quarantined; its prefixes treated as withdrawn"
        );
        let note = format!(
            "bgp: UPDATE from {addr} (stream offset {offset}, {} bytes) was being applied at two consecutive crashes; quarantined, {} prefixes treated as withdrawn",
            raw.len(),
            prefixes.len()
        );
        let _ = mts::notify::notify(&format!("X_SYSMGR_QUARANTINE={note}\n"));
        if let Some(p) = self.peers.get_mut(&addr) {
            p.quarantine = None;
        }
        if let Some(f) = &self.inflight {
            f.forgive(addr);
        }
        let gone = wire::Routes {
            announce: Vec::new(),
            withdraw: prefixes.clone(),
            end_of_rib: false,
            end_of_rib_v6: false,
        };
        self.apply_routes(addr, gone);
        for w in export::withdrawals(&prefixes) {
            self.ckpt.append(Side::In, addr, &w);
        }
    }
}
