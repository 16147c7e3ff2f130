//! The fib instance: one owner of the table and the kernel programmer, fed by one `select!`.
//!
//! ```text
//!   MTS (updates from producers, EoR, shows, clear) ──┐        ┌── PSS shared-global: route/<block>
//!   stale timers (per restarted producer) ────────────┼──▶ Instance ┤   (written before the kernel)
//!   heartbeat tick, SIGTERM ──────────────────────────┘        └── kernel: nexthops and routes
//! ```
//!
//! Every start, whatever its kind, reads the table from PSS and the kernel's state, and changes
//! only what differs: the kernel is never flushed. Routes of a producer that announces a restart
//! are marked stale and swept at its End-of-RIB or when the stale timer runs out.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mts::client::{Client, Incoming, Pending};
use mts::sap;
use pss::client::Pss;
use pss::proto::{Durability, OP_PSS, Op, Request, Response, Scope};

use crate::FibError;
use crate::config::{BackendKind, Config};
use crate::kernel::{Backend, Kernel, Memory, Programmer};
use crate::proto::{self, BucketRow, Cef, Prefix, RouteRow, Update};
use crate::table::{Entry, Table};

const KEY_PREFIX: &str = "route/";
/// Blocks per PSS transaction when a large update is checkpointed (a few MB a request).
const TXN_BLOCKS: usize = 256;
/// How long a checkpoint write may take.
const PSS_DEADLINE: Duration = Duration::from_secs(30);

/// Routes are checkpointed in blocks: every route whose address starts with the same 16 bits
/// (per family) shares the key `route/<4|6>/<hi16>`, valued as the block's (prefix, entry)
/// list. A table of a million /24s is about 4k keys rather than a million: sled pays per key,
/// and that cost was most of the time from a producer's update to the kernel.
type Block = (u8, u16);

fn block_of(p: &Prefix) -> Block {
    match p.addr {
        std::net::IpAddr::V4(a) => (4, (u32::from(a) >> 16) as u16),
        std::net::IpAddr::V6(a) => (6, (u128::from(a) >> 112) as u16),
    }
}

fn block_key(b: Block) -> String {
    format!("{KEY_PREFIX}{}/{:04x}", b.0, b.1)
}

/// The first prefix that can be in a block (the table is ordered by address, then length).
fn block_start(b: Block) -> Prefix {
    let addr: std::net::IpAddr = if b.0 == 4 {
        std::net::Ipv4Addr::from(u32::from(b.1) << 16).into()
    } else {
        std::net::Ipv6Addr::from(u128::from(b.1) << 112).into()
    };
    Prefix { addr, len: 0 }
}

/// The PSS writes for the blocks holding `changed` as the table has them now (a block left
/// empty is deleted), one atomic write per [`TXN_BLOCKS`] blocks.
fn block_writes(
    table: &Table,
    changed: impl Iterator<Item = Prefix>,
) -> Result<Vec<Request>, FibError> {
    let blocks: BTreeSet<Block> = changed.map(|p| block_of(&p)).collect();
    let blocks: Vec<Block> = blocks.into_iter().collect();
    let mut writes = Vec::new();
    for chunk in blocks.chunks(TXN_BLOCKS) {
        let mut ops = Vec::with_capacity(chunk.len());
        for b in chunk {
            let rows: Vec<(&Prefix, &Entry)> = table
                .routes
                .range(block_start(*b)..)
                .take_while(|(p, _)| block_of(p) == *b)
                .collect();
            let key = block_key(*b).into_bytes();
            ops.push(if rows.is_empty() {
                Op::Delete { key }
            } else {
                Op::Put {
                    key,
                    value: pss::client::encode(&rows)?,
                }
            });
        }
        writes.push(Request::Write {
            scope: Scope::SharedGlobal,
            ops,
            durability: Durability::Fast,
        });
    }
    Ok(writes)
}

/// Send `writes` to PSS now (they are applied in order); wait with [`checkpointed`].
fn send_writes(mts: &Client, writes: &[Request]) -> Result<Vec<Pending>, FibError> {
    writes
        .iter()
        .map(|w| Ok(mts.request_start(sap::CLI, sap::PSS, OP_PSS, w)?))
        .collect()
}

