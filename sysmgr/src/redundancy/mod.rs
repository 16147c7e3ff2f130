//! Two supervisors (DESIGN.md §5): the arbiter, the epoch, the replication link.
//!
//! - **Arbiter**, one host: an exclusive `flock` on the shared lock file. The kernel releases it
//!   when the holder dies, so there can never be two holders. Two hosts: an etcd key under a
//!   lease ([`etcd`]). Neither is a consensus of our own. The standby waits in a thread.
//! - **Epoch**: one host, the lock file's content, incremented by every new holder while it
//!   holds the lock; two hosts, the etcd revision that created the key. A standby ignores an
//!   active whose epoch is older than one it has seen.
//! - **Fencing**: one host, a standby that hears nothing for `dead-after` SIGKILLs the active
//!   (its pid came in the hello), which releases the lock. Two hosts, the active counts itself
//!   active only while its lease is certainly alive (renewed less than a TTL ago, measured
//!   from before the renewal was sent); a stalled active that wakes up finds it gone, stops
//!   its services and comes back as the standby.
//! - **Link** ([`link`]): the active serves it (Unix socket or TCP); the standby gets a copy of
//!   every tree of the active's store, then every write as it happens ([`pss::Change`]: PSS,
//!   the process log, persistent MTS queues), and heartbeats; it acknowledges its position.
//!
//! Frames: a 4-byte big-endian length, then a [`link::LinkMsg`] through `mts::codec`.

pub mod etcd;
pub mod link;

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::{Arbiter, Redundancy};
use link::{FollowEnd, Listener, Stream, follow_one, serve_one};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Active,
    Standby,
}

/// What makes us active.
#[derive(Debug)]
pub enum Held {
    /// The locked lock file.
    Flock(File),
    /// Our etcd lease and the revision that created the key.
    /// `granted`: before the lease was asked for (etcd counts its TTL from later).
    Etcd {
        lease: i64,
        revision: u64,
        granted: Instant,
    },
}

/// What the supervisor's loop hears from the redundancy threads.
#[derive(Debug)]
pub enum RedEvent {
    /// The arbiter says we are active: take over.
    Acquired(Held),
    /// The active said nothing for `dead-after`: fence it (SIGKILL `pid`; one host).
    PeerStalled { pid: i32 },
    /// Our lease is gone (two hosts): someone else may be active; stop.
    Fenced,
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
    held: Option<Held>,
    etcd: Option<Arc<etcd::Etcd>>,
    /// Two hosts: until when our lease is certainly alive.
    valid_until: Arc<Mutex<Option<Instant>>>,
    /// `role` for the store's write gate (it changes only at a takeover).
    active: Arc<std::sync::atomic::AtomicBool>,
    events: mpsc::UnboundedSender<RedEvent>,
    pub peer: Arc<Mutex<PeerView>>,
    /// The standby's link round: a takeover moves it (under its lock, so no change from the
    /// old active is applied once the takeover has returned).
    stop_link: Arc<Mutex<u64>>,
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

impl Red {
    /// Take the arbiter's word now if it is free (active, new epoch) or stand by; a waiter
    /// thread reports `Acquired` when the active goes.
    pub fn open(
        cfg: Redundancy,
        name: &str,
        events: mpsc::UnboundedSender<RedEvent>,
    ) -> std::io::Result<Red> {
        let mut red = Red {
            role: Role::Standby,
            epoch: 0,
            since_ms: crate::proclog::now_ms(),
            held: None,
            etcd: None,
            valid_until: Default::default(),
            active: Default::default(),
            events: events.clone(),
            peer: Default::default(),
            stop_link: Arc::new(Mutex::new(0)),
            cfg,
        };
        match red.cfg.arbiter.clone() {
            Arbiter::Flock(path) => {
                let mut lock = open_lock(&path)?;
                if flock(&lock, true)? {
                    red.epoch = bump_epoch(&mut lock)?;
                    red.role = Role::Active;
                    red.held = Some(Held::Flock(lock));
                } else {
                    red.epoch = read_epoch(&path);
                    // A second open file description of the lock file: blocks until the
                    // holder's goes.
                    let waiter = open_lock(&path)?;
                    std::thread::Builder::new()
                        .name("arbiter".into())
                        .spawn(move || {
                            if flock(&waiter, false).is_ok() {
                                let _ = events.send(RedEvent::Acquired(Held::Flock(waiter)));
                            }
                        })?;
                }
            }
            Arbiter::Etcd { endpoint, key, ttl } => {
                let e = Arc::new(etcd::Etcd::new(&endpoint, &key, ttl, name));
                red.etcd = Some(e.clone());
                let sent = Instant::now();
                match e.try_acquire() {
                    Ok(Some((lease, revision))) => {
                        red.epoch = revision;
                        red.role = Role::Active;
                        red.held = Some(Held::Etcd {
                            lease,
                            revision,
                            granted: sent,
                        });
                        *red.valid_until.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(sent + ttl);
                        red.keepalive(lease);
                    }
                    other => {
                        if let Err(err) = other {
                            tracing::warn!(error = %err, "etcd unreachable: standing by");
                        }
                        std::thread::Builder::new()
                            .name("arbiter".into())
                            .spawn(move || {
                                loop {
                                    std::thread::sleep(ttl / 4);
                                    let granted = Instant::now();
                                    match e.try_acquire() {
                                        Ok(Some((lease, revision))) => {
                                            let _ = events.send(RedEvent::Acquired(Held::Etcd {
                                                lease,
                                                revision,
                                                granted,
                                            }));
                                            return;
                                        }
                                        Ok(None) => {}
                                        Err(err) => tracing::debug!(error = %err, "etcd"),
                                    }
                                }
                            })?;
                    }
                }
            }
        }
        red.active.store(red.role == Role::Active, Ordering::SeqCst);
        Ok(red)
    }

