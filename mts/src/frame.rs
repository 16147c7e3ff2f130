//! MTS frames: a fixed 40-byte big-endian header followed by a codec-encoded payload.
//!
//! ```text
//!  0      2    3     4        8        12       16       20              28              36     40
//!  +------+----+-----+--------+--------+--------+--------+---------------+---------------+------+
//!  | 'MT' | v1 |flags| length | src sap| dst sap| opcode |    msg id     |   reply-to    | rsvd |
//!  +------+----+-----+--------+--------+--------+--------+---------------+---------------+------+
//! ```
//! `length` counts payload bytes only. Decoding is pure: [`Header::decode`] validates a header
//! without touching a socket, so hostile input is tested without I/O.

use crate::MtsError;

/// Header magic: ASCII "MT".
pub const MAGIC: u16 = 0x4d54;
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 40;
/// Default payload limit; a frame announcing more closes the connection.
pub const DEFAULT_MAX_PAYLOAD: u32 = 16 * 1024 * 1024;

/// Per-frame flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// Keep the message in sled while its receiver is away (survives a sysmgr restart).
    pub const PERSISTENT: u8 = 0x01;
    /// The receiver must ack; until then the message is pending and redelivered on restart.
    pub const NEEDS_ACK: u8 = 0x02;
    /// This frame answers the request named by `reply_to`.
    pub const RESPONSE: u8 = 0x04;
    /// The payload is a UTF-8 error text instead of the opcode's response type.
    pub const ERROR: u8 = 0x08;
    /// This is a redelivery of a message the previous receiver instance never acked.
    pub const REDELIVERY: u8 = 0x10;
    /// The sender expects a response: the broker remembers where to route it.
    pub const REQUEST: u8 = 0x20;
    /// The sender wants the broker to confirm (empty response) once the message is queued.
    pub const CONFIRM: u8 = 0x40;

    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// The fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub flags: Flags,
    /// Payload length in bytes.
    pub len: u32,
    pub src_sap: u32,
    pub dst_sap: u32,
    pub opcode: u32,
    /// Sender-chosen id, unique per connection; responses quote it in `reply_to`.
    pub msg_id: u64,
    /// 0 for a request or one-way message.
    pub reply_to: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        b[2] = VERSION;
        b[3] = self.flags.0;
        b[4..8].copy_from_slice(&self.len.to_be_bytes());
        b[8..12].copy_from_slice(&self.src_sap.to_be_bytes());
        b[12..16].copy_from_slice(&self.dst_sap.to_be_bytes());
        b[16..20].copy_from_slice(&self.opcode.to_be_bytes());
        b[20..28].copy_from_slice(&self.msg_id.to_be_bytes());
        b[28..36].copy_from_slice(&self.reply_to.to_be_bytes());
        b
    }

    /// Validate and decode a header; `max` is the largest payload this side accepts.
    pub fn decode(b: &[u8; HEADER_LEN], max: u32) -> Result<Header, MtsError> {
        let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let be64 = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        let magic = u16::from_be_bytes([b[0], b[1]]);
        if magic != MAGIC {
            return Err(MtsError::BadMagic(magic));
        }
        if b[2] != VERSION {
            return Err(MtsError::BadVersion(b[2]));
        }
        let len = be32(4);
        if len > max {
            return Err(MtsError::Oversized { len, max });
        }
        Ok(Header {
            flags: Flags(b[3]),
            len,
            src_sap: be32(8),
            dst_sap: be32(12),
            opcode: be32(16),
            msg_id: be64(20),
            reply_to: be64(28),
        })
    }
}

/// The first whole frame at the start of `buf` (a stream's bytes read so far): its header and
/// payload, `HEADER_LEN + payload.len()` bytes in all; None until all of it is there. A header
/// that does not decode (magic, version, a length over `max`) is an error: the stream cannot be
/// resynchronised after it.
pub fn next_frame(buf: &[u8], max: u32) -> Result<Option<(Header, &[u8])>, MtsError> {
    let Some(hb) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let h = Header::decode(hb, max)?;
    Ok(buf[HEADER_LEN..].get(..h.len as usize).map(|p| (h, p)))
}