/// Every write sent by [`send_writes`] acknowledged.
async fn checkpointed(sent: Vec<Pending>) -> Result<(), FibError> {
    for p in sent {
        match p.wait::<Response>(PSS_DEADLINE).await? {
            Response::Written { .. } => {}
            other => {
                let why = format!("checkpoint refused: {other:?}");
                return Err(FibError::Pss(pss::PssError::Denied(why)));
            }
        }
    }
    Ok(())
}

/// Write the blocks holding `changed`, and delete `old` keys; all or nothing per transaction.
async fn checkpoint_blocks(
    mts: &Client,
    table: &Table,
    changed: impl Iterator<Item = Prefix>,
    old: &[String],
) -> Result<(), FibError> {
    let mut writes = block_writes(table, changed)?;
    for chunk in old.chunks(TXN_BLOCKS * 8) {
        writes.push(Request::Write {
            scope: Scope::SharedGlobal,
            ops: chunk
                .iter()
                .map(|k| Op::Delete {
                    key: k.clone().into_bytes(),
                })
                .collect(),
            durability: Durability::Fast,
        });
    }
    checkpointed(send_writes(mts, &writes)?).await
}

/// An update applied to the table whose checkpoint is on its way; its kernel programming and
/// its answer come once the next message is taken in (see [`Instance::stage`]).
struct Staged {
    m: Incoming,
    changed: BTreeSet<Prefix>,
    sent: Vec<Pending>,
}

pub struct Options {
    pub config: Option<PathBuf>,
}

pub struct Instance {
    mts: Client,
    cfg: Config,
    table: Table,
    prog: Programmer,
    /// Producers that announced a restart, and when their stale routes go regardless.
    stale_until: HashMap<String, Instant>,
    /// Link and nexthop notifications from the kernel (kernel backend only).
    monitor: Option<tokio::io::unix::AsyncFd<netlink_sys::Socket>>,
    /// The kernel changed behind our back: look again at this instant (debounced).
    recheck_at: Option<Instant>,
    /// The last update taken in, checkpoint sent, kernel and answer still to come.
    staged: Option<Staged>,
}

const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEXTHOP: u32 = 32;

fn monitor_socket() -> std::io::Result<tokio::io::unix::AsyncFd<netlink_sys::Socket>> {
    let mut s = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
    s.bind_auto()?;
    s.add_membership(RTNLGRP_LINK)?;
    s.add_membership(RTNLGRP_NEXTHOP)?;
    s.set_non_blocking(true)?;
    // SAFETY: the AsyncFd owns the socket, so its descriptor stays open and refers to the same
    // socket for as long as it is registered.
    unsafe { tokio::io::unix::AsyncFd::register(s) }.map_err(|e| e.into())
}

/// Take in what the kernel did on its own: sticky groups whose slots it deleted with a link
/// (adopted bucket by bucket), and which links are down. Returns the routes whose distribution
/// changed.
fn adopt_kernel(table: &mut Table, prog: &mut Programmer) -> BTreeSet<Prefix> {
    let mut changed = BTreeSet::new();
    let sticky: Vec<Prefix> = table
        .routes
        .iter()
        .filter(|(_, e)| e.ldt.is_some())
        .map(|(p, _)| *p)
        .collect();
    for p in sticky {
        let Some(now) = prog.kernel_distribution(&p) else {
            continue;
        };
        let paths = &table.routes[&p].paths;
        let per_bucket: Option<Vec<crate::table::Path>> = now
            .iter()
            .map(|(gw, ix)| {
                paths
                    .iter()
                    .find(|x| x.gw == *gw && prog.backend.ifindex(&x.ifname) == Some(*ix))
                    .cloned()
            })
            .collect();
        if let Some(pb) = per_bucket
            && table.adopt(&p, pb)
        {
            changed.insert(p);
        }
    }
    let names: BTreeSet<String> = table
        .routes
        .values()
        .flat_map(|e| e.paths.iter().map(|x| x.ifname.clone()))
        .chain(table.down.iter().cloned())
        .collect();
    for n in names {
        let up = prog.backend.link_up(&n);
        changed.extend(table.set_link(&n, up));
    }
    changed
}

