//! Connections: the TCP 179 listener, connect attempts, a reader and a writer task per
//! connection, connection collision (RFC 4271 §6.8).

use super::*;

pub(super) enum ConnEv {
    Up(Ipv4Addr, u64, TcpStream),
    ConnectFailed(Ipv4Addr, u64),
    /// A message, and its bytes as received (for the checkpoint log).
    Message(Ipv4Addr, u64, Result<Msg, wire::Malformed>, Vec<u8>),
    Closed(Ipv4Addr, u64),
}

pub(super) struct Conn {
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

pub(super) fn reader(
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

    /// Reader and writer tasks for a new connection.
    pub(super) fn open_conn(&self, addr: Ipv4Addr, id: u64, st: TcpStream, outgoing: bool) -> Conn {
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

    pub(super) fn attach(&mut self, addr: Ipv4Addr, id: u64, st: TcpStream, outgoing: bool) {
        let c = self.open_conn(addr, id, st, outgoing);
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

    pub(super) fn send(&mut self, addr: Ipv4Addr, bytes: Vec<u8>) {
        if let Some(p) = self.peers.get_mut(&addr)
            && let Some(c) = &p.conn
        {
            p.msgs_out += 1;
            let _ = c.tx.send(bytes);
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
