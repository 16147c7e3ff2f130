//! Well-known service access points.

/// The broker itself: bind, ack, subscribe, lookup (see [`crate::proto`]).
pub const BROKER: u32 = 0;
/// The SAP of sysmgr itself: control requests from the CLI and from services.
pub const SYSMGR: u32 = 1;
/// The SAP of the persistent storage service inside sysmgr.
pub const PSS: u32 = 2;
/// Publish to every SAP subscribed to the frame's opcode.
pub const BROADCAST: u32 = 0xffff_ffff;
/// The SAP a CLI (operator) connection sends from.
pub const CLI: u32 = 0xffff_0001;
/// Service SAPs declared in policy files must be in `FIRST_SERVICE..FIRST_EPHEMERAL`.
pub const FIRST_SERVICE: u32 = 16;
/// Each connection gets an ephemeral SAP at or above this for its replies.
pub const FIRST_EPHEMERAL: u32 = 0x8000_0000;
