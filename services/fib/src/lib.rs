//! `fib`: the forwarding table service. Producers (BGP, the CLI's static routes) send routes over
//! MTS; the FIB checkpoints them in PSS (shared-global) and programs the Linux kernel with nexthop
//! objects: ECMP groups, and sticky ECMP as resilient groups of per-bucket slot nexthops.
//!
//! - [`netlink`]: RTM_*NEXTHOP / RTM_*ROUTE messages on netlink-packet-core, a pipelining socket;
//! - [`table`]: routes, path sets, the sticky load distribution tables (pure);
//! - [`backend`]: the kernel (rtnetlink) or memory;
//! - [`kernel`]: reconcile a table with a backend, sending only changes;
//! - [`instance`]: the owner loop, PSS checkpoints, stale routes, MTS;
//! - [`proto`]: the fib SAP's messages; [`config`]: the service's configuration file.

pub mod backend;
pub mod config;
pub mod instance;
pub mod kernel;
pub mod netlink;
pub mod proto;
pub mod table;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FibError {
    #[error("{0}")]
    Config(String),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel: {0}")]
    Kernel(String),
    #[error("MTS: {0}")]
    Mts(#[from] mts::MtsError),
    #[error("PSS: {0}")]
    Pss(#[from] pss::PssError),
}
