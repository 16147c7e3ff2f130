//! Best paths to the FIB: a pending set, pulled by the writer one chunk at a time, and the
//! interface of each next hop.

use std::collections::VecDeque;

use mts::MtsError;

use super::*;

/// Routes per FIB request (about 200 kB on the wire for one group): small enough that
/// building one never holds up the owner loop for long, and the FIB programs each in time
/// proportional to it.
pub(super) const FIB_CHUNK: usize = 25_000;

/// The next hops of one best path set, in selection order.
type NextHops = smallvec::SmallVec<[IpAddr; 4]>;

/// A changed prefix's next hops as its change left them ([`crate::rib::Change`]), kept until
/// its FIB request is built.
pub(super) type Hops = smallvec::SmallVec<[IpAddr; 1]>;

/// Prefixes whose FIB state is still to be sent, in order, each with its next hops (a
/// prefix that changed twice may be in twice; the later one wins). The few distinct next-hop
/// sets are kept once and numbered, so a queued prefix costs 24 bytes, not 56.
#[derive(Default)]
pub(super) struct FibQueue {
    q: VecDeque<(Prefix, u32)>,
    sets: Vec<Hops>,
    ids: rustc_hash::FxHashMap<Hops, u32>,
}

impl FibQueue {
    /// Nothing refers to the numbers any more: start again.
    fn renumber_if_empty(&mut self) {
        if self.q.is_empty() {
            self.sets.clear();
            self.ids.clear();
        }
    }

    fn push(&mut self, p: Prefix, hops: Hops) {
        self.renumber_if_empty();
        // Neighbouring prefixes mostly share their next hops (one UPDATE's worth): the last
        // one's number is tried before the map.
        let id = match self.q.back() {
            Some(&(_, last)) if self.sets[last as usize] == hops => last,
            _ => match self.ids.get(&hops) {
                Some(id) => *id,
                None => {
                    let id = self.sets.len() as u32;
                    self.sets.push(hops.clone());
                    self.ids.insert(hops, id);
                    id
                }
            },
        };
        self.q.push_back((p, id));
    }

