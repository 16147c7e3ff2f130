//! Two supervisors on one host (DESIGN.md §5): the arbiter, the epoch, the replication link.
//!
//! - **Arbiter**: an exclusive `flock` on the shared lock file. The kernel releases it when the
//!   holder dies, so there can never be two holders, and no home-made consensus decides. The
//!   standby waits for it in a thread.
//! - **Epoch**: the lock file's content, incremented by every new holder while it holds the
//!   lock; every frame on the link carries it, and a standby ignores an active whose epoch is
//!   older than the one it has seen.
//! - **Link**: the active listens on its `link` socket; the standby connects and gets a copy of
//!   every tree of the active's store, then every write as it happens ([`pss::Change`]: PSS,
//!   the process log, persistent MTS queues), and a heartbeat every `heartbeat`. It applies
//!   them in order to its own store and acknowledges its position.
//! - **Stall**: a standby that hears nothing for `dead-after` fences the active on this host
//!   with SIGKILL (its pid came in the hello), which releases the lock.
//!
//! Frames: a 4-byte big-endian length, then a [`LinkMsg`] through `mts::codec`.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::Redundancy;

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
    /// The active is alive; `pos` changes were sent so far.
    Heartbeat {
        pos: u64,
    },
    /// From the standby: changes applied so far.
    Ack {
        applied: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Active,
    Standby,
}

/// What the supervisor's loop hears from the redundancy threads.
#[derive(Debug)]
pub enum RedEvent {
    /// The lock is ours (held through this descriptor): take over.
    Acquired(File),
    /// The active said nothing for `dead-after`: fence it (SIGKILL `pid`).
    PeerStalled { pid: i32 },
}

/// What this supervisor knows of the other one.
#[derive(Debug, Default, Clone)]
pub struct PeerView {
    pub connected: bool,
    pub pid: Option<i32>,
    pub epoch: u64,
    pub last_seen: Option<Instant>,
    /// Changes sent (active) and applied (standby's acknowledgement, or ours as standby).
    pub sent: u64,
    pub applied: u64,
}

pub struct Red {
    pub cfg: Redundancy,
    pub role: Role,
    pub epoch: u64,
    pub since_ms: u64,
    /// The lock file, held while active.
    lock: File,
    pub peer: Arc<Mutex<PeerView>>,
    stop_link: Arc<AtomicU64>,
}

fn flock(f: &File, nonblocking: bool) -> std::io::Result<bool> {
    let op = libc::LOCK_EX | if nonblocking { libc::LOCK_NB } else { 0 };
    loop {
        // SAFETY: flock on a descriptor we own.
        let r = unsafe { libc::flock(f.as_raw_fd(), op) };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if nonblocking => return Ok(false),
            _ => return Err(e),
        }
    }
}

