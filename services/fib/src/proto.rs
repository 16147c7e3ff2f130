//! The fib SAP's messages over MTS (producers such as BGP, the CLI, shows).
//!
//! | opcode | request → response |
//! |---|---|
//! | [`OP_UPDATE`] | [`Update`] → `Result<(), String>` (answered once checkpointed and programmed) |
//! | [`OP_PRODUCER_START`] | producer name → `Result<u64, String>` (routes marked stale) |
//! | [`OP_END_OF_RIB`] | producer name → `Result<u64, String>` (stale routes swept) |
//! | [`OP_SHOW_ROUTES`] | `Option<Prefix>` → `Vec<RouteRow>` |
//! | [`OP_SHOW_CEF`] | [`Prefix`] → `Result<Cef, String>` |
//! | [`OP_CLEAR_ROUTE`] | [`Prefix`] → `Result<(), String>` |

use serde::{Deserialize, Serialize};

pub use crate::table::{Path, Prefix};

pub const SAP_NAME: &str = "fib";
pub const OP_UPDATE: u32 = 1;
pub const OP_PRODUCER_START: u32 = 2;
pub const OP_END_OF_RIB: u32 = 3;
pub const OP_SHOW_ROUTES: u32 = 4;
pub const OP_SHOW_CEF: u32 = 5;
pub const OP_CLEAR_ROUTE: u32 = 6;

/// Routes that share their paths and sticky flag: a full table from one upstream is one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteGroup {
    pub paths: Vec<Path>,
    /// Sticky ECMP requested by the producer (BGP sets it from its configuration).
    pub sticky: bool,
    pub prefixes: Vec<Prefix>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub producer: String,
    pub announce: Vec<RouteGroup>,
    pub withdraw: Vec<Prefix>,
}

/// One row of `show ip route`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    pub prefix: Prefix,
    pub producer: String,
    pub paths: Vec<Path>,
    pub sticky: bool,
    pub stale: bool,
    /// The kernel nexthop id the route uses (None: not installed).
    pub nh_id: Option<u32>,
}

/// One bucket of a sticky route's load distribution table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRow {
    pub index: usize,
    pub path: Path,
    /// The bucket moved off its original path (`*`).
    pub replaced: bool,
    /// The slot nexthop that carries it.
    pub slot_nh: Option<u32>,
}

/// `show cef PREFIX detail`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cef {
    pub route: RouteRow,
    pub buckets: Vec<BucketRow>,
    pub auto_recovery: bool,
}
