//! The System Manager: boots services from TOML policies, applies NX-OS-style HA policies when
//! they fail, keeps a persistent process log, and serves the NX-OS-style CLI.
//!
//! See `DESIGN.md` (shared) for the architecture. Module map:
//! - [`config`]: `sysmgr.toml` and policy files, validated with file:line:col errors;
//! - [`engine`]: the pure HA policy state machine;
//! - [`supervisor`]: the owner loop (reaping, notify, timers, control);
//! - [`spawn`]: fork/exec with async-signal-safe children;
//! - [`notify`]: the sd_notify server;
//! - [`proclog`]: the persistent process log and core records;
//! - [`flusher`]: the database flushes, off the supervisor's thread;
//! - [`outlog`] and [`selflog`]: services' output to their log files, sysmgr's own to stderr,
//!   each written by a thread of its own;
//! - [`control`] and [`cli`]: the MTS control path and its renderer;
//! - [`services`]: commands answered by a service over MTS (`show bfd neighbors`, `show ip
//!   route`, `show cef`, `clear route`, static routes).

pub mod boot;
pub mod broker;
pub mod cli;
pub mod config;
pub mod control;
pub mod engine;
pub mod error;
pub mod flusher;
pub mod notify;
pub mod outlog;
pub mod procfs;
pub mod proclog;
pub mod redundancy;
pub mod selflog;
pub mod services;
pub mod spawn;
pub mod supervisor;
pub mod syslog;

pub use error::SysmgrError;

/// Register an owned descriptor with the tokio reactor.
pub(crate) fn async_fd(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open descriptor that stays open, and refers to the same file
    // description, for as long as the AsyncFd owns it.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into())
}
