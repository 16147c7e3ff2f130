//! PSS — the Persistent Storage Service: sysmgr's one sled database.
//!
//! sled allows one process per database, so sysmgr opens it once and every persistent part of the
//! product (the process log today; service checkpoints, persistent MTS queues later) is a tree in
//! it. Tree names follow DESIGN.md: `sysmgr/*`, `mts/*`, `pss/<service>/<scope>`.

pub mod blocking;
pub mod client;
mod disk;
pub mod proto;
pub mod server;
mod wal;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The one error type of the `pss` crate.
#[derive(Debug, thiserror::Error)]
pub enum PssError {
    /// sled could not open (or create) the database directory.
    #[error(
        "cannot open the PSS database at {path}: {source} (boot with --move-aside-corrupt-db to move it aside and start empty)"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// sled opened the directory but what it found is not the database sysmgr wrote.
    #[error(
        "the PSS database at {path} is corrupt: {reason} (boot with --move-aside-corrupt-db to move it aside and start empty)"
    )]
    Corrupt { path: PathBuf, reason: String },
    /// The access rules refuse this request.
    #[error("permission denied: {0}")]
    Denied(String),
    /// A database operation failed.
    #[error("database: {0}")]
    Db(#[source] sled::Error),
    /// A request or value did not encode or decode.
    #[error("codec: {0}")]
    Codec(String),
    /// The MTS round trip to SAP `pss` failed (or sysmgr answered with an error).
    #[error(transparent)]
    Mts(#[from] mts::MtsError),
    /// A compare-and-swap did not match.
    #[error("compare-and-swap failed on a key; nothing was written")]
    CasFailed,
    /// A tree could not be opened.
    #[error("cannot open tree {tree}: {source}")]
    Tree {
        tree: String,
        #[source]
        source: sled::Error,
    },
}

/// Per service, its last checkpoint sequence number and time (seq u64 BE, unix ms u64 BE).
pub(crate) const META_TREE: &str = "pss/meta";

/// Written when the database is created; its absence in an existing database means corruption.
const SENTINEL: &[u8] = b"sysmgr/created";

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One write as the standby supervisor applies it: a tree's puts (`Some`) and deletes
/// (`None`), all at once; `clear` empties the tree first. `pos` numbers the writes streamed
/// to one standby (1, 2, ...; 0 for the first copy), so it can acknowledge how far it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    #[serde(with = "serde_bytes")]
    pub tree: Vec<u8>,
    pub clear: bool,
    #[serde(with = "crate::proto::changes")]
    pub ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub pos: u64,
}

/// Where the writes of a store go besides sled (the link to the standby supervisor).
pub type ReplicaTx = std::sync::mpsc::Sender<Change>;

/// The link to the standby as the store sees it: where writes go, how far they went, how far
/// the standby acknowledged them.
#[derive(Default)]
struct Replica {
    tx: Option<ReplicaTx>,
    /// One number per link, so a late acknowledgement from an old link counts for nothing.
    link: u64,
    sent: u64,
    acked: u64,
    /// The standby has its copy (its first acknowledgement): from then on every durable
    /// write waits for it.
    ready: bool,
    /// The last write acknowledged without waiting while the standby was not ready.
    unwaited: u64,
    /// How long a durable write waits for the standby before the link is given up.
    wait: Duration,
}

/// The (sequence, unix ms) a service's value in [`META_TREE`] holds.
pub(crate) fn meta_parse(v: &[u8]) -> Option<(u64, u64)> {
    let (seq, ms) = v.split_first_chunk::<8>()?;
    Some((
        u64::from_be_bytes(*seq),
        u64::from_be_bytes(ms.try_into().ok()?),
    ))
}

/// A service's value in [`META_TREE`].
pub(crate) fn meta_value(seq: u64, ms: u64) -> Vec<u8> {
    [seq.to_be_bytes(), ms.to_be_bytes()].concat()
}

