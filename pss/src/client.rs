//! The service-side PSS client: typed checkpoints over MTS to the built-in SAP `pss`.
//!
//! ```no_run
//! # async fn demo(mts: &mts::client::Client) -> Result<(), pss::PssError> {
//! use pss::proto::{Durability, Scope};
//! let pss = pss::client::Pss::new(mts);
//! let seq = pss.txn(Scope::Private)
//!     .put("peer/10.0.0.1", &("Established", 42u64))?
//!     .delete("peer/10.0.0.9")
//!     .commit(Durability::Durable)
//!     .await?;                                     // all or nothing; on disk when this returns
//! let state: Option<(String, u64)> = pss.get(Scope::Private, "peer/10.0.0.1").await?;
//! # let _ = (seq, state); Ok(()) }
//! ```
//! Values are encoded with the MTS codec behind a schema version ([`SCHEMA`]), so a service
//! that changes a type can tell old checkpoints from new.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::PssError;
use crate::proto::{Durability, OP_PSS, OP_PSS_DIRECT, Op, Request, Response, Scope};

/// Schema version written in front of every value.
pub const SCHEMA: u16 = 1;
/// Deadline of one PSS request.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

pub struct Pss<'a> {
    mts: Conn<'a>,
}

/// The MTS connection requests go through: the service's own, or one for PSS alone.
enum Conn<'a> {
    Shared(&'a mts::client::Client),
    Own(mts::client::Client),
}

/// A byte string to store as one: `put(scope, key, Bytes::new(&raw), d)` copies it, where a
/// plain `&[u8]` or `Vec<u8>` is encoded (by serde) one byte at a time; about a quarter of a
/// writer's CPU for 4 KB values. Read it back as [`ByteBuf`] (or `Vec<u8>`: the stored bytes are
/// the same).
pub use serde_bytes::{ByteBuf, Bytes};

/// Raw (key, value) pairs, as a scan returns them.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Encode a value as PSS stores it.
pub fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, PssError> {
    mts::codec::encode(&(SCHEMA, v)).map_err(|e| PssError::Codec(e.to_string()))
}

/// Decode a stored value, checking its schema version.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, PssError> {
    let (schema, v): (u16, T) =
        mts::codec::decode(b).map_err(|e| PssError::Codec(e.to_string()))?;
    if schema != SCHEMA {
        return Err(PssError::Codec(format!(
            "value has schema version {schema}, this client reads {SCHEMA}"
        )));
    }
    Ok(v)
}

impl<'a> Pss<'a> {
    /// PSS through the service's MTS connection: the broker reads its requests with its
    /// messages and hands them to the service's PSS request thread.
    pub fn new(mts: &'a mts::client::Client) -> Pss<'a> {
        Pss {
            mts: Conn::Shared(mts),
        }
    }

    fn client(&self) -> &mts::client::Client {
        match &self.mts {
            Conn::Shared(c) => c,
            Conn::Own(c) => c,
        }
    }

    pub async fn call(&self, req: &Request) -> Result<Response, PssError> {
        Ok(self
            .client()
            .request(mts::sap::CLI, mts::sap::PSS, OP_PSS, req, DEADLINE)
            .await?)
    }

    /// Read one of this service's keys.
    pub async fn get<T: DeserializeOwned>(
        &self,
        scope: Scope,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<T>, PssError> {
        decoded(self.call(&get_request(None, scope, key.as_ref())).await?)
    }

    /// Read another service's shared key (or its private one, which the rules refuse).
    pub async fn get_of<T: DeserializeOwned>(
        &self,
        service: &str,
        scope: Scope,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<T>, PssError> {
        decoded(
            self.call(&get_request(Some(service), scope, key.as_ref()))
                .await?,
        )
    }

    /// Raw entries of this service (or `service`) under a prefix.
    pub async fn scan(
        &self,
        service: Option<&str>,
        scope: Scope,
        prefix: impl AsRef<[u8]>,
        limit: u32,
    ) -> Result<Entries, PssError> {
        entries(
            self.call(&scan_request(service, scope, prefix.as_ref(), limit))
                .await?,
        )
    }

    /// Put one key (a one-op checkpoint); returns its sequence number.
    pub async fn put<T: Serialize + ?Sized>(
        &self,
        scope: Scope,
        key: impl AsRef<[u8]>,
        v: &T,
        durability: Durability,
    ) -> Result<u64, PssError> {
        self.txn(scope).put(key, v)?.commit(durability).await
    }

    pub async fn delete(
        &self,
        scope: Scope,
        key: impl AsRef<[u8]>,
        durability: Durability,
    ) -> Result<u64, PssError> {
        self.txn(scope).delete(key).commit(durability).await
    }

    /// The latest checkpoint sequence number of this service.
    pub async fn seq(&self) -> Result<u64, PssError> {
        seq(self.call(&Request::Seq).await?)
    }

    /// Start an atomic checkpoint (a batch write is a transaction of many puts).
    pub fn txn(&self, scope: Scope) -> Txn<'_, Self> {
        Txn::new(self, scope)
    }
}

impl Pss<'static> {
    /// PSS through an MTS connection of its own (to sysmgr's socket, from the environment as
    /// [`mts::client::Client::connect_from_env`]), read by the service's PSS request thread
    /// itself: a request and its answer wake one thread of sysmgr instead of two (the broker's,
    /// then the request thread). The connection has the caller's identity, like any other.
    /// When sysmgr will not (too many such connections), the broker reads it as usual.
    pub async fn connect() -> Result<Pss<'static>, PssError> {
        Self::direct(mts::client::Client::connect_from_env().await?).await
    }

