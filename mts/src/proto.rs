//! Messages to the broker itself (destination SAP [`crate::sap::BROKER`]).

use serde::{Deserialize, Serialize};

/// Bind a SAP declared in the service's policy file. Payload: [`Bind`]; response: the SAP number
/// (`u32`).
pub const OP_BIND: u32 = 1;
/// Acknowledge delivered messages (one-way). Payload: [`Ack`].
pub const OP_ACK: u32 = 2;
/// Subscribe a bound SAP to notifications of an opcode. Payload: [`Subscribe`]; response `()`.
pub const OP_SUBSCRIBE: u32 = 3;
/// Resolve a SAP name to its number. Payload: `String`; response: `u32`.
pub const OP_LOOKUP: u32 = 4;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Broker message ids (the `msg_id` of delivered frames).
    pub ids: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// The bound SAP that receives the notifications.
    pub sap: u32,
    pub opcode: u32,
}
