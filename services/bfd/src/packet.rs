//! BFD Control packets (RFC 5880 §4.1): pure encode and decode.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
//! |                       My Discriminator                        |
//! |                      Your Discriminator                       |
//! |                    Desired Min TX Interval                    |
//! |                   Required Min RX Interval                    |
//! |                 Required Min Echo RX Interval                 |
//! ```
//!
//! [`ControlPacket::decode`] applies every check of §6.8.6 that does not need a session: a
//! packet that fails one is an [`DecodeError`], never a panic.

use serde::{Deserialize, Serialize};

/// Length of a Control packet without an authentication section.
pub const LEN: usize = 24;
/// The protocol version this module speaks.
pub const VERSION: u8 = 1;

/// Session state (§4.1 `Sta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum State {
    AdminDown,
    #[default]
    Down,
    Init,
    Up,
}

impl State {
    fn from_bits(b: u8) -> State {
        match b & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }
    fn bits(self) -> u8 {
        match self {
            State::AdminDown => 0,
            State::Down => 1,
            State::Init => 2,
            State::Up => 3,
        }
    }
    pub fn word(self) -> &'static str {
        match self {
            State::AdminDown => "AdminDown",
            State::Down => "Down",
            State::Init => "Init",
            State::Up => "Up",
        }
    }
}

/// Diagnostic codes (§4.1 `Diag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Diag {
    #[default]
    None,
    ControlDetectionTimeExpired,
    EchoFunctionFailed,
    NeighborSignaledSessionDown,
    ForwardingPlaneReset,
    PathDown,
    ConcatenatedPathDown,
    AdministrativelyDown,
    ReverseConcatenatedPathDown,
    /// 9–31: reserved, kept as received.
    Reserved(u8),
}

impl Diag {
    fn from_bits(b: u8) -> Diag {
        match b & 0x1f {
            0 => Diag::None,
            1 => Diag::ControlDetectionTimeExpired,
            2 => Diag::EchoFunctionFailed,
            3 => Diag::NeighborSignaledSessionDown,
            4 => Diag::ForwardingPlaneReset,
            5 => Diag::PathDown,
            6 => Diag::ConcatenatedPathDown,
            7 => Diag::AdministrativelyDown,
            8 => Diag::ReverseConcatenatedPathDown,
            n => Diag::Reserved(n),
        }
    }
    fn bits(self) -> u8 {
        match self {
            Diag::None => 0,
            Diag::ControlDetectionTimeExpired => 1,
            Diag::EchoFunctionFailed => 2,
            Diag::NeighborSignaledSessionDown => 3,
            Diag::ForwardingPlaneReset => 4,
            Diag::PathDown => 5,
            Diag::ConcatenatedPathDown => 6,
            Diag::AdministrativelyDown => 7,
            Diag::ReverseConcatenatedPathDown => 8,
            Diag::Reserved(n) => n & 0x1f,
        }
    }
    pub fn word(self) -> &'static str {
        match self {
            Diag::None => "No Diagnostic",
            Diag::ControlDetectionTimeExpired => "Control Detection Time Expired",
            Diag::EchoFunctionFailed => "Echo Function Failed",
            Diag::NeighborSignaledSessionDown => "Neighbor Signaled Session Down",
            Diag::ForwardingPlaneReset => "Forwarding Plane Reset",
            Diag::PathDown => "Path Down",
            Diag::ConcatenatedPathDown => "Concatenated Path Down",
            Diag::AdministrativelyDown => "Administratively Down",
            Diag::ReverseConcatenatedPathDown => "Reverse Concatenated Path Down",
            Diag::Reserved(_) => "Reserved",
        }
    }
}

/// One BFD Control packet (authentication is not supported: see [`DecodeError::Auth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControlPacket {
    pub diag: Diag,
    pub state: State,
    /// Poll: the sender changed its timers and waits for a Final.
    pub poll: bool,
    /// Final: the answer to a Poll.
    pub fin: bool,
    /// Control Plane Independent.
    pub cpi: bool,
    /// Demand mode.
    pub demand: bool,
    pub detect_mult: u8,
    pub my_disc: u32,
    pub your_disc: u32,
    /// Microseconds.
    pub desired_min_tx: u32,
    /// Microseconds.
    pub required_min_rx: u32,
    /// Microseconds; 0: no Echo packets wanted.
    pub required_min_echo_rx: u32,
}

/// Why a received packet was discarded (RFC 5880 §6.8.6, in its order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet of {0} bytes is shorter than a BFD header")]
    Short(usize),
    #[error("version {0} (only 1 is spoken)")]
    Version(u8),
    #[error("length field {field} is below the minimum {min}")]
    LengthTooSmall { field: u8, min: u8 },
    #[error("length field {field} exceeds the {got} bytes received")]
    LengthExceedsPayload { field: u8, got: usize },
    #[error("detect multiplier is zero")]
    ZeroDetectMult,
    #[error("multipoint bit is set")]
    Multipoint,
    #[error("my discriminator is zero")]
    ZeroMyDisc,
    #[error("your discriminator is zero in state {0:?}")]
    ZeroYourDisc(State),
    #[error("authentication present but not configured")]
    Auth,
}

