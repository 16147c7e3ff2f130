//! One service's policy file.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml_edit::ImDocument;

use super::SysmgrConfig;
use super::walk::{self, ConfigError, Ctx, Tbl};

/// What an HA policy does when the service fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Restart, keeping PSS state, stored fds and MTS queues.
    Stateful,
    /// Restart from scratch: private state cleared, stored fds closed.
    Stateless,
    /// Hand over to the standby supervisor.
    Switchover,
    /// Reset the supervisor (stop everything, re-exec sysmgr).
    Reset,
    /// Leave the service down.
    None,
}

impl Action {
    pub fn word(self) -> &'static str {
        match self {
            Action::Stateful => "stateful",
            Action::Stateless => "stateless",
            Action::Switchover => "switchover",
            Action::Reset => "reset",
            Action::None => "none",
        }
    }
}

/// How an instance was started; the service reads it from `SYSMGR_START`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartKind {
    Fresh,
    Stateful,
    Stateless,
    Switchover,
}

impl StartKind {
    pub fn word(self) -> &'static str {
        match self {
            StartKind::Fresh => "fresh",
            StartKind::Stateful => "stateful",
            StartKind::Stateless => "stateless",
            StartKind::Switchover => "switchover",
        }
    }
}

/// One HA policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub action: Action,
    /// Restart attempts allowed under this policy before it has failed.
    pub max_retries: u32,
    /// An attempt succeeds once the new instance has run this long.
    pub min_lifetime: Duration,
}

/// Primary and secondary policy for one supervisor count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HaPolicies {
    pub primary: Option<Policy>,
    pub secondary: Option<Policy>,
}

/// Which restart kinds the service implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartKinds {
    pub stateful: bool,
    pub stateless: bool,
}

/// When a started service counts as ready for its dependents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Readiness {
    /// Ready once it sends `READY=1`.
    Notify,
    /// Ready as soon as it is running.
    None,
}

/// Heartbeat (sd_notify `WATCHDOG=1`) expectations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub interval: Duration,
    /// Intervals without a heartbeat before the service is declared unresponsive.
    pub misses: u32,
}

/// Positions kept for cross-file errors; never part of equality (moving a comment changes
/// nothing a reload should act on).
#[derive(Debug, Clone, Default)]
pub struct Spans {
    pub name: Option<Range<usize>>,
    pub deps: Vec<Option<Range<usize>>>,
    /// Where each SAP is declared.
    pub saps: BTreeMap<String, Option<Range<usize>>>,
}

