//! Connections: the TCP 179 listener, connect attempts, a reader and a writer task per
//! connection, connection collision (RFC 4271 §6.8).
//!
//! The reader never consumes: it peeks (`SO_PEEK_OFF` moves on by itself) and hands complete
//! messages with their stream offsets to the owner, which applies them, checkpoints how far it
//! got, and only then, through [`checkpoint::After`], tells the reader to consume. The writer
//! counts what the kernel has taken, so the owner can drop the records of written messages.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::tcp;

pub(super) enum ConnEv {
    Up(Ipv4Addr, u64, TcpStream),
    ConnectFailed(Ipv4Addr, u64),
    /// A message, its bytes as received (UPDATEs only, for the checkpoint log), and the
    /// stream offsets where it starts and ends.
    Message(
        Ipv4Addr,
        u64,
        Result<Msg, wire::Malformed>,
        Vec<u8>,
        u64,
        u64,
    ),
    Closed(Ipv4Addr, u64),
}

pub(super) struct Conn {
    pub(super) id: u64,
    /// We opened it (else the peer did): connection collision keeps the one the higher BGP
    /// Identifier opened.
    pub(super) outgoing: bool,
    /// Our address on it (next hop self).
    pub(super) local: Option<Ipv4Addr>,
    pub(super) tx: mpsc::UnboundedSender<Vec<u8>>,
    reader: tokio::task::JoinHandle<()>,
    /// The socket (a duplicate, for the fd store and the kernel's counters).
    pub(super) fd: OwnedFd,
    /// Consume through this stream offset (to the reader).
    pub(super) consume_tx: mpsc::UnboundedSender<u64>,
    /// Stream offset through which the kernel has every byte we queued (from the writer).
    pub(super) written: Arc<AtomicU64>,
    /// Stream offset of the next byte we queue.
    pub(super) tx_next: u64,
    /// Received messages applied through this offset, and through this one checkpointed.
    pub(super) rx_done: u64,
    pub(super) rx_ckpt: u64,
    /// Peeking works (`SO_PEEK_OFF`): the session can outlive the process.
    pub(super) hitless: bool,
    /// The kernel's (consumed, written) counters at our stream offset 0.
    pub(super) base: (u64, u64),
}

impl Conn {
    pub(super) fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }
}

impl Drop for Conn {
    /// The reader stops at once; the writer finishes what was queued (a NOTIFICATION, say)
    /// and closes the connection when its queue closes.
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The receive buffer of every BGP connection (accepted ones inherit the listener's). Set
/// before the handshake so the window scale covers it: a sender feeding a full table does not
/// wait on our window while the owner loop is busy with earlier batches.
pub(super) const RECV_BUFFER: u32 = 4 << 20;

pub(super) fn listen_179() -> std::io::Result<TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.set_recv_buffer_size(RECV_BUFFER)?;
    s.bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 179).into())?;
    s.listen(64)
}

/// Where a connection's streams start: a new one at 0, a resumed one where the previous
/// instance left them.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct StreamStart {
    pub(super) rx: u64,
    pub(super) tx: u64,
    /// The kernel's counters (consumed, written) at our offset 0; None: a new connection,
    /// read them now.
    pub(super) base: Option<(u64, u64)>,
}

/// Read complete messages off a connection without consuming them (peek), and consume when the
/// owner says their effect is checkpointed. Without `peek` (no `SO_PEEK_OFF`), plain reads.
pub(super) fn reader(
    peer: Ipv4Addr,
    id: u64,
    mut rd: tokio::net::tcp::OwnedReadHalf,
    tx: mpsc::UnboundedSender<ConnEv>,
    mut consume_rx: mpsc::UnboundedReceiver<u64>,
    start: u64,
    peek: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::with_capacity(65536);
        let mut chunk = vec![0u8; 65536];
        // Stream offset of buf[0], and through where the kernel's copy was consumed.
        let mut base = start;
        let mut consumed = start;
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
                        let from = base + at as u64;
                        at += n;
                        let ev = ConnEv::Message(peer, id, m, raw, from, from + n as u64);
                        if tx.send(ev).is_err() {
                            return;
                        }
                    }
                    Ok(_) => break,
                    Err(e) => {
                        let from = base + at as u64;
                        let ev = ConnEv::Message(peer, id, Err(e), Vec::new(), from, from);
                        let _ = tx.send(ev);
                        return;
                    }
                }
            }
            buf.drain(..at);
            base += at as u64;
            tokio::select! {
                biased;
                Some(upto) = consume_rx.recv() => {
                    if peek && upto > consumed {
                        match tcp::consume(rd.as_ref(), upto - consumed) {
                            Ok(n) => consumed += n,
                            Err(e) => {
                                tracing::warn!(peer = %peer, error = %e, "consume failed");
                                let _ = tx.send(ConnEv::Closed(peer, id));
                                return;
                            }
                        }
                    }
                }
                r = async {
                    if peek { rd.peek(&mut chunk).await } else { rd.read(&mut chunk).await }
                } => match r {
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
        }
    })
}