fn open_lock(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Read the epoch in the lock file, write it plus one, sync it. Only the lock holder calls it.
fn bump_epoch(f: &mut File) -> std::io::Result<u64> {
    let mut s = String::new();
    f.rewind()?;
    f.read_to_string(&mut s)?;
    let epoch = s.trim().parse::<u64>().unwrap_or(0) + 1;
    f.set_len(0)?;
    f.rewind()?;
    writeln!(f, "{epoch}")?;
    f.sync_all()?;
    Ok(epoch)
}

/// The epoch in the lock file (anyone may read it).
pub fn read_epoch(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_frame(s: &mut UnixStream, m: &LinkMsg) -> std::io::Result<()> {
    let b = mts::codec::encode(m).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(4 + b.len());
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(&b);
    s.write_all(&out)
}

fn read_frame(s: &mut UnixStream) -> std::io::Result<LinkMsg> {
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

impl Red {
    /// Take the lock if it is free (active, epoch bumped) or stand by; the waiter thread
    /// reports `Acquired` when the active goes.
    pub fn open(cfg: Redundancy, events: mpsc::UnboundedSender<RedEvent>) -> std::io::Result<Red> {
        let mut lock = open_lock(&cfg.lock_file)?;
        let active = flock(&lock, true)?;
        let epoch = if active {
            bump_epoch(&mut lock)?
        } else {
            read_epoch(&cfg.lock_file)
        };
        let red = Red {
            cfg,
            role: if active { Role::Active } else { Role::Standby },
            epoch,
            since_ms: crate::proclog::now_ms(),
            lock,
            peer: Default::default(),
            stop_link: Arc::new(AtomicU64::new(0)),
        };
        if !active {
            // A second open file description of the lock file: blocks until the holder's goes.
            let waiter = open_lock(&red.cfg.lock_file)?;
            let tx = events.clone();
            std::thread::Builder::new()
                .name("arbiter".into())
                .spawn(move || {
                    if flock(&waiter, false).is_ok() {
                        // The locked descriptor moves into the supervisor.
                        let _ = tx.send(RedEvent::Acquired(waiter));
                    }
                })?;
        }
        Ok(red)
    }

    /// The lock is ours (the waiter's descriptor holds it): active, with the next epoch.
    pub fn take_over(&mut self, locked: File) -> std::io::Result<u64> {
        self.lock = locked;
        self.epoch = bump_epoch(&mut self.lock)?;
        self.role = Role::Active;
        self.since_ms = crate::proclog::now_ms();
        self.stop_link.fetch_add(1, Ordering::SeqCst);
        Ok(self.epoch)
    }

    /// Active: serve the link to the standby (one at a time) from a thread.
    pub fn serve(&self, store: pss::Store, name: String) -> std::io::Result<()> {
        let _ = std::fs::remove_file(&self.cfg.link);
        let l = UnixListener::bind(&self.cfg.link)?;
        let peer = self.peer.clone();
        let epoch = self.epoch;
        let hb = self.cfg.heartbeat;
        std::thread::Builder::new()
            .name("repl-out".into())
            .spawn(move || {
                for conn in l.incoming() {
                    let Ok(s) = conn else { continue };
                    if let Err(e) = serve_one(s, &store, &name, epoch, hb, &peer) {
                        tracing::warn!(error = %e, "replication link to the standby closed");
                    }
                    store.set_replica(None);
                    if let Ok(mut p) = peer.lock() {
                        p.connected = false;
                    }
                }
            })?;
        Ok(())
    }

    /// Standby: follow the active's link from a thread, applying what it sends.
    pub fn follow(&self, store: pss::Store, events: mpsc::UnboundedSender<RedEvent>) {
        let peer = self.peer.clone();
        let path = self.cfg.peer_link.clone();
        let dead_after = self.cfg.dead_after;
        let stop = self.stop_link.clone();
        let round = stop.load(Ordering::SeqCst);
        let mut min_epoch = self.epoch;
        let _ = std::thread::Builder::new()
            .name("repl-in".into())
            .spawn(move || {
                while stop.load(Ordering::SeqCst) == round {
                    let Ok(mut s) = UnixStream::connect(&path) else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    match follow_one(
                        &mut s,
                        &store,
                        dead_after,
                        &peer,
                        &mut min_epoch,
                        &stop,
                        round,
                    ) {
                        Ok(()) => {}
                        Err(FollowEnd::Stalled(pid)) => {
                            let _ = events.send(RedEvent::PeerStalled { pid });
                        }
                        Err(FollowEnd::Closed(e)) => {
                            tracing::info!(error = %e, "replication link from the active closed");
                        }
                    }
                    if let Ok(mut p) = peer.lock() {
                        p.connected = false;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
    }
}

fn serve_one(
    mut s: UnixStream,
    store: &pss::Store,
    name: &str,
    epoch: u64,
    hb: Duration,
    peer: &Arc<Mutex<PeerView>>,
) -> std::io::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    // Writes from now on are captured before the copy is taken: the stream that follows
    // brings every key to its latest value whatever the copy saw.
    store.set_replica(Some(tx));
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
    std::thread::spawn(move || {
        while let Ok(LinkMsg::Ack { applied }) = read_frame(&mut r) {
            if let Ok(mut p) = p2.lock() {
                p.applied = applied;
                p.last_seen = Some(Instant::now());
            }
        }
    });
    if let Ok(mut p) = peer.lock() {
        p.connected = true;
        p.last_seen = Some(Instant::now());
    }
    tracing::info!(
        changes = sent,
        "replication: the standby has the copy; streaming"
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
        write_frame(&mut s, &LinkMsg::Heartbeat { pos: sent })?;
        if let Ok(mut p) = peer.lock() {
            p.sent = sent;
        }
    }
}

enum FollowEnd {
    Stalled(i32),
    Closed(std::io::Error),
}

fn follow_one(
    s: &mut UnixStream,
    store: &pss::Store,
    dead_after: Duration,
    peer: &Arc<Mutex<PeerView>>,
    min_epoch: &mut u64,
    stop: &AtomicU64,
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
    tracing::info!(
        active = name,
        pid,
        epoch,
        "replication: following the active"
    );
    store
        .clear_all()
        .map_err(|e| FollowEnd::Closed(std::io::Error::other(e)))?;
    let mut applied = 0u64;
    if let Ok(mut p) = peer.lock() {
        *p = PeerView {
            connected: true,
            pid: Some(pid),
            epoch,
            last_seen: Some(Instant::now()),
            sent: 0,
            applied: 0,
        };
    }
    loop {
        if stop.load(Ordering::SeqCst) != round {
            return Ok(());
        }
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
        match m {
            LinkMsg::Change(c) => {
                if let Err(e) = store.apply(&c) {
                    tracing::error!(error = %e, "replication: cannot apply a change");
                }
                applied += 1;
                if let Ok(mut p) = peer.lock() {
                    p.applied = applied;
                }
            }
            LinkMsg::Heartbeat { pos } => {
                if let Ok(mut p) = peer.lock() {
                    p.sent = pos;
                    p.applied = applied;
                    p.last_seen = Some(Instant::now());
                }
                let _ = write_frame(&mut w, &LinkMsg::Ack { applied });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_and_the_epoch_goes_up_with_each() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("lock");
        let mut a = open_lock(&path).expect("open");
        assert!(flock(&a, true).expect("flock"));
        assert_eq!(bump_epoch(&mut a).expect("epoch"), 1);
        let b = open_lock(&path).expect("open");
        assert!(!flock(&b, true).expect("flock"), "two holders");
        drop(a);
        let mut b = b;
        assert!(
            flock(&b, true).expect("flock"),
            "released when the holder closed it"
        );
        assert_eq!(bump_epoch(&mut b).expect("epoch"), 2);
        assert_eq!(read_epoch(&path), 2);
    }
}