/// A service's sequence number as sled holds it (0: none).
fn seq_in(meta: &sled::Tree, service: &str) -> Result<u64, sled::Error> {
    Ok(meta
        .get(service)?
        .and_then(|v| meta_parse(&v))
        .map_or(0, |(seq, _)| seq))
}

/// Apply the log's records that continue their service's sequence in sled: sled recovered
/// a prefix of the writes, and a record is replayed only if it is the write after that prefix
/// (see `wal.rs`).
fn replay(db: &sled::Db, records: Vec<wal::Record>) -> Result<Replayed, sled::Error> {
    let mut r = Replayed::default();
    if records.is_empty() {
        return Ok(r);
    }
    let meta = db.open_tree(META_TREE)?;
    let mut at: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    // The records' operations, gathered into one batch per tree (each sled batch seals and
    // writes sled's log buffer: one per record took 0.2 ms). A later operation on a key
    // replaces an earlier one in the batch, as it would in the tree; a clear empties the tree
    // and drops what was gathered for it before. The caller flushes sled afterwards; a crash
    // before that replays the log again.
    let mut batches: std::collections::HashMap<Vec<u8>, sled::Batch> =
        std::collections::HashMap::new();
    for rec in records {
        let cur = match at.get(&rec.service) {
            Some(s) => *s,
            None => seq_in(&meta, &rec.service)?,
        };
        if rec.seq <= cur {
            r.skipped += 1;
        } else if rec.seq == cur + 1 {
            for c in rec.trees {
                if c.clear {
                    batches.remove(&c.tree);
                    db.open_tree(&c.tree)?.clear()?;
                }
                let b = batches.entry(c.tree).or_default();
                for (k, v) in c.ops {
                    match v {
                        Some(v) => b.insert(k, v),
                        None => b.remove(k),
                    }
                }
            }
            r.applied += 1;
            at.insert(rec.service, rec.seq);
            continue;
        } else {
            r.out_of_order += 1;
        }
        at.insert(rec.service, cur);
    }
    for (tree, b) in batches {
        db.open_tree(tree)?.apply_batch(b)?;
    }
    Ok(r)
}

/// sled allocates a new 512 KiB IO buffer each time it seals one (every ~120 4 KB writes, and
/// at every flush), and frees it on its IO thread. The buffer is 8 KiB-aligned, and glibc's
/// dynamic mmap threshold never covers an aligned allocation of that size (its freed chunk is
/// smaller than the next request), so each buffer was a fresh `mmap`: 131 page faults to fill
/// it, then an `munmap` whose TLB shootdown interrupts the other CPU; under 16 PSS writers, a
/// fifth of the PSS thread's time. With the threshold fixed at glibc's own ceiling for the
/// dynamic one (32 MiB), buffers come from the heap and are reused; the heap keeps up to
/// 16 MiB free instead of returning it to the kernel at once. The setting is process-wide:
/// the program that opens a [`Store`] calls this once, before.
pub fn keep_io_buffers_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt changes two allocator thresholds under the allocator's own lock; it has
    // no other effect and no pointer arguments.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

/// How [`Store::wait_replicated`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicated {
    /// No standby is attached: nothing to wait for.
    NoStandby,
    /// The standby has applied every write made before the call.
    Acked,
    /// The standby did not acknowledge in time; the link was dropped (the standby copies
    /// everything again when it reconnects), and writes no longer wait for it.
    GaveUp,
}

/// Whether this supervisor may take writes now (None: it always may).
type WriteGate = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The sled database of one supervisor.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    disk: Arc<disk::Disk>,
    path: PathBuf,
    replica: Arc<(Mutex<Replica>, Condvar)>,
    gate: Arc<Mutex<Option<WriteGate>>>,
    wal: Arc<wal::Wal>,
    /// One checkpoint at a time.
    checkpointing: Arc<Mutex<()>>,
    replayed: Arc<Replayed>,
}