/// A whole frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A request or one-way message.
    pub fn request(src_sap: u32, dst_sap: u32, opcode: u32, msg_id: u64, payload: Vec<u8>) -> Self {
        Frame {
            header: Header {
                flags: Flags::default(),
                len: payload.len() as u32,
                src_sap,
                dst_sap,
                opcode,
                msg_id,
                reply_to: 0,
            },
            payload,
        }
    }

    /// The response to `req`, sent back from its destination.
    pub fn response_to(req: &Header, msg_id: u64, payload: Vec<u8>) -> Self {
        Frame {
            header: Header {
                flags: Flags(Flags::RESPONSE),
                len: payload.len() as u32,
                src_sap: req.dst_sap,
                dst_sap: req.src_sap,
                opcode: req.opcode,
                msg_id,
                reply_to: req.msg_id,
            },
            payload,
        }
    }

    /// An error response to `req` carrying a human-readable reason.
    pub fn error_to(req: &Header, msg_id: u64, reason: &str) -> Self {
        let mut f = Frame::response_to(req, msg_id, reason.as_bytes().to_vec());
        f.header.flags.0 |= Flags::ERROR;
        f
    }

    /// Header and payload as one buffer, ready for a single write.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        let mut h = self.header;
        h.len = self.payload.len() as u32;
        out.extend_from_slice(&h.encode());
        out.extend_from_slice(&self.payload);
        out
    }

    /// For a response frame: the payload, or the remote error it carries.
    pub fn into_result(self) -> Result<Vec<u8>, MtsError> {
        if self.header.flags.has(Flags::ERROR) {
            Err(MtsError::Remote(
                String::from_utf8_lossy(&self.payload).into_owned(),
            ))
        } else {
            Ok(self.payload)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Frame {
        Frame::request(sap_cli(), 1, 7, 42, b"hello".to_vec())
    }
    fn sap_cli() -> u32 {
        crate::sap::CLI
    }

    #[test]
    fn header_round_trips() {
        let f = sample();
        let bytes = f.to_bytes();
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&bytes[..HEADER_LEN]);
        let d = Header::decode(&h, DEFAULT_MAX_PAYLOAD).expect("decode");
        assert_eq!(d, f.header);
        assert_eq!(&bytes[HEADER_LEN..], b"hello");
    }

    #[test]
    fn next_frame_waits_for_the_whole_frame_and_rejects_a_bad_header() {
        let one = sample().to_bytes();
        let two = [one.clone(), one.clone()].concat();
        for cut in [0, 1, HEADER_LEN, one.len() - 1] {
            assert_eq!(next_frame(&one[..cut], 1 << 20).expect("ok"), None, "{cut}");
        }
        let (h, p) = next_frame(&two, 1 << 20).expect("ok").expect("a frame");
        assert_eq!((h, p), (sample().header, &sample().payload[..]));
        assert!(next_frame(&[0xEE; HEADER_LEN], 1 << 20).is_err());
    }

    #[test]
    fn bad_magic_version_and_oversize_are_rejected() {
        let mut h = sample().header.encode();
        h[0] = b'X';
        assert!(matches!(
            Header::decode(&h, 100),
            Err(MtsError::BadMagic(_))
        ));
        let mut h = sample().header.encode();
        h[2] = 9;
        assert!(matches!(
            Header::decode(&h, 100),
            Err(MtsError::BadVersion(9))
        ));
        let mut h = sample().header.encode();
        h[4..8].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(
            Header::decode(&h, 100),
            Err(MtsError::Oversized {
                len: 1000,
                max: 100
            })
        ));
    }

    #[test]
    fn error_response_carries_reason() {
        let req = sample().header;
        let e = Frame::error_to(&req, 1, "nope");
        assert_eq!(e.header.reply_to, 42);
        assert_eq!(e.header.dst_sap, crate::sap::CLI);
        assert!(matches!(e.into_result(), Err(MtsError::Remote(s)) if s == "nope"));
    }
}
