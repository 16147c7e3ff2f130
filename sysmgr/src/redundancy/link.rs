//! The replication link: frames, the active's side (a copy, then the stream, heartbeats) and
//! the standby's (apply, acknowledge, notice a stall), over a Unix socket or TCP.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::PeerView;
use crate::config::Endpoint;

/// Largest frame accepted on the link.
const MAX_FRAME: usize = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkMsg {
    Hello {
        name: String,
        pid: i32,
        epoch: u64,
    },
    Change(pss::Change),
    /// The active is alive; `pos` changes were sent so far. `ha`: the active waits for this
    /// standby on every durable write, and the standby has applied every write acknowledged
    /// without it while it took the copy, so it may say HA (nothing acknowledged is missing
    /// if it takes over once it has applied what came before this heartbeat).
    Heartbeat {
        pos: u64,
        ha: bool,
    },
    /// From the standby: changes applied so far, and the `pos` of the last streamed one.
    Ack {
        applied: u64,
        pos: u64,
    },
}

/// A connection of either kind.
pub(super) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    pub(super) fn connect(e: &Endpoint) -> std::io::Result<Stream> {
        Ok(match e {
            Endpoint::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
        })
    }
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }
    /// End the connection for every clone of it (the acknowledgement reader's too).
    fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(d),
            Stream::Tcp(s) => s.set_read_timeout(d),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(b),
            Stream::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(b),
            Stream::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

pub(super) enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    pub(super) fn bind(e: &Endpoint) -> std::io::Result<Listener> {
        Ok(match e {
            Endpoint::Unix(p) => {
                let _ = std::fs::remove_file(p);
                Listener::Unix(UnixListener::bind(p)?)
            }
            Endpoint::Tcp(a) => Listener::Tcp(TcpListener::bind(a)?),
        })
    }
    pub(super) fn accept(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Listener::Unix(l) => Stream::Unix(l.accept()?.0),
            Listener::Tcp(l) => {
                let s = l.accept()?.0;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
        })
    }
}

fn write_frame(s: &mut Stream, m: &LinkMsg) -> std::io::Result<()> {
    let b = mts::codec::encode(m).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(4 + b.len());
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(&b);
    s.write_all(&out)
}

fn read_frame(s: &mut Stream) -> std::io::Result<LinkMsg> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::other(format!("link frame of {n} bytes")));
    }
    let mut b = vec![0u8; n];
    s.read_exact(&mut b)?;
    mts::codec::decode(&b).map_err(std::io::Error::other)
}

