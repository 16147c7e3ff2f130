//! The bgp SAP's messages over MTS (shows).
//!
//! | opcode | request → response |
//! |---|---|
//! | [`OP_SHOW_SUMMARY`] | `()` → [`Summary`] |
//! | [`OP_SHOW_ROUTES`] | `Option<Prefix>` → `Vec<RouteRow>` |
//! | [`OP_CLEAR_SOFT`] | `(Ipv4Addr, bool inbound)` → `Result<String, String>` |

use std::net::{IpAddr, Ipv4Addr};

use fib::proto::Prefix;
use serde::{Deserialize, Serialize};

pub const SAP_NAME: &str = "bgp";
pub const OP_SHOW_SUMMARY: u32 = 1;
pub const OP_SHOW_ROUTES: u32 = 2;
/// `clear bgp ADDR soft in|out`: in asks the neighbour for a ROUTE-REFRESH of its routes, out
/// sends it our Adj-RIB-Out again; neither resets the session.
pub const OP_CLEAR_SOFT: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighborRow {
    pub addr: Ipv4Addr,
    pub remote_as: u32,
    pub state: String,
    /// Seconds in the current state (Established) or since the last change.
    pub up_secs: u64,
    pub prefixes_received: usize,
    /// Prefixes in this neighbour's Adj-RIB-Out.
    pub prefixes_sent: usize,
    pub msgs_in: u64,
    pub msgs_out: u64,
    pub flaps: u32,
    pub router_id: Option<Ipv4Addr>,
    pub hold_time: u16,
    pub end_of_rib_received: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub router_id: Ipv4Addr,
    pub local_as: u32,
    pub loc_rib_prefixes: usize,
    pub neighbors: Vec<NeighborRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRow {
    pub peer: Ipv4Addr,
    pub next_hop: IpAddr,
    pub as_path: Vec<u32>,
    pub origin: u8,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    /// Selected: best (first) or multipath.
    pub selected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    pub prefix: Prefix,
    pub paths: Vec<PathRow>,
}
