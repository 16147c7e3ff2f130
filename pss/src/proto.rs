//! Requests to the built-in SAP `pss` (opcode [`OP_PSS`]) and their responses.

use serde::{Deserialize, Serialize};

/// The one opcode of SAP `pss`.
pub const OP_PSS: u32 = 1;

/// NX-OS PSS scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// Only the owner reads and writes.
    Private,
    /// The owner writes; every service on this supervisor reads.
    SharedLocal,
    /// Like shared-local, and replicated to the other supervisor (two-supervisor issue).
    SharedGlobal,
}

impl Scope {
    pub fn word(self) -> &'static str {
        match self {
            Scope::Private => "private",
            Scope::SharedLocal => "local",
            Scope::SharedGlobal => "global",
        }
    }
    pub const ALL: [Scope; 3] = [Scope::Private, Scope::SharedLocal, Scope::SharedGlobal];

    /// `private`, `local` / `shared-local`, `global` / `shared-global`.
    pub fn parse(w: &str) -> Option<Scope> {
        match w {
            "private" => Some(Scope::Private),
            "local" | "shared-local" => Some(Scope::SharedLocal),
            "global" | "shared-global" => Some(Scope::SharedGlobal),
            _ => None,
        }
    }
}

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Durability {
    /// In sled's memory; flushed by sled within its flush interval.
    Fast,
    /// On disk (group commit: concurrent writers share one flush).
    Durable,
}

/// One step of an atomic write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Compare-and-swap: proceed only if the key currently holds `expect` (None = absent);
    /// then set it to `new` (None = delete).
    Cas {
        key: Vec<u8>,
        expect: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Read a key; `service` None means the caller's own.
    Get {
        service: Option<String>,
        scope: Scope,
        key: Vec<u8>,
    },
    /// Keys starting with `prefix`, in order, at most `limit`.
    Scan {
        service: Option<String>,
        scope: Scope,
        prefix: Vec<u8>,
        limit: u32,
    },
    /// Apply `ops` to the caller's own keys, all or nothing; one checkpoint.
    Write {
        scope: Scope,
        ops: Vec<Op>,
        durability: Durability,
    },
    /// The caller's latest checkpoint sequence number.
    Seq,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Value(Option<Vec<u8>>),
    Entries(Vec<(Vec<u8>, Vec<u8>)>),
    /// The write was applied as checkpoint `seq`.
    Written {
        seq: u64,
    },
    /// A compare-and-swap did not match: nothing was applied.
    CasFailed {
        key: Vec<u8>,
        current: Option<Vec<u8>>,
    },
    Seq(u64),
}
