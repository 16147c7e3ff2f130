//! The one error type of the `mts` crate.

use std::io;

/// Everything that can go wrong speaking MTS or sd_notify.
#[derive(Debug, thiserror::Error)]
pub enum MtsError {
    /// The peer closed the stream between frames.
    #[error("connection closed")]
    Closed,
    /// Reading or writing the socket failed.
    #[error("socket i/o: {0}")]
    Io(#[from] io::Error),
    /// A header did not start with the MTS magic: the peer speaks something else.
    #[error("bad frame magic {0:#06x} (expected 0x4d54)")]
    BadMagic(u16),
    /// A header carried a protocol version we do not speak.
    #[error("unsupported frame version {0} (this side speaks 1)")]
    BadVersion(u8),
    /// A header announced a payload larger than the negotiated maximum.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    Oversized { len: u32, max: u32 },
    /// The stream ended in the middle of a frame: the length lied or the peer died mid-write.
    #[error("stream ended inside a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    /// A payload did not decode as the type the opcode promises.
    #[error("payload does not decode: {0}")]
    Decode(String),
    /// A value could not be encoded.
    #[error("payload does not encode: {0}")]
    Encode(String),
    /// The far side answered with an error frame.
    #[error("{0}")]
    Remote(String),
    /// A response did not arrive before the request's deadline.
    #[error("no response within {0:?}")]
    Timeout(std::time::Duration),
    /// An sd_notify step failed.
    #[error("sd_notify {step}: {source}")]
    Notify {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
}
