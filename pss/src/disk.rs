//! What sled's flush leaves out, so that a write acknowledged as durable survives a power cut
//! and not only a crash of the process.
//!
//! sled 0.34.7 makes its log stable with `sync_file_range`: the pages reach the device, but
//! its volatile write cache is not flushed, nor the file's metadata (the log's size, as it
//! grows); and the files it writes large items to (`blobs/`, anything over a quarter of a
//! segment) are never synced at all (sled#1452, sled#1351). After sled's flush, [`Disk::sync`]
//! syncs the blob files written since the last call and their directory, then the log with
//! `fdatasync`, which also flushes the device's cache: the same guarantee as Redis's
//! `appendfsync always`.
//!
//! sled writes its log before this runs, so a log record may become durable before the blob
//! it points to; that order is sled's and this does not change it. What it does guarantee is
//! that a write is acknowledged only once both are synced.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The files of one sled database that [`Disk::sync`] makes durable.
pub(crate) struct Disk {
    log: File,
    blobs: PathBuf,
    /// Names of the blob files already synced (sled names them by log sequence number, but
    /// two writers may finish theirs out of order, so this is a set, not a high-water mark).
    synced: Mutex<HashSet<std::ffi::OsString>>,
}

impl Disk {
    /// The database in `dir`, just opened by sled: syncs `dir` itself (for the entries sled
    /// may have just created in it) and everything in the database so far.
    pub(crate) fn open(dir: &Path) -> io::Result<Disk> {
        let log = File::open(dir.join("db"))?;
        File::open(dir)?.sync_all()?;
        let disk = Disk {
            log,
            blobs: dir.join("blobs"),
            synced: Mutex::new(HashSet::new()),
        };
        disk.sync()?;
        Ok(disk)
    }

    /// How many blob files the last [`Disk::sync`] found synced.
    #[cfg(test)]
    pub(crate) fn synced_blobs(&self) -> usize {
        self.synced.lock().map_or(0, |s| s.len())
    }

    /// Sync every blob file not synced yet, their directory, then the log.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.sync_blobs()?;
        self.log.sync_data()
    }

    fn sync_blobs(&self) -> io::Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        let present: HashSet<_> = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(e),
        };
        let mut new = false;
        for name in present.difference(&synced) {
            match File::open(self.blobs.join(name)) {
                Ok(f) => f.sync_data()?,
                // Removed by sled meanwhile: nothing to keep.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            new = true;
        }
        if new {
            File::open(&self.blobs)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_each_blob_once_and_forgets_removed_ones() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("db"), b"log").expect("db");
        std::fs::create_dir(d.path().join("blobs")).expect("blobs");
        let disk = Disk::open(d.path()).expect("open");
        disk.sync().expect("sync, no blobs");
        std::fs::write(d.path().join("blobs/10"), b"a").expect("blob");
        std::fs::write(d.path().join("blobs/7"), b"b").expect("blob");
        disk.sync().expect("sync");
        let names = |disk: &Disk| {
            let mut v: Vec<String> = disk
                .synced
                .lock()
                .expect("lock")
                .iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&disk), ["10", "7"]);
        std::fs::remove_file(d.path().join("blobs/10")).expect("rm");
        disk.sync().expect("sync after a removal");
        assert_eq!(names(&disk), ["7"]);
    }

    #[test]
    fn a_database_without_its_log_file_is_an_error() {
        let d = tempfile::tempdir().expect("tempdir");
        assert!(Disk::open(d.path()).is_err());
    }
}
