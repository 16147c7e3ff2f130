//! The write-ahead log that makes a `durable` PSS write durable without flushing sled.
//!
//! sled 0.34.7 makes a write durable by writing its whole log buffer out and waiting for it
//! (`sync_file_range`), and then `disk.rs` adds the `fdatasync` that also commits the log's
//! growing size to the filesystem's journal: two trips to the disk per group commit. Here a
//! durable write is also recorded in a file of ours that was filled with zeros when it was
//! made (the request thread copies the record to memory; the group commit writes what is
//! waiting), so its `fdatasync` writes only the new records: no size change, no journal
//! commit. On this machine that is 136–146 µs for 64 KiB against 219–238 µs for an append to a
//! growing file, which is what Redis's AOF does (`sysmgr-bench fsync`).
//!
//! Only services that write durably are logged ("armed"): a service's first durable write
//! flushes sled first (so everything it wrote before is on disk), and from then on every write
//! of that service, `fast` ones too, is logged after it is applied, until a checkpoint retires
//! a file in whose time, and since, it made no durable write (a second or more without one).
//!
//! **Replay.** Each record carries the service's checkpoint sequence number, and the sequence
//! is stored in sled with the write. At boot, sled recovers a prefix of what it was given; a
//! record is replayed only if its sequence is the one after the service's sequence in sled,
//! so it continues exactly where sled stopped. A record sled already has is skipped, whatever
//! was lost of the log's tail (a power cut) or of sled's.
//!
//! **Checkpoints.** There are two files. When the active one is a quarter full or its first
//! record is a second old, it is synced and the other becomes active (a higher epoch); sled is
//! flushed, which puts every record of the old file into sled for good; then the old file's
//! header is zeroed. At boot, the files with a valid header are replayed by epoch.
//!
//! Format (little-endian): a 4 KiB header `SYSMGRWL`, epoch u64, CRC-32 of both; then records:
//! length u32, CRC-32 u32 of (epoch, payload), epoch u64, payload (the codec's encoding of a
//! [`Record`]). Replay of a file stops at the first record that is short, from another epoch,
//! or fails its CRC.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Bytes of each of the two files.
pub(crate) const FILE_BYTES: u64 = 32 << 20;
/// A checkpoint is wanted once the active file holds this much...
const CHECKPOINT_BYTES: u64 = FILE_BYTES / 4;
/// ...or its first record is this old.
pub(crate) const CHECKPOINT_AGE: Duration = Duration::from_secs(1);
const HEADER: u64 = 4096;
const MAGIC: &[u8; 8] = b"SYSMGRWL";
const NAMES: [&str; 2] = ["pss-wal-0", "pss-wal-1"];

/// One write of one service, as replayed: its sequence, then each tree's puts (`Some`) and
/// deletes (`None`), `clear` first when set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub service: String,
    pub seq: u64,
    pub trees: Vec<crate::Change>,
}

/// The same, borrowed from the write being logged (encodes to the same bytes).
#[derive(Serialize)]
pub(crate) struct RecordRef<'a> {
    pub service: &'a str,
    pub seq: u64,
    pub trees: Vec<ChangeRef<'a>>,
}

#[derive(Serialize)]
pub(crate) struct ChangeRef<'a> {
    #[serde(with = "serde_bytes")]
    pub tree: &'a [u8],
    pub clear: bool,
    pub ops: Vec<(&'a serde_bytes::Bytes, Option<&'a serde_bytes::Bytes>)>,
    pub pos: u64,
}

struct Files {
    f: [File; 2],
    /// Index of the active file.
    active: usize,
    /// Its epoch.
    epoch: u64,
    /// Where its next record goes.
    end: u64,
    /// Records logged and not written to the file yet (they start at `end - pending.len()`):
    /// the request threads only copy a record here; the file is written by whoever syncs it.
    pending: Vec<u8>,
    /// When its first record was written.
    first: Option<Instant>,
}