impl PartialEq for Spans {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A validated service policy file.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePolicy {
    pub name: String,
    pub file: PathBuf,
    /// argv; `command[0]` resolved to `program` at validation time.
    pub command: Vec<String>,
    pub program: PathBuf,
    pub env: BTreeMap<String, String>,
    pub working_dir: PathBuf,
    pub user: Option<String>,
    pub group: Option<String>,
    pub depends_on: Vec<String>,
    pub restart: RestartKinds,
    pub readiness: Readiness,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    pub heartbeat: Option<Heartbeat>,
    pub fd_store_max: u32,
    /// The instance's nice value (None: the nice sysmgr was started with, not the one it
    /// gave itself).
    pub nice: Option<i32>,
    /// Also runs on the standby supervisor (where a failure is restarted after
    /// `standby-restart-delay`, without HA policies).
    pub run_on_standby: bool,
    /// MTS SAPs this service may bind: name -> number.
    pub saps: BTreeMap<String, u32>,
    /// Policies with one supervisor.
    pub single_sup: HaPolicies,
    /// Policies with two supervisors.
    pub dual_sup: HaPolicies,
    pub spans: Spans,
}

impl ServicePolicy {
    /// The policies in force for a supervisor count.
    pub fn ha(&self, supervisors: u8) -> HaPolicies {
        if supervisors >= 2 {
            self.dual_sup
        } else {
            self.single_sup
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

/// Find `cmd` the way exec would, plus sysmgr's own directory (so sibling binaries work).
pub fn resolve_program(cmd: &str, base: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if cmd.contains('/') {
        let p = if Path::new(cmd).is_absolute() {
            PathBuf::from(cmd)
        } else {
            base.join(cmd)
        };
        return is_exec(&p).then_some(p);
    }
    search_path()
        .into_iter()
        .map(|d| d.join(cmd))
        .find(|p| is_exec(p))
}

/// The PATH services get: sysmgr's own, then the directory of the sysmgr executable.
pub fn search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(d) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(d);
    }
    dirs
}

fn parse_policy(
    ctx: &mut Ctx<'_>,
    t: &mut Tbl<'_>,
    level: &str,
    path: &str,
    sys: &SysmgrConfig,
    kinds: RestartKinds,
) -> Option<Policy> {
    let item = t.get(level)?;
    let mut p = walk::table(ctx, level, item, format!("{path}.{level}"))?;
    let n0 = ctx.errors.len();
    let action_item = p.get("action");
    let action = match action_item {
        Some(i) => walk::one_of(
            ctx,
            "action",
            i,
            &[
                ("stateful", Action::Stateful),
                ("stateless", Action::Stateless),
                ("switchover", Action::Switchover),
                ("reset", Action::Reset),
                ("none", Action::None),
            ],
        ),
        None => {
            ctx.err(item.span(), format!("[{path}.{level}] needs an `action`"));
            None
        }
    };
    let max_retries = p
        .get("max-retries")
        .and_then(|i| walk::int(ctx, "max-retries", i, 0, 1000))
        .unwrap_or(3) as u32;
    let min_item = p.get("min-lifetime");
    let min_lifetime = min_item
        .and_then(|i| walk::duration(ctx, "min-lifetime", i))
        .unwrap_or(sys.min_lifetime_floor);
    if min_lifetime < sys.min_lifetime_floor {
        ctx.err(
            min_item.and_then(|i| i.span()),
            format!(
                "min-lifetime {} is below the floor of {}{}",
                humantime::format_duration(min_lifetime),
                humantime::format_duration(sys.min_lifetime_floor),
                if sys.floor_lowered() { " set by [lab] min-lifetime-floor" } else { " (NX-OS minimum; a lab may lower it with [lab] min-lifetime-floor in sysmgr.toml)" }
            ),
        );
    }
    let span = action_item.and_then(|i| i.span());
    match action {
        Some(Action::Stateful) if !kinds.stateful => ctx.err(
            span,
            "action \"stateful\" but the service does not list \"stateful\" in `restart`",
        ),
        Some(Action::Stateless) if !kinds.stateless => ctx.err(
            span,
            "action \"stateless\" but the service does not list \"stateless\" in `restart`",
        ),
        _ => {}
    }
    p.finish(ctx);
    let action = action?;
    (ctx.errors.len() == n0).then_some(Policy {
        action,
        max_retries,
        min_lifetime,
    })
}

fn parse_ha(
    ctx: &mut Ctx<'_>,
    ha: &mut Tbl<'_>,
    key: &str,
    sys: &SysmgrConfig,
    kinds: RestartKinds,
) -> HaPolicies {
    let Some(mut t) = ha.sub(ctx, key) else {
        return HaPolicies::default();
    };
    let path = t.path.clone();
    let primary = parse_policy(ctx, &mut t, "primary", &path, sys, kinds);
    let secondary = parse_policy(ctx, &mut t, "secondary", &path, sys, kinds);
    if secondary.is_some() && primary.is_none() && t.key_span("primary").is_none() {
        ctx.err(
            t.key_span("secondary"),
            format!("[{path}] has a secondary policy but no primary"),
        );
    }
    t.finish(ctx);
    HaPolicies { primary, secondary }
}

/// Validate one policy document; errors go to `errors`. The policy is returned even when it has
/// errors, so cross-file checks (dependencies, duplicate names) still report theirs.
pub fn parse_service(
    file: &Path,
    src: &str,
    doc: &ImDocument<&str>,
    sys: &SysmgrConfig,
    errors: &mut Vec<ConfigError>,
) -> Option<ServicePolicy> {
    let mut ctx = Ctx { file, src, errors };
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut t = Tbl::new(doc.as_table(), "");
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name_item = t.get("name");
    let name = name_item
        .and_then(|i| walk::string(&mut ctx, "name", i))
        .unwrap_or(stem);
    let name_span = name_item.and_then(|i| i.span());
    if !valid_name(&name) {
        ctx.err(name_span.clone(), format!("service name {name:?} must be 1-32 characters of letters, digits, '-' or '_', starting with a letter"));
    }

    let mut command = Vec::new();
    let mut program = PathBuf::new();
    match t.get("command") {
        None => ctx.err(
            Some(0..0),
            "`command` is required (an argv array, e.g. [\"bgpd\", \"--flag\"])",
        ),
        Some(i) => {
            if let Some(v) = walk::str_array(&mut ctx, "command", i) {
                if v.is_empty() {
                    ctx.err(i.span(), "`command` must not be empty");
                } else if let Some(p) = resolve_program(&v[0].0, &base) {
                    program = p;
                } else {
                    ctx.err(
                        v[0].1.clone(),
                        format!(
                            "program {:?} not found (searched PATH and sysmgr's own directory)",
                            v[0].0
                        ),
                    );
                }
                command = v.into_iter().map(|(s, _)| s).collect();
            }
        }
    }

    let mut env = BTreeMap::new();
    if let Some(mut et) = t.sub(&mut ctx, "env") {
        let keys = et.keys();
        for k in keys {
            if let Some(v) = et.get(&k).and_then(|vi| walk::string(&mut ctx, &k, vi)) {
                if k.is_empty() || k.contains('=') {
                    ctx.err(
                        et.key_span(&k),
                        format!("environment variable name {k:?} is invalid"),
                    );
                }
                env.insert(k, v);
            }
        }
        et.finish(&mut ctx);
    }

    let wd_item = t.get("working-dir");
    let working_dir = wd_item
        .and_then(|i| walk::non_empty_string(&mut ctx, "working-dir", i))
        .map(|s| base.join(s))
        .unwrap_or_else(|| base.clone());
    if wd_item.is_some() && !working_dir.is_dir() {
        ctx.err(
            wd_item.and_then(|i| i.span()),
            format!("working-dir {} is not a directory", working_dir.display()),
        );
    }
    let user_item = t.get("user");
    let user = user_item.and_then(|i| walk::non_empty_string(&mut ctx, "user", i));
    if let Some(u) = &user
        && !matches!(nix::unistd::User::from_name(u), Ok(Some(_)))
    {
        ctx.err(
            user_item.and_then(|i| i.span()),
            format!("user {u:?} does not exist on this host"),
        );
    }
    let group_item = t.get("group");
    let group = group_item.and_then(|i| walk::non_empty_string(&mut ctx, "group", i));
    if let Some(g) = &group
        && !matches!(nix::unistd::Group::from_name(g), Ok(Some(_)))
    {
        ctx.err(
            group_item.and_then(|i| i.span()),
            format!("group {g:?} does not exist on this host"),
        );
    }

    let mut depends_on = Vec::new();
    let mut dep_spans = Vec::new();
    if let Some(i) = t.get("depends-on")
        && let Some(v) = walk::str_array(&mut ctx, "depends-on", i)
    {
        for (d, s) in v {
            depends_on.push(d);
            dep_spans.push(s);
        }
    }

    let mut restart = RestartKinds {
        stateful: false,
        stateless: true,
    };
    if let Some(i) = t.get("restart")
        && let Some(v) = walk::str_array(&mut ctx, "restart", i)
    {
        restart = RestartKinds {
            stateful: false,
            stateless: false,
        };
        for (k, s) in v {
            match k.as_str() {
                "stateful" => restart.stateful = true,
                "stateless" => restart.stateless = true,
                other => ctx.err(
                    s,
                    format!("restart kind {other:?} is not one of: stateful, stateless"),
                ),
            }
        }
    }
    let readiness = t
        .get("readiness")
        .and_then(|i| {
            walk::one_of(
                &mut ctx,
                "readiness",
                i,
                &[("notify", Readiness::Notify), ("none", Readiness::None)],
            )
        })
        .unwrap_or(Readiness::None);
    let start_timeout = t
        .get("start-timeout")
        .and_then(|i| walk::duration(&mut ctx, "start-timeout", i))
        .unwrap_or(Duration::from_secs(30));
    let stop_timeout = t
        .get("stop-timeout")
        .and_then(|i| walk::duration(&mut ctx, "stop-timeout", i))
        .unwrap_or(Duration::from_secs(5));
    let mut heartbeat = None;
    if let Some(mut h) = t.sub(&mut ctx, "heartbeat") {
        let iv_item = h.get("interval");
        let interval = iv_item.and_then(|i| walk::duration(&mut ctx, "interval", i));
        if iv_item.is_none() {
            ctx.err(t.key_span("heartbeat"), "[heartbeat] needs an `interval`");
        }
        if interval.is_some_and(|d| d < Duration::from_millis(10)) {
            ctx.err(
                iv_item.and_then(|i| i.span()),
                "heartbeat interval must be at least 10ms",
            );
        }
        let misses = h
            .get("misses")
            .and_then(|i| walk::int(&mut ctx, "misses", i, 1, 1000))
            .unwrap_or(3) as u32;
        h.finish(&mut ctx);
        heartbeat = interval.map(|interval| Heartbeat { interval, misses });
    }
    let fd_store_max = t
        .get("fd-store-max")
        .and_then(|i| walk::int(&mut ctx, "fd-store-max", i, 0, 4096))
        .unwrap_or(64) as u32;
    let nice = t
        .get("nice")
        .and_then(|i| walk::int(&mut ctx, "nice", i, -20, 19))
        .map(|v| v as i32);
    let run_on_standby = t
        .get("run-on-standby")
        .and_then(|i| walk::boolean(&mut ctx, "run-on-standby", i))
        .unwrap_or(false);

    let mut saps = BTreeMap::new();
    let mut sap_spans = BTreeMap::new();
    if let Some(mut st) = t.sub(&mut ctx, "saps") {
        let keys = st.keys();
        for k in keys {
            let span = st.key_span(&k);
            let lo = i64::from(mts::sap::FIRST_SERVICE);
            let hi = i64::from(mts::sap::FIRST_EPHEMERAL) - 1;
            if let Some(n) = st.get(&k).and_then(|v| walk::int(&mut ctx, &k, v, lo, hi)) {
                if !valid_name(&k) || k == "sysmgr" || k == "pss" {
                    ctx.err(
                        span.clone(),
                        format!("SAP name {k:?} is reserved or invalid"),
                    );
                }
                saps.insert(k.clone(), n as u32);
                sap_spans.insert(k, span);
            }
        }
        st.finish(&mut ctx);
    }

    let (mut single_sup, mut dual_sup) = (HaPolicies::default(), HaPolicies::default());
    if let Some(mut ha) = t.sub(&mut ctx, "ha") {
        single_sup = parse_ha(&mut ctx, &mut ha, "single-sup", sys, restart);
        dual_sup = parse_ha(&mut ctx, &mut ha, "dual-sup", sys, restart);
        ha.finish(&mut ctx);
    }
    t.finish(&mut ctx);
    Some(ServicePolicy {
        name,
        file: file.to_path_buf(),
        command,
        program,
        env,
        working_dir,
        user,
        group,
        depends_on,
        restart,
        readiness,
        start_timeout,
        stop_timeout,
        heartbeat,
        fd_store_max,
        nice,
        run_on_standby,
        saps,
        single_sup,
        dual_sup,
        spans: Spans {
            name: name_span,
            deps: dep_spans,
            saps: sap_spans,
        },
    })
}

/// Unknown dependencies, duplicate SAPs (names or numbers) and dependency cycles, each
/// reported where it is declared.
pub fn check_dependencies(
    services: &BTreeMap<String, ServicePolicy>,
    sources: &BTreeMap<String, String>,
    errors: &mut Vec<ConfigError>,
) {
    // Dependencies exist; SAP names and numbers are unique across services.
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut nums: BTreeMap<u32, (&str, &str)> = BTreeMap::new();
    for (name, p) in services {
        let src = sources.get(name).map(String::as_str).unwrap_or("");
        let mut ctx = Ctx {
            file: &p.file,
            src,
            errors,
        };
        for (d, span) in p.depends_on.iter().zip(&p.spans.deps) {
            if d == name {
                ctx.err(span.clone(), format!("service {name:?} depends on itself"));
            } else if !services.contains_key(d) {
                ctx.err(
                    span.clone(),
                    format!("depends-on {d:?}: no such service in this policy directory"),
                );
            }
        }
        for (sap, num) in &p.saps {
            let span = p.spans.saps.get(sap).cloned().flatten();
            if let Some(other) = seen.insert(sap.clone(), name) {
                ctx.err(
                    span.clone(),
                    format!("SAP {sap:?} is also declared by service {other:?}"),
                );
            }
            if let Some((other, other_sap)) = nums.insert(*num, (name, sap)) {
                ctx.err(
                    span,
                    format!(
                        "SAP number {num} is also used by SAP {other_sap:?} of service {other:?}"
                    ),
                );
            }
        }
    }
    // Cycle detection: a depth-first search that reports each cycle once, at the edge closing it.
    let mut done = BTreeSet::new();
    for start in services.keys() {
        let mut stack: Vec<(String, usize)> = vec![(start.clone(), 0)];
        let mut on_path: Vec<String> = vec![start.clone()];
        while let Some((node, idx)) = stack.pop() {
            let Some(p) = services.get(&node) else {
                continue;
            };
            if idx < p.depends_on.len() {
                stack.push((node.clone(), idx + 1));
                let dep = &p.depends_on[idx];
                if dep == &node || !services.contains_key(dep) || done.contains(dep) {
                    continue;
                }
                if let Some(pos) = on_path.iter().position(|n| n == dep) {
                    let cycle: Vec<&str> = on_path[pos..]
                        .iter()
                        .map(String::as_str)
                        .chain([dep.as_str()])
                        .collect();
                    let src = sources.get(&node).map(String::as_str).unwrap_or("");
                    let mut ctx = Ctx {
                        file: &p.file,
                        src,
                        errors,
                    };
                    ctx.err(
                        p.spans.deps[idx].clone(),
                        format!("dependency cycle: {}", cycle.join(" -> ")),
                    );
                    continue;
                }
                on_path.push(dep.clone());
                stack.push((dep.clone(), 0));
            } else {
                done.insert(node.clone());
                on_path.pop();
            }
        }
    }
}

/// Services in start order (dependencies first); ties in name order.
pub fn start_order(services: &BTreeMap<String, ServicePolicy>) -> Vec<String> {
    let mut order = Vec::new();
    let mut placed = BTreeSet::new();
    while order.len() < services.len() {
        let before = order.len();
        for (n, p) in services {
            if !placed.contains(n)
                && p.depends_on
                    .iter()
                    .all(|d| placed.contains(d) || !services.contains_key(d))
            {
                order.push(n.clone());
            }
        }
        for n in &order[before..] {
            placed.insert(n.clone());
        }
        if order.len() == before {
            break; // a cycle; validation reports it
        }
    }
    order
}
