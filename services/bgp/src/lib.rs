//! `bgp`: a BGP-4 speaker under sysmgr. First slice of issue 7: sessions (RFC 4271 FSM, 4-octet
//! AS), Adj-RIB-In, Loc-RIB with best path and multipath, best paths into the FIB over MTS,
//! `show bgp summary` / `show bgp ipv4 unicast`. Advertising, Graceful Restart, BFD, PSS
//! checkpoints and IPv6 are the rest of the issue.
//!
//! - [`wire`]: the codec crate behind one module;
//! - [`fsm`]: the RFC 4271 session FSM, sans-IO;
//! - [`rib`]: Adj-RIB-In, Loc-RIB, best path, multipath;
//! - [`instance`]: the owner loop, TCP, the FIB; [`proto`]: the bgp SAP; [`config`].

pub mod checkpoint;
pub mod config;
pub mod export;
pub mod fsm;
pub mod instance;
pub mod proto;
pub mod rib;
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
