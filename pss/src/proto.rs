//! Requests to the built-in SAP `pss` (opcode [`OP_PSS`]) and their responses.

use serde::{Deserialize, Serialize};

/// The opcode of every PSS request ([`Request`]).
pub const OP_PSS: u32 = 1;
/// Asks that the rest of this connection be read by the PSS request thread of the caller's
/// service itself: a request then wakes one thread of sysmgr instead of the broker's and then
/// that one. Empty payload; answered with an empty response, or with an error (too many such
/// connections), and then the broker goes on reading the connection as before. Afterwards the
/// connection carries [`OP_PSS`] requests only.
pub const OP_PSS_DIRECT: u32 = 2;

/// NX-OS PSS scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// Only the owner reads and writes.
    Private,
    /// The owner writes; every service on this supervisor reads.
    SharedLocal,
    /// Like shared-local, and replicated to the other supervisor (two-supervisor issue).
    SharedGlobal,
}

impl Scope {
    pub fn word(self) -> &'static str {
        match self {
            Scope::Private => "private",
            Scope::SharedLocal => "local",
            Scope::SharedGlobal => "global",
        }
    }
    pub const ALL: [Scope; 3] = [Scope::Private, Scope::SharedLocal, Scope::SharedGlobal];

    /// `private`, `local` / `shared-local`, `global` / `shared-global`.
    pub fn parse(w: &str) -> Option<Scope> {
        match w {
            "private" => Some(Scope::Private),
            "local" | "shared-local" => Some(Scope::SharedLocal),
            "global" | "shared-global" => Some(Scope::SharedGlobal),
            _ => None,
        }
    }
}

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Durability {
    /// In sled's memory; flushed by sled within its flush interval.
    Fast,
    /// On disk (group commit: concurrent writers share one flush).
    Durable,
}

/// One step of an atomic write. Keys and values are byte strings on the wire (one copy each,
/// not a sequence of single bytes: the same bincode bytes, decoded in one step).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Compare-and-swap: proceed only if the key currently holds `expect` (None = absent);
    /// then set it to `new` (None = delete).
    Cas {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        expect: Option<Vec<u8>>,
        #[serde(with = "serde_bytes")]
        new: Option<Vec<u8>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Read a key; `service` None means the caller's own.
    Get {
        service: Option<String>,
        scope: Scope,
        key: Vec<u8>,
    },
    /// Keys starting with `prefix`, in order, at most `limit`.
    Scan {
        service: Option<String>,
        scope: Scope,
        prefix: Vec<u8>,
        limit: u32,
    },
    /// Apply `ops` to the caller's own keys, all or nothing; one checkpoint.
    Write {
        scope: Scope,
        ops: Vec<Op>,
        durability: Durability,
    },
    /// The caller's latest checkpoint sequence number.
    Seq,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Value(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    Entries(#[serde(with = "entries")] Vec<(Vec<u8>, Vec<u8>)>),
    /// The write was applied as checkpoint `seq`.
    Written {
        seq: u64,
    },
    /// A compare-and-swap did not match: nothing was applied.
    CasFailed {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        current: Option<Vec<u8>>,
    },
    Seq(u64),
}

/// `(key, value)` pairs with both as byte strings (see [`Op`]).
mod entries {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    pub fn serialize<S: Serializer>(v: &[(Vec<u8>, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(k, v)| (Bytes::new(k), Bytes::new(v))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Pairs, D::Error> {
        let v: Vec<(ByteBuf, ByteBuf)> = Vec::deserialize(d)?;
        Ok(v.into_iter()
            .map(|(k, v)| (k.into_vec(), v.into_vec()))
            .collect())
    }
}

/// Puts (`Some`) and deletes (`None`) with keys and values as byte strings (see [`Op`]); for
/// [`crate::Change`].
pub mod changes {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    type Ops = Vec<(Vec<u8>, Option<Vec<u8>>)>;

    pub fn serialize<S: Serializer>(v: &Ops, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            v.iter()
                .map(|(k, v)| (Bytes::new(k), v.as_deref().map(Bytes::new))),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ops, D::Error> {
        let v: Vec<(ByteBuf, Option<ByteBuf>)> = Vec::deserialize(d)?;
        Ok(v.into_iter()
            .map(|(k, v)| (k.into_vec(), v.map(ByteBuf::into_vec)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same shapes with plain `Vec<u8>`: what earlier builds (and their stores) used.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum PlainOp {
        Put { key: Vec<u8>, value: Vec<u8> },
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum PlainResponse {
        Value(Option<Vec<u8>>),
        Entries(Vec<(Vec<u8>, Vec<u8>)>),
    }

    #[test]
    fn byte_strings_keep_the_plain_encoding() {
        let (k, v) = (b"key".to_vec(), vec![7u8; 300]);
        let ours = mts::codec::encode(&Op::Put {
            key: k.clone(),
            value: v.clone(),
        })
        .expect("op");
        let plain = mts::codec::encode(&PlainOp::Put {
            key: k.clone(),
            value: v.clone(),
        })
        .expect("plain op");
        assert_eq!(ours, plain);
        let e = Response::Entries(vec![(k.clone(), v.clone()), (b"x".to_vec(), vec![])]);
        let pe = PlainResponse::Entries(vec![(k.clone(), v.clone()), (b"x".to_vec(), vec![])]);
        let bytes = mts::codec::encode(&e).expect("entries");
        assert_eq!(bytes, mts::codec::encode(&pe).expect("plain"));
        assert_eq!(mts::codec::decode::<Response>(&bytes).expect("decode"), e);
        let val = Response::Value(Some(v.clone()));
        assert_eq!(
            mts::codec::encode(&val).expect("value"),
            mts::codec::encode(&PlainResponse::Value(Some(v))).expect("plain value")
        );
    }
}
