//! Building the data of `show` commands (rendering is the CLI's job).

use std::time::Instant;

use super::{Supervisor, Svc, policy_text};
use crate::control::proto::{ProcessRow, ServiceDetail};

fn state(s: &Svc) -> &'static str {
    match (&s.inst, &s.stop, &s.pending, &s.failed) {
        (Some(_), Some(_), _, _) => "stopping",
        (Some(i), None, _, _) if i.stopping => "stopping",
        (Some(i), None, _, _) if i.abort_sent.is_some() => "unresponsive",
        (Some(i), None, _, _) if !i.ready => "starting",
        (Some(_), None, _, _) => "running",
        (None, _, Some(_), _) => "waiting",
        (None, _, None, Some(_)) => "failed",
        (None, _, None, None) => "down",
    }
}

impl Supervisor {
    pub(super) fn show_processes(&self) -> Vec<ProcessRow> {
        let now = Instant::now();
        self.order
            .iter()
            .filter_map(|n| self.services.get(n).map(|s| (n, s)))
            .map(|(n, s)| ProcessRow {
                name: n.clone(),
                pid: s.inst.as_ref().map(|i| i.pid.as_raw()),
                state: state(s).into(),
                start_count: s.start_count,
                uptime_ms: s
                    .inst
                    .as_ref()
                    .map(|i| now.duration_since(i.started).as_millis() as u64),
                start_kind: s.inst.as_ref().map(|i| i.kind.word().into()),
                status: s.status.clone(),
            })
            .collect()
    }

    pub(super) fn show_service(&self, name: &str) -> Result<ServiceDetail, String> {
        let s = self
            .services
            .get(name)
            .ok_or_else(|| format!("no such service: {name}"))?;
        let sups = self.sys.supervisors;
        let ha = s.policy.ha(sups);
        let p = &s.policy;
        let in_force = match s.ha.level {
            l @ (crate::engine::Level::Primary | crate::engine::Level::Secondary) => {
                policy_text(l.word(), crate::engine::policy_at(&ha, l).as_ref())
            }
            crate::engine::Level::Default => format!(
                "default: {}",
                if sups >= 2 {
                    "switchover"
                } else {
                    "supervisor reset"
                }
            ),
        };
        let mut restart_kinds = Vec::new();
        if p.restart.stateful {
            restart_kinds.push("stateful".to_string());
        }
        if p.restart.stateless {
            restart_kinds.push("stateless".to_string());
        }
        Ok(ServiceDetail {
            name: name.into(),
            supervisor: self.sys.name.clone(),
            policy_file: p.file.display().to_string(),
            command: p.command.clone(),
            state: state(s).into(),
            pid: s.inst.as_ref().map(|i| i.pid.as_raw()),
            start_count: s.start_count,
            start_kind: s.inst.as_ref().map(|i| i.kind.word().into()),
            uptime_ms: s
                .inst
                .as_ref()
                .map(|i| i.started.elapsed().as_millis() as u64),
            ready: s.inst.as_ref().is_some_and(|i| i.ready),
            status: s.status.clone(),
            depends_on: p.depends_on.clone(),
            restart_kinds,
            readiness: format!("{:?}", p.readiness).to_lowercase(),
            heartbeat: p.heartbeat.map(|h| {
                format!(
                    "every {}, {} misses allowed",
                    humantime::format_duration(h.interval),
                    h.misses
                )
            }),
            policy_level: s.ha.level.word().into(),
            policy_in_force: in_force,
            policies: vec![
                format!(
                    "one supervisor, {}",
                    policy_text("primary", p.single_sup.primary.as_ref())
                ),
                format!(
                    "one supervisor, {}",
                    policy_text("secondary", p.single_sup.secondary.as_ref())
                ),
                format!(
                    "two supervisors, {}",
                    policy_text("primary", p.dual_sup.primary.as_ref())
                ),
                format!(
                    "two supervisors, {}",
                    policy_text("secondary", p.dual_sup.secondary.as_ref())
                ),
            ],
            retries_left: s.ha.retries_left(&ha),
            min_lifetime_floor: humantime::format_duration(self.sys.min_lifetime_floor).to_string(),
            floor_lowered: self.sys.floor_lowered(),
            last_failure: s.last_failure.as_ref().map(|(d, _)| d.clone()),
            last_failure_ms: s.last_failure.as_ref().map(|(_, t)| *t),
            stored_fds: self.stored_fd_names(name),
        })
    }
}
