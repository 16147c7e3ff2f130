//! The storage side of PSS, inside sysmgr: keyspaces per (service, scope), access rules,
//! transactions, checkpoint sequence numbers. Synchronous; the broker calls it.
//!
//! Trees: `pss/<service>/<scope>` hold the keys; `pss/meta` holds, per service, the last
//! checkpoint sequence number and time (`<service>` -> seq u64 BE + unix ms u64 BE).

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::proto::{Durability, Op, Request, Response, Scope};
use crate::wal::{ChangeRef, RecordRef};
use crate::{PssError, Store};
use serde_bytes::Bytes;

/// One stored key for `show`: (scope word, key, value).
pub type Entry = (String, Vec<u8>, Vec<u8>);

/// Who is asking, as the broker established it from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    Service(&'a str),
    Operator,
}

/// Per (service, scope) numbers for `show pss`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub service: String,
    pub scope: String,
    pub keys: usize,
    pub bytes: usize,
    pub last_seq: u64,
    pub last_ms: u64,
}

#[derive(Clone)]
pub struct Server {
    store: Store,
    meta: sled::Tree,
}

fn tree_name(service: &str, scope: Scope) -> String {
    format!("pss/{service}/{}", scope.word())
}

/// The sequence number after the one in a service's meta value (16 bytes: sequence, time).
fn next_seq(meta: Option<&[u8]>) -> u64 {
    meta.and_then(crate::meta_parse)
        .map_or(1, |(seq, _)| seq + 1)
}

fn change<'a>(
    tree: &'a [u8],
    clear: bool,
    ops: Vec<(&'a Bytes, Option<&'a Bytes>)>,
) -> ChangeRef<'a> {
    ChangeRef {
        tree,
        clear,
        ops,
        pos: 0,
    }
}

impl Server {
    pub fn new(store: &Store) -> Result<Server, PssError> {
        Ok(Server {
            store: store.clone(),
            meta: store.tree(crate::META_TREE)?,
        })
    }

    fn tree(&self, service: &str, scope: Scope) -> Result<sled::Tree, PssError> {
        self.store.tree(&tree_name(service, scope))
    }

    /// May `caller` read `owner`'s keys in `scope`?
    fn may_read(caller: Caller<'_>, owner: &str, scope: Scope) -> Result<(), PssError> {
        match caller {
            Caller::Operator => Ok(()),
            Caller::Service(s) if s == owner || scope != Scope::Private => Ok(()),
            Caller::Service(s) => Err(PssError::Denied(format!(
                "service {s:?} may not read the private keys of {owner:?}"
            ))),
        }
    }

    /// Handle one request. `Write` is applied but not yet durable: the caller flushes for
    /// `Durability::Durable` before acknowledging.
    pub fn handle(&self, caller: Caller<'_>, req: Request) -> Result<Response, PssError> {
        match req {
            Request::Get {
                service,
                scope,
                key,
            } => {
                let owner = self.owner(caller, service)?;
                Self::may_read(caller, &owner, scope)?;
                let v = self.tree(&owner, scope)?.get(key).map_err(PssError::Db)?;
                Ok(Response::Value(v.map(|v| v.to_vec())))
            }
            Request::Scan {
                service,
                scope,
                prefix,
                limit,
            } => {
                let owner = self.owner(caller, service)?;
                Self::may_read(caller, &owner, scope)?;
                let mut out = Vec::new();
                for kv in self
                    .tree(&owner, scope)?
                    .scan_prefix(prefix)
                    .take(limit as usize)
                {
                    let (k, v) = kv.map_err(PssError::Db)?;
                    out.push((k.to_vec(), v.to_vec()));
                }
                Ok(Response::Entries(out))
            }
            Request::Write {
                scope,
                ops,
                durability,
            } => {
                let Caller::Service(me) = caller else {
                    return Err(PssError::Denied(
                        "operators read PSS; only a service writes its own keys".into(),
                    ));
                };
                self.store.may_write().map_err(PssError::Denied)?;
                self.logged_write(me, scope, &ops, durability == Durability::Durable)
            }
            Request::Seq => {
                let Caller::Service(me) = caller else {
                    return Err(PssError::Denied(
                        "an operator has no checkpoint sequence".into(),
                    ));
                };
                Ok(Response::Seq(self.last(me).0))
            }
        }
    }