/// What [`Store::open`] found in the write-ahead log and applied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Records applied: durable writes sled had not made durable itself.
    pub applied: usize,
    /// Records sled already had.
    pub skipped: usize,
    /// Records that did not follow their service's sequence in sled (not applied).
    pub out_of_order: usize,
}

impl Store {
    /// Open (or create) the database in `dir`. A database that cannot be opened, or that
    /// sled "recovered" into one without the sentinel written at creation, is an error: it is
    /// never silently replaced.
    pub fn open(dir: &Path) -> Result<Store, PssError> {
        let existed = dir.join("conf").exists();
        let open_err = |source| PssError::Open {
            path: dir.to_path_buf(),
            source,
        };
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(16 * 1024 * 1024)
            .open()
            .map_err(open_err)?;
        let corrupt = |reason: &str| PssError::Corrupt {
            path: dir.to_path_buf(),
            reason: reason.into(),
        };
        match db.get(SENTINEL) {
            Ok(Some(_)) => {}
            Ok(None) if existed => {
                return Err(corrupt(
                    "the database existed but its contents are gone (creation sentinel missing)",
                ));
            }
            Ok(None) => {
                db.insert(SENTINEL, &now_ms().to_be_bytes())
                    .map_err(open_err)?;
                db.flush().map_err(open_err)?;
            }
            Err(e) => return Err(corrupt(&e.to_string())),
        }
        let disk = disk::Disk::open(dir).map_err(|e| open_err(sled::Error::Io(e)))?;
        let io_err = |e| open_err(sled::Error::Io(e));
        let (wal, records) = wal::Wal::open(dir).map_err(io_err)?;
        let replayed = replay(&db, records).map_err(open_err)?;
        if replayed.applied > 0 {
            db.flush().map_err(open_err)?;
            disk.sync().map_err(io_err)?;
        }
        wal.reset().map_err(io_err)?;
        Ok(Store {
            db,
            disk: Arc::new(disk),
            path: dir.to_path_buf(),
            replica: Default::default(),
            gate: Default::default(),
            wal: Arc::new(wal),
            checkpointing: Default::default(),
            replayed: Arc::new(replayed),
        })
    }

    /// What opening the store replayed from the write-ahead log.
    pub fn replayed(&self) -> &Replayed {
        &self.replayed
    }

    pub(crate) fn wal(&self) -> &wal::Wal {
        &self.wal
    }

    /// Like [`Store::open`], but a database that is corrupt or cannot be opened is renamed to
    /// `<dir>.corrupt-<unix seconds>` and an empty one is created. Returns where it went.
    pub fn open_or_move_aside(dir: &Path) -> Result<(Store, Option<PathBuf>), PssError> {
        match Store::open(dir) {
            Ok(s) => Ok((s, None)),
            Err(PssError::Open { .. } | PssError::Corrupt { .. }) => {
                let aside = dir.with_extension(format!("corrupt-{}", now_ms() / 1000));
                std::fs::rename(dir, &aside).map_err(|e| PssError::Corrupt {
                    path: dir.to_path_buf(),
                    reason: format!("cannot move it aside to {}: {e}", aside.display()),
                })?;
                Ok((Store::open(dir)?, Some(aside)))
            }
            Err(e) => Err(e),
        }
    }

    /// A named tree (keyspace).
    pub fn tree(&self, name: &str) -> Result<sled::Tree, PssError> {
        self.db.open_tree(name).map_err(|source| PssError::Tree {
            tree: name.to_string(),
            source,
        })
    }

    /// A fresh monotonically increasing id (unique across restarts of the database).
    pub fn next_id(&self) -> Result<u64, sled::Error> {
        self.db.generate_id()
    }

    /// Make everything written so far durable, for an acknowledgement that promises it (a
    /// `durable` PSS write, a confirmed persistent MTS message): on disk, and applied by the
    /// standby supervisor when there is one (so it survives a switchover too).
    ///
    /// A supervisor fenced meanwhile (it stalled, and the other one took over) does not
    /// acknowledge: what it took may not be on the new active.
    pub fn commit(&self) -> Result<Replicated, PssError> {
        self.flush().map_err(PssError::Db)?;
        self.committed()
    }

