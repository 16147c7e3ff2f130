//! The bgp SAP (shows, `clear bgp soft`, BFD events), route refresh and the Adj-RIB-Out.

use super::fibio::{ifname_for, v6_beside};
use super::*;
use crate::rib::Path;

impl Instance {
    /// ROUTE-REFRESH (RFC 2918) and its RFC 7313 framing. A request: the whole Adj-RIB-Out
    /// again (between BoRR and EoRR when enhanced refresh was negotiated). The peer's BoRR:
    /// its routes turn stale; its EoRR: what it did not re-send goes (or when the time runs
    /// out). Other subtypes are ignored.
    pub(super) fn on_route_refresh(&mut self, addr: Ipv4Addr, subtype: u8) {
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        if p.fsm.state != crate::fsm::State::Established {
            return;
        }
        let enhanced = p.enhanced_refresh;
        match subtype {
            wire::REFRESH_REQUEST => {
                p.adj_out.clear();
                self.ckpt.forget(Side::Out, addr);
                tracing::info!(peer = %addr, enhanced, "ROUTE-REFRESH: Adj-RIB-Out sent again");
                if enhanced {
                    self.send(addr, wire::route_refresh(wire::REFRESH_BEGIN));
                }
                self.advertise_all(addr);
                if enhanced {
                    self.send(addr, wire::route_refresh(wire::REFRESH_END));
                }
            }
            wire::REFRESH_BEGIN if enhanced => {
                if p.stale_until.is_none() {
                    p.stale_until = Some(Instant::now() + REFRESH_STALE);
                }
                tracing::info!(peer = %addr, "BoRR: its routes are stale until EoRR");
                self.rib.peer_stale(addr);
            }
            wire::REFRESH_END if enhanced => {
                if p.stale_until.take().is_some() {
                    p.stale_restored = false;
                    let n = self.sweep(addr);
                    tracing::info!(peer = %addr, swept = n, "EoRR: stale routes swept");
                }
            }
            _ => tracing::debug!(peer = %addr, subtype, "ROUTE-REFRESH subtype ignored"),
        }
    }

    /// `clear bgp ADDR soft in|out`.
    pub(super) fn clear_soft(&mut self, addr: Ipv4Addr, inbound: bool) -> Result<String, String> {
        let p = self
            .peers
            .get(&addr)
            .ok_or_else(|| format!("{addr} is not a neighbour"))?;
        if p.fsm.state != crate::fsm::State::Established {
            return Err(format!("{addr}: the session is {}", p.fsm.state.word()));
        }
        if inbound {
            self.send(addr, wire::route_refresh(wire::REFRESH_REQUEST));
            Ok(format!("{addr}: ROUTE-REFRESH sent"))
        } else {
            self.on_route_refresh(addr, wire::REFRESH_REQUEST);
            Ok(format!("{addr}: Adj-RIB-Out sent again"))
        }
    }

    /// Everything we have for a neighbour: the whole Loc-RIB and our networks.
    pub(super) fn advertise_all(&mut self, addr: Ipv4Addr) {
        let v6 = self.next_hop6(addr);
        let rib = &self.rib;
        let all = rib
            .routes()
            .map(|(p, paths, n)| (*p, Some(&paths[..n])))
            .chain(
                self.cfg
                    .networks
                    .iter()
                    .filter(|p| rib.selected(p).is_none())
                    .map(|p| (*p, None)),
            );
        let changes = self.export_changes(addr, v6, all);
        self.send_changes(addr, changes);
    }

    /// Our own networks (those the Loc-RIB has are advertised with it).
    pub(super) fn advertise_networks(&mut self, addr: Ipv4Addr) {
        let v6 = self.next_hop6(addr);
        let rib = &self.rib;
        let own = self.cfg.networks.iter().map(|p| (*p, rib.selected(p)));
        let changes = self.export_changes(addr, v6, own);
        self.send_changes(addr, changes);
    }