struct Inner {
    /// Made at the first durable write (most stores never have one).
    files: Option<Files>,
    /// The epoch the files start at when they are made.
    next_epoch: u64,
    /// Services whose writes are logged.
    armed: HashSet<String>,
    /// Services with a durable write in the active file...
    durable: HashSet<String>,
    /// ...and in the file before it, until it is retired: a service is logged until a whole
    /// file's time (a second or more) passes without a durable write of it.
    durable_before: HashSet<String>,
    /// A write to the active file failed: what follows the hole it left would not be read at
    /// boot, so syncs fail (their callers flush sled instead) until the next file starts.
    broken: bool,
}

pub(crate) struct Wal {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Held while records are written to a file and synced (before `inner`), so that they
    /// reach each file in order.
    io: Mutex<()>,
    /// Signalled when a checkpoint is wanted.
    wanted: Condvar,
}

/// The log locked for one service's write: what it applies meanwhile is logged in its order.
pub(crate) struct Held<'a> {
    wal: &'a Wal,
    g: MutexGuard<'a, Inner>,
}

fn crc(epoch: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&epoch.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn header(epoch: u64) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&epoch.to_le_bytes());
    let c = crc32fast::hash(&h[..16]);
    h[16..].copy_from_slice(&c.to_le_bytes());
    h
}