/// Shuts a connection down (every clone of it) when dropped.
struct ShutdownOnDrop(Stream);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// Serve one standby until the link fails; the connection is shut down either way.
pub(super) fn serve_one(
    mut s: Stream,
    store: &pss::Store,
    name: &str,
    epoch: u64,
    hb: Duration,
    sync_wait: Duration,
    peer: &Arc<Mutex<PeerView>>,
) -> std::io::Result<()> {
    let _end = ShutdownOnDrop(s.try_clone()?);
    let (tx, rx) = std::sync::mpsc::channel();
    // Writes from now on are captured before the copy is taken: the stream that follows
    // brings every key to its latest value whatever the copy saw. Durable writes wait for
    // the standby's acknowledgement from now on (up to `sync_wait`).
    let link = store.set_replica(Some((tx, sync_wait)));
    write_frame(
        &mut s,
        &LinkMsg::Hello {
            name: name.to_string(),
            pid: std::process::id() as i32,
            epoch,
        },
    )?;
    let mut sent = 0u64;
    for c in store.snapshot() {
        write_frame(&mut s, &LinkMsg::Change(c))?;
        sent += 1;
    }
    // The standby's acknowledgements, on their own thread.
    let mut r = s.try_clone()?;
    let p2 = peer.clone();
    let st2 = store.clone();
    std::thread::spawn(move || {
        while let Ok(LinkMsg::Ack { applied, pos }) = read_frame(&mut r) {
            st2.replica_acked(link, pos);
            if let Ok(mut p) = p2.lock() {
                // HA once the standby has its copy and has caught up.
                p.connected = st2.replica_ready();
                p.applied = applied;
                p.last_seen = Some(Instant::now());
            }
        }
    });
    if let Ok(mut p) = peer.lock() {
        p.last_seen = Some(Instant::now());
    }
    tracing::info!(
        changes = sent,
        "replication: the copy is sent to the standby; streaming"
    );
    loop {
        match rx.recv_timeout(hb) {
            Ok(c) => {
                write_frame(&mut s, &LinkMsg::Change(c))?;
                sent += 1;
                // Whatever else is queued (a bounded run), then one heartbeat.
                for _ in 0..256 {
                    let Ok(c) = rx.try_recv() else { break };
                    write_frame(&mut s, &LinkMsg::Change(c))?;
                    sent += 1;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(std::io::Error::other("replication source gone"));
            }
        }
        let ha = store.replica_ready();
        write_frame(&mut s, &LinkMsg::Heartbeat { pos: sent, ha })?;
        if let Ok(mut p) = peer.lock() {
            p.sent = sent;
        }
    }
}

pub(super) enum FollowEnd {
    Stalled(i32),
    Closed(std::io::Error),
}

pub(super) fn follow_one(
    s: &mut Stream,
    store: &pss::Store,
    dead_after: Duration,
    peer: &Arc<Mutex<PeerView>>,
    min_epoch: &mut u64,
    stop: &Mutex<u64>,
    round: u64,
) -> Result<(), FollowEnd> {
    s.set_read_timeout(Some(dead_after))
        .map_err(FollowEnd::Closed)?;
    let mut w = s.try_clone().map_err(FollowEnd::Closed)?;
    let first = read_frame(s).map_err(FollowEnd::Closed)?;
    let LinkMsg::Hello { name, pid, epoch } = first else {
        return Err(FollowEnd::Closed(std::io::Error::other(
            "the link did not start with a hello",
        )));
    };
    if epoch < *min_epoch {
        return Err(FollowEnd::Closed(std::io::Error::other(format!(
            "{name} speaks for epoch {epoch}, older than {min_epoch}: fenced"
        ))));
    }
    *min_epoch = epoch;
    // A link that was opened before a takeover and answered after it (the old active woke
    // up): nothing from it may touch this store any more.
    if *stop.lock().unwrap_or_else(|p| p.into_inner()) != round {
        return Ok(());
    }
    tracing::info!(
        active = name,
        pid,
        epoch,
        "replication: following the active, taking its copy"
    );
    let mut applied = 0u64;
    let mut pos = 0u64;
    if let Ok(mut p) = peer.lock() {
        *p = PeerView {
            connected: false,
            pid: Some(pid),
            epoch,
            last_seen: Some(Instant::now()),
            sent: 0,
            applied: 0,
        };
    }
    // The active's copy is held until it is whole (the first heartbeat or streamed change
    // follows it), then replaces this store at once: a standby whose active dies during the
    // copy keeps its previous, consistent store instead of half of each. It says HA only
    // when a heartbeat says the active counts on it (after the copy, and after the writes
    // acknowledged without it meanwhile).
    let mut copy: Option<Vec<pss::Change>> = Some(Vec::new());
    loop {
        let m = match read_frame(s) {
            Ok(m) => m,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(FollowEnd::Stalled(pid));
            }
            Err(e) => return Err(FollowEnd::Closed(e)),
        };
        if let (Some(c), LinkMsg::Change(ch)) = (copy.as_mut(), &m)
            && ch.pos == 0
        {
            c.push(ch.clone());
            continue;
        }
        if let Some(c) = copy.take() {
            let g = stop.lock().unwrap_or_else(|p| p.into_inner());
            if *g != round {
                return Ok(());
            }
            store
                .clear_all()
                .map_err(|e| FollowEnd::Closed(std::io::Error::other(e)))?;
            for ch in &c {
                if let Err(e) = store.apply(ch) {
                    tracing::error!(error = %e, "replication: cannot apply the copy");
                }
            }
            drop(g);
            applied += c.len() as u64;
            if let Ok(mut p) = peer.lock() {
                p.applied = applied;
            }
            tracing::info!(trees = c.len(), "replication: the active's copy is in");
        }
        match m {
            LinkMsg::Change(c) => {
                let g = stop.lock().unwrap_or_else(|p| p.into_inner());
                if *g != round {
                    return Ok(());
                }
                if let Err(e) = store.apply(&c) {
                    tracing::error!(error = %e, "replication: cannot apply a change");
                }
                drop(g);
                applied += 1;
                pos = pos.max(c.pos);
                if let Ok(mut p) = peer.lock() {
                    p.applied = applied;
                }
            }
            LinkMsg::Heartbeat { pos: frames, ha } => {
                if let Ok(mut p) = peer.lock() {
                    // HA only once the active says so: writes it acknowledged while this
                    // standby took its copy came before this heartbeat and are applied now.
                    p.connected = ha;
                    p.sent = frames;
                    p.applied = applied;
                    p.last_seen = Some(Instant::now());
                }
                // `pos`: the last streamed change applied (not the heartbeat's frame count,
                // which includes the copy and would acknowledge changes not yet here).
                let _ = write_frame(&mut w, &LinkMsg::Ack { applied, pos });
            }
            _ => {}
        }
    }
}