    /// Bring a neighbour's Adj-RIB-Out up to date with a batch's changes of the Loc-RIB.
    pub(super) fn advertise(&mut self, addr: Ipv4Addr, changed: &[crate::rib::Change]) {
        let v6 = self.next_hop6(addr);
        let items = changed
            .iter()
            .map(|(p, sel)| (*p, (!sel.is_empty()).then_some(&sel[..])));
        let changes = self.export_changes(addr, v6, items);
        self.send_changes(addr, changes);
    }

    /// Our IPv6 address on the session with `addr`, if it is Established and carries IPv6
    /// (next hop self). Not looked for otherwise: an address not found re-reads the
    /// interfaces, and this runs for every neighbour at every batch.
    fn next_hop6(&mut self, addr: Ipv4Addr) -> Option<Ipv6Addr> {
        let p = self.peers.get(&addr)?;
        let local_addr = p.local_addr?;
        if !p.ipv6 || p.fsm.state != crate::fsm::State::Established {
            return None;
        }
        v6_beside(&mut self.ifaces, local_addr)
    }

    /// What a neighbour's Adj-RIB-Out must change for these prefixes, given their selection
    /// (a prefix given twice: the later one counts); None if it is not Established.
    fn export_changes<'a>(
        &self,
        addr: Ipv4Addr,
        local_addr6: Option<Ipv6Addr>,
        items: impl Iterator<Item = (Prefix, Option<&'a [Path]>)>,
    ) -> Option<BTreeMap<Prefix, Option<Arc<OutAttrs>>>> {
        let p = self.peers.get(&addr)?;
        if p.fsm.state != crate::fsm::State::Established {
            return None;
        }
        let local_addr = p.local_addr?;
        let t = Target {
            addr,
            ebgp: p.cfg.remote_as != self.cfg.local_as,
            local_as: self.cfg.local_as,
            local_addr,
            local_addr6,
            ipv6: p.ipv6,
            export: &p.cfg.export,
        };
        let mut changes = BTreeMap::new();
        for (x, sel) in items {
            let own = self.cfg.networks.contains(&x);
            let new = export::export(&t, &x, sel, own, &self.rib.peers).map(Arc::new);
            if p.adj_out.get(&x) != new.as_ref() {
                changes.insert(x, new);
            } else {
                changes.remove(&x);
            }
        }
        Some(changes)
    }

    /// Apply `changes` to a neighbour's Adj-RIB-Out and send them, packed into UPDATEs.
    fn send_changes(
        &mut self,
        addr: Ipv4Addr,
        changes: Option<BTreeMap<Prefix, Option<Arc<OutAttrs>>>>,
    ) {
        let Some(changes) = changes.filter(|c| !c.is_empty()) else {
            return;
        };
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        let msgs = export::pack(&changes, p.four_octet);
        for (x, a) in changes {
            match a {
                Some(a) => p.adj_out.insert(x, a),
                None => p.adj_out.remove(&x),
            };
        }
        for m in msgs {
            self.ckpt.append(Side::Out, addr, &m);
            self.send(addr, m);
        }
    }

    pub(super) fn summary(&self) -> Summary {
        let now = Instant::now();
        let mut neighbors: Vec<NeighborRow> = self
            .peers
            .iter()
            .map(|(a, p)| NeighborRow {
                addr: *a,
                remote_as: p.cfg.remote_as,
                state: p.fsm.state.word().to_string(),
                up_secs: now.duration_since(p.changed_at).as_secs(),
                prefixes_received: self.rib.received(a).unwrap_or(0),
                prefixes_sent: p.adj_out.len(),
                msgs_in: p.msgs_in,
                msgs_out: p.msgs_out,
                flaps: p.fsm.flaps,
                router_id: p.router_id,
                hold_time: p.fsm.negotiated_hold,
                end_of_rib_received: p.eor,
            })
            .collect();
        neighbors.sort_by_key(|n| n.addr);
        Summary {
            router_id: self.cfg.router_id,
            local_as: self.cfg.local_as,
            loc_rib_prefixes: self.rib.loc_len(),
            neighbors,
        }
    }

