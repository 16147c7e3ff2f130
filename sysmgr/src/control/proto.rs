//! Requests to the built-in SAP `sysmgr` and their responses (MTS payloads).

use serde::{Deserialize, Serialize};

use crate::proclog::{CoreRecord, ProcRecord};

/// Opcode of a control request to SAP `sysmgr`.
pub const OP_CONTROL: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    ShowProcesses,
    /// The process log; `pid` restricts it to one instance.
    ShowProcessLog {
        pid: Option<i32>,
    },
    ShowCores,
    ShowService {
        name: String,
    },
    Restart {
        name: String,
        stateless: bool,
    },
    Reload,
    ShowMtsSap,
    ShowMtsQueues,
    ShowMtsDeadLetter,
    ShowPss,
    ShowPssService {
        name: String,
        scope: Option<String>,
        key: Option<String>,
    },
    ClearPss {
        name: String,
    },
    /// `show system redundancy status`
    ShowRedundancy,
    /// `system switchover`: the active hands over to the standby.
    Switchover,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Processes(Vec<ProcessRow>),
    ProcessLog {
        records: Vec<ProcRecord>,
        cores: Vec<CoreRecord>,
    },
    Cores(Vec<CoreRecord>),
    Service(Box<ServiceDetail>),
    Done(String),
    MtsSaps(Vec<crate::broker::SapRow>),
    MtsQueues(Vec<crate::broker::QueueRow>),
    MtsDead(Vec<crate::broker::DeadLetter>),
    Pss(Vec<pss::server::Usage>),
    PssEntries(Vec<PssEntry>),
    Redundancy(Box<RedundancyStatus>),
}

/// `show system redundancy status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedundancyStatus {
    /// `HA` with two supervisors configured, else `Simplex`.
    pub administrative: String,
    /// `HA` while a standby follows the active, else `Simplex`.
    pub operational: String,
    pub this: SupStatus,
    pub other: SupStatus,
    /// Takeovers so far (the arbiter's count).
    pub epoch: u64,
    pub lock_file: Option<String>,
    /// Changes streamed by the active and applied by the standby.
    pub replication_sent: u64,
    pub replication_applied: u64,
    /// This supervisor's role since (Unix ms).
    pub since_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupStatus {
    pub name: String,
    /// Active, Standby, Not present.
    pub redundancy_state: String,
    /// Active, HA standby, Not present.
    pub supervisor_state: String,
    pub internal_state: String,
    pub pid: Option<i32>,
}

/// One key of `show pss service NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PssEntry {
    pub scope: String,
    /// The key, as text where it is UTF-8.
    pub key: String,
    pub bytes: usize,
    /// The first 64 bytes of the value, in hex.
    pub value_hex: String,
}

/// One line of `show processes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRow {
    pub name: String,
    pub pid: Option<i32>,
    pub state: String,
    pub start_count: u32,
    pub uptime_ms: Option<u64>,
    pub start_kind: Option<String>,
    pub status: String,
}

/// `show system internal sysmgr service name NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDetail {
    pub name: String,
    pub supervisor: String,
    pub policy_file: String,
    pub command: Vec<String>,
    pub state: String,
    pub pid: Option<i32>,
    pub start_count: u32,
    pub start_kind: Option<String>,
    pub uptime_ms: Option<u64>,
    pub ready: bool,
    pub status: String,
    pub depends_on: Vec<String>,
    pub restart_kinds: Vec<String>,
    pub readiness: String,
    pub heartbeat: Option<String>,
    /// The level in force (primary/secondary/default).
    pub policy_level: String,
    /// The policy in force, rendered.
    pub policy_in_force: String,
    pub policies: Vec<String>,
    pub retries_left: Option<u32>,
    pub min_lifetime_floor: String,
    pub floor_lowered: bool,
    pub last_failure: Option<String>,
    pub last_failure_ms: Option<u64>,
    pub stored_fds: Vec<String>,
}
