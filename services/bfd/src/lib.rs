//! `bfd`: single-hop asynchronous BFD (RFC 5880 / RFC 5881) as a sysmgr service.
//!
//! - [`packet`]: Control packets, pure encode/decode with every discard rule of §6.8.6;
//! - [`fsm`]: one session, sans-IO (packets and ticks in, actions out);
//! - [`network`]: UDP 3784, per-session source ports, TTL 255 in and out;
//! - [`instance`]: the owner loop, PSS checkpoints, the fd store, MTS;
//! - [`proto`]: the bfd SAP's messages (sessions for other services, shows, notifications);
//! - [`config`]: the service's configuration file.

pub mod config;
pub mod fsm;
pub mod instance;
pub mod network;
pub mod packet;
pub mod proto;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BfdError {
    #[error("{0}")]
    Config(String),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket: {step}: {source}")]
    Socket {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("MTS: {0}")]
    Mts(#[from] mts::MtsError),
    #[error("PSS: {0}")]
    Pss(#[from] pss::PssError),
}