    /// On disk: now wait for the standby, and refuse to acknowledge if fenced meanwhile.
    fn committed(&self) -> Result<Replicated, PssError> {
        let r = self.wait_replicated();
        self.may_write().map_err(PssError::Denied)?;
        Ok(r)
    }

    /// [`Store::commit`] for PSS writes, which are in the write-ahead log (`wal.rs`): the
    /// log is synced, not sled.
    pub fn commit_logged(&self) -> Result<Replicated, PssError> {
        if self.wal.sync().is_err() {
            // The log could not take it: sled's flush makes every write so far durable.
            self.flush().map_err(PssError::Db)?;
        }
        self.committed()
    }

    /// Wait up to `timeout` for the write-ahead log to want a [`Store::checkpoint`].
    pub fn checkpoint_wanted(&self, timeout: Duration) -> bool {
        self.wal.wait_wanted(timeout)
    }

    /// Start the log afresh: sync it and switch to its other file, flush sled (which then
    /// holds every record of the old file for good), and retire the old file.
    pub fn checkpoint(&self) -> Result<(), PssError> {
        let _one = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let io = |e| PssError::Db(sled::Error::Io(e));
        match self.wal.switch() {
            Ok(Some(old)) => {
                self.flush().map_err(PssError::Db)?;
                self.wal.retire(&old).map_err(io)
            }
            Ok(None) => Ok(()),
            Err(e) => {
                // The old file may miss records that were acknowledged as fast: sled's flush
                // keeps them.
                self.flush().map_err(PssError::Db)?;
                Err(io(e))
            }
        }
    }

    /// Flush everything to disk: sled's flush, then what it leaves out (see `disk.rs`), so
    /// what was written before survives a power cut.
    pub fn flush(&self) -> Result<usize, sled::Error> {
        let n = self.db.flush()?;
        self.disk.sync().map_err(sled::Error::Io)?;
        Ok(n)
    }

    fn replica(&self) -> std::sync::MutexGuard<'_, Replica> {
        self.replica.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send every write from now on to `tx` as well, and let durable writes wait up to `wait`
    /// for the standby's acknowledgement (None: stop). Every writer of the store calls
    /// [`Store::replicate`] after its write, in the order it wrote. Returns the link's number
    /// for [`Store::replica_acked`].
    pub fn set_replica(&self, tx: Option<(ReplicaTx, Duration)>) -> u64 {
        let mut r = self.replica();
        r.link += 1;
        r.sent = 0;
        r.acked = 0;
        r.ready = false;
        r.unwaited = 0;
        match tx {
            Some((tx, wait)) => {
                r.tx = Some(tx);
                r.wait = wait;
            }
            None => r.tx = None,
        }
        self.replica.1.notify_all();
        r.link
    }

