//! A blocking PSS client, for a service (or a thread of one) that checkpoints without an async
//! runtime: each call writes its request and reads its answer on the calling thread.
//!
//! ```no_run
//! # fn demo() -> Result<(), pss::PssError> {
//! use pss::proto::{Durability, Scope};
//! let pss = pss::blocking::Pss::connect()?;
//! pss.put(Scope::Private, "peer/10.0.0.1", &("Established", 42u64), Durability::Fast)?;
//! let state: Option<(String, u64)> = pss.get(Scope::Private, "peer/10.0.0.1")?;
//! # let _ = state; Ok(()) }
//! ```
//!
//! It makes a connection of its own to sysmgr (`SYSMGR_SOCKET`), which the service's PSS
//! request thread reads itself ([`crate::client::Pss::connect`] says why). An answer wakes the
//! caller's thread alone: with the async client it first wakes a runtime thread that reads
//! it, which then wakes the task that waits for it. Requests and answers are the async
//! client's; [`Txn`] builds atomic writes for both.

use std::cell::{Cell, RefCell};
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use mts::MtsError;
use mts::frame::{DEFAULT_MAX_PAYLOAD, Flags, Header};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::PssError;
use crate::client::{
    DEADLINE, Entries, Txn, decoded, entries, get_request, scan_request, seq, written,
};
use crate::proto::{Durability, OP_PSS, OP_PSS_DIRECT, Request, Response, Scope};

/// One connection to sysmgr, used by one thread at a time.
pub struct Pss {
    out: UnixStream,
    input: RefCell<BufReader<UnixStream>>,
    next_id: Cell<u64>,
    /// A call failed between its request and its answer: what follows on the stream is not
    /// known to be the next answer, so the connection is not used again.
    broken: Cell<bool>,
}

impl Pss {
    /// Connect to `SYSMGR_SOCKET` (set by sysmgr for every service).
    pub fn connect() -> Result<Pss, PssError> {
        Pss::connect_to(&mts::client::socket_from_env()?)
    }

    /// Connect to sysmgr's socket at `path`. When sysmgr will not have the service's PSS
    /// thread read the connection (too many such connections), its broker reads it as usual.
    pub fn connect_to(path: &Path) -> Result<Pss, PssError> {
        let out = UnixStream::connect(path).map_err(MtsError::Io)?;
        out.set_read_timeout(Some(DEADLINE)).map_err(MtsError::Io)?;
        out.set_write_timeout(Some(DEADLINE))
            .map_err(MtsError::Io)?;
        let input = RefCell::new(BufReader::with_capacity(
            64 * 1024,
            out.try_clone().map_err(MtsError::Io)?,
        ));
        let pss = Pss {
            out,
            input,
            next_id: Cell::new(1),
            broken: Cell::new(false),
        };
        match pss.round_trip(OP_PSS_DIRECT, &[]) {
            // Refused (sysmgr logs why): the broker reads it as usual.
            Ok(_) | Err(MtsError::Remote(_)) => Ok(pss),
            Err(e) => Err(e.into()),
        }
    }

    /// Send one request frame to SAP `pss` and read the frame that answers it.
    fn round_trip(&self, opcode: u32, payload: &[u8]) -> Result<Vec<u8>, MtsError> {
        if self.broken.get() {
            return Err(MtsError::Remote(
                "an earlier PSS call on this connection failed midway".into(),
            ));
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let h = Header {
            flags: Flags(Flags::REQUEST),
            len: payload.len() as u32,
            src_sap: mts::sap::CLI,
            dst_sap: mts::sap::PSS,
            opcode,
            msg_id: id,
            reply_to: 0,
        };
        let r = self.exchange(&h, payload);
        if r.as_ref().is_err_and(|e| !matches!(e, MtsError::Remote(_))) {
            self.broken.set(true);
        }
        r
    }

    fn exchange(&self, h: &Header, payload: &[u8]) -> Result<Vec<u8>, MtsError> {
        let mut frame = Vec::with_capacity(mts::frame::HEADER_LEN + payload.len());
        frame.extend_from_slice(&h.encode());
        frame.extend_from_slice(payload);
        (&self.out).write_all(&frame)?;
        let mut input = self.input.borrow_mut();
        loop {
            let f = mts::io::read_frame(&mut *input, DEFAULT_MAX_PAYLOAD)?;
            // Nothing else is asked for on this connection; anything else is skipped.
            if f.header.flags.has(Flags::RESPONSE) && f.header.reply_to == h.msg_id {
                return f.into_result();
            }
        }
    }

    /// One request, one answer.
    pub fn call(&self, req: &Request) -> Result<Response, PssError> {
        let p = mts::codec::encode(req)?;
        Ok(mts::codec::decode(&self.round_trip(OP_PSS, &p)?)?)
    }

    /// Read one of this service's keys.
    pub fn get<T: DeserializeOwned>(
        &self,
        scope: Scope,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<T>, PssError> {
        decoded(self.call(&get_request(None, scope, key.as_ref()))?)
    }

    /// Read another service's shared key (or its private one, which the rules refuse).
    pub fn get_of<T: DeserializeOwned>(
        &self,
        service: &str,
        scope: Scope,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<T>, PssError> {
        decoded(self.call(&get_request(Some(service), scope, key.as_ref()))?)
    }

    /// Raw entries of this service (or `service`) under a prefix.
    pub fn scan(
        &self,
        service: Option<&str>,
        scope: Scope,
        prefix: impl AsRef<[u8]>,
        limit: u32,
    ) -> Result<Entries, PssError> {
        entries(self.call(&scan_request(service, scope, prefix.as_ref(), limit))?)
    }

    /// Put one key (a one-op checkpoint); returns its sequence number.
    pub fn put<T: Serialize + ?Sized>(
        &self,
        scope: Scope,
        key: impl AsRef<[u8]>,
        v: &T,
        durability: Durability,
    ) -> Result<u64, PssError> {
        self.txn(scope).put(key, v)?.commit(durability)
    }

    pub fn delete(
        &self,
        scope: Scope,
        key: impl AsRef<[u8]>,
        durability: Durability,
    ) -> Result<u64, PssError> {
        self.txn(scope).delete(key).commit(durability)
    }

    /// The latest checkpoint sequence number of this service.
    pub fn seq(&self) -> Result<u64, PssError> {
        seq(self.call(&Request::Seq)?)
    }

    /// Start an atomic checkpoint.
    pub fn txn(&self, scope: Scope) -> Txn<'_, Self> {
        Txn::new(self, scope)
    }
}

impl Txn<'_, Pss> {
    /// Apply all or nothing; returns the checkpoint sequence number.
    pub fn commit(self, durability: Durability) -> Result<u64, PssError> {
        let pss = self.pss;
        written(pss.call(&self.into_request(durability))?)
    }
}