    /// [`Pss::connect`] on a connection the caller made; it carries PSS requests only from now.
    pub async fn direct(c: mts::client::Client) -> Result<Pss<'static>, PssError> {
        let r = c
            .request_raw(mts::sap::CLI, mts::sap::PSS, OP_PSS_DIRECT, &[], DEADLINE)
            .await;
        match r {
            // Refused (sysmgr logs why): the broker reads it as usual.
            Ok(_) | Err(mts::MtsError::Remote(_)) => Ok(Pss { mts: Conn::Own(c) }),
            Err(e) => Err(e.into()),
        }
    }
}

/// An atomic multi-key write under construction, for the async client or the blocking one
/// ([`crate::blocking::Pss`]).
pub struct Txn<'p, P> {
    pub(crate) pss: &'p P,
    pub(crate) scope: Scope,
    pub(crate) ops: Vec<Op>,
}

impl<'p, P> Txn<'p, P> {
    pub(crate) fn new(pss: &'p P, scope: Scope) -> Self {
        Txn {
            pss,
            scope,
            ops: Vec::new(),
        }
    }

    /// The request that commits it.
    pub(crate) fn into_request(self, durability: Durability) -> Request {
        Request::Write {
            scope: self.scope,
            ops: self.ops,
            durability,
        }
    }

    pub fn put<T: Serialize + ?Sized>(
        mut self,
        key: impl AsRef<[u8]>,
        v: &T,
    ) -> Result<Self, PssError> {
        self.ops.push(Op::Put {
            key: key.as_ref().to_vec(),
            value: encode(v)?,
        });
        Ok(self)
    }

    pub fn delete(mut self, key: impl AsRef<[u8]>) -> Self {
        self.ops.push(Op::Delete {
            key: key.as_ref().to_vec(),
        });
        self
    }

    /// Proceed only if `key` holds `expect` (None: absent); then set `new` (None: delete).
    pub fn cas<T: Serialize>(
        mut self,
        key: impl AsRef<[u8]>,
        expect: Option<&T>,
        new: Option<&T>,
    ) -> Result<Self, PssError> {
        let expect = expect.map(encode).transpose()?;
        let new = new.map(encode).transpose()?;
        self.ops.push(Op::Cas {
            key: key.as_ref().to_vec(),
            expect,
            new,
        });
        Ok(self)
    }
}

impl Txn<'_, Pss<'_>> {
    /// Apply all or nothing; returns the checkpoint sequence number.
    pub async fn commit(self, durability: Durability) -> Result<u64, PssError> {
        let pss = self.pss;
        written(pss.call(&self.into_request(durability)).await?)
    }
}

pub(crate) fn get_request(service: Option<&str>, scope: Scope, key: &[u8]) -> Request {
    Request::Get {
        service: service.map(str::to_string),
        scope,
        key: key.to_vec(),
    }
}

pub(crate) fn scan_request(
    service: Option<&str>,
    scope: Scope,
    prefix: &[u8],
    limit: u32,
) -> Request {
    Request::Scan {
        service: service.map(str::to_string),
        scope,
        prefix: prefix.to_vec(),
        limit,
    }
}

fn unexpected<T>(other: Response) -> Result<T, PssError> {
    Err(PssError::Codec(format!("unexpected answer {other:?}")))
}

/// The answer to a write: its checkpoint sequence number.
pub(crate) fn written(r: Response) -> Result<u64, PssError> {
    match r {
        Response::Written { seq } => Ok(seq),
        Response::CasFailed { .. } => Err(PssError::CasFailed),
        other => unexpected(other),
    }
}

/// The answer to a read: the value, decoded.
pub(crate) fn decoded<T: DeserializeOwned>(r: Response) -> Result<Option<T>, PssError> {
    match r {
        Response::Value(v) => v.map(|v| decode(&v)).transpose(),
        other => unexpected(other),
    }
}

pub(crate) fn entries(r: Response) -> Result<Entries, PssError> {
    match r {
        Response::Entries(e) => Ok(e),
        other => unexpected(other),
    }
}

pub(crate) fn seq(r: Response) -> Result<u64, PssError> {
    match r {
        Response::Seq(s) => Ok(s),
        other => unexpected(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_stored_as_a_byte_vector_is() {
        let raw: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let fast = encode(Bytes::new(&raw)).expect("encode bytes");
        assert_eq!(fast, encode(&raw).expect("encode vec"));
        assert_eq!(decode::<Vec<u8>>(&fast).expect("as vec"), raw);
        assert_eq!(
            decode::<ByteBuf>(&fast).expect("as bytebuf").into_vec(),
            raw
        );
    }
}
