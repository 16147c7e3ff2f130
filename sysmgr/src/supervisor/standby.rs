//! The supervisor's side of redundancy (`crate::redundancy` has the arbiter and the link):
//! what an active and a standby do differently, the takeover, `show system redundancy
//! status`, `system switchover`.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Exit, Supervisor};
use crate::config::StartKind;
use crate::control::proto::{RedundancyStatus, SupStatus};
use crate::redundancy::{RedEvent, Role};
use crate::syslog;

impl Supervisor {
    /// A standby runs no service; it follows the active.
    /// (Or an active whose lease lapsed: it must not start anything either.)
    pub(super) fn standby(&self) -> bool {
        self.red.as_ref().is_some_and(|r| !r.active_now())
    }

    /// On the standby: how long before a failed service is restarted.
    pub(super) fn standby_restart_delay(&self) -> Option<std::time::Duration> {
        self.red
            .as_ref()
            .filter(|r| r.role == Role::Standby)
            .map(|r| r.cfg.standby_restart_delay)
    }

    /// At the start of `run`: the active serves the link, the standby follows it.
    pub(super) fn start_redundancy(&mut self) {
        let Some(r) = &self.red else { return };
        match r.role {
            Role::Active => {
                if let Err(e) = r.serve(self.store.clone(), self.sys.name.clone()) {
                    tracing::error!(error = %e, "replication link: cannot listen");
                }
                tracing::info!(
                    epoch = r.epoch,
                    "active supervisor (the arbiter's lock is ours)"
                );
                self.record(&format!("active supervisor, epoch {}", r.epoch));
            }
            Role::Standby => {
                tracing::info!(
                    epoch = r.epoch,
                    active = r.cfg.peer,
                    "standby supervisor: following the active, services not started"
                );
                r.follow(self.store.clone(), self.red_tx.clone());
            }
        }
    }

    fn record(&self, action: &str) {
        if let Err(e) = self.log.append(self.supervisor_record(action)) {
            tracing::error!("process log: {e}");
        }
    }

