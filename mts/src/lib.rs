//! MTS — the Message and Transaction Service wire protocol and its clients.
//!
//! Every conversation with sysmgr (CLI requests today, service IPC once the broker lands) is a
//! stream of [`frame::Frame`]s over sysmgr's Unix socket. Payloads go through [`codec`], the one
//! place that knows the serialisation format. [`notify`] is the client side of the sd_notify
//! datagram protocol (readiness, heartbeats, fd store), which our own services speak exactly like
//! an unmodified systemd daemon does.
//!
//! The byte layout is documented in `mts/PROTOCOL.md`.

pub mod blocking;
pub mod client;
pub mod codec;
pub mod error;
pub mod frame;
pub mod io;
pub mod notify;
pub mod outbox;
pub mod proto;
pub mod sap;
pub mod service;
pub mod sock;

pub use error::MtsError;
pub use frame::{Flags, Frame, Header};