    /// Queue a batch, sorted by prefix (stably: a prefix in twice keeps its later entry
    /// last). The FIB and the kernel then take in neighbours together: in arrival order
    /// (BIRD sends its table in hash order), a full table's FIB checkpoints cost sysmgr
    /// 10 s of CPU instead of 1–2, and the kernel took half as long again.
    pub(super) fn push_sorted(&mut self, batch: impl IntoIterator<Item = (Prefix, Hops)>) {
        let start = self.q.len();
        for (p, hops) in batch {
            self.push(p, hops);
        }
        self.q.make_contiguous()[start..].sort_by_key(|e| e.0);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// The next `n` at most, oldest first, as (prefix, next-hop set number); the numbers stay
    /// valid until the next push.
    fn take(&mut self, n: usize) -> Vec<(Prefix, u32)> {
        let n = n.min(self.q.len());
        self.q.drain(..n).collect()
    }

    fn hops(&self, id: u32) -> &Hops {
        &self.sets[id as usize]
    }
}

/// What goes to the FIB, in order.
pub(super) enum ToFib {
    /// Our routes there are stale until our End-of-RIB (a new instance).
    ProducerStart,
    Update(fp::Update),
    EndOfRib,
}

/// Requests the FIB writer keeps in flight: the FIB takes in the next chunk (and sysmgr writes
/// its checkpoint) while the kernel takes this one, and a third is on its way meanwhile.
pub(super) const FIB_INFLIGHT: usize = 3;

/// Send FIB requests in order on the writer's own MTS connection, up to [`FIB_INFLIGHT`] at a
/// time, and say when each is done: the owner builds the next chunk only then, from its
/// queue (a prefix that changed twice meanwhile goes once, as it was last).
pub(super) async fn fib_writer(
    fib: u32,
    mut rx: mpsc::UnboundedReceiver<ToFib>,
    done: mpsc::UnboundedSender<()>,
) {
    type Answer = std::pin::Pin<Box<dyn Future<Output = (u32, Result<Vec<u8>, MtsError>)> + Send>>;
    let mts = match Client::connect_from_env().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "fib writer: no MTS connection");
            return;
        }
    };
    let mut sent: VecDeque<Answer> = VecDeque::new();
    loop {
        tokio::select! {
            biased;
            Some((op, r)) = async {
                match sent.front_mut() {
                    Some(f) => Some(f.await),
                    None => std::future::pending().await,
                }
            } => {
                sent.pop_front();
                match op {
                    fp::OP_UPDATE => match r.and_then(|b| mts::codec::decode::<Result<(), String>>(&b)) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "fib refused routes"),
                        Err(e) => tracing::warn!(error = %e, "fib unreachable"),
                    },
                    fp::OP_PRODUCER_START => {
                        let r = r.and_then(|b| mts::codec::decode::<Result<u64, String>>(&b));
                        tracing::info!(?r, "fib: bgp routes marked stale until End-of-RIB");
                    }
                    _ => {
                        let r = r.and_then(|b| mts::codec::decode::<Result<u64, String>>(&b));
                        tracing::info!(?r, "fib: End-of-RIB");
                    }
                }
                if done.send(()).is_err() {
                    return;
                }
            }
            m = rx.recv(), if sent.len() < FIB_INFLIGHT => {
                let Some(m) = m else { return };
                let (op, deadline) = match &m {
                    ToFib::ProducerStart => (fp::OP_PRODUCER_START, Duration::from_secs(30)),
                    ToFib::Update(_) => (fp::OP_UPDATE, Duration::from_secs(120)),
                    ToFib::EndOfRib => (fp::OP_END_OF_RIB, Duration::from_secs(30)),
                };
                let r = match &m {
                    ToFib::Update(u) => mts.request_start(0, fib, op, u),
                    _ => mts.request_start(0, fib, op, &"bgp".to_string()),
                };
                match r {
                    Ok(p) => sent.push_back(Box::pin(async move { (op, p.raw(deadline).await) })),
                    Err(e) => {
                        tracing::warn!(error = %e, "fib request not sent");
                        if done.send(()).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// A local address: (address, prefix length, interface).
pub(super) type Iface = (IpAddr, u8, String);

/// The interface of the connected subnet that holds `nh` (the list is re-read once on a miss).
pub(super) fn ifname_for(ifaces: &mut Vec<Iface>, nh: IpAddr) -> Option<String> {
    let find = |v: &[Iface]| {
        v.iter()
            .filter(|(a, len, _)| {
                Prefix::new(nh, *len)
                    .is_some_and(|p| Prefix::new(*a, *len).is_some_and(|q| q.addr == p.addr))
            })
            .max_by_key(|(_, len, _)| *len)
            .map(|(_, _, n)| n.clone())
    };
    find(ifaces).or_else(|| {
        *ifaces = local_ifaces();
        find(ifaces)
    })
}

/// Our global IPv6 address on the interface that holds `v4` (next hop self for IPv6).
pub(super) fn v6_beside(ifaces: &mut Vec<Iface>, v4: Ipv4Addr) -> Option<Ipv6Addr> {
    let find = |v: &[Iface]| {
        let name = v
            .iter()
            .find(|(a, _, _)| *a == IpAddr::V4(v4))
            .map(|(_, _, n)| n.clone())?;
        v.iter().find_map(|(a, _, n)| match a {
            IpAddr::V6(a) if *n == name && (a.segments()[0] & 0xffc0) != 0xfe80 => Some(*a),
            _ => None,
        })
    };
    find(ifaces).or_else(|| {
        *ifaces = local_ifaces();
        find(ifaces)
    })
}

pub(super) fn local_ifaces() -> Vec<Iface> {
    let mut v = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let (Some(addr), Some(mask)) = (a.address, a.netmask) else {
                continue;
            };
            if let (Some(ad), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
                let len = u32::from(m.ip()).count_ones() as u8;
                v.push((IpAddr::V4(ad.ip()), len, a.interface_name.clone()));
            } else if let (Some(ad), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                let len = u128::from(m.ip()).count_ones() as u8;
                v.push((IpAddr::V6(ad.ip()), len, a.interface_name.clone()));
            }
        }
    }
    v
}

/// One entry per prefix, the last of its entries in queue order, sorted by prefix.
fn latest_per_prefix(chunk: Vec<(Prefix, u32)>) -> Vec<(Prefix, u32)> {
    let mut v: Vec<(Prefix, u32, u32)> = chunk
        .into_iter()
        .enumerate()
        .map(|(i, (p, id))| (p, i as u32, id))
        .collect();
    v.sort_unstable_by_key(|&(p, i, _)| (p, i));
    let mut out: Vec<(Prefix, u32)> = Vec::with_capacity(v.len());
    for (p, _, id) in v {
        match out.last_mut() {
            // Same prefix, later in the queue: it wins.
            Some(last) if last.0 == p => last.1 = id,
            _ => out.push((p, id)),
        }
    }
    out
}

impl Instance {
    /// Send the changed part of the Loc-RIB to the FIB and to every neighbour.
    pub(super) fn flush_fib(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let dirty = std::mem::take(&mut self.dirty);
        tracing::debug!(
            changed = dirty.len(),
            loc_rib = self.rib.loc_len(),
            "Loc-RIB batch"
        );
        let addrs: Vec<Ipv4Addr> = self.peers.keys().copied().collect();
        for a in addrs {
            self.advertise(a, &dirty);
        }
        if self.fib_sap.is_none() {
            return;
        }
        self.fib_pending.push_sorted(
            dirty
                .into_iter()
                .map(|(p, sel)| (p, sel.iter().map(|(_, a)| a.next_hop).collect())),
        );
        self.feed_fib();
    }

    /// The next chunk of pending prefixes to the FIB writer, if it is idle. Prefixes that
    /// share their next hops travel as one group (a full table from one upstream is one).
    pub(super) fn feed_fib(&mut self) {
        while self.fib_inflight < FIB_INFLIGHT && !self.fib_pending.is_empty() {
            self.feed_fib_chunk();
        }
    }

    fn feed_fib_chunk(&mut self) {
        let chunk = latest_per_prefix(self.fib_pending.take(FIB_CHUNK));
        let queue = &self.fib_pending;
        let mut u = fp::Update {
            producer: "bgp".into(),
            announce: Vec::new(),
            withdraw: Vec::new(),
        };
        // Next hop → interface, once per chunk; (next hops, sticky) → group.
        let mut via: HashMap<IpAddr, Option<String>> = HashMap::new();
        let mut groups: HashMap<(NextHops, bool), usize> = HashMap::new();
        let mut last: Option<(NextHops, bool, usize)> = None;
        for (p, id) in chunk {
            let hops = queue.hops(id);
            let mut nhs = NextHops::new();
            for &nh in hops {
                let usable = match via.get(&nh) {
                    Some(i) => i.is_some(),
                    None => {
                        let i = ifname_for(&mut self.ifaces, nh);
                        let ok = i.is_some();
                        via.insert(nh, i);
                        ok
                    }
                };
                if usable {
                    nhs.push(nh);
                }
            }
            if nhs.is_empty() {
                u.withdraw.push(p);
                continue;
            }
            let sticky = self.cfg.sticky.iter().any(|s| s.covers(&p));
            let ix = match &last {
                Some((l, s, ix)) if *l == nhs && *s == sticky => *ix,
                _ => {
                    let ix = *groups.entry((nhs.clone(), sticky)).or_insert_with(|| {
                        let paths = nhs
                            .iter()
                            .filter_map(|nh| {
                                let ifname = via.get(nh).cloned().flatten()?;
                                Some(fp::Path { gw: *nh, ifname })
                            })
                            .collect();
                        u.announce.push(fp::RouteGroup {
                            paths,
                            sticky,
                            prefixes: Vec::new(),
                        });
                        u.announce.len() - 1
                    });
                    last = Some((nhs, sticky, ix));
                    ix
                }
            };
            u.announce[ix].prefixes.push(p);
        }
        self.fib_inflight += 1;
        let _ = self.fib_tx.send(ToFib::Update(u));
    }

    pub(super) fn maybe_fib_eor(&mut self) {
        if self.fib_eor_sent {
            return;
        }
        let all = self.peers.values().all(|p| p.eor);
        // After every route the FIB is owed (the writer keeps the order).
        if (all || Instant::now() >= self.fib_eor_at)
            && self.fib_sap.is_some()
            && self.fib_pending.is_empty()
        {
            self.fib_eor_sent = true;
            self.fib_inflight += 1;
            let _ = self.fib_tx.send(ToFib::EndOfRib);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().expect("prefix")
    }

    fn nh(s: &str) -> Hops {
        smallvec::smallvec![s.parse::<IpAddr>().expect("addr")]
    }

    #[test]
    fn the_queue_keeps_order_and_next_hops_and_numbers_each_set_once() {
        let mut q = FibQueue::default();
        q.push(p("10.0.1.0/24"), nh("192.0.2.1"));
        q.push(p("10.0.2.0/24"), nh("192.0.2.1"));
        q.push(p("10.0.3.0/24"), Hops::new());
        q.push(p("10.0.1.0/24"), nh("192.0.2.2"));
        assert_eq!(q.sets.len(), 3, "three distinct sets");
        let resolve = |q: &FibQueue, v: Vec<(Prefix, u32)>| -> Vec<(Prefix, Hops)> {
            v.into_iter()
                .map(|(p, id)| (p, q.hops(id).clone()))
                .collect()
        };
        let first = q.take(2);
        assert_eq!(
            resolve(&q, first),
            vec![
                (p("10.0.1.0/24"), nh("192.0.2.1")),
                (p("10.0.2.0/24"), nh("192.0.2.1"))
            ]
        );
        let rest = q.take(25_000);
        assert_eq!(
            resolve(&q, rest),
            vec![
                (p("10.0.3.0/24"), Hops::new()),
                (p("10.0.1.0/24"), nh("192.0.2.2"))
            ]
        );
        assert!(q.is_empty());
        q.push(p("10.0.9.0/24"), nh("192.0.2.9"));
        assert_eq!(q.take(1), vec![(p("10.0.9.0/24"), 0)]);
        assert_eq!(q.sets.len(), 1, "the numbering starts again");
    }

    #[test]
    fn a_batch_is_queued_by_prefix_and_a_repeated_prefix_keeps_its_order() {
        let mut q = FibQueue::default();
        q.push(p("10.0.9.0/24"), nh("192.0.2.9"));
        q.push_sorted([
            (p("10.0.3.0/24"), nh("192.0.2.1")),
            (p("10.0.1.0/24"), nh("192.0.2.1")),
            (p("10.0.3.0/24"), nh("192.0.2.2")),
            (p("10.0.2.0/24"), Hops::new()),
        ]);
        let got: Vec<(Prefix, Hops)> = q
            .take(10)
            .into_iter()
            .map(|(x, id)| (x, q.hops(id).clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (p("10.0.9.0/24"), nh("192.0.2.9")),
                (p("10.0.1.0/24"), nh("192.0.2.1")),
                (p("10.0.2.0/24"), Hops::new()),
                (p("10.0.3.0/24"), nh("192.0.2.1")),
                (p("10.0.3.0/24"), nh("192.0.2.2")),
            ],
            "what was queued before stays first"
        );
    }

    #[test]
    fn a_chunk_sends_the_latest_next_hops_of_each_prefix_once() {
        let queue = vec![
            (p("10.0.2.0/24"), 0),
            (p("10.0.1.0/24"), 0),
            (p("10.0.2.0/24"), 1),
            (p("10.0.3.0/24"), 2),
            (p("10.0.2.0/24"), 3),
            (p("10.0.1.0/24"), 1),
        ];
        assert_eq!(
            latest_per_prefix(queue),
            vec![
                (p("10.0.1.0/24"), 1),
                (p("10.0.2.0/24"), 3),
                (p("10.0.3.0/24"), 2)
            ]
        );
    }
}