    /// Services' writes are taken only while `gate` says so (a fenced supervisor refuses
    /// them, and refuses to acknowledge what it had taken but not yet acknowledged).
    pub fn set_write_gate(&self, gate: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        *self.gate.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(gate));
    }

    /// Err(why) when writes must be refused now.
    pub fn may_write(&self) -> Result<(), String> {
        let g = self.gate.lock().unwrap_or_else(|p| p.into_inner()).clone();
        g.map_or(Ok(()), |g| g())
    }

    /// Whether writes go to a standby.
    pub fn replicating(&self) -> bool {
        self.replica().tx.is_some()
    }

    /// A write just made to `tree`, for the standby. Cheap when there is none.
    pub fn replicate(&self, tree: &sled::Tree, clear: bool, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) {
        let mut r = self.replica();
        if let Some(tx) = r.tx.as_ref() {
            let c = Change {
                tree: tree.name().to_vec(),
                clear,
                ops,
                pos: r.sent + 1,
            };
            if tx.send(c).is_ok() {
                r.sent += 1;
            } else {
                r.tx = None;
                self.replica.1.notify_all();
            }
        }
    }

    /// The standby of link `link` has applied the writes up to `pos`.
    pub fn replica_acked(&self, link: u64, pos: u64) {
        let mut r = self.replica();
        if r.link == link {
            r.acked = r.acked.max(pos);
            r.ready = true;
            self.replica.1.notify_all();
        }
    }

    /// Whether the link is HA: the standby has its copy, durable writes wait for it, and it
    /// has applied every write acknowledged without it while it was taking the copy.
    pub fn replica_ready(&self) -> bool {
        let r = self.replica();
        r.tx.is_some() && r.ready && r.acked >= r.unwaited
    }

    /// Wait until the standby (if one is attached and ready) has applied every write made so
    /// far: a durable write is acknowledged only when it would survive a switchover too. A
    /// standby still taking its copy or catching up is not waited for (the copy and the
    /// stream bring it these writes; it is ready once it has applied them).
    pub fn wait_replicated(&self) -> Replicated {
        let mut r = self.replica();
        if r.tx.is_none() {
            return Replicated::NoStandby;
        }
        if !r.ready {
            r.unwaited = r.unwaited.max(r.sent);
            return Replicated::NoStandby;
        }
        let (link, want) = (r.link, r.sent);
        // Given up only on a standby that makes no progress for `wait` (a slow one that
        // keeps acknowledging is waited for: its writers go at its pace).
        let mut until = Instant::now() + r.wait;
        let mut seen = r.acked;
        loop {
            if r.link != link || r.tx.is_none() {
                return Replicated::NoStandby;
            }
            if r.acked >= want {
                return Replicated::Acked;
            }
            let now = Instant::now();
            if r.acked > seen {
                seen = r.acked;
                until = now + r.wait;
            }
            if now >= until {
                // Given up: the link goes, and the standby copies everything when it is back.
                r.tx = None;
                r.link += 1;
                self.replica.1.notify_all();
                return Replicated::GaveUp;
            }
            r = self
                .replica
                .1
                .wait_timeout(r, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Every tree and its entries (the standby's first copy), the default tree excepted.
    pub fn snapshot(&self) -> Vec<Change> {
        let mut v = Vec::new();
        for name in self.db.tree_names() {
            if name.as_ref() == b"__sled__default" {
                continue;
            }
            let Ok(t) = self.db.open_tree(&name) else {
                continue;
            };
            let ops = t
                .iter()
                .filter_map(|e| e.ok())
                .map(|(k, val)| (k.to_vec(), Some(val.to_vec())))
                .collect();
            v.push(Change {
                tree: name.to_vec(),
                clear: true,
                ops,
                pos: 0,
            });
        }
        v
    }

    /// Apply a change from the active supervisor (atomically per change).
    pub fn apply(&self, c: &Change) -> Result<(), sled::Error> {
        let t = self.db.open_tree(&c.tree)?;
        if c.clear {
            t.clear()?;
        }
        let mut b = sled::Batch::default();
        for (k, v) in &c.ops {
            match v {
                Some(v) => b.insert(k.as_slice(), v.as_slice()),
                None => b.remove(k.as_slice()),
            }
        }
        t.apply_batch(b)
    }

    /// Watch sled from a thread of our own, against a deadlock of sled 0.34.7 (sled#1412): a
    /// writer holding sled's segment lock waits for a file truncation queued in sled's IO pool
    /// while every pool thread waits for that lock (and the pool's count of idle threads has
    /// wrapped below zero, so it never adds one). Every `every` a flush is queued as a probe;
    /// while one has not completed, `stuck` is called about every 100 ms with how long it has
    /// waited. Nothing inside the process can end that deadlock: the caller decides.
    pub fn start_watchdog(
        &self,
        every: Duration,
        stuck: impl Fn(Duration) + Send + 'static,
    ) -> std::io::Result<()> {
        let db = self.db.clone();
        std::thread::Builder::new()
            .name("sled-watchdog".into())
            .spawn(move || {
                use std::future::Future;
                use std::task::{Context, Waker};
                let mut cx = Context::from_waker(Waker::noop());
                loop {
                    std::thread::sleep(every);
                    // The first poll queues the flush in sled's pool.
                    let mut probe = Box::pin(db.flush_async());
                    let t0 = Instant::now();
                    let mut polls = 0u32;
                    while probe.as_mut().poll(&mut cx).is_pending() {
                        std::thread::sleep(Duration::from_millis(20));
                        polls += 1;
                        if polls.is_multiple_of(5) {
                            stuck(t0.elapsed());
                        }
                    }
                }
            })?;
        Ok(())
    }

    /// Every tree emptied (a standby about to take the active's copy).
    pub fn clear_all(&self) -> Result<(), sled::Error> {
        for name in self.db.tree_names() {
            if name.as_ref() == b"__sled__default" {
                continue;
            }
            self.db.open_tree(&name)?.clear()?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen() {
        let d = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(d.path()).expect("open");
            s.tree("sysmgr/test")
                .expect("tree")
                .insert(b"k", b"v".to_vec())
                .expect("insert");
            s.flush().expect("flush");
        }
        let s = Store::open(d.path()).expect("reopen");
        let v = s.tree("sysmgr/test").expect("tree").get(b"k").expect("get");
        assert_eq!(v.as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_flush_syncs_the_blob_file_sled_writes_a_large_value_to() {
        let d = tempfile::tempdir().expect("tempdir");
        let s = Store::open(d.path()).expect("open");
        assert_eq!(s.disk.synced_blobs(), 0);
        // Over a quarter of sled's 512 KiB segment: sled stores it in a file of its own, which
        // its own flush never syncs.
        s.tree("pss/x/private")
            .expect("tree")
            .insert(b"big", vec![7u8; 200 * 1024])
            .expect("insert");
        s.flush().expect("flush");
        assert!(
            std::fs::read_dir(d.path().join("blobs"))
                .expect("blobs")
                .count()
                > 0
        );
        assert!(s.disk.synced_blobs() > 0, "the blob file was not synced");
    }

    #[test]
    fn a_durable_write_waits_for_the_standby_and_gives_up_after_its_time() {
        let d = tempfile::tempdir().expect("tempdir");
        let s = Store::open(d.path()).expect("open");
        let t = s.tree("pss/x/private").expect("tree");
        assert_eq!(s.wait_replicated(), Replicated::NoStandby);
        let (tx, rx) = std::sync::mpsc::channel();
        let link = s.set_replica(Some((tx, Duration::from_millis(200))));
        s.replicate(&t, false, vec![(b"a".to_vec(), Some(b"1".to_vec()))]);
        s.replicate(&t, false, vec![(b"b".to_vec(), Some(b"2".to_vec()))]);
        let got: Vec<u64> = rx.try_iter().map(|c| c.pos).collect();
        assert_eq!(got, [1, 2]);
        // Until its copy is in (its first acknowledgement) the standby is not waited for; the
        // link is HA once it has also applied what was acknowledged without it.
        assert_eq!(s.wait_replicated(), Replicated::NoStandby);
        s.replica_acked(link, 1);
        assert!(!s.replica_ready());
        s.replica_acked(link, 2);
        assert!(s.replica_ready());
        s.replicate(&t, false, vec![(b"b".to_vec(), Some(b"2".to_vec()))]);
        s.replicate(&t, false, vec![(b"a".to_vec(), Some(b"1".to_vec()))]);
        let got: Vec<u64> = rx.try_iter().map(|c| c.pos).collect();
        assert_eq!(got, [3, 4]);
        // The standby acknowledges from another thread; an old link's word counts for nothing.
        let s2 = s.clone();
        let acker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            s2.replica_acked(link - 1, 4);
            s2.replica_acked(link, 3);
            std::thread::sleep(Duration::from_millis(20));
            s2.replica_acked(link, 4);
        });
        let t0 = Instant::now();
        assert_eq!(s.wait_replicated(), Replicated::Acked);
        assert!(t0.elapsed() >= Duration::from_millis(40));
        acker.join().expect("acker");
        // Nobody acknowledges the third: given up, and the link is gone.
        s.replicate(&t, false, vec![(b"c".to_vec(), Some(b"3".to_vec()))]);
        assert_eq!(s.wait_replicated(), Replicated::GaveUp);
        assert!(!s.replicating());
        assert_eq!(s.wait_replicated(), Replicated::NoStandby);
    }

    #[test]
    fn replay_continues_each_service_where_sled_stopped() {
        let d = tempfile::tempdir().expect("tempdir");
        let db = sled::open(d.path()).expect("sled");
        let meta = db.open_tree(META_TREE).expect("meta");
        meta.insert("a", meta_value(2, 0)).expect("seq");
        let rec = |service: &str, seq: u64, v: &[u8]| wal::Record {
            service: service.into(),
            seq,
            trees: vec![Change {
                tree: format!("pss/{service}/private").into_bytes(),
                clear: false,
                ops: vec![(b"k".to_vec(), Some(v.to_vec()))],
                pos: 0,
            }],
        };
        // "a" is at 2 in sled: 1 and 2 are skipped, 3 and 4 applied, 6 (5 is missing) not.
        // "b" has no sequence yet: its 1 applies.
        let r = replay(
            &db,
            vec![
                rec("a", 1, b"one"),
                rec("a", 2, b"two"),
                rec("b", 1, b"b1"),
                rec("a", 3, b"three"),
                rec("a", 4, b"four"),
                rec("a", 6, b"six"),
            ],
        )
        .expect("replay");
        assert_eq!(
            r,
            Replayed {
                applied: 3,
                skipped: 2,
                out_of_order: 1
            }
        );
        let got = |t: &str| db.open_tree(t).expect("tree").get(b"k").expect("get");
        assert_eq!(got("pss/a/private").as_deref(), Some(&b"four"[..]));
        assert_eq!(got("pss/b/private").as_deref(), Some(&b"b1"[..]));
    }

    /// Not a test: how long opening a store takes with a write-ahead log of N 4 KB records
    /// that sled does not have. `cargo test --release -p pss --lib replay_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn replay_cost() {
        for n in [500u64, 2000] {
            let d = tempfile::tempdir().expect("tempdir");
            {
                let (w, _) = wal::Wal::open(d.path()).expect("wal");
                let value = vec![7u8; 4096];
                let mut h = w.hold("a", true, || Ok(())).expect("hold").expect("armed");
                for seq in 1..=n {
                    let key = format!("key-{}", seq % 1000);
                    let meta = meta_value(seq, 0);
                    h.log(&wal::RecordRef {
                        service: "a",
                        seq,
                        trees: vec![
                            wal::ChangeRef {
                                tree: b"pss/a/private",
                                clear: false,
                                ops: vec![(
                                    serde_bytes::Bytes::new(key.as_bytes()),
                                    Some(serde_bytes::Bytes::new(&value)),
                                )],
                                pos: 0,
                            },
                            wal::ChangeRef {
                                tree: META_TREE.as_bytes(),
                                clear: false,
                                ops: vec![(
                                    serde_bytes::Bytes::new(b"a"),
                                    Some(serde_bytes::Bytes::new(&meta)),
                                )],
                                pos: 0,
                            },
                        ],
                    })
                    .expect("log");
                }
                drop(h);
                w.sync().expect("sync");
            }
            let t = Instant::now();
            let s = Store::open(d.path()).expect("open");
            let took = t.elapsed();
            assert_eq!(s.replayed().applied as u64, n);
            assert_eq!(
                s.tree("pss/a/private").expect("tree").len() as u64,
                n.min(1000)
            );
            eprintln!("{n} records replayed: open took {took:?}");
        }
    }
}