    pub(super) fn on_red(&mut self, ev: RedEvent) {
        match ev {
            RedEvent::Acquired(lock) => {
                let Some(r) = self.red.as_mut() else { return };
                let epoch = match r.take_over(lock) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(error = %e, "takeover: cannot write the epoch");
                        r.epoch + 1
                    }
                };
                let peer = r.cfg.peer.clone();
                syslog::err(
                    2,
                    "SWITCHOVER",
                    &format!(
                        "Supervisor \"{}\" is active (epoch {epoch}); \"{peer}\" is gone.",
                        self.sys.name
                    ),
                );
                if let Some(r) = &self.red
                    && let Err(e) = r.serve(self.store.clone(), self.sys.name.clone())
                {
                    tracing::error!(error = %e, "replication link: cannot listen");
                }
                self.record(&format!(
                    "switchover: {} active, epoch {epoch} ({peer} gone)",
                    self.sys.name
                ));
                // What the old active queued for our services was copied into our database.
                self.mts().take_over_queues();
                for s in self.services.values_mut() {
                    s.standby_restart_at = None;
                    if s.inst.is_none() && s.stop.is_none() {
                        s.pending = Some(StartKind::Switchover);
                    }
                }
                self.try_start_pending();
            }
            RedEvent::Fenced => {
                if self.red.as_ref().is_none_or(|r| r.role != Role::Active) {
                    return;
                }
                // Someone else may be active now: nothing of ours may run on.
                syslog::err(
                    2,
                    "FENCED",
                    &format!(
                        "Supervisor \"{}\" lost its arbiter lease; its services are stopped and it comes back as the standby.",
                        self.sys.name
                    ),
                );
                self.switch_now("fenced: the arbiter's lease is gone");
            }
            RedEvent::PeerStalled { pid } => {
                if !self.standby() {
                    return;
                }
                // On one host the fence is the kernel's: a killed active releases the lock.
                syslog::err(
                    2,
                    "PEER_STALLED",
                    &format!(
                        "The active supervisor (pid {pid}) sent nothing for its dead-after time; killed to fence it."
                    ),
                );
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    /// `system switchover`: the active stops its services and re-executes itself; the
    /// standby gets the lock when the old active's descriptor closes, and this one comes
    /// back as the standby.
    pub(super) fn switchover(&mut self) -> Result<String, String> {
        let Some(r) = &self.red else {
            return Err("one supervisor: there is no standby to switch over to".into());
        };
        if r.role != Role::Active {
            return Err("this supervisor is the standby; ask the active".into());
        }
        let connected = r.peer.lock().map(|p| p.connected).unwrap_or(false);
        if !connected {
            return Err(format!("no standby: {} is not following", r.cfg.peer));
        }
        let peer = r.cfg.peer.clone();
        self.switch_now("switchover requested by the operator");
        Ok(format!("switchover to {peer}"))
    }

    /// Whether a standby follows this active (a switchover is possible).
    pub(super) fn standby_ready(&self) -> bool {
        self.red.as_ref().is_some_and(|r| {
            r.role == Role::Active && r.peer.lock().map(|p| p.connected).unwrap_or(false)
        })
    }

    /// Hand over to the standby now. The services die as in a crash (SIGKILL to each process
    /// group, reaped before the lock goes), not by an orderly stop: an orderly stop would
    /// withdraw what they installed (bgp's routes from the FIB, fib's from the kernel), and
    /// the new active's instances take it over instead (`SYSMGR_START=switchover`).
    pub(super) fn switch_now(&mut self, why: &str) {
        let pids: Vec<Pid> = self
            .services
            .values()
            .filter_map(|s| s.inst.as_ref().map(|i| i.pid))
            .collect();
        for pid in &pids {
            Self::signal_group(*pid, Signal::SIGKILL);
        }
        for pid in pids {
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        for s in self.services.values_mut() {
            s.inst = None;
        }
        self.record(why);
        self.finished = Some(Exit::Reset);
    }

    /// A reset (switchover) of the active with a standby following: release the lock and
    /// wait until the standby has taken it (the epoch moves), so the re-executed supervisor
    /// comes back as the standby instead of winning the lock again.
    pub(super) fn hand_over(&mut self) {
        let Some(r) = self.red.take() else { return };
        let connected = r.peer.lock().map(|p| p.connected).unwrap_or(false);
        if r.role != Role::Active || !connected {
            self.red = Some(r);
            return;
        }
        // Last sync: the standby applies everything written so far (the services are gone,
        // so nothing more comes) before it may take over.
        let _ = self.store.wait_replicated();
        r.release_and_wait();
        tracing::info!("switchover: the standby holds the arbiter");
    }

    pub(super) fn redundancy_status(&self) -> RedundancyStatus {
        let me = &self.sys.name;
        let Some(r) = &self.red else {
            return RedundancyStatus {
                administrative: "Simplex".into(),
                operational: "Simplex".into(),
                this: SupStatus {
                    name: me.clone(),
                    redundancy_state: "Active".into(),
                    supervisor_state: "Active".into(),
                    internal_state: "Active with no standby".into(),
                    pid: Some(std::process::id() as i32),
                },
                other: SupStatus {
                    name: "none".into(),
                    redundancy_state: "Not present".into(),
                    supervisor_state: "Not present".into(),
                    internal_state: "Not present".into(),
                    pid: None,
                },
                epoch: 0,
                lock_file: None,
                replication_sent: 0,
                replication_applied: 0,
                since_ms: 0,
            };
        };
        let p = r.peer.lock().map(|p| p.clone()).unwrap_or_default();
        let (this, other) = match r.role {
            Role::Active if !r.active_now() => (
                SupStatus {
                    name: me.clone(),
                    redundancy_state: "Fenced".into(),
                    supervisor_state: "Fenced".into(),
                    internal_state: "Arbiter lease lost; stopping".into(),
                    pid: Some(std::process::id() as i32),
                },
                SupStatus {
                    name: r.cfg.peer.clone(),
                    redundancy_state: "Unknown".into(),
                    supervisor_state: "Unknown".into(),
                    internal_state: "Unknown".into(),
                    pid: None,
                },
            ),
            Role::Active => (
                SupStatus {
                    name: me.clone(),
                    redundancy_state: "Active".into(),
                    supervisor_state: "Active".into(),
                    internal_state: if p.connected {
                        "Active with HA standby".into()
                    } else {
                        "Active with no standby".into()
                    },
                    pid: Some(std::process::id() as i32),
                },
                SupStatus {
                    name: r.cfg.peer.clone(),
                    redundancy_state: if p.connected {
                        "Standby"
                    } else {
                        "Not present"
                    }
                    .into(),
                    supervisor_state: if p.connected {
                        "HA standby"
                    } else {
                        "Not present"
                    }
                    .into(),
                    internal_state: if p.connected {
                        "HA standby".into()
                    } else {
                        "Not present".into()
                    },
                    pid: None,
                },
            ),
            Role::Standby => (
                SupStatus {
                    name: me.clone(),
                    redundancy_state: "Standby".into(),
                    supervisor_state: "HA standby".into(),
                    internal_state: if p.connected {
                        "HA standby".into()
                    } else {
                        "Standby, waiting for the active".into()
                    },
                    pid: Some(std::process::id() as i32),
                },
                SupStatus {
                    name: r.cfg.peer.clone(),
                    redundancy_state: "Active".into(),
                    supervisor_state: "Active".into(),
                    internal_state: if p.connected {
                        "Active with HA standby".into()
                    } else {
                        "Unknown (link down)".into()
                    },
                    pid: p.pid,
                },
            ),
        };
        RedundancyStatus {
            administrative: "HA".into(),
            operational: if p.connected { "HA" } else { "Simplex" }.into(),
            this,
            other,
            epoch: r.epoch.max(p.epoch),
            lock_file: Some(r.arbiter()),
            replication_sent: p.sent,
            replication_applied: p.applied,
            since_ms: r.since_ms,
        }
    }
}