impl Instance {
    pub(super) fn connect(&mut self, addr: Ipv4Addr) {
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

    /// Reader and writer tasks for a new connection (or one resumed at `start`).
    pub(super) fn open_conn(
        &self,
        addr: Ipv4Addr,
        id: u64,
        st: TcpStream,
        outgoing: bool,
        start: StreamStart,
    ) -> std::io::Result<Conn> {
        let _ = st.set_nodelay(true);
        let local = match st.local_addr() {
            Ok(std::net::SocketAddr::V4(a)) => Some(*a.ip()),
            _ => None,
        };
        let fd = st.as_fd().try_clone_to_owned()?;
        let base = match start.base {
            Some(b) => b,
            None => {
                let p = tcp::positions(&st)?;
                (p.consumed, p.written)
            }
        };
        // A resumed socket keeps the previous instance's peek offset: start from the first
        // unconsumed byte.
        let hitless = match tcp::set_peek_off(&st, 0) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(peer = %addr, error = %e, "SO_PEEK_OFF unsupported: this session cannot survive a restart");
                false
            }
        };
        let (rd, mut wr) = st.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let written = Arc::new(AtomicU64::new(start.tx));
        let w = written.clone();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                match tokio::time::timeout(Duration::from_secs(10), wr.write_all(&b)).await {
                    Ok(Ok(())) => {
                        w.fetch_add(b.len() as u64, Ordering::AcqRel);
                    }
                    _ => return,
                }
            }
        });
        let (consume_tx, consume_rx) = mpsc::unbounded_channel();
        let reader = reader(
            addr,
            id,
            rd,
            self.ev_tx.clone(),
            consume_rx,
            start.rx,
            hitless,
        );
        Ok(Conn {
            id,
            outgoing,
            local,
            tx,
            reader,
            fd,
            consume_tx,
            written,
            tx_next: start.tx,
            rx_done: start.rx,
            rx_ckpt: start.rx,
            hitless,
            base,
        })
    }

    pub(super) fn attach(&mut self, addr: Ipv4Addr, id: u64, st: TcpStream, outgoing: bool) {
        let c = match self.open_conn(addr, id, st, outgoing, StreamStart::default()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(peer = %addr, error = %e, "connection unusable");
                return;
            }
        };
        if let Some(p) = self.peers.get_mut(&addr) {
            p.local_addr = c.local;
            p.conn = Some(c);
        }
    }

    /// A connection from a peer: taken when the session waits for one; held for collision
    /// resolution when ours is in OpenSent/OpenConfirm; refused otherwise (Cease /
    /// Connection Collision Resolution).
    pub(super) async fn on_accept(&mut self, ip: Ipv4Addr, st: TcpStream) {
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
            let Ok(mut c) = self.open_conn(ip, id, st, false, StreamStart::default()) else {
                return;
            };
            let open = self.open_msg(ip);
            c.tx_next += open.len() as u64;
            let _ = c.tx.send(open);
            tracing::info!(peer = %ip, "connection collision: the peer's connection waits for its OPEN");
            if let Some(p) = self.peers.get_mut(&ip) {
                p.incoming = Some(c);
            }
            return;
        }
        tracing::info!(peer = %ip, state = state.word(), "connection from the peer refused (connection collision)");
        if let Ok(c) = self.open_conn(ip, 0, st, false, StreamStart::default()) {
            let _ = c.tx.send(wire::notification(6, 7));
        }
    }

    /// A message on the peer's connection held for collision resolution: its OPEN decides.
    pub(super) async fn on_incoming(
        &mut self,
        addr: Ipv4Addr,
        m: Result<Msg, wire::Malformed>,
        raw: Vec<u8>,
    ) {
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
        // Our connection's records go with it.
        self.ckpt.forget_stream(addr);
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
    pub(super) fn open_msg(&self, addr: Ipv4Addr) -> Vec<u8> {
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

    /// Queue a message on the session's connection: recorded in this batch's checkpoint, and
    /// written once that is in PSS (checkpoint before effect).
    pub(super) fn send(&mut self, addr: Ipv4Addr, bytes: Vec<u8>) {
        if let Some(p) = self.peers.get_mut(&addr)
            && let Some(c) = &mut p.conn
        {
            p.msgs_out += 1;
            if c.hitless {
                self.ckpt.tx_record(addr, c.tx_next, &bytes);
            }
            c.tx_next += bytes.len() as u64;
            self.after.sends.push((c.tx.clone(), bytes));
        }
    }

    pub(super) async fn on_conn(&mut self, ev: ConnEv) {
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
            ConnEv::Message(addr, id, m, raw, from, to) => {
                let Some(p) = self.peers.get(&addr) else {
                    return;
                };
                if p.conn.as_ref().is_some_and(|c| c.id == id) {
                    if p.quarantine == Some(from) {
                        self.quarantine(addr, m, raw, from);
                    } else {
                        let slot = p.inflight_slot;
                        if let (Some(f), Some(i)) = (&self.inflight, slot) {
                            f.begin(i, from);
                        }
                        self.on_message(addr, m, raw).await;
                        if let (Some(f), Some(i)) = (&self.inflight, slot) {
                            f.end(i);
                        }
                    }
                } else if p.incoming.as_ref().is_some_and(|c| c.id == id) {
                    self.on_incoming(addr, m, raw).await;
                }
                // Applied (or the connection is gone, and its bytes with it).
                for c in self
                    .peers
                    .get_mut(&addr)
                    .into_iter()
                    .flat_map(|p| p.conn.iter_mut().chain(p.incoming.iter_mut()))
                {
                    if c.id == id {
                        c.rx_done = c.rx_done.max(to);
                    }
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
