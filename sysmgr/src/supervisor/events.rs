//! The supervisor's event handlers: child exits, notifications, ticks, stops, reloads.

use std::time::Instant;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::instance::{self, StartEnv};
use super::{ABORT_GRACE, AfterStop, ControlMsg, Exit, Phase, StopCtx, Supervisor, policy_text};
use crate::config::{self, Readiness, StartKind};
use crate::control::proto::{Request, Response};
use crate::engine::{Decision, SupAction, SupReason};
use crate::proclog::{CoreRecord, Death, ProcRecord, now_ms};
use crate::syslog;

impl Supervisor {
    /// Drain every exited child: services, their orphans, and anything reparented to us.
    pub(super) fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(st) => {
                    let Some(pid) = st.pid() else { continue };
                    let name = self
                        .services
                        .iter()
                        .find(|(_, s)| s.inst.as_ref().is_some_and(|i| i.pid == pid))
                        .map(|(n, _)| n.clone());
                    match name {
                        Some(n) => self.on_exit(&n, st),
                        None => tracing::debug!(pid = pid.as_raw(), "reaped orphan"),
                    }
                }
            }
        }
    }

    /// Process every notification already sent by `name` (queued or still in its socket).
    fn drain_notify(&mut self, name: &str) {
        let mut queued = Vec::new();
        while let Ok(m) = self.notify_rx.try_recv() {
            queued.push(m);
        }
        for (n, m) in queued {
            self.on_notify(&n, m);
        }
        loop {
            let Some(s) = self.services.get(name) else {
                return;
            };
            match crate::notify::recv(s.notify.fd.get_ref()) {
                Ok(Some(m)) => self.on_notify(name, m),
                _ => return,
            }
        }
    }

    pub(super) fn on_notify(&mut self, name: &str, m: crate::notify::NotifyMsg) {
        let now = Instant::now();
        let Some(s) = self.services.get_mut(name) else {
            return;
        };
        if m.truncated {
            tracing::warn!(
                service = name,
                "notification truncated by the kernel (descriptors lost)"
            );
        }
        let Some(inst) = s.inst.as_mut() else {
            tracing::debug!(service = name, pid = ?m.pid, "notification with no running instance ignored");
            return;
        };
        let mut became_ready = false;
        if m.get("READY") == Some("1") && !inst.ready {
            inst.ready = true;
            became_ready = true;
        }
        if m.get("STOPPING") == Some("1") {
            inst.stopping = true;
        }
        if let Some(st) = m.get("STATUS") {
            s.status = st.to_string();
        }
        if m.get("WATCHDOG") == Some("1") {
            inst.last_heartbeat = now;
        }
        if m.get("WATCHDOG") == Some("trigger") && inst.abort_sent.is_none() {
            let _ = kill(inst.pid, Signal::SIGABRT);
            inst.abort_sent = Some((now, 0));
        }
        if let Some(what) = m.get("X_SYSMGR_QUARANTINE") {
            syslog::err(
                2,
                "SERVICE_QUARANTINE",
                &format!("service \"{name}\": {what}"),
            );
            let rec = ProcRecord {
                seq: 0,
                supervisor: self.sys.name.clone(),
                service: name.to_string(),
                pid: inst.pid.as_raw(),
                start_kind: inst.kind,
                start_count: s.start_count,
                started_ms: inst.started_ms,
                ended_ms: now_ms(),
                death: Death::Quarantine,
                action: what.to_string(),
                policy: String::new(),
                new_pid: None,
            };
            if let Err(e) = self.log.append(rec) {
                tracing::error!("process log: {e}");
            }
        }
        if m.get("FDSTOREREMOVE") == Some("1") {
            if let Some(n) = m.get("FDNAME") {
                s.fdstore.retain(|(k, _)| k != n);
            }
        } else if m.get("FDSTORE") == Some("1") {
            let fdname = m.get("FDNAME").unwrap_or("stored").to_string();
            for fd in m.fds {
                if s.fdstore.len() as u32 >= s.policy.fd_store_max {
                    tracing::warn!(
                        service = name,
                        max = s.policy.fd_store_max,
                        "fd store full; descriptor closed"
                    );
                    break;
                }
                s.fdstore.push((fdname.clone(), fd));
            }
        }
        if became_ready {
            tracing::info!(service = name, pid = inst.pid.as_raw(), "ready");
            self.try_start_pending();
        }
    }

    fn on_exit(&mut self, name: &str, st: WaitStatus) {
        let now = Instant::now();
        self.drain_notify(name);
        let standby_delay = self.standby_restart_delay();
        let sups = self.sys.supervisors;
        // MTS: unacked messages go back to the queue; poison (in flight at two consecutive
        // crashes) goes to the dead-letter queue.
        let requested = self.services.get(name).is_some_and(|s| s.stop.is_some());
        let dead = self.mts().service_exited(name, !requested);
        let dead_note = if dead.is_empty() {
            String::new()
        } else {
            let seqs: Vec<String> = dead.iter().map(|d| d.seq.to_string()).collect();
            format!(
                "; {} message(s) quarantined to the dead-letter queue (msg {})",
                dead.len(),
                seqs.join(", ")
            )
        };
        for d in &dead {
            syslog::err(
                2,
                "MTS_DEAD_LETTER",
                &format!(
                    "Message {} (opcode {}, {} bytes, from SAP {}) to SAP \"{}\" was in flight at two consecutive crashes of service \"{name}\"; quarantined.",
                    d.seq, d.opcode, d.bytes, d.src_sap, d.sap
                ),
            );
        }
        let Some(s) = self.services.get_mut(name) else {
            return;
        };
        let Some(inst) = s.inst.take() else { return };
        // Whatever the instance left in its process group goes with it.
        Self::signal_group(inst.pid, Signal::SIGKILL);
        let (code, sig, core) = match st {
            WaitStatus::Exited(_, c) => (Some(c), None, false),
            WaitStatus::Signaled(_, sg, core) => (None, Some(sg as i32), core),
            _ => (None, None, false),
        };
        let mut rec = ProcRecord {
            seq: 0,
            supervisor: self.sys.name.clone(),
            service: name.to_string(),
            pid: inst.pid.as_raw(),
            start_kind: inst.kind,
            start_count: s.start_count,
            started_ms: inst.started_ms,
            ended_ms: now_ms(),
            death: Death::Exit(0),
            action: String::new(),
            policy: String::new(),
            new_pid: None,
        };

        if let Some(stop) = s.stop.take() {
            rec.death = Death::Stopped { code, signal: sig };
            rec.action = stop.reason.to_string();
            self.after_stop(name, stop.then, rec);
            return;
        }

        rec.death = if let Some((_, silent_ms)) = inst.abort_sent {
            Death::Unresponsive {
                signal: sig.unwrap_or(0),
                silent_ms,
            }
        } else if inst.start_timed_out {
            Death::StartTimeout
        } else if let Some(signal) = sig {
            Death::Signal { signal, core }
        } else {
            Death::Exit(code.unwrap_or(-1))
        };
        s.last_failure = Some((rec.death.describe(), rec.ended_ms));
        let s = self
            .services
            .get_mut(name)
            .expect("service exists: looked up above");
        if matches!(self.phase, Phase::ShuttingDown(_)) {
            rec.action = "none (supervisor shutting down)".into();
            rec.action.push_str(&dead_note);
            self.report_failure(name, &inst, &rec.death, sig, core);
            self.append(rec);
            self.advance_shutdown();
            return;
        }

        if let Some(delay) = standby_delay {
            // NX-OS: on the standby a failed service is restarted after a delay, without HA
            // policies (none of them may switch over or reset the active's supervisor).
            let s = self.services.get_mut(name).expect("service exists");
            s.standby_restart_at = Some(now + delay);
            rec.policy = "standby: no HA policies".into();
            rec.action = format!(
                "restart on the standby in {}",
                humantime::format_duration(delay)
            );
            rec.action.push_str(&dead_note);
            self.report_failure(name, &inst, &rec.death, sig, core);
            self.append(rec);
            return;
        }
        let ha = s.policy.ha(sups);
        let multi = self.failures.record(&self.sys.failure_window, name, now);
        let s = self
            .services
            .get_mut(name)
            .expect("service exists: looked up above");
        let decision = if multi {
            let action = if sups >= 2 {
                SupAction::Switchover
            } else {
                SupAction::Reset
            };
            Decision::Supervisor {
                action,
                level: s.ha.level,
                reason: SupReason::MultipleFailures,
            }
        } else {
            s.ha.on_failure(&ha, sups, now)
        };
        match decision {
            Decision::Restart {
                kind,
                level,
                policy,
                retries_left,
            } => {
                rec.policy = policy_text(level.word(), Some(&policy));
                // spawn_instance closes the fd store for a stateless start.
                match self.spawn_instance(name, kind) {
                    Ok(new_pid) => {
                        let s = self.services.get_mut(name).expect("service exists");
                        s.ha.on_restarted(&policy, Instant::now());
                        rec.new_pid = Some(new_pid.as_raw());
                        rec.action =
                            format!("{} restart ({retries_left} retries left)", kind.word());
                    }
                    Err(e) => {
                        rec.action = format!("{} restart failed: {e}", kind.word());
                        self.services.get_mut(name).expect("service exists").failed =
                            Some(e.to_string());
                    }
                }
            }
            Decision::LeaveDown { level } => {
                rec.policy = format!("{}: none", level.word());
                rec.action = "left down (policy none)".into();
                s.failed = Some("left down by policy".into());
            }
            Decision::Supervisor {
                action,
                level,
                reason,
            } => {
                let what = match (action, reason) {
                    (_, SupReason::NoStandby) => {
                        "switchover not possible with one supervisor: supervisor reset"
                    }
                    (SupAction::Switchover, _) => "switchover to the standby supervisor",
                    (SupAction::Reset, _) => "supervisor reset",
                };
                rec.policy = if reason == SupReason::MultipleFailures {
                    format!(
                        "{} services failed within {}",
                        self.sys.failure_window.services,
                        humantime::format_duration(self.sys.failure_window.window)
                    )
                } else if reason == SupReason::PoliciesExhausted {
                    "default: every policy failed or none is defined".into()
                } else {
                    policy_text(level.word(), crate::engine::policy_at(&ha, level).as_ref())
                };
                rec.action = what.into();
                syslog::err(
                    2,
                    "SUPERVISOR_RESET",
                    &format!("Service \"{name}\" failed: {what} ({}).", rec.policy),
                );
                rec.action.push_str(&dead_note);
                self.report_failure(name, &inst, &rec.death, sig, core);
                self.append(rec);
                // Two supervisors with the standby following: hand over at once; otherwise
                // (or one supervisor) a reset.
                if action == SupAction::Switchover && self.standby_ready() {
                    self.switch_now(&format!("switchover: service \"{name}\" failed"));
                } else {
                    self.begin_shutdown(Exit::Reset, "supervisor reset");
                }
                return;
            }
        }
        rec.action.push_str(&dead_note);
        self.report_failure(name, &inst, &rec.death, sig, core);
        self.append(rec);
    }

    /// The LOG_ERR line and the core record of a failed instance; called after any restart so
    /// neither delays the new instance.
    fn report_failure(
        &self,
        name: &str,
        inst: &instance::Instance,
        death: &Death,
        sig: Option<i32>,
        core: bool,
    ) {
        let pid = inst.pid.as_raw();
        match (death, sig) {
            (Death::Exit(c), _) => syslog::err(
                2,
                "SERVICE_CRASHED",
                &format!("Service \"{name}\" (PID {pid}) has finished with error code {c}."),
            ),
            (_, Some(signal)) => syslog::err(
                2,
                "SERVICE_CRASHED",
                &format!(
                    "Service \"{name}\" (PID {pid}) hasn't caught signal {signal} ({}).",
                    if core {
                        "core will be saved"
                    } else {
                        "no core"
                    }
                ),
            ),
            _ => {}
        }
        if let Some(signal) = sig {
            self.record_core(name, inst, signal);
        }
    }

    fn append(&self, rec: ProcRecord) {
        if let Err(e) = self.log.append(rec) {
            tracing::error!("process log write failed: {e}");
        }
    }

    /// Write the core record once the instance's stderr has drained (or 300 ms passed).
    fn record_core(&self, name: &str, inst: &instance::Instance, signal: i32) {
        let log = self.log.clone();
        let tail = inst.stderr_tail.clone();
        let mut done = inst.stderr_done.clone();
        let pid = inst.pid.as_raw();
        let service = name.to_string();
        let cwd = self
            .services
            .get(name)
            .map(|s| s.policy.working_dir.clone())
            .unwrap_or_default();
        let time_ms = now_ms();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(300), done.wait_for(|d| *d))
                    .await;
            let stderr_tail = tail.lock().map(|t| t.snapshot()).unwrap_or_default();
            let core_file = find_core(&cwd, pid);
            let rec = CoreRecord {
                seq: 0,
                service,
                pid,
                signal,
                time_ms,
                stderr_tail,
                core_file,
            };
            if let Err(e) = log.append_core(rec) {
                tracing::error!("core record write failed: {e}");
            }
        });
    }

    /// Fork/exec an instance of `name` now.
    pub(super) fn spawn_instance(
        &mut self,
        name: &str,
        kind: StartKind,
    ) -> Result<Pid, crate::error::SysmgrError> {
        self.mts()
            .service_starting(name, kind == StartKind::Stateless);
        if kind == StartKind::Stateless {
            // A stateless restart starts with the service's private PSS state cleared.
            let pss = self.mts().pss.clone();
            if let Some(p) = pss
                && let Err(e) = p.server.clear_private(name)
            {
                tracing::error!(service = name, "clearing private PSS state: {e}");
            }
        }
        let s = self
            .services
            .get_mut(name)
            .expect("caller checked the service exists");
        if kind == StartKind::Stateless || kind == StartKind::Fresh {
            s.fdstore.clear();
        }
        let env = StartEnv {
            supervisor: &self.sys.name,
            socket: &self.sys.socket,
            notify_socket: &s.notify.path,
            start_count: s.start_count + 1,
            dev_null: &self.dev_null,
            logs: &s.logs,
        };
        let fds = if kind == StartKind::Stateful {
            &s.fdstore[..]
        } else {
            &[]
        };
        let mut inst = instance::start(&s.policy, kind, &env, fds)?;
        s.start_count += 1;
        s.failed = None;
        s.pending = None;
        if s.policy.readiness == Readiness::None {
            inst.ready = true;
        }
        let pid = inst.pid;
        tracing::info!(
            service = name,
            pid = pid.as_raw(),
            kind = kind.word(),
            "started"
        );
        s.inst = Some(inst);
        self.mts().instances.insert(name.to_string(), pid.as_raw());
        Ok(pid)
    }

    /// Start every pending service whose dependencies are ready.
    pub(super) fn try_start_pending(&mut self) {
        if matches!(self.phase, Phase::ShuttingDown(_)) {
            return;
        }
        // The standby starts only what runs there too.
        let standby = self.standby();
        loop {
            let mut started = false;
            for name in self.order.clone() {
                let Some(s) = self.services.get(&name) else {
                    continue;
                };
                let Some(kind) = s.pending else { continue };
                if s.inst.is_some() || s.stop.is_some() {
                    continue;
                }
                if standby && !s.policy.run_on_standby {
                    continue;
                }
                let deps_ready = s.policy.depends_on.iter().all(|d| {
                    self.services
                        .get(d)
                        .is_some_and(|d| d.inst.as_ref().is_some_and(|i| i.ready))
                });
                if !deps_ready {
                    continue;
                }
                if let Err(e) = self.spawn_instance(&name, kind) {
                    tracing::error!(service = %name, "start failed: {e}");
                    let s = self.services.get_mut(&name).expect("service exists");
                    s.pending = None;
                    s.failed = Some(e.to_string());
                    continue;
                }
                started = true;
            }
            if !started {
                return;
            }
        }
    }

    pub(super) fn on_tick(&mut self, now: Instant) {
        let mut due = false;
        for s in self.services.values_mut() {
            if s.standby_restart_at.is_some_and(|t| t <= now) {
                s.standby_restart_at = None;
                if s.inst.is_none() && s.stop.is_none() {
                    s.pending = Some(StartKind::Fresh);
                    due = true;
                }
            }
        }
        if due {
            self.try_start_pending();
        }
        for (name, s) in self.services.iter_mut() {
            if s.ha.on_tick(now) {
                tracing::info!(service = %name, "restart succeeded: ran for its min-lifetime; retries reset");
            }
            if let Some(stop) = &mut s.stop
                && !stop.killed
                && now >= stop.deadline
            {
                if let Some(i) = &s.inst {
                    tracing::warn!(service = %name, pid = i.pid.as_raw(), "did not stop in time; SIGKILL");
                    Self::signal_group(i.pid, Signal::SIGKILL);
                }
                stop.killed = true;
            }
            let Some(i) = &mut s.inst else { continue };
            if s.policy.readiness == Readiness::Notify
                && !i.ready
                && !i.start_timed_out
                && now >= i.started + s.policy.start_timeout
            {
                syslog::err(
                    2,
                    "SERVICE_START_TIMEOUT",
                    &format!(
                        "Service \"{name}\" (PID {}) not ready within {}; killing it.",
                        i.pid,
                        humantime::format_duration(s.policy.start_timeout)
                    ),
                );
                i.start_timed_out = true;
                Self::signal_group(i.pid, Signal::SIGKILL);
            }
            if let Some((t, _)) = i.abort_sent {
                if now >= t + ABORT_GRACE {
                    Self::signal_group(i.pid, Signal::SIGKILL);
                }
            } else if let Some(hb) = s.policy.heartbeat
                && s.stop.is_none()
                && now >= i.last_heartbeat + hb.interval * hb.misses
            {
                let silent = now.duration_since(i.last_heartbeat);
                syslog::err(
                    2,
                    "HEARTBEAT_FAILURE",
                    &format!(
                        "Service \"{name}\" (PID {}) sent SIGABRT for not setting heartbeat for last {} periods. Last heartbeat {:.2} secs ago.",
                        i.pid,
                        hb.misses,
                        silent.as_secs_f64()
                    ),
                );
                let _ = kill(i.pid, Signal::SIGABRT);
                i.abort_sent = Some((now, silent.as_millis() as u64));
            }
        }
    }

    /// Ask a service to stop (SIGTERM to its group; SIGKILL after its stop timeout).
    pub(super) fn request_stop(&mut self, name: &str, then: AfterStop, reason: &'static str) {
        let Some(s) = self.services.get_mut(name) else {
            return;
        };
        s.pending = None;
        match &s.inst {
            Some(i) => {
                Self::signal_group(i.pid, Signal::SIGTERM);
                s.stop = Some(StopCtx {
                    deadline: Instant::now() + s.policy.stop_timeout,
                    killed: false,
                    then,
                    reason,
                });
            }
            None => self.after_stop_inner(name, then, None),
        }
    }

    fn after_stop(&mut self, name: &str, then: AfterStop, rec: ProcRecord) {
        self.after_stop_inner(name, then, Some(rec));
    }

    fn after_stop_inner(&mut self, name: &str, then: AfterStop, rec: Option<ProcRecord>) {
        let mut rec = rec;
        match then {
            AfterStop::Nothing => {}
            AfterStop::Remove => {
                self.services.remove(name);
                self.order.retain(|n| n != name);
            }
            AfterStop::Replace(p) => {
                if let Some(s) = self.services.get_mut(name) {
                    s.policy = *p;
                    s.ha = Default::default();
                    s.fdstore.clear();
                    s.pending = Some(StartKind::Fresh);
                }
            }
            AfterStop::Start(kind) => {
                if let Some(s) = self.services.get_mut(name) {
                    s.ha = Default::default();
                    s.pending = None;
                }
                match self.spawn_instance(name, kind) {
                    Ok(pid) => {
                        if let Some(r) = &mut rec {
                            r.new_pid = Some(pid.as_raw());
                        }
                    }
                    Err(e) => tracing::error!(service = name, "restart failed: {e}"),
                }
            }
        }
        if let Some(r) = rec {
            self.append(r);
        }
        if let Phase::ShuttingDown(_) = self.phase {
            self.advance_shutdown();
        } else {
            self.try_start_pending();
        }
    }

    /// Stop everything in reverse dependency order, then exit or reset.
    pub(super) fn begin_shutdown(&mut self, exit: Exit, why: &str) {
        if let Phase::ShuttingDown(_) = self.phase {
            // An operator's SIGTERM during a reset turns it into a plain shutdown.
            if exit == Exit::Shutdown {
                self.phase = Phase::ShuttingDown(Exit::Shutdown);
            }
            return;
        }
        tracing::warn!("{why}: stopping all services in reverse dependency order");
        self.phase = Phase::ShuttingDown(exit);
        for s in self.services.values_mut() {
            s.pending = None;
        }
        self.advance_shutdown();
    }

    pub(super) fn advance_shutdown(&mut self) {
        let Phase::ShuttingDown(exit) = self.phase else {
            return;
        };
        if self.services.values().any(|s| s.stop.is_some()) {
            return;
        }
        let next = self
            .order
            .iter()
            .rev()
            .find(|n| self.services.get(*n).is_some_and(|s| s.inst.is_some()))
            .cloned();
        match next {
            Some(n) => self.request_stop(
                &n,
                AfterStop::Nothing,
                if exit == Exit::Reset {
                    "stopped for supervisor reset"
                } else {
                    "stopped for shutdown"
                },
            ),
            None => self.finished = Some(exit),
        }
    }

    /// Re-read the policy files; touch only services whose policy changed.
    pub(super) fn reload(&mut self) -> Result<String, String> {
        if matches!(self.phase, Phase::ShuttingDown(_)) {
            return Err("supervisor is shutting down".into());
        }
        let lab = config::load(&self.opts.config, self.opts.data_dir.as_deref())
            .map_err(|e| e.to_string())?;
        let (mut added, mut removed, mut changed) = (Vec::new(), Vec::new(), Vec::new());
        let names: Vec<String> = self.services.keys().cloned().collect();
        for n in names {
            if !lab.services.contains_key(&n) {
                removed.push(n.clone());
                self.request_stop(&n, AfterStop::Remove, "stopped: removed by reload");
            }
        }
        for (n, p) in lab.services.iter() {
            match self.services.get(n) {
                None => {
                    if let Err(e) = self.add_service(n.clone(), p.clone()) {
                        return Err(format!("adding {n}: {e}"));
                    }
                    added.push(n.clone());
                }
                Some(s) if s.policy != *p => {
                    changed.push(n.clone());
                    self.request_stop(
                        n,
                        AfterStop::Replace(Box::new(p.clone())),
                        "stopped: policy changed by reload",
                    );
                }
                Some(_) => {}
            }
        }
        let keep_dirs = (self.sys.data_dir.clone(), self.sys.socket.clone());
        self.sys = lab.sysmgr;
        (self.sys.data_dir, self.sys.socket) = keep_dirs;
        self.order = config::start_order(&lab.services);
        self.declare_saps();
        // Services being removed stay in the order until they are gone.
        for n in &removed {
            if self.services.contains_key(n) && !self.order.contains(n) {
                self.order.push(n.clone());
            }
        }
        self.try_start_pending();
        Ok(format!(
            "reloaded: added [{}], changed [{}], removed [{}], unchanged services untouched",
            added.join(", "),
            changed.join(", "),
            removed.join(", ")
        ))
    }

    pub(super) fn on_control(&mut self, msg: ControlMsg) {
        // What the process log shows must be on disk: its reader waits for the flush, the
        // supervisor's thread does not.
        let on_disk = matches!(msg.req, Request::ShowProcessLog { .. } | Request::ShowCores)
            .then(|| self.log.synced());
        let res = self
            .authorize(&msg.identity)
            .and_then(|()| self.handle(msg.req));
        match on_disk {
            Some(flushed) if res.is_ok() => {
                tokio::spawn(async move {
                    flushed.await;
                    let _ = msg.reply.send(res);
                });
            }
            _ => {
                let _ = msg.reply.send(res);
            }
        }
    }

    fn authorize(&self, identity: &crate::broker::Identity) -> Result<(), String> {
        match identity {
            crate::broker::Identity::Operator => Ok(()),
            crate::broker::Identity::Service(n) => Err(format!(
                "permission denied: connection is service {n:?}, which may not issue operator commands"
            )),
            crate::broker::Identity::Refused(reason) => Err(reason.clone()),
        }
    }

    fn handle(&mut self, req: Request) -> Result<Response, String> {
        match req {
            Request::ShowRedundancy => Ok(Response::Redundancy(Box::new(self.redundancy_status()))),
            Request::Switchover => self.switchover().map(Response::Done),
            Request::ShowProcesses => Ok(Response::Processes(self.show_processes())),
            Request::ShowProcessLog { pid } => {
                let records = self
                    .log
                    .records()
                    .into_iter()
                    .filter(|r| pid.is_none_or(|p| r.pid == p || r.new_pid == Some(p)))
                    .collect();
                let cores = self
                    .log
                    .cores()
                    .into_iter()
                    .filter(|c| pid.is_none_or(|p| c.pid == p))
                    .collect();
                Ok(Response::ProcessLog { records, cores })
            }
            Request::ShowCores => Ok(Response::Cores(self.log.cores())),
            Request::ShowService { name } => self
                .show_service(&name)
                .map(|d| Response::Service(Box::new(d))),
            Request::Restart { name, stateless } => {
                let Some(s) = self.services.get(&name) else {
                    return Err(format!("no such service: {name}"));
                };
                let kind = if stateless || !s.policy.restart.stateful {
                    StartKind::Stateless
                } else {
                    StartKind::Stateful
                };
                if s.inst.is_none() {
                    if let Some(s) = self.services.get_mut(&name) {
                        s.ha = Default::default();
                    }
                    let pid = self
                        .spawn_instance(&name, kind)
                        .map_err(|e| e.to_string())?;
                    return Ok(Response::Done(format!(
                        "service {name} started ({} start, pid {pid})",
                        kind.word()
                    )));
                }
                self.request_stop(
                    &name,
                    AfterStop::Start(kind),
                    if kind == StartKind::Stateful {
                        "operator restart (stateful)"
                    } else {
                        "operator restart (stateless)"
                    },
                );
                Ok(Response::Done(format!(
                    "service {name}: {} restart requested",
                    kind.word()
                )))
            }
            Request::Reload => self.reload().map(Response::Done),
            Request::ShowPss => {
                let p = self.mts().pss.clone().ok_or("PSS is not open")?;
                let mut rows = Vec::new();
                for name in self.services.keys() {
                    rows.extend(p.server.usage(name).map_err(|e| e.to_string())?);
                }
                Ok(Response::Pss(rows))
            }
            Request::ShowPssService { name, scope, key } => {
                let p = self.mts().pss.clone().ok_or("PSS is not open")?;
                p.server
                    .entries(&name, scope.as_deref(), key.as_deref())
                    .map(|e| {
                        Response::PssEntries(
                            e.into_iter()
                                .map(|(scope, k, v)| crate::control::proto::PssEntry {
                                    scope,
                                    key: String::from_utf8_lossy(&k).into_owned(),
                                    bytes: v.len(),
                                    value_hex: v
                                        .iter()
                                        .take(64)
                                        .map(|b| format!("{b:02x}"))
                                        .collect(),
                                })
                                .collect(),
                        )
                    })
                    .map_err(|e| e.to_string())
            }
            Request::ClearPss { name } => {
                let p = self.mts().pss.clone().ok_or("PSS is not open")?;
                p.server.clear_service(&name).map_err(|e| e.to_string())?;
                Ok(Response::Done(format!(
                    "PSS of service {name} cleared (all scopes; its checkpoint sequence goes on)"
                )))
            }
            Request::ShowMtsSap => Ok(Response::MtsSaps(self.mts().saps())),
            Request::ShowMtsQueues => Ok(Response::MtsQueues(self.mts().queues())),
            Request::ShowMtsDeadLetter => Ok(Response::MtsDead(self.mts().dead_letters().to_vec())),
        }
    }
}

/// The core file of `pid`, if the kernel wrote one where we can find it.
fn find_core(cwd: &std::path::Path, pid: i32) -> Option<String> {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let pattern = pattern.trim();
    let mut candidates = vec![cwd.join("core"), cwd.join(format!("core.{pid}"))];
    if !pattern.starts_with('|') && !pattern.is_empty() {
        let p = pattern.replace("%p", &pid.to_string());
        if !p.contains('%') {
            candidates.push(if p.starts_with('/') {
                p.into()
            } else {
                cwd.join(p)
            });
        }
    }
    candidates
        .into_iter()
        .find(|c| c.is_file())
        .map(|c| c.display().to_string())
}
