//! The persistent process log and core records (`show processes log`, `show cores`).
//!
//! Records live in sled trees of the supervisor's database, keyed by a big-endian sequence
//! number. Each is flushed as it is written, by the database's [`Flusher`] thread so that the
//! supervisor's thread never waits for the disk (a restart does not wait for its own record);
//! a reader waits for that flush ([`ProcLog::synced`]), so what `show processes log` shows has
//! reached the disk and survives sysmgr restart, reset and SIGKILL.

use serde::{Deserialize, Serialize};

use crate::config::StartKind;
use crate::error::SysmgrError;
use crate::flusher::Flusher;

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Death {
    /// Exited by itself with this status code.
    Exit(i32),
    /// Killed by a signal (a crash); `core` when the kernel dumped core.
    Signal { signal: i32, core: bool },
    /// Missed heartbeats; sysmgr killed it with `signal`.
    Unresponsive { signal: i32, silent_ms: u64 },
    /// Not ready within its start timeout; sysmgr killed it.
    StartTimeout,
    /// Stopped on request (shutdown, reload, operator restart).
    Stopped {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Not a service instance: a supervisor event (boot, reset).
    Supervisor,
    /// Not a death: the running instance quarantined poison input (DESIGN.md §4.5) and said
    /// so (`X_SYSMGR_QUARANTINE=` on its notify socket); the record's action says what.
    Quarantine,
}

impl Death {
    /// NX-OS "Normal-exit": the instance ended because it was asked to.
    pub fn normal(&self) -> bool {
        matches!(
            self,
            Death::Stopped { .. } | Death::Exit(0) | Death::Supervisor | Death::Quarantine
        )
    }
    pub fn signal(&self) -> Option<i32> {
        match self {
            Death::Signal { signal, .. } | Death::Unresponsive { signal, .. } => Some(*signal),
            Death::Stopped { signal, .. } => *signal,
            _ => None,
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Death::Exit(c) => format!("exited with code {c}"),
            Death::Signal { signal, core } => {
                format!(
                    "killed by signal {signal} ({}){}",
                    signal_name(*signal),
                    if *core { ", core dumped" } else { "" }
                )
            }
            Death::Unresponsive { signal, silent_ms } => {
                format!(
                    "unresponsive: no heartbeat for {silent_ms} ms, killed with signal {signal} ({})",
                    signal_name(*signal)
                )
            }
            Death::StartTimeout => "not ready within its start timeout".into(),
            Death::Stopped { code: Some(c), .. } => format!("stopped on request (exit code {c})"),
            Death::Stopped {
                signal: Some(s), ..
            } => format!("stopped on request (signal {s}, {})", signal_name(*s)),
            Death::Stopped { .. } => "stopped on request".into(),
            Death::Supervisor => "supervisor event".into(),
            Death::Quarantine => "running; quarantined poison input".into(),
        }
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str())
        .unwrap_or("unknown")
}

/// One process-log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    pub seq: u64,
    pub supervisor: String,
    pub service: String,
    pub pid: i32,
    pub start_kind: StartKind,
    /// Start count of the instance that ended.
    pub start_count: u32,
    /// Unix time in milliseconds.
    pub started_ms: u64,
    pub ended_ms: u64,
    pub death: Death,
    /// What sysmgr did about it (e.g. `stateful restart`, `supervisor reset`, `left down`).
    pub action: String,
    /// The policy in force (e.g. `primary: stateful, max-retries 3, min-lifetime 4m`).
    pub policy: String,
    /// The pid of the instance started in response, if any.
    pub new_pid: Option<i32>,
}

impl ProcRecord {
    pub fn uptime_ms(&self) -> u64 {
        self.ended_ms.saturating_sub(self.started_ms)
    }
}

/// One core record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreRecord {
    pub seq: u64,
    pub service: String,
    pub pid: i32,
    pub signal: i32,
    pub time_ms: u64,
    /// The last lines the instance wrote to stderr.
    pub stderr_tail: Vec<String>,
    /// The core file, when the kernel wrote one where we could find it.
    pub core_file: Option<String>,
}

/// The process log of one supervisor.
#[derive(Clone)]
pub struct ProcLog {
    store: pss::Store,
    records: sled::Tree,
    cores: sled::Tree,
    max: u64,
    flusher: Flusher,
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, SysmgrError> {
    mts::codec::encode(v).map_err(|e| SysmgrError::Codec(e.to_string()))
}

impl ProcLog {
    pub fn open(store: &pss::Store, max: u64, flusher: Flusher) -> Result<ProcLog, SysmgrError> {
        Ok(ProcLog {
            store: store.clone(),
            records: store.tree("sysmgr/proclog")?,
            cores: store.tree("sysmgr/cores")?,
            max,
            flusher,
        })
    }

    /// Resolves once every record written so far is on disk.
    pub fn synced(&self) -> impl Future<Output = ()> + Send + 'static {
        self.flusher.synced()
    }

    /// Flush every record on the calling thread (on the supervisor's way out).
    pub fn sync_now(&self) -> Result<(), SysmgrError> {
        self.flusher.sync_now().map_err(SysmgrError::Db)
    }

    fn put(&self, tree: &sled::Tree, seq: u64, bytes: Vec<u8>) -> Result<(), SysmgrError> {
        let key = seq.to_be_bytes().to_vec();
        tree.insert(&key, bytes.clone()).map_err(SysmgrError::Db)?;
        let mut ops = vec![(key, Some(bytes))];
        while tree.len() as u64 > self.max {
            match tree.pop_min().map_err(SysmgrError::Db)? {
                Some((k, _)) => ops.push((k.to_vec(), None)),
                None => break,
            }
        }
        self.flusher.dirty();
        self.store.replicate(tree, false, ops);
        Ok(())
    }

    /// The next record number: after both the database's ids and the last record (records
    /// replicated from the other supervisor carry its numbers).
    fn next_seq(&self, tree: &sled::Tree) -> Result<u64, SysmgrError> {
        let id = self.store.next_id().map_err(SysmgrError::Db)?;
        let last = tree
            .last()
            .map_err(SysmgrError::Db)?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        Ok(id.max(last + 1))
    }

    /// Append a record (its `seq` is assigned here) and flush it to disk.
    pub fn append(&self, mut rec: ProcRecord) -> Result<u64, SysmgrError> {
        rec.seq = self.next_seq(&self.records)?;
        self.put(&self.records, rec.seq, enc(&rec)?)?;
        Ok(rec.seq)
    }

    pub fn append_core(&self, mut rec: CoreRecord) -> Result<u64, SysmgrError> {
        rec.seq = self.next_seq(&self.cores)?;
        self.put(&self.cores, rec.seq, enc(&rec)?)?;
        Ok(rec.seq)
    }

    fn all<T: serde::de::DeserializeOwned>(tree: &sled::Tree) -> Vec<T> {
        tree.iter()
            .values()
            .filter_map(|v| v.ok())
            .filter_map(|v| mts::codec::decode(&v).ok())
            .collect()
    }

    /// All records, oldest first.
    pub fn records(&self) -> Vec<ProcRecord> {
        Self::all(&self.records)
    }

    pub fn cores(&self) -> Vec<CoreRecord> {
        Self::all(&self.cores)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