    pub(super) fn routes(&self, only: Option<Prefix>) -> Vec<RouteRow> {
        let mut rows: Vec<RouteRow> = self
            .rib
            .routes()
            .filter(|(p, _, _)| only.is_none_or(|o| o.covers(p) || **p == o))
            .map(|(p, all, nsel)| {
                let mut paths: Vec<PathRow> = all
                    .iter()
                    .enumerate()
                    .map(|(i, (peer, a))| PathRow {
                        peer: *peer,
                        next_hop: a.next_hop,
                        as_path: a.as_path.clone(),
                        origin: a.origin,
                        local_pref: a.local_pref,
                        med: a.med,
                        selected: i < nsel,
                    })
                    .collect();
                paths.sort_by_key(|r| (!r.selected, r.peer));
                RouteRow { prefix: *p, paths }
            })
            .collect();
        rows.sort_by_key(|r| r.prefix);
        rows
    }

    /// Ask the bfd service for a session to every neighbour configured with `bfd` (again
    /// whenever bfd starts without its state).
    pub(super) async fn ask_bfd(&mut self) {
        let wanted: Vec<(Ipv4Addr, Option<Ipv4Addr>, (u32, u8))> = self
            .peers
            .values()
            .filter_map(|p| p.cfg.bfd.map(|b| (p.cfg.address, p.cfg.local_address, b)))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let Ok(dst) = self.mts.lookup(bfd::proto::SAP_NAME).await else {
            tracing::warn!("no bfd service: BFD for BGP neighbours is off");
            return;
        };
        for (peer, local, (iv, mult)) in wanted {
            let spec = bfd::proto::SessionSpec {
                key: bfd::proto::SessionKey {
                    peer,
                    interface: ifname_for(&mut self.ifaces, peer.into()),
                },
                local,
                timers: bfd::fsm::Timers {
                    desired_min_tx: iv,
                    required_min_rx: iv,
                    detect_mult: mult,
                },
                owner: proto::SAP_NAME.into(),
            };
            let r: Result<Result<u32, String>, _> = self
                .mts
                .request(
                    self.sap,
                    dst,
                    bfd::proto::OP_SESSION_ADD,
                    &spec,
                    Duration::from_secs(10),
                )
                .await;
            tracing::info!(peer = %peer, ?r, "BFD session requested");
        }
    }

    pub(super) async fn on_notification(&mut self, m: &Incoming) {
        if m.header.opcode != bfd::proto::OP_EVENT {
            return;
        }
        match m.decode::<bfd::proto::Event>() {
            Ok(bfd::proto::Event::StateChange { key, from, to, .. })
                if from == bfd::packet::State::Up
                    && to != bfd::packet::State::Up
                    && self
                        .peers
                        .get(&key.peer)
                        .is_some_and(|p| p.cfg.bfd.is_some()) =>
            {
                tracing::warn!(peer = %key.peer, "BFD down: resetting the BGP session");
                self.event(key.peer, Event::BfdDown).await;
                self.flush_fib();
            }
            Ok(bfd::proto::Event::Started { start }) if start != "stateful" => self.ask_bfd().await,
            _ => {}
        }
    }

    pub(super) async fn on_request(&mut self, m: Incoming) {
        if m.needs_ack() {
            self.mts.ack(&[m.id()]);
        }
        if !m.is_request() {
            self.on_notification(&m).await;
            return;
        }
        let r = match m.header.opcode {
            proto::OP_SHOW_SUMMARY => self.mts.respond(&m, &self.summary()),
            proto::OP_SHOW_ROUTES => {
                let only = m.decode::<Option<Prefix>>().ok().flatten();
                self.mts.respond(&m, &self.routes(only))
            }
            proto::OP_CLEAR_SOFT => {
                let r = match m.decode::<(Ipv4Addr, bool)>() {
                    Ok((addr, inbound)) => self.clear_soft(addr, inbound),
                    Err(e) => Err(format!("malformed request: {e}")),
                };
                self.mts.respond(&m, &r)
            }
            op => self
                .mts
                .respond(&m, &Err::<(), String>(format!("unknown opcode {op}"))),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not answer");
        }
    }
}
