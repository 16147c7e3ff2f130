//! `bgp`: a BGP-4 speaker under sysmgr (issue 7): sessions (RFC 4271 FSM, 4-octet AS, connection
//! collision), IPv4 and IPv6 unicast (MP-BGP), Adj-RIB-In, Loc-RIB with best path and multipath,
//! Adj-RIB-Out with update packing and prefix filters, route refresh (enhanced too), Graceful
//! Restart both ways, BFD, RFC 7606, best paths into the FIB over MTS, PSS checkpoints, and
//! `show bgp`.
//!
//! - [`wire`]: the codec crate behind one module;
//! - [`fsm`]: the RFC 4271 session FSM, sans-IO;
//! - [`rib`]: Adj-RIB-In, Loc-RIB, best path, multipath;
//! - [`export`]: what each neighbour gets, and the UPDATE packer;
//! - [`checkpoint`]: the PSS logs of the sessions and Adj-RIBs;
//! - [`instance`]: the owner loop, TCP, the FIB; [`proto`]: the bgp SAP; [`config`].

pub mod checkpoint;
pub mod config;
pub mod export;
pub mod fsm;
pub mod inflight;
pub mod instance;
pub mod proto;
pub mod rib;
pub mod tcp;
pub mod wire;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    #[error("{0}")]
    Config(String),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(String),
    #[error("MTS: {0}")]
    Mts(#[from] mts::MtsError),
}