impl Instance {
    pub async fn start(opts: &Options) -> Result<Instance, FibError> {
        let cfg = crate::config::load(opts.config.as_deref())?;
        let mts = Client::connect_from_env().await?;
        mts.bind(proto::SAP_NAME).await?;
        let mut table = Table::new(cfg.sticky.clone());
        // Blocks; a key per route is the format before blocks, read once and rewritten.
        let mut old_keys = Vec::new();
        for (k, v) in Pss::new(&mts)
            .scan(None, Scope::SharedGlobal, KEY_PREFIX, u32::MAX)
            .await?
        {
            let k = String::from_utf8_lossy(&k).into_owned();
            let rest = k.strip_prefix(KEY_PREFIX).unwrap_or_default();
            if rest.starts_with("4/") || rest.starts_with("6/") {
                match pss::client::decode::<Vec<(Prefix, Entry)>>(&v) {
                    Ok(rows) => table.routes.extend(rows),
                    Err(_) => tracing::warn!(key = %k, "unreadable route checkpoint skipped"),
                }
                continue;
            }
            match (rest.parse::<Prefix>(), pss::client::decode::<Entry>(&v)) {
                (Ok(p), Ok(e)) => {
                    table.routes.insert(p, e);
                }
                _ => tracing::warn!(key = %k, "unreadable route checkpoint skipped"),
            }
            old_keys.push(k);
        }
        if !old_keys.is_empty() {
            let all: Vec<Prefix> = table.routes.keys().copied().collect();
            checkpoint_blocks(&mts, &table, all.into_iter(), &old_keys).await?;
            tracing::info!(
                keys = old_keys.len(),
                "route checkpoints rewritten as blocks"
            );
        }
        let backend: Box<dyn Backend> = match cfg.backend {
            BackendKind::Kernel => Box::new(Kernel::open().map_err(FibError::Kernel)?),
            BackendKind::Memory => Box::new(Memory::default()),
        };
        let monitor = match cfg.backend {
            BackendKind::Kernel => match monitor_socket() {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "no link monitoring");
                    None
                }
            },
            BackendKind::Memory => None,
        };
        let mut prog = Programmer::new(backend, cfg.protocol).map_err(FibError::Kernel)?;
        let found = prog.mirror.routes.len();
        let t0 = Instant::now();
        // Links that went down while no fib was running, and what the kernel did about them.
        adopt_kernel(&mut table, &mut prog);
        let rep = prog.sync(&table);
        tracing::info!(
            start = %std::env::var("SYSMGR_START").unwrap_or_default(),
            backend = prog.backend.name(),
            routes = table.routes.len(),
            kernel_routes_found = found,
            added = rep.routes_added,
            replaced = rep.routes_replaced,
            deleted = rep.routes_deleted,
            ops = rep.ops,
            took_ms = t0.elapsed().as_millis() as u64,
            "fib reconciled with the kernel"
        );
        for e in rep.errors.iter().take(10) {
            tracing::warn!(error = %e, "reconcile");
        }
        let mut stale_until = HashMap::new();
        for e in table.routes.values().filter(|e| e.stale) {
            stale_until
                .entry(e.producer.clone())
                .or_insert_with(|| Instant::now() + cfg.stale_time);
        }
        Ok(Instance {
            mts,
            cfg,
            table,
            prog,
            stale_until,
            monitor,
            recheck_at: None,
            staged: None,
        })
    }

    /// A link or nexthop changed in the kernel: adopt what it did, then make it match again.
    async fn on_kernel_change(&mut self) {
        self.finish_staged(None).await;
        if let Err(e) = self.prog.reread() {
            tracing::warn!(error = %e, "kernel re-read failed");
            return;
        }
        let changed = adopt_kernel(&mut self.table, &mut self.prog);
        if !changed.is_empty() {
            tracing::info!(routes = changed.len(), down = ?self.table.down, "links changed: sticky distributions follow");
            if let Err(e) = self.checkpoint(&changed).await {
                tracing::warn!(error = %e, "checkpoint");
            }
        }
        let rep = self.prog.sync(&self.table);
        if rep.ops > 0 || !rep.errors.is_empty() {
            tracing::info!(
                ops = rep.ops,
                groups_created = rep.groups_created,
                slots_repointed = rep.slots_repointed,
                errors = rep.errors.len(),
                "kernel re-synced"
            );
        }
    }

    /// Write the blocks of `changed` (see [`block_of`]).
    async fn checkpoint(&self, changed: &BTreeSet<Prefix>) -> Result<(), FibError> {
        checkpoint_blocks(&self.mts, &self.table, changed.iter().copied(), &[]).await
    }

    /// Checkpoint, then program the kernel.
    async fn commit(&mut self, changed: BTreeSet<Prefix>) -> Result<(), String> {
        if changed.is_empty() {
            return Ok(());
        }
        let t0 = Instant::now();
        self.checkpoint(&changed).await.map_err(|e| e.to_string())?;
        self.program(&changed, t0.elapsed())
    }

    /// Program `changed` into the kernel (`ck`: how long its checkpoint was waited for).
    fn program(&mut self, changed: &BTreeSet<Prefix>, ck: Duration) -> Result<(), String> {
        let t1 = Instant::now();
        let rep = self.prog.sync_changed(&self.table, changed);
        let (ck, k) = (ck.as_millis() as u64, t1.elapsed().as_millis() as u64);
        if changed.len() >= 1000 {
            tracing::info!(
                changed = changed.len(),
                ops = rep.ops,
                checkpoint_ms = ck,
                kernel_ms = k,
                "programmed"
            );
        } else {
            tracing::debug!(
                changed = changed.len(),
                ops = rep.ops,
                checkpoint_ms = ck,
                kernel_ms = k,
                "programmed"
            );
        }
        if rep.errors.is_empty() {
            Ok(())
        } else {
            for e in rep.errors.iter().take(10) {
                tracing::warn!(error = %e, "programming");
            }
            Err(format!(
                "{} kernel operations failed, first: {}",
                rep.errors.len(),
                rep.errors[0]
            ))
        }
    }

    /// Apply a producer's update to the table; the prefixes whose entry changed.
    fn apply(&mut self, u: Update) -> Result<BTreeSet<Prefix>, String> {
        let mut changed = BTreeSet::new();
        if let Some(p) = u
            .announce
            .iter()
            .flat_map(|g| &g.paths)
            .find(|p| p.ifname.is_empty() || p.ifname.len() >= 16)
        {
            return Err(format!("{p}: bad interface name"));
        }
        for g in u.announce {
            for p in g.prefixes {
                if self
                    .table
                    .announce(p, &u.producer, g.paths.clone(), g.sticky)
                {
                    changed.insert(p);
                }
            }
        }
        for p in u.withdraw {
            if self.table.withdraw(&p, &u.producer) {
                changed.insert(p);
            }
        }
        Ok(changed)
    }

    /// Take in an update: into the table, its checkpoint sent; then the update before it (its
    /// checkpoint acknowledged meanwhile, while this one's is written) goes into the kernel and
    /// is answered. So a producer that keeps a few updates in flight has sysmgr writing one
    /// while the kernel takes the other. A prefix in both goes to the kernel with the later.
    /// (When programming falls back to a full sync, which is rare, the later update's routes
    /// can reach the kernel before its checkpoint; a restart in that window reconciles the
    /// kernel to the checkpoint, and the producer's unanswered update is delivered again.)
    async fn stage(&mut self, m: Incoming, u: Update) {
        let parts = self.apply(u).and_then(|changed| {
            let writes =
                block_writes(&self.table, changed.iter().copied()).map_err(|e| e.to_string())?;
            let sent = send_writes(&self.mts, &writes).map_err(|e| e.to_string())?;
            Ok((changed, sent))
        });
        match parts {
            Ok((changed, sent)) => {
                self.finish_staged(Some(&changed)).await;
                self.staged = Some(Staged { m, changed, sent });
            }
            Err(e) => {
                self.finish_staged(None).await;
                if let Err(e) = self.mts.respond(&m, &Err::<(), String>(e)) {
                    tracing::warn!(error = %e, "could not answer");
                }
            }
        }
    }

    /// The staged update into the kernel (less what `next` programs later), and its answer.
    async fn finish_staged(&mut self, next: Option<&BTreeSet<Prefix>>) {
        let Some(s) = self.staged.take() else {
            return;
        };
        let waited = Instant::now();
        let r = match checkpointed(s.sent).await.map_err(|e| e.to_string()) {
            Ok(()) => {
                let changed = match next {
                    Some(n) => {
                        tracing::debug!(
                            changed = s.changed.len(),
                            "the next update taken in before this one goes to the kernel"
                        );
                        s.changed.difference(n).copied().collect()
                    }
                    None => s.changed,
                };
                self.program(&changed, waited.elapsed())
            }
            Err(e) => {
                // Not in PSS, so not in the kernel; whatever a later update deferred to this
                // one is caught up by a full sync.
                self.prog.force_full_sync();
                Err(e)
            }
        };
        if let Err(e) = self.mts.respond(&s.m, &r) {
            tracing::warn!(error = %e, "could not answer");
        }
    }

    fn row(&self, p: &Prefix, e: &Entry) -> RouteRow {
        RouteRow {
            prefix: *p,
            producer: e.producer.clone(),
            paths: e.paths.clone(),
            sticky: e.sticky,
            stale: e.stale,
            nh_id: self.prog.mirror.routes.get(p).and_then(|r| r.nh_id),
        }
    }

    fn cef(&mut self, p: &Prefix) -> Result<Cef, String> {
        let e = self
            .table
            .routes
            .get(p)
            .ok_or_else(|| format!("no route {p}"))?;
        let slots = self.prog.slots_of(p).map(|(_, s)| s).unwrap_or_default();
        let buckets = e
            .ldt
            .as_ref()
            .map(|l| {
                (0..l.slots.len())
                    .map(|i| BucketRow {
                        index: i,
                        path: l.slots[i].clone(),
                        replaced: l.replaced(i),
                        slot_nh: slots.get(i).copied(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Cef {
            route: self.row(p, e),
            buckets,
            auto_recovery: self.cfg.sticky.auto_recovery,
        })
    }

    async fn sweep(&mut self, producer: &str) -> u64 {
        self.finish_staged(None).await;
        self.stale_until.remove(producer);
        let gone: BTreeSet<Prefix> = self.table.sweep(producer).into_iter().collect();
        let n = gone.len() as u64;
        tracing::info!(producer, swept = n, "stale routes swept");
        if let Err(e) = self.commit(gone).await {
            tracing::warn!(error = %e, "sweep");
        }
        n
    }

    async fn on_message(&mut self, m: Incoming) {
        if m.needs_ack() {
            self.mts.ack(&[m.id()]);
        }
        if !m.is_request() {
            return;
        }
        if m.header.opcode != proto::OP_UPDATE {
            // Everything else sees the table and the kernel with the staged update in.
            self.finish_staged(None).await;
        }
        let sent = match m.header.opcode {
            proto::OP_UPDATE => match m.decode::<Update>() {
                Ok(u) => return self.stage(m, u).await,
                Err(e) => self
                    .mts
                    .respond(&m, &Err::<(), String>(format!("bad update: {e}"))),
            },
            proto::OP_PRODUCER_START => {
                let r = match m.decode::<String>() {
                    Ok(p) => {
                        let stale: BTreeSet<Prefix> =
                            self.table.mark_stale(&p).into_iter().collect();
                        let n = stale.len() as u64;
                        self.stale_until
                            .insert(p.clone(), Instant::now() + self.cfg.stale_time);
                        tracing::info!(producer = %p, stale = n, "producer restarted: routes stale");
                        self.checkpoint(&stale)
                            .await
                            .map(|_| n)
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(format!("bad producer: {e}")),
                };
                self.mts.respond(&m, &r)
            }
            proto::OP_END_OF_RIB => {
                let r = match m.decode::<String>() {
                    Ok(p) => Ok(self.sweep(&p).await),
                    Err(e) => Err(format!("bad producer: {e}")),
                };
                self.mts.respond(&m, &r)
            }
            proto::OP_SHOW_ROUTES => {
                let rows: Vec<RouteRow> = match m.decode::<Option<Prefix>>() {
                    Ok(Some(p)) => self
                        .table
                        .routes
                        .iter()
                        .filter(|(q, _)| q.covers(&p) || **q == p)
                        .map(|(q, e)| self.row(q, e))
                        .collect(),
                    _ => self
                        .table
                        .routes
                        .iter()
                        .map(|(q, e)| self.row(q, e))
                        .collect(),
                };
                self.mts.respond(&m, &rows)
            }
            proto::OP_SHOW_CEF => {
                let r = m
                    .decode::<Prefix>()
                    .map_err(|e| e.to_string())
                    .and_then(|p| self.cef(&p));
                self.mts.respond(&m, &r)
            }
            proto::OP_CLEAR_ROUTE => {
                let r = match m.decode::<Prefix>() {
                    Ok(p) => match self.table.clear(&p) {
                        Ok(()) => self.commit([p].into_iter().collect()).await,
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e.to_string()),
                };
                self.mts.respond(&m, &r)
            }
            op => self
                .mts
                .respond(&m, &Err::<(), String>(format!("unknown opcode {op}"))),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "could not answer");
        }
    }

    pub async fn run(mut self) -> Result<(), FibError> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| FibError::Kernel(format!("SIGTERM handler: {e}")))?;
        let hb = mts::notify::watchdog_interval().map(|d| d / 3);
        let mut heartbeat = tokio::time::interval(hb.unwrap_or(Duration::from_secs(3600)));
        let _ = mts::notify::notify(&format!(
            "READY=1\nSTATUS={} routes ({} backend)\n",
            self.table.routes.len(),
            self.prog.backend.name()
        ));
        loop {
            let next_stale = self.stale_until.values().min().copied();
            let recheck = self.recheck_at;
            tokio::select! {
                r = async {
                    match &self.monitor {
                        Some(m) => m.readable().await.map(|mut g| {
                            // Drain: what changed is re-read from the kernel anyway.
                            let mut buf = vec![0u8; 65536];
                            while g.get_inner().recv(&mut &mut buf[..], 0).is_ok() {}
                            g.clear_ready();
                        }),
                        None => std::future::pending().await,
                    }
                } => {
                    if r.is_ok() && self.recheck_at.is_none() {
                        self.recheck_at = Some(Instant::now() + Duration::from_millis(20));
                    }
                }
                _ = async {
                    match recheck {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.recheck_at = None;
                    self.on_kernel_change().await;
                }
                _ = std::future::ready(()), if self.staged.is_some() && !self.mts.has_incoming() => {
                    self.finish_staged(None).await;
                }
                m = self.mts.recv() => match m {
                    Some(m) => self.on_message(m).await,
                    None => return Err(FibError::Mts(mts::MtsError::Remote("sysmgr closed the connection".into()))),
                },
                _ = async {
                    match next_stale {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = Instant::now();
                    let due: Vec<String> = self
                        .stale_until
                        .iter()
                        .filter(|(_, d)| **d <= now)
                        .map(|(p, _)| p.clone())
                        .collect();
                    for p in due {
                        tracing::warn!(producer = %p, "stale timer expired before End-of-RIB");
                        self.sweep(&p).await;
                    }
                }
                _ = heartbeat.tick(), if hb.is_some() => {
                    let _ = mts::notify::notify("WATCHDOG=1\n");
                }
                _ = term.recv() => {
                    self.finish_staged(None).await;
                    tracing::info!("SIGTERM: stopping (kernel routes stay)");
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_contiguous_ranges_of_the_table() {
        let p = |s: &str| s.parse::<Prefix>().expect("prefix");
        let all = [
            "9.255.255.0/24",
            "10.0.0.0/8",
            "10.0.0.0/16",
            "10.0.255.0/24",
            "10.1.0.0/16",
            "255.255.0.0/16",
            "::/0",
            "2001:db8::/32",
            "2001:db8:ffff::/48",
            "2002::/16",
        ];
        let table: std::collections::BTreeMap<Prefix, u8> = all.iter().map(|s| (p(s), 0)).collect();
        let block = |b: Block| -> Vec<String> {
            table
                .range(block_start(b)..)
                .take_while(|(q, _)| block_of(q) == b)
                .map(|(q, _)| q.to_string())
                .collect()
        };
        assert_eq!(
            block((4, 0x0a00)),
            ["10.0.0.0/8", "10.0.0.0/16", "10.0.255.0/24"]
        );
        assert_eq!(block((4, 0x0a01)), ["10.1.0.0/16"]);
        assert_eq!(block((4, 0xffff)), ["255.255.0.0/16"]);
        assert_eq!(block((6, 0)), ["::/0"]);
        assert_eq!(block((6, 0x2001)), ["2001:db8::/32", "2001:db8:ffff::/48"]);
        // Every route is in exactly the block its key names.
        let n: usize = all
            .iter()
            .map(|s| block_of(&p(s)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|b| block(b).len())
            .sum();
        assert_eq!(n, all.len());
        assert_eq!(block_key((4, 0x0a00)), "route/4/0a00");
    }
}
