//! PSS — the Persistent Storage Service: sysmgr's one sled database.
//!
//! sled allows one process per database, so sysmgr opens it once and every persistent part of the
//! product (the process log today; service checkpoints, persistent MTS queues later) is a tree in
//! it. Tree names follow DESIGN.md: `sysmgr/*`, `mts/*`, `pss/<service>/<scope>`.

pub mod client;
pub mod proto;
pub mod server;

use std::path::{Path, PathBuf};

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

/// Written when the database is created; its absence in an existing database means corruption.
const SENTINEL: &[u8] = b"sysmgr/created";

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One write as the standby supervisor applies it: a tree's puts (`Some`) and deletes
/// (`None`), all at once; `clear` empties the tree first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    pub tree: Vec<u8>,
    pub clear: bool,
    pub ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Where the writes of a store go besides sled (the link to the standby supervisor).
pub type ReplicaTx = std::sync::mpsc::Sender<Change>;

/// The sled database of one supervisor.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    replica: std::sync::Arc<std::sync::Mutex<Option<ReplicaTx>>>,
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
            .mode(sled::Mode::LowSpace)
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
        Ok(Store {
            db,
            path: dir.to_path_buf(),
            replica: Default::default(),
        })
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

    /// Flush everything to disk.
    pub fn flush(&self) -> Result<usize, sled::Error> {
        self.db.flush()
    }

    /// Send every write from now on to `tx` as well (None: stop). Every writer of the store
    /// calls [`Store::replicate`] after its write, in the order it wrote.
    pub fn set_replica(&self, tx: Option<ReplicaTx>) {
        *self.replica.lock().unwrap_or_else(|p| p.into_inner()) = tx;
    }

    /// Whether writes go to a standby.
    pub fn replicating(&self) -> bool {
        self.replica
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// A write just made to `tree`, for the standby. Cheap when there is none.
    pub fn replicate(&self, tree: &sled::Tree, clear: bool, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) {
        let mut g = self.replica.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = g.as_ref() {
            let c = Change {
                tree: tree.name().to_vec(),
                clear,
                ops,
            };
            if tx.send(c).is_err() {
                *g = None;
            }
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
}
