//! The bfd SAP's messages over MTS: what BGP (or any service) and the CLI send to bfd.
//!
//! | opcode | kind | payload → response |
//! |---|---|---|
//! | [`OP_SESSION_ADD`] | request | [`SessionSpec`] → `Result<u32, String>` (local discriminator) |
//! | [`OP_SESSION_DEL`] | request | [`SessionKey`] → `Result<(), String>` |
//! | [`OP_SHOW`] | request | `()` → `Vec<Neighbor>` |
//! | [`OP_EVENT`] | notification (subscribe to it) | [`Event`] |

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::fsm::{Counters, Timers};
use crate::packet::{Diag, State};

/// The SAP name bfd binds (its number comes from `bfd.toml`).
pub const SAP_NAME: &str = "bfd";
pub const OP_SESSION_ADD: u32 = 1;
pub const OP_SESSION_DEL: u32 = 2;
pub const OP_SHOW: u32 = 3;
pub const OP_EVENT: u32 = 100;

/// A single-hop session is identified by its peer and interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionKey {
    pub peer: Ipv4Addr,
    pub interface: Option<String>,
}

impl std::fmt::Display for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.interface {
            Some(i) => write!(f, "{}%{}", self.peer, i),
            None => write!(f, "{}", self.peer),
        }
    }
}

/// A session to create (from the configuration file or from a client over MTS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSpec {
    pub key: SessionKey,
    pub local: Option<Ipv4Addr>,
    pub timers: Timers,
    /// Who asked: `config` or the requesting service's SAP name.
    pub owner: String,
}

/// A notification to subscribers of [`OP_EVENT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A new instance started; after a `fresh` or `stateless` start, clients must ask again for
    /// the sessions they want.
    Started { start: String },
    StateChange {
        key: SessionKey,
        local_disc: u32,
        from: State,
        to: State,
        diag: Diag,
    },
}

/// One row of `show bfd neighbors [details]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbor {
    pub peer: Ipv4Addr,
    pub interface: Option<String>,
    pub local: Option<Ipv4Addr>,
    pub source_port: u16,
    pub owner: String,
    pub local_disc: u32,
    pub remote_disc: u32,
    pub state: State,
    pub remote_state: State,
    pub diag: Diag,
    /// Wall clock (ms since the epoch) of the last state change.
    pub since_ms: u64,
    pub flaps: u32,
    pub timers: Timers,
    /// Negotiated transmit interval, µs.
    pub tx_interval_us: u64,
    /// Detection Time, µs.
    pub detect_time_us: u64,
    pub remote_min_rx_us: u32,
    pub remote_desired_min_tx_us: u32,
    pub remote_detect_mult: u8,
    pub poll: bool,
    pub counters: Counters,
}
