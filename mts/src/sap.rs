//! Well-known service access points.

/// The SAP of sysmgr itself: control requests from the CLI and from services.
pub const SYSMGR: u32 = 1;
/// The SAP of the persistent storage service inside sysmgr.
pub const PSS: u32 = 2;
/// The SAP a CLI (operator) connection sends from.
pub const CLI: u32 = 0xffff_0001;