    fn owner(&self, caller: Caller<'_>, service: Option<String>) -> Result<String, PssError> {
        match (service, caller) {
            (Some(s), _) => Ok(s),
            (None, Caller::Service(me)) => Ok(me.to_string()),
            (None, Caller::Operator) => {
                Err(PssError::Denied("an operator must name the service".into()))
            }
        }
    }

    /// (last sequence, last time ms) of a service.
    pub fn last(&self, service: &str) -> (u64, u64) {
        match self.meta.get(service) {
            Ok(Some(v)) => crate::meta_parse(&v).unwrap_or((0, 0)),
            _ => (0, 0),
        }
    }

    /// A write, and its record in the write-ahead log when the service's writes are logged
    /// (from its first durable write on; see `wal.rs`).
    fn logged_write(
        &self,
        me: &str,
        scope: Scope,
        ops: &[Op],
        durable: bool,
    ) -> Result<Response, PssError> {
        let tree = self.tree(me, scope)?;
        let mut held = self.hold(me, durable)?;
        let res = self.write(me, &tree, ops)?;
        if let (Some(h), Response::Written { seq }) = (held.as_mut(), &res) {
            let name = tree.name();
            let ops = ops
                .iter()
                .map(|o| match o {
                    Op::Put { key, value } => (Bytes::new(key), Some(Bytes::new(value))),
                    Op::Delete { key } => (Bytes::new(key), None),
                    Op::Cas { key, new, .. } => (Bytes::new(key), new.as_deref().map(Bytes::new)),
                })
                .collect();
            self.log(h, me, *seq, vec![change(&name, false, ops)])?;
        }
        Ok(res)
    }