const P: u8 = 0x20;
const F: u8 = 0x10;
const C: u8 = 0x08;
const A: u8 = 0x04;
const D: u8 = 0x02;
const M: u8 = 0x01;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl ControlPacket {
    /// Validate and decode one UDP payload.
    pub fn decode(b: &[u8]) -> Result<ControlPacket, DecodeError> {
        if b.len() < LEN {
            return Err(DecodeError::Short(b.len()));
        }
        let version = b[0] >> 5;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let flags = b[1];
        let length = b[3];
        let min = if flags & A != 0 { 26 } else { LEN as u8 };
        if length < min {
            return Err(DecodeError::LengthTooSmall { field: length, min });
        }
        if usize::from(length) > b.len() {
            return Err(DecodeError::LengthExceedsPayload {
                field: length,
                got: b.len(),
            });
        }
        if b[2] == 0 {
            return Err(DecodeError::ZeroDetectMult);
        }
        if flags & M != 0 {
            return Err(DecodeError::Multipoint);
        }
        let my_disc = be32(b, 4);
        if my_disc == 0 {
            return Err(DecodeError::ZeroMyDisc);
        }
        let state = State::from_bits(flags >> 6);
        let your_disc = be32(b, 8);
        if your_disc == 0 && !matches!(state, State::Down | State::AdminDown) {
            return Err(DecodeError::ZeroYourDisc(state));
        }
        if flags & A != 0 {
            return Err(DecodeError::Auth);
        }
        Ok(ControlPacket {
            diag: Diag::from_bits(b[0]),
            state,
            poll: flags & P != 0,
            fin: flags & F != 0,
            cpi: flags & C != 0,
            demand: flags & D != 0,
            detect_mult: b[2],
            my_disc,
            your_disc,
            desired_min_tx: be32(b, 12),
            required_min_rx: be32(b, 16),
            required_min_echo_rx: be32(b, 20),
        })
    }

    /// The 24 bytes on the wire.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = (VERSION << 5) | self.diag.bits();
        let mut flags = self.state.bits() << 6;
        for (on, bit) in [
            (self.poll, P),
            (self.fin, F),
            (self.cpi, C),
            (self.demand, D),
        ] {
            if on {
                flags |= bit;
            }
        }
        b[1] = flags;
        b[2] = self.detect_mult;
        b[3] = LEN as u8;
        b[4..8].copy_from_slice(&self.my_disc.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_disc.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        b[20..24].copy_from_slice(&self.required_min_echo_rx.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> ControlPacket {
        ControlPacket {
            state: State::Up,
            detect_mult: 3,
            my_disc: 0x01020304,
            your_disc: 7,
            desired_min_tx: 50_000,
            required_min_rx: 50_000,
            poll: true,
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_and_wire_layout() {
        let p = up();
        let b = p.encode();
        // Version 1, no diag; Up (3 << 6) | P.
        assert_eq!(&b[..4], &[0x20, 0xe0, 3, 24]);
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(&b[12..16], &50_000u32.to_be_bytes());
        assert_eq!(ControlPacket::decode(&b), Ok(p));
        for d in 0..32u8 {
            assert_eq!(Diag::from_bits(d).bits(), d);
        }
    }

    #[test]
    fn every_discard_rule_of_6_8_6() {
        let good = up().encode();
        let with = |f: &dyn Fn(&mut [u8; LEN])| {
            let mut b = good;
            f(&mut b);
            ControlPacket::decode(&b)
        };
        assert_eq!(
            ControlPacket::decode(&good[..23]),
            Err(DecodeError::Short(23))
        );
        assert_eq!(with(&|b| b[0] = 0x40), Err(DecodeError::Version(2)));
        assert_eq!(
            with(&|b| b[3] = 20),
            Err(DecodeError::LengthTooSmall { field: 20, min: 24 })
        );
        assert_eq!(
            with(&|b| b[3] = 30),
            Err(DecodeError::LengthExceedsPayload { field: 30, got: 24 })
        );
        assert_eq!(with(&|b| b[2] = 0), Err(DecodeError::ZeroDetectMult));
        assert_eq!(with(&|b| b[1] |= M), Err(DecodeError::Multipoint));
        assert_eq!(with(&|b| b[4..8].fill(0)), Err(DecodeError::ZeroMyDisc));
        assert_eq!(
            with(&|b| b[8..12].fill(0)),
            Err(DecodeError::ZeroYourDisc(State::Up))
        );
        // Auth bit: needs 26 bytes, and is refused since no authentication is configured.
        assert_eq!(
            with(&|b| b[1] |= A),
            Err(DecodeError::LengthTooSmall { field: 24, min: 26 })
        );
        let mut long = good.to_vec();
        long.extend_from_slice(&[1, 2]);
        long[1] |= A;
        long[3] = 26;
        assert_eq!(ControlPacket::decode(&long), Err(DecodeError::Auth));
        // A Down packet with your-discriminator zero is how every session starts.
        let mut down = up();
        down.state = State::Down;
        down.your_disc = 0;
        assert!(ControlPacket::decode(&down.encode()).is_ok());
        // Trailing bytes beyond the length field are ignored.
        let mut extra = good.to_vec();
        extra.push(0xff);
        assert!(ControlPacket::decode(&extra).is_ok());
    }
}