    /// For [`pss::Store::set_write_gate`]: an active whose lease is not certainly alive (two
    /// hosts: it stalled, or lost etcd) takes no writes and acknowledges none, since another
    /// supervisor may be active already. A standby's own services write to its own store.
    pub fn write_gate(&self) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
        let active = self.active.clone();
        let valid = self.valid_until.clone();
        let lease = self.etcd.is_some();
        move || {
            let alive = valid
                .lock()
                .map(|v| v.is_some_and(|t| Instant::now() < t))
                .unwrap_or(false);
            if lease && active.load(Ordering::SeqCst) && !alive {
                Err("fenced: this supervisor's lease on the arbiter is not certainly alive, so another may be active".into())
            } else {
                Ok(())
            }
        }
    }

    /// Two hosts: renew the lease every third of its TTL from a thread; when it is gone,
    /// `Fenced`.
    fn keepalive(&self, lease: i64) {
        let Some(e) = self.etcd.clone() else { return };
        let valid = self.valid_until.clone();
        let events = self.events.clone();
        let _ = std::thread::Builder::new()
            .name("lease".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(e.ttl / 3);
                    let sent = Instant::now();
                    let ok = e.keepalive(lease);
                    let mut v = valid.lock().unwrap_or_else(|p| p.into_inner());
                    match ok {
                        Ok(true) => *v = Some(sent + e.ttl),
                        Ok(false) => {
                            *v = None;
                            let _ = events.send(RedEvent::Fenced);
                            return;
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "etcd: lease renewal failed");
                            if v.is_none_or(|t| Instant::now() >= t) {
                                *v = None;
                                let _ = events.send(RedEvent::Fenced);
                                return;
                            }
                        }
                    }
                }
            });
    }

    /// Active and, on two hosts, with a lease certainly alive now.
    pub fn active_now(&self) -> bool {
        self.role == Role::Active
            && (self.etcd.is_none()
                || self
                    .valid_until
                    .lock()
                    .map(|v| v.is_some_and(|t| Instant::now() < t))
                    .unwrap_or(false))
    }

    /// A description of the arbiter for `show`.
    pub fn arbiter(&self) -> String {
        match (&self.cfg.arbiter, &self.etcd) {
            (_, Some(e)) => e.describe(),
            (Arbiter::Flock(p), _) => format!("flock {}", p.display()),
            (Arbiter::Etcd { endpoint, .. }, None) => format!("etcd {endpoint}"),
        }
    }

    /// The arbiter made us active: the new epoch.
    pub fn take_over(&mut self, held: Held) -> std::io::Result<u64> {
        match held {
            Held::Flock(mut f) => {
                self.epoch = bump_epoch(&mut f)?;
                self.held = Some(Held::Flock(f));
            }
            Held::Etcd {
                lease,
                revision,
                granted,
            } => {
                self.epoch = revision;
                if let Some(e) = &self.etcd {
                    *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(granted + e.ttl);
                }
                self.held = Some(Held::Etcd {
                    lease,
                    revision,
                    granted,
                });
                self.keepalive(lease);
            }
        }
        self.role = Role::Active;
        self.active.store(true, Ordering::SeqCst);
        self.since_ms = crate::proclog::now_ms();
        *self.stop_link.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Ok(self.epoch)
    }

    /// Give the arbiter up (a switchover) and wait until the standby has it, so a re-executed
    /// supervisor comes back as the standby.
    pub fn release_and_wait(self) {
        let epoch = self.epoch;
        let until = Instant::now() + Duration::from_secs(5);
        match (self.held, &self.cfg.arbiter, &self.etcd) {
            (Some(Held::Flock(f)), Arbiter::Flock(path), _) => {
                drop(f); // the standby's waiter gets the lock
                while read_epoch(path) <= epoch && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            (Some(Held::Etcd { lease, .. }), _, Some(e)) => {
                let _ = e.revoke(lease);
                while Instant::now() < until {
                    match e.holder() {
                        Ok(Some((v, rev))) if !e.is_me(&v) && rev > epoch => break,
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
            _ => {}
        }
    }

    /// Active: serve the link to the standby (one at a time) from a thread.
    pub fn serve(&self, store: pss::Store, name: String) -> std::io::Result<()> {
        let l = Listener::bind(&self.cfg.link)?;
        let peer = self.peer.clone();
        let epoch = self.epoch;
        let hb = self.cfg.heartbeat;
        // A durable write waits for the standby no longer than the standby waits for us.
        let sync_wait = self.cfg.dead_after;
        std::thread::Builder::new()
            .name("repl-out".into())
            .spawn(move || {
                loop {
                    let Ok(s) = l.accept() else { continue };
                    if let Err(e) = serve_one(s, &store, &name, epoch, hb, sync_wait, &peer) {
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

    /// Standby: follow the active's link from a thread, applying what it sends. One host:
    /// a stall is reported for fencing; two hosts: the lease does that.
    pub fn follow(&self, store: pss::Store, events: mpsc::UnboundedSender<RedEvent>) {
        let peer = self.peer.clone();
        let at = self.cfg.peer_link.clone();
        let dead_after = self.cfg.dead_after;
        let stop = self.stop_link.clone();
        let round = *stop.lock().unwrap_or_else(|p| p.into_inner());
        let fence_by_kill = matches!(self.cfg.arbiter, Arbiter::Flock(_));
        let mut min_epoch = self.epoch;
        let _ = std::thread::Builder::new()
            .name("repl-in".into())
            .spawn(move || {
                while *stop.lock().unwrap_or_else(|p| p.into_inner()) == round {
                    let Ok(mut s) = Stream::connect(&at) else {
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
                        Err(FollowEnd::Stalled(pid)) if fence_by_kill => {
                            let _ = events.send(RedEvent::PeerStalled { pid });
                        }
                        Err(FollowEnd::Stalled(_)) => {
                            tracing::info!("replication link: the active is silent");
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
