//! `bgp`: a BGP-4 speaker under sysmgr (first slice: sessions, RIBs, FIB programming, shows).
//!
//! - [`wire`]: the codec crate behind one module;
//! - [`fsm`]: the RFC 4271 session FSM, sans-IO;
//! - [`rib`]: Adj-RIB-In, Loc-RIB, best path, multipath.

pub mod fsm;
pub mod rib;
pub mod wire;