/// The epoch of a file's valid header.
fn read_header(f: &File) -> io::Result<Option<u64>> {
    let mut h = [0u8; 20];
    match f.read_exact_at(&mut h, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let c = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
    if &h[..8] != MAGIC || crc32fast::hash(&h[..16]) != c {
        return Ok(None);
    }
    Ok(Some(u64::from_le_bytes(
        h[8..16].try_into().unwrap_or([0; 8]),
    )))
}

/// The records of a file of epoch `epoch`, up to the first that does not check.
fn read_records(f: &File, epoch: u64) -> io::Result<Vec<Record>> {
    let len = f.metadata()?.len();
    let mut out = Vec::new();
    let mut at = HEADER;
    let mut head = [0u8; 16];
    while at + 16 <= len {
        f.read_exact_at(&mut head, at)?;
        let n = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
        let c = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let e = u64::from_le_bytes(head[8..16].try_into().unwrap_or([0; 8]));
        if n == 0 || e != epoch || at + 16 + n > len {
            break;
        }
        let mut payload = vec![0u8; n as usize];
        f.read_exact_at(&mut payload, at + 16)?;
        if crc(e, &payload) != c {
            break;
        }
        match mts::codec::decode::<Record>(&payload) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
        at += 16 + n;
    }
    Ok(out)
}

fn open_file(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

impl Wal {
    /// The log in `dir`, and the records of its valid files in the order they were written.
    /// Nothing is logged until [`Wal::reset`] after they are replayed.
    pub(crate) fn open(dir: &Path) -> io::Result<(Wal, Vec<Record>)> {
        let mut found = Vec::new();
        let mut max_epoch = 0;
        for name in NAMES {
            let f = match open_file(&dir.join(name), false) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if let Some(epoch) = read_header(&f)? {
                max_epoch = max_epoch.max(epoch);
                found.push((epoch, f));
            }
        }
        found.sort_by_key(|(e, _)| *e);
        let mut records = Vec::new();
        for (epoch, f) in &found {
            records.extend(read_records(f, *epoch)?);
        }
        let wal = Wal {
            dir: dir.to_path_buf(),
            io: Mutex::new(()),
            inner: Mutex::new(Inner {
                files: None,
                next_epoch: max_epoch + 1,
                armed: HashSet::new(),
                durable: HashSet::new(),
                durable_before: HashSet::new(),
                broken: false,
            }),
            wanted: Condvar::new(),
        };
        Ok((wal, records))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every record replayed and flushed into sled: no file is valid any more.
    pub(crate) fn reset(&self) -> io::Result<()> {
        for name in NAMES {
            match open_file(&self.dir.join(name), false) {
                Ok(f) => {
                    f.write_all_at(&[0u8; 20], 0)?;
                    f.sync_data()?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether `service`'s writes are logged.
    #[cfg(test)]
    pub(crate) fn armed(&self, service: &str) -> bool {
        self.lock().armed.contains(service)
    }

    /// Lock the log for a write of `service` if it is armed, or arm it for a durable write:
    /// `flush` (sled's) runs first then, so what it wrote before is on disk without the log.
    pub(crate) fn hold(
        &self,
        service: &str,
        durable: bool,
        flush: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<Option<Held<'_>>> {
        let g = self.lock();
        if g.armed.contains(service) {
            let mut h = Held { wal: self, g };
            if durable {
                h.g.durable.insert(service.to_string());
            }
            return Ok(Some(h));
        }
        if !durable {
            return Ok(None);
        }
        drop(g);
        flush()?;
        let mut g = self.lock();
        if g.files.is_none() {
            g.files = Some(self.make_files(g.next_epoch)?);
        }
        g.armed.insert(service.to_string());
        g.durable.insert(service.to_string());
        Ok(Some(Held { wal: self, g }))
    }

    /// Both files, filled with zeros, the first active at `epoch`.
    fn make_files(&self, epoch: u64) -> io::Result<Files> {
        let zeros = vec![0u8; 1 << 20];
        let mut f = Vec::with_capacity(2);
        for name in NAMES {
            let file = open_file(&self.dir.join(name), true)?;
            if file.metadata()?.len() < FILE_BYTES {
                let mut at = 0;
                while at < FILE_BYTES {
                    file.write_all_at(&zeros, at)?;
                    at += zeros.len() as u64;
                }
            }
            file.sync_all()?;
            f.push(file);
        }
        std::fs::File::open(&self.dir)?.sync_all()?;
        let [a, b]: [File; 2] = f
            .try_into()
            .map_err(|_| io::Error::other("two files expected"))?;
        a.write_all_at(&header(epoch), 0)?;
        a.sync_data()?;
        Ok(Files {
            f: [a, b],
            active: 0,
            epoch,
            end: HEADER,
            pending: Vec::new(),
            first: None,
        })
    }

    /// Write and sync everything logged so far (a group commit).
    pub(crate) fn sync(&self) -> io::Result<()> {
        let _io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let (f, buf, at) = {
            let mut g = self.lock();
            if g.broken {
                return Err(io::Error::other("the write-ahead log has a hole"));
            }
            let Some(files) = g.files.as_mut() else {
                return Ok(());
            };
            if files.pending.is_empty() {
                // Written and synced by the previous holder of `io`.
                return Ok(());
            }
            let buf = std::mem::take(&mut files.pending);
            let at = files.end - buf.len() as u64;
            (files.f[files.active].try_clone(), buf, at)
        };
        let r = f.and_then(|f| {
            f.write_all_at(&buf, at)?;
            f.sync_data()
        });
        if r.is_err() {
            self.lock().broken = true;
        }
        r
    }

    /// Whether the active file wants a checkpoint: a quarter full, or its first record a
    /// [`CHECKPOINT_AGE`] old. Else how long until it does (None: no record yet).
    fn wanted_in(g: &Inner) -> Result<(), Option<Duration>> {
        let Some(f) = &g.files else {
            return Err(None);
        };
        let Some(first) = f.first else {
            return Err(None);
        };
        let age = first.elapsed();
        if f.end - HEADER >= CHECKPOINT_BYTES || age >= CHECKPOINT_AGE {
            return Ok(());
        }
        Err(Some(CHECKPOINT_AGE - age))
    }

    #[cfg(test)]
    pub(crate) fn wants_checkpoint(&self) -> bool {
        Self::wanted_in(&self.lock()).is_ok()
    }

    /// Wait up to `timeout` for a checkpoint to be wanted (the first record of a file and a
    /// quarter-full file wake the wait; so does the age of the first record).
    pub(crate) fn wait_wanted(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            let left = match Self::wanted_in(&g) {
                Ok(()) => return true,
                Err(in_) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    in_.map_or(left, |d| d.min(left))
                }
            };
            g = self
                .wanted
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Move to the other file: the active one is synced and a new epoch starts in the other.
    /// Returns the old file, to be invalidated with [`Wal::retire`] once sled is flushed.
    pub(crate) fn switch(&self) -> io::Result<Option<File>> {
        let _io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let mut g = self.lock();
        let Some(files) = g.files.as_mut() else {
            return Ok(None);
        };
        let buf = std::mem::take(&mut files.pending);
        let at = files.end - buf.len() as u64;
        let f = &files.f[files.active];
        if let Err(e) = f.write_all_at(&buf, at).and_then(|()| f.sync_data()) {
            // The file may have a hole where these records were to go: the caller flushes
            // sled, and syncs fail (their callers flush sled) until a switch succeeds.
            g.broken = true;
            return Err(e);
        }
        let old = files.f[files.active].try_clone()?;
        let next = 1 - files.active;
        let epoch = files.epoch + 1;
        files.f[next].write_all_at(&header(epoch), 0)?;
        files.f[next].sync_data()?;
        files.active = next;
        files.epoch = epoch;
        files.end = HEADER;
        files.first = None;
        g.next_epoch = epoch + 1;
        g.durable_before = std::mem::take(&mut g.durable);
        g.broken = false;
        Ok(Some(old))
    }

    /// The old file's records are in sled for good: zero its header, and stop logging the
    /// services that made no durable write in its time or since.
    pub(crate) fn retire(&self, old: &File) -> io::Result<()> {
        old.write_all_at(&[0u8; 20], 0)?;
        old.sync_data()?;
        let mut g = self.lock();
        let Inner {
            armed,
            durable,
            durable_before,
            ..
        } = &mut *g;
        armed.retain(|s| durable.contains(s) || durable_before.contains(s));
        durable_before.clear();
        Ok(())
    }
}

impl Held<'_> {
    /// Append one record (to memory: the next [`Wal::sync`] or switch writes it). Err: it did
    /// not fit; the caller makes the write durable another way (sled's flush), so that the
    /// service's records stay contiguous.
    pub(crate) fn log(&mut self, record: &RecordRef<'_>) -> io::Result<()> {
        let payload = mts::codec::encode(record).map_err(|e| io::Error::other(e.to_string()))?;
        let files = self
            .g
            .files
            .as_mut()
            .ok_or_else(|| io::Error::other("the log has no files"))?;
        let n = payload.len() as u64;
        if files.end + 16 + n > FILE_BYTES || n > u64::from(u32::MAX) {
            return Err(io::Error::other("the log file is full"));
        }
        let buf = &mut files.pending;
        buf.extend_from_slice(&(n as u32).to_le_bytes());
        buf.extend_from_slice(&crc(files.epoch, &payload).to_le_bytes());
        buf.extend_from_slice(&files.epoch.to_le_bytes());
        buf.extend_from_slice(&payload);
        let was = files.end - HEADER;
        files.end += 16 + n;
        if files.first.is_none() {
            files.first = Some(Instant::now());
            self.wal.wanted.notify_all();
        } else if was < CHECKPOINT_BYTES && files.end - HEADER >= CHECKPOINT_BYTES {
            self.wal.wanted.notify_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec<'a>(service: &'a str, seq: u64, k: &'a [u8], v: Option<&'a [u8]>) -> RecordRef<'a> {
        RecordRef {
            service,
            seq,
            trees: vec![ChangeRef {
                tree: b"pss/a/private",
                clear: false,
                ops: vec![(serde_bytes::Bytes::new(k), v.map(serde_bytes::Bytes::new))],
                pos: 0,
            }],
        }
    }

    fn ok() -> io::Result<()> {
        Ok(())
    }

    #[test]
    fn records_come_back_in_order_across_a_switch_and_not_after_a_retire() {
        let d = tempfile::tempdir().expect("tempdir");
        let (wal, found) = Wal::open(d.path()).expect("open");
        assert!(found.is_empty());
        assert!(
            wal.hold("a", false, ok).expect("hold").is_none(),
            "not armed"
        );
        let mut flushed = 0;
        let mut h = wal
            .hold("a", true, || {
                flushed += 1;
                Ok(())
            })
            .expect("hold")
            .expect("armed");
        h.log(&rec("a", 1, b"k", Some(b"v1"))).expect("log");
        drop(h);
        assert_eq!(flushed, 1);
        // Armed: a fast write is logged too, without another flush.
        let mut h = wal.hold("a", false, ok).expect("hold").expect("armed");
        h.log(&rec("a", 2, b"k", None)).expect("log");
        drop(h);
        let old = wal.switch().expect("switch").expect("files");
        let mut h = wal.hold("a", false, ok).expect("hold").expect("armed");
        h.log(&rec("a", 3, b"j", Some(b"x"))).expect("log");
        drop(h);
        wal.sync().expect("sync");
        let (_, found) = Wal::open(d.path()).expect("reopen");
        let seqs: Vec<u64> = found.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(found[1].trees[0].ops, vec![(b"k".to_vec(), None)]);
        // Retired: the old file's records are gone. "a" wrote durably in its time: still
        // logged, until a whole file's time passes without a durable write.
        wal.retire(&old).expect("retire");
        assert!(wal.armed("a"));
        let (_, found) = Wal::open(d.path()).expect("reopen");
        assert_eq!(found.iter().map(|r| r.seq).collect::<Vec<_>>(), [3]);
        let old = wal.switch().expect("switch").expect("files");
        wal.retire(&old).expect("retire");
        assert!(!wal.armed("a"));
        wal.reset().expect("reset");
        assert!(Wal::open(d.path()).expect("reopen").1.is_empty());
    }

    #[test]
    fn a_torn_or_stale_tail_ends_the_replay() {
        let d = tempfile::tempdir().expect("tempdir");
        let (wal, _) = Wal::open(d.path()).expect("open");
        let mut h = wal.hold("a", true, ok).expect("hold").expect("armed");
        for s in 1..=3 {
            h.log(&rec("a", s, b"k", Some(b"v"))).expect("log");
        }
        let end = h.g.files.as_ref().expect("files").end;
        drop(h);
        wal.sync().expect("sync");
        let path = d.path().join(NAMES[0]);
        let f = open_file(&path, false).expect("file");
        // Flip a byte of the last record's payload: the first two stand.
        f.write_all_at(&[0xff], end - 1).expect("corrupt");
        let (_, found) = Wal::open(d.path()).expect("reopen");
        assert_eq!(found.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        // Two switches later the same file is active again at a higher epoch: the records of
        // its previous epoch behind the new ones are not read.
        let old = wal.switch().expect("switch").expect("files");
        wal.retire(&old).expect("retire");
        let old = wal.switch().expect("switch").expect("files");
        wal.retire(&old).expect("retire");
        let mut h = wal.hold("a", true, ok).expect("hold").expect("armed");
        h.log(&rec("a", 9, b"k", Some(b"v"))).expect("log");
        drop(h);
        wal.sync().expect("sync");
        let (_, found) = Wal::open(d.path()).expect("reopen");
        assert_eq!(found.iter().map(|r| r.seq).collect::<Vec<_>>(), [9]);
    }

    #[test]
    fn a_full_file_refuses_the_record() {
        let d = tempfile::tempdir().expect("tempdir");
        let (wal, _) = Wal::open(d.path()).expect("open");
        let mut h = wal.hold("a", true, ok).expect("hold").expect("armed");
        let big = vec![1u8; (FILE_BYTES / 2) as usize];
        h.log(&rec("a", 1, b"k", Some(&big))).expect("fits");
        assert!(h.log(&rec("a", 2, b"k", Some(&big))).is_err());
        drop(h);
        assert!(wal.wants_checkpoint());
    }
}