    /// The log held for `me`'s write, if its writes are logged (armed by a durable write).
    fn hold(&self, me: &str, durable: bool) -> Result<Option<crate::wal::Held<'_>>, PssError> {
        self.store
            .wal()
            .hold(me, durable, || {
                self.store
                    .flush()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::other(e.to_string()))
            })
            .map_err(|e| PssError::Db(sled::Error::Io(e)))
    }

    /// Log a write of `me` applied as `seq` (its sequence, as now in sled, goes with it). A
    /// record the log cannot take is made durable by flushing sled instead, so that the
    /// service's records stay a contiguous sequence.
    fn log(
        &self,
        h: &mut crate::wal::Held<'_>,
        me: &str,
        seq: u64,
        trees: Vec<ChangeRef<'_>>,
    ) -> Result<(), PssError> {
        let meta = self.meta.get(me.as_bytes()).map_err(PssError::Db)?;
        let meta_name = self.meta.name();
        let mut trees: Vec<ChangeRef<'_>> = trees;
        trees.push(change(
            &meta_name,
            false,
            vec![(Bytes::new(me.as_bytes()), meta.as_deref().map(Bytes::new))],
        ));
        let record = RecordRef {
            service: me,
            seq,
            trees,
        };
        if h.log(&record).is_err() {
            self.store.flush().map_err(PssError::Db)?;
        }
        Ok(())
    }

    /// One atomic checkpoint: every op or none, and the sequence number with them.
    fn write(&self, me: &str, tree: &sled::Tree, ops: &[Op]) -> Result<Response, PssError> {
        if let [op] = ops {
            return self.write_one(me, tree, op);
        }
        if !ops.iter().any(|o| matches!(o, Op::Cas { .. })) {
            return self.write_batch(me, tree, ops);
        }
        let res = (tree, &self.meta).transaction(|(t, m)| {
            for op in ops {
                match op {
                    Op::Put { key, value } => {
                        t.insert(key.as_slice(), value.as_slice())?;
                    }
                    Op::Delete { key } => {
                        t.remove(key.as_slice())?;
                    }
                    Op::Cas { key, expect, new } => {
                        let cur = t.get(key.as_slice())?;
                        if cur.as_deref() != expect.as_deref() {
                            return Err(ConflictableTransactionError::Abort(Response::CasFailed {
                                key: key.clone(),
                                current: cur.map(|c| c.to_vec()),
                            }));
                        }
                        match new {
                            Some(v) => t.insert(key.as_slice(), v.as_slice())?,
                            None => t.remove(key.as_slice())?,
                        };
                    }
                }
            }
            let seq = next_seq(m.get(me.as_bytes())?.as_deref());
            m.insert(me.as_bytes(), crate::meta_value(seq, crate::now_ms()))?;
            Ok(seq)
        });
        match res {
            Ok(seq) => {
                self.replicate_write(me, tree, ops);
                Ok(Response::Written { seq })
            }
            Err(TransactionError::Abort(r)) => Ok(r),
            Err(TransactionError::Storage(e)) => Err(PssError::Db(e)),
        }
    }

    /// Puts and deletes only: one sled batch (atomic, and far cheaper than a transaction for
    /// a large checkpoint), then the sequence number. A crash between the two leaves the
    /// batch applied and its number unused: it was never acknowledged, so nobody saw it.
    fn write_batch(&self, me: &str, tree: &sled::Tree, ops: &[Op]) -> Result<Response, PssError> {
        let mut b = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put { key, value } => b.insert(key.as_slice(), value.as_slice()),
                Op::Delete { key } => b.remove(key.as_slice()),
                Op::Cas { .. } => unreachable!("the caller sends CAS through a transaction"),
            }
        }
        tree.apply_batch(b).map_err(PssError::Db)?;
        self.written(me, tree, ops)
    }

    /// A single operation: sled applies one key atomically by itself, and a batch or a
    /// transaction would make sled seal and write its log buffer (`pin_log`), which costs a
    /// small checkpoint far more than the insert. Then the sequence number, as for a batch.
    fn write_one(&self, me: &str, tree: &sled::Tree, op: &Op) -> Result<Response, PssError> {
        match op {
            Op::Put { key, value } => {
                tree.insert(key.as_slice(), value.as_slice())
                    .map_err(PssError::Db)?;
            }
            Op::Delete { key } => {
                tree.remove(key.as_slice()).map_err(PssError::Db)?;
            }
            Op::Cas { key, expect, new } => {
                let r = tree
                    .compare_and_swap(key.as_slice(), expect.as_deref(), new.as_deref())
                    .map_err(PssError::Db)?;
                if let Err(e) = r {
                    return Ok(Response::CasFailed {
                        key: key.clone(),
                        current: e.current.map(|c| c.to_vec()),
                    });
                }
            }
        }
        self.written(me, tree, std::slice::from_ref(op))
    }

    /// Operations applied: the service's next sequence number, and the copy for the standby.
    fn written(&self, me: &str, tree: &sled::Tree, ops: &[Op]) -> Result<Response, PssError> {
        let now = crate::now_ms();
        let meta = self
            .meta
            .update_and_fetch(me.as_bytes(), |old| {
                Some(crate::meta_value(next_seq(old), now))
            })
            .map_err(PssError::Db)?;
        let seq = meta
            .and_then(|m| crate::meta_parse(&m))
            .map_or(0, |(s, _)| s);
        self.replicate_write(me, tree, ops);
        Ok(Response::Written { seq })
    }

    /// A write applied: its operations (a CAS as the put or delete it became) and the
    /// service's new sequence go to the standby, if any.
    fn replicate_write(&self, me: &str, tree: &sled::Tree, ops: &[Op]) {
        if !self.store.replicating() {
            return;
        }
        let v = ops
            .iter()
            .map(|o| match o {
                Op::Put { key, value } => (key.clone(), Some(value.clone())),
                Op::Delete { key } => (key.clone(), None),
                Op::Cas { key, new, .. } => (key.clone(), new.clone()),
            })
            .collect();
        self.store.replicate(tree, false, v);
        if let Ok(m) = self.meta.get(me.as_bytes()) {
            self.store.replicate(
                &self.meta,
                false,
                vec![(me.as_bytes().to_vec(), m.map(|m| m.to_vec()))],
            );
        }
    }

    /// A stateless restart starts with the service's private state cleared.
    pub fn clear_private(&self, service: &str) -> Result<(), PssError> {
        self.clear(service, &[Scope::Private])
    }

    /// `clear pss service NAME`: every scope. The checkpoint sequence goes on (it only ever
    /// increases: a service may compare it with one it saw before).
    pub fn clear_service(&self, service: &str) -> Result<(), PssError> {
        self.clear(service, &Scope::ALL)
    }

    /// Empty `scopes` of `service`. A service that has checkpointed takes a sequence number
    /// for it, so that a clear is in its order like a write (in the write-ahead log too).
    fn clear(&self, service: &str, scopes: &[Scope]) -> Result<(), PssError> {
        let mut held = self.hold(service, false)?;
        let mut trees = Vec::with_capacity(scopes.len());
        for &s in scopes {
            let t = self.tree(service, s)?;
            t.clear().map_err(PssError::Db)?;
            self.store.replicate(&t, true, Vec::new());
            trees.push(t);
        }
        let now = crate::now_ms();
        let meta = self
            .meta
            .update_and_fetch(service.as_bytes(), |old| {
                old.map(|o| crate::meta_value(next_seq(Some(o)), now))
            })
            .map_err(PssError::Db)?;
        let Some(meta) = meta else {
            return Ok(());
        };
        self.store.replicate(
            &self.meta,
            false,
            vec![(service.as_bytes().to_vec(), Some(meta.to_vec()))],
        );
        if let Some(h) = held.as_mut() {
            let names: Vec<_> = trees.iter().map(|t| t.name()).collect();
            let changes = names.iter().map(|n| change(n, true, Vec::new())).collect();
            let seq = crate::meta_parse(&meta).map_or(0, |(s, _)| s);
            self.log(h, service, seq, changes)?;
        }
        Ok(())
    }

    pub fn usage(&self, service: &str) -> Result<Vec<Usage>, PssError> {
        let (last_seq, last_ms) = self.last(service);
        let mut v = Vec::new();
        for s in Scope::ALL {
            let t = self.tree(service, s)?;
            let bytes = t
                .iter()
                .filter_map(|kv| kv.ok())
                .map(|(k, v)| k.len() + v.len())
                .sum();
            v.push(Usage {
                service: service.into(),
                scope: s.word().into(),
                keys: t.len(),
                bytes,
                last_seq,
                last_ms,
            });
        }
        Ok(v)
    }

    /// `show pss service NAME [--scope S] [--key K]`: (scope, key, value) rows, at most 1000.
    pub fn entries(
        &self,
        service: &str,
        scope: Option<&str>,
        key: Option<&str>,
    ) -> Result<Vec<Entry>, PssError> {
        let scopes: Vec<Scope> = match scope {
            None => Scope::ALL.to_vec(),
            Some(w) => vec![Scope::parse(w).ok_or_else(|| {
                PssError::Denied(format!("unknown scope {w:?}: use private, local or global"))
            })?],
        };
        let mut out = Vec::new();
        for s in scopes {
            let t = self.tree(service, s)?;
            match key {
                Some(k) => {
                    if let Some(v) = t.get(k).map_err(PssError::Db)? {
                        out.push((s.word().to_string(), k.as_bytes().to_vec(), v.to_vec()));
                    }
                }
                None => {
                    for kv in t.iter().take(1000) {
                        let (k, v) = kv.map_err(PssError::Db)?;
                        out.push((s.word().to_string(), k.to_vec(), v.to_vec()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Make every write so far durable: the write-ahead log is synced
    /// ([`Store::commit_logged`]).
    pub fn flush(&self) -> Result<crate::Replicated, PssError> {
        self.store.commit_logged()
    }

    /// Start the write-ahead log afresh when it wants it (waiting up to `timeout` for that):
    /// what a checkpoint thread calls in a loop.
    pub fn checkpoint_when_wanted(&self, timeout: std::time::Duration) -> Result<(), PssError> {
        if self.store.checkpoint_wanted(timeout) {
            self.store.checkpoint()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> (tempfile::TempDir, Server) {
        let d = tempfile::tempdir().expect("tempdir");
        let s = Server::new(&Store::open(d.path()).expect("open")).expect("server");
        (d, s)
    }

    fn put(k: &str, v: &str) -> Op {
        Op::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    fn write(s: &Server, who: &str, scope: Scope, ops: Vec<Op>) -> Result<Response, PssError> {
        s.handle(
            Caller::Service(who),
            Request::Write {
                scope,
                ops,
                durability: crate::proto::Durability::Fast,
            },
        )
    }

    fn get(
        s: &Server,
        who: Caller<'_>,
        owner: Option<&str>,
        scope: Scope,
        k: &str,
    ) -> Result<Response, PssError> {
        s.handle(
            who,
            Request::Get {
                service: owner.map(str::to_string),
                scope,
                key: k.into(),
            },
        )
    }

    #[test]
    fn writes_are_checkpoints_with_increasing_sequence_numbers() {
        let (_d, s) = server();
        assert_eq!(
            write(&s, "bgp", Scope::Private, vec![put("a", "1")]).expect("w"),
            Response::Written { seq: 1 }
        );
        assert_eq!(
            write(
                &s,
                "bgp",
                Scope::SharedLocal,
                vec![put("b", "2"), put("c", "3")]
            )
            .expect("w"),
            Response::Written { seq: 2 }
        );
        assert_eq!(
            s.handle(Caller::Service("bgp"), Request::Seq).expect("seq"),
            Response::Seq(2)
        );
        assert_eq!(
            get(&s, Caller::Service("bgp"), None, Scope::Private, "a").expect("get"),
            Response::Value(Some(b"1".to_vec()))
        );
    }

    #[test]
    fn access_rules() {
        let (_d, s) = server();
        write(&s, "bgp", Scope::Private, vec![put("secret", "x")]).expect("w");
        write(&s, "bgp", Scope::SharedLocal, vec![put("shared", "y")]).expect("w");
        let e = get(
            &s,
            Caller::Service("fib"),
            Some("bgp"),
            Scope::Private,
            "secret",
        )
        .expect_err("denied");
        assert!(
            e.to_string()
                .contains("may not read the private keys of \"bgp\""),
            "{e}"
        );
        assert_eq!(
            get(
                &s,
                Caller::Service("fib"),
                Some("bgp"),
                Scope::SharedLocal,
                "shared"
            )
            .expect("ok"),
            Response::Value(Some(b"y".to_vec()))
        );
        assert_eq!(
            get(&s, Caller::Operator, Some("bgp"), Scope::Private, "secret")
                .expect("operator reads all"),
            Response::Value(Some(b"x".to_vec()))
        );
        // A service writes only its own keys: a write names no owner, so fib's write lands in fib's space.
        write(
            &s,
            "fib",
            Scope::SharedLocal,
            vec![put("shared", "overwrite?")],
        )
        .expect("w");
        assert_eq!(
            get(
                &s,
                Caller::Operator,
                Some("bgp"),
                Scope::SharedLocal,
                "shared"
            )
            .expect("ok"),
            Response::Value(Some(b"y".to_vec()))
        );
        assert!(
            s.handle(
                Caller::Operator,
                Request::Write {
                    scope: Scope::Private,
                    ops: vec![],
                    durability: crate::proto::Durability::Fast
                }
            )
            .is_err()
        );
    }

    #[test]
    fn cas_failure_applies_nothing() {
        let (_d, s) = server();
        write(&s, "bgp", Scope::Private, vec![put("k", "v1")]).expect("w");
        let r = write(
            &s,
            "bgp",
            Scope::Private,
            vec![
                put("other", "z"),
                Op::Cas {
                    key: "k".into(),
                    expect: Some("nope".into()),
                    new: Some("v2".into()),
                },
            ],
        )
        .expect("w");
        assert_eq!(
            r,
            Response::CasFailed {
                key: b"k".to_vec(),
                current: Some(b"v1".to_vec())
            }
        );
        assert_eq!(
            get(&s, Caller::Service("bgp"), None, Scope::Private, "other").expect("get"),
            Response::Value(None),
            "all or nothing"
        );
        assert_eq!(
            s.handle(Caller::Service("bgp"), Request::Seq).expect("seq"),
            Response::Seq(1),
            "no checkpoint consumed"
        );
        let r = write(
            &s,
            "bgp",
            Scope::Private,
            vec![Op::Cas {
                key: "k".into(),
                expect: Some("v1".into()),
                new: Some("v2".into()),
            }],
        )
        .expect("w");
        assert_eq!(r, Response::Written { seq: 2 });
    }

    /// A write of one operation skips sled's batch: same answers, same sequence numbers.
    #[test]
    fn single_operations_answer_like_batches() {
        let (_d, s) = server();
        let cas = |k: &str, expect: Option<&str>, new: Option<&str>| Op::Cas {
            key: k.into(),
            expect: expect.map(Into::into),
            new: new.map(Into::into),
        };
        let value = |k: &str| match get(&s, Caller::Service("bgp"), None, Scope::Private, k) {
            Ok(Response::Value(v)) => v,
            other => panic!("get {k}: {other:?}"),
        };
        let w = |op: Op| write(&s, "bgp", Scope::Private, vec![op]).expect("write");
        assert_eq!(w(cas("k", None, Some("v1"))), Response::Written { seq: 1 });
        assert_eq!(value("k"), Some(b"v1".to_vec()), "created by CAS");
        assert_eq!(
            w(cas("k", None, Some("v2"))),
            Response::CasFailed {
                key: b"k".to_vec(),
                current: Some(b"v1".to_vec())
            }
        );
        assert_eq!(
            w(cas("gone", Some("x"), None)),
            Response::CasFailed {
                key: b"gone".to_vec(),
                current: None
            }
        );
        assert_eq!(
            value("k"),
            Some(b"v1".to_vec()),
            "a failed CAS changes nothing"
        );
        assert_eq!(w(cas("k", Some("v1"), None)), Response::Written { seq: 2 });
        assert_eq!(value("k"), None, "deleted by CAS");
        assert_eq!(w(put("p", "1")), Response::Written { seq: 3 });
        assert_eq!(
            w(Op::Delete { key: "p".into() }),
            Response::Written { seq: 4 }
        );
        assert_eq!(value("p"), None);
        assert_eq!(
            s.handle(Caller::Service("bgp"), Request::Seq).expect("seq"),
            Response::Seq(4)
        );
    }

    #[test]
    fn stateless_clear_touches_only_private() {
        let (_d, s) = server();
        write(&s, "bgp", Scope::Private, vec![put("p", "1")]).expect("w");
        write(&s, "bgp", Scope::SharedGlobal, vec![put("g", "2")]).expect("w");
        s.clear_private("bgp").expect("clear");
        assert_eq!(
            get(&s, Caller::Service("bgp"), None, Scope::Private, "p").expect("get"),
            Response::Value(None)
        );
        assert_eq!(
            get(&s, Caller::Service("bgp"), None, Scope::SharedGlobal, "g").expect("get"),
            Response::Value(Some(b"2".to_vec()))
        );
        let u = s.usage("bgp").expect("usage");
        assert_eq!(u.iter().map(|u| u.keys).collect::<Vec<_>>(), [0, 0, 1]);
    }

    fn durable(s: &Server, who: &str, ops: Vec<Op>) -> Result<Response, PssError> {
        let r = s.handle(
            Caller::Service(who),
            Request::Write {
                scope: Scope::Private,
                ops,
                durability: Durability::Durable,
            },
        )?;
        s.flush()?;
        Ok(r)
    }

    /// The child of `durable_writes_survive_sigkill_before_sled_flushes`: durable writes (and,
    /// once logged, fast ones, a transaction and a clear), each acknowledged on stdout, then
    /// SIGKILL of itself, long before sled's own flush (every 500 ms) could run.
    fn crash_child(dir: &std::path::Path) {
        use std::io::Write;
        let s = Server::new(&Store::open(dir).expect("open")).expect("server");
        let mut out = std::io::stdout().lock();
        durable(&s, "a", vec![put("k0", "first")]).expect("arming write");
        for i in 1..=40 {
            durable(&s, "a", vec![put(&format!("k{i}"), &format!("v{i}"))]).expect("write");
        }
        // Logged too now that "a" is armed: a fast overwrite, a transaction with a CAS, a
        // delete, made durable by the next durable write.
        write(&s, "a", Scope::Private, vec![put("k1", "fast")]).expect("fast");
        let cas = Op::Cas {
            key: b"k2".to_vec(),
            expect: Some(b"v2".to_vec()),
            new: Some(b"swapped".to_vec()),
        };
        write(&s, "a", Scope::Private, vec![cas, put("t", "x")]).expect("txn");
        write(
            &s,
            "a",
            Scope::Private,
            vec![Op::Delete {
                key: b"k3".to_vec(),
            }],
        )
        .expect("del");
        durable(&s, "a", vec![put("last", "yes")]).expect("last");
        writeln!(out, "acked").expect("stdout");
        out.flush().expect("flush");
        // SAFETY: kill(2) on our own pid; nothing after it runs.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }

    #[test]
    fn durable_writes_survive_sigkill_before_sled_flushes() {
        if let Some(dir) = std::env::var_os("PSS_CRASH_CHILD_DIR") {
            crash_child(std::path::Path::new(&dir));
            return;
        }
        let d = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "server::tests::durable_writes_survive_sigkill_before_sled_flushes",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PSS_CRASH_CHILD_DIR", d.path())
            .output()
            .expect("child");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("acked"),
            "the child did not finish its writes: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let store = Store::open(d.path()).expect("reopen");
        let r = store.replayed().clone();
        assert!(r.applied > 0, "nothing came from the log: {r:?}");
        assert_eq!(r.out_of_order, 0);
        let s = Server::new(&store).expect("server");
        let val = |k: &str| match get(&s, Caller::Service("a"), None, Scope::Private, k) {
            Ok(Response::Value(v)) => v.map(|v| String::from_utf8_lossy(&v).into_owned()),
            other => panic!("get {k}: {other:?}"),
        };
        assert_eq!(val("k0").as_deref(), Some("first"));
        for i in 4..=40 {
            assert_eq!(val(&format!("k{i}")), Some(format!("v{i}")), "k{i}");
        }
        assert_eq!(val("k1").as_deref(), Some("fast"));
        assert_eq!(val("k2").as_deref(), Some("swapped"));
        assert_eq!(val("t").as_deref(), Some("x"));
        assert_eq!(val("k3"), None);
        assert_eq!(val("last").as_deref(), Some("yes"));
        // 45 writes: the sequence came back with them.
        assert_eq!(s.last("a").0, 45);
        // The next write continues it, and the log was started afresh.
        assert_eq!(
            write(&s, "a", Scope::Private, vec![put("n", "1")]).expect("write"),
            Response::Written { seq: 46 }
        );
        drop((s, store));
        assert_eq!(Store::open(d.path()).expect("again").replayed().applied, 0);
    }

    #[test]
    fn records_sled_has_are_skipped_and_a_clear_is_one_of_them() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = Store::open(d.path()).expect("open");
        let s = Server::new(&store).expect("server");
        for i in 1..=3 {
            durable(&s, "a", vec![put("k", &format!("v{i}"))]).expect("write");
        }
        // A clear is in the sequence like a write, and in the log.
        s.clear_private("a").expect("clear");
        durable(&s, "a", vec![put("j", "after")]).expect("write");
        assert_eq!(s.last("a").0, 5);
        drop(s);
        // sled has all of it (it flushes when dropped): the five records are skipped.
        drop(store);
        let store = Store::open(d.path()).expect("reopen");
        assert_eq!(
            *store.replayed(),
            crate::Replayed {
                applied: 0,
                skipped: 5,
                out_of_order: 0
            }
        );
        let s = Server::new(&store).expect("server");
        let val = |k: &str| match get(&s, Caller::Service("a"), None, Scope::Private, k) {
            Ok(Response::Value(v)) => v,
            other => panic!("get {k}: {other:?}"),
        };
        assert_eq!(val("k"), None, "cleared");
        assert_eq!(val("j").as_deref(), Some(&b"after"[..]));
    }

    #[test]
    fn only_durable_writers_are_logged_and_only_while_they_write_durably() {
        let (d, s) = server();
        let wal_files = || {
            std::fs::read_dir(d.path())
                .expect("dir")
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("pss-wal-"))
                .count()
        };
        // A service that writes `fast` (the routing services) is never logged: no log at all.
        for i in 0..50 {
            write(&s, "bgp", Scope::Private, vec![put(&format!("r{i}"), "x")]).expect("fast");
        }
        assert_eq!(wal_files(), 0);
        assert!(!s.store.wal().armed("bgp"));
        durable(&s, "a", vec![put("k", "1")]).expect("durable");
        assert_eq!(wal_files(), 2);
        assert!(s.store.wal().armed("a"));
        write(&s, "bgp", Scope::Private, vec![put("r", "y")]).expect("fast");
        assert!(
            !s.store.wal().armed("bgp"),
            "another service's durable write arms only it"
        );
        // A checkpoint that finds no durable write of "a" since the previous one: "a" is no
        // longer logged after the next.
        s.store.checkpoint().expect("checkpoint");
        assert!(
            s.store.wal().armed("a"),
            "its durable write was in the retired file's time"
        );
        s.store.checkpoint().expect("checkpoint");
        assert!(!s.store.wal().armed("a"));
    }
}
