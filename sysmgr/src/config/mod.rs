//! `sysmgr.toml` and the per-service policy files.
//!
//! [`load`] reads the supervisor config and every policy file beside it, validates them all, and
//! returns either a complete [`Lab`] or every error found (file:line:col). Nothing starts unless
//! all files are valid.

mod policy;
pub mod walk;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use policy::{
    Action, HaPolicies, Heartbeat, Policy, Readiness, RestartKinds, ServicePolicy, StartKind,
    resolve_program, search_path, start_order,
};
use toml_edit::ImDocument;
pub use walk::ConfigError;
use walk::{Ctx, Tbl};

/// NX-OS never accepts a minimum lifetime below four minutes.
pub const DEFAULT_MIN_LIFETIME_FLOOR: Duration = Duration::from_secs(240);
/// `pss-poll-us` when the file does not set it: off. Polling shortens a back-to-back writer's
/// round trip but takes CPU time that routing services need on a small machine (BENCHMARKS.md).
pub const DEFAULT_PSS_POLL: Duration = Duration::ZERO;

/// Every error of a validation run, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        write!(f, "{} error(s); nothing was started", self.0.len())
    }
}

impl std::error::Error for ConfigErrors {}

/// Several services failing within a short window is a supervisor problem, not a service one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureWindow {
    /// This many distinct services failing…
    pub services: u32,
    /// …within this long, triggers switchover/reset.
    pub window: Duration,
}

/// `[redundancy]`: this supervisor and the other one (DESIGN.md §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redundancy {
    /// Who decides which supervisor is active.
    pub arbiter: Arbiter,
    /// Where this supervisor serves the replication stream when it is active.
    pub link: Endpoint,
    /// The other supervisor's name and link.
    pub peer: String,
    pub peer_link: Endpoint,
    /// The active's heartbeat on the link, and how long the standby waits for one before it
    /// declares the active stalled (and fences it).
    pub heartbeat: Duration,
    pub dead_after: Duration,
    /// On the standby, a failed service (`run-on-standby`) is restarted after this long,
    /// without HA policies (NX-OS: 30 s).
    pub standby_restart_delay: Duration,
}

/// The arbiter of two supervisors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arbiter {
    /// One host: whoever holds an exclusive `flock` on this file is active.
    Flock(PathBuf),
    /// Two hosts: whoever holds the etcd key (under a lease of `ttl`) is active.
    Etcd {
        /// `host:port` of the etcd client URL (plain HTTP).
        endpoint: String,
        key: String,
        ttl: Duration,
    },
}

/// A replication link address: a Unix socket path, or `tcp:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// The supervisor's own configuration (`sysmgr.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysmgrConfig {
    /// The file this came from.
    pub path: PathBuf,
    /// Supervisor name (`sup-1`), shown in logs and `show` output.
    pub name: String,
    /// Where the database, logs and sockets live.
    pub data_dir: PathBuf,
    /// Where the per-service policy files are.
    pub policy_dir: PathBuf,
    /// The MTS/control socket the CLI and services connect to.
    pub socket: PathBuf,
    /// One or two supervisors: selects which HA policies apply and what the default is.
    pub supervisors: u8,
    /// Members of this group are operators (besides uid 0).
    pub admin_group: Option<String>,
    /// Smallest `min-lifetime` a policy may use.
    pub min_lifetime_floor: Duration,
    /// Multiple-failure detection.
    pub failure_window: FailureWindow,
    /// Size cap of each service output log file before it rotates.
    pub log_max_bytes: u64,
    /// Process-log records kept (oldest dropped first).
    pub proclog_max_records: u64,
    /// Two supervisors on one host (None: this one alone).
    pub redundancy: Option<Redundancy>,
    /// Per-queue MTS limits.
    pub mts_limits: crate::broker::Limits,
    /// The supervisor's own scheduling priority (nice), if the file sets one
    /// ([`crate::boot`] has the default).
    pub nice: Option<i32>,
    /// How long a PSS request thread polls for the next request after answering one before
    /// it sleeps (`pss-poll-us`; zero: it sleeps at once).
    pub pss_poll: Duration,
}

impl SysmgrConfig {
    /// Whether a lab lowered the NX-OS minimum-lifetime floor (`show` says so).
    pub fn floor_lowered(&self) -> bool {
        self.min_lifetime_floor < DEFAULT_MIN_LIFETIME_FLOOR
    }

    /// Point the instance at another data dir (and its default socket).
    pub fn override_data_dir(&mut self, dir: &Path) {
        let default_socket = self.socket == self.data_dir.join("sysmgr.sock");
        self.data_dir = absolute(dir);
        if default_socket {
            self.socket = self.data_dir.join("sysmgr.sock");
        }
    }
}

/// A whole validated lab: the supervisor config and its services in file-name order.
#[derive(Debug, Clone)]
pub struct Lab {
    pub sysmgr: SysmgrConfig,
    pub services: BTreeMap<String, ServicePolicy>,
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

fn read(path: &Path, errors: &mut Vec<ConfigError>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(ConfigError {
                file: path.to_path_buf(),
                line: 1,
                col: 1,
                msg: format!("cannot read: {e}"),
            });
            None
        }
    }
}

fn parse<'s>(
    path: &Path,
    src: &'s str,
    errors: &mut Vec<ConfigError>,
) -> Option<ImDocument<&'s str>> {
    match ImDocument::parse(src) {
        Ok(d) => Some(d),
        Err(e) => {
            let mut ctx = Ctx {
                file: path,
                src,
                errors,
            };
            let msg = e.message().trim().replace('\n', "; ");
            ctx.err(e.span(), format!("TOML syntax: {msg}"));
            None
        }
    }
}

/// Read and validate `sysmgr.toml`.
pub fn load_sysmgr(path: &Path, errors: &mut Vec<ConfigError>) -> Option<SysmgrConfig> {
    let path = absolute(path);
    let src = read(&path, errors)?;
    let doc = parse(&path, &src, errors)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut ctx = Ctx {
        file: &path,
        src: &src,
        errors,
    };
    let mut t = Tbl::new(doc.as_table(), "");
    let n0 = ctx.errors.len();
    let name = t
        .get("name")
        .and_then(|i| walk::non_empty_string(&mut ctx, "name", i))
        .unwrap_or_else(|| "sup-1".into());
    let rel = |p: String| {
        if Path::new(&p).is_absolute() {
            PathBuf::from(p)
        } else {
            base.join(p)
        }
    };
    let data_dir = t
        .get("data-dir")
        .and_then(|i| walk::non_empty_string(&mut ctx, "data-dir", i))
        .map(rel)
        .unwrap_or_else(|| base.join("data"));
    let policy_dir = t
        .get("policy-dir")
        .and_then(|i| walk::non_empty_string(&mut ctx, "policy-dir", i))
        .map(rel)
        .unwrap_or_else(|| base.clone());
    let socket = t
        .get("socket")
        .and_then(|i| walk::non_empty_string(&mut ctx, "socket", i))
        .map(|s| {
            if Path::new(&s).is_absolute() {
                PathBuf::from(s)
            } else {
                data_dir.join(s)
            }
        })
        .unwrap_or_else(|| data_dir.join("sysmgr.sock"));
    let supervisors = t
        .get("supervisors")
        .and_then(|i| walk::int(&mut ctx, "supervisors", i, 1, 2))
        .unwrap_or(1) as u8;
    let admin_group = t
        .get("admin-group")
        .and_then(|i| walk::non_empty_string(&mut ctx, "admin-group", i));
    if let Some(g) = &admin_group
        && matches!(nix::unistd::Group::from_name(g), Ok(None))
    {
        let span = t.get("admin-group").and_then(|i| i.span());
        ctx.err(
            span,
            format!("admin group {g:?} does not exist on this host"),
        );
    }
    let log_max_bytes = t
        .get("log-max-bytes")
        .and_then(|i| walk::int(&mut ctx, "log-max-bytes", i, 4096, i64::MAX))
        .unwrap_or(1 << 20) as u64;
    let nice = t
        .get("nice")
        .and_then(|i| walk::int(&mut ctx, "nice", i, -20, 19))
        .map(|v| v as i32);
    let pss_poll = t
        .get("pss-poll-us")
        .and_then(|i| walk::int(&mut ctx, "pss-poll-us", i, 0, 1000))
        .map_or(DEFAULT_PSS_POLL, |v| Duration::from_micros(v as u64));
    let proclog_max_records = t
        .get("process-log-max-records")
        .and_then(|i| walk::int(&mut ctx, "process-log-max-records", i, 10, 10_000_000))
        .unwrap_or(10_000) as u64;

    let mut min_lifetime_floor = DEFAULT_MIN_LIFETIME_FLOOR;
    if let Some(mut lab) = t.sub(&mut ctx, "lab") {
        if let Some(d) = lab
            .get("min-lifetime-floor")
            .and_then(|i| walk::duration(&mut ctx, "min-lifetime-floor", i))
        {
            min_lifetime_floor = d;
        }
        lab.finish(&mut ctx);
    }
    let mut failure_window = FailureWindow {
        services: 3,
        window: Duration::from_secs(10),
    };
    if let Some(mut fw) = t.sub(&mut ctx, "failure-window") {
        if let Some(n) = fw
            .get("services")
            .and_then(|i| walk::int(&mut ctx, "services", i, 2, 10_000))
        {
            failure_window.services = n as u32;
        }
        if let Some(d) = fw
            .get("window")
            .and_then(|i| walk::duration(&mut ctx, "window", i))
        {
            failure_window.window = d;
        }
        fw.finish(&mut ctx);
    }
    let mut mts_limits = crate::broker::Limits::default();
    if let Some(mut m) = t.sub(&mut ctx, "mts") {
        if let Some(n) = m
            .get("queue-max-messages")
            .and_then(|i| walk::int(&mut ctx, "queue-max-messages", i, 1, 100_000_000))
        {
            mts_limits.max_messages = n as usize;
        }
        if let Some(n) = m
            .get("queue-max-bytes")
            .and_then(|i| walk::int(&mut ctx, "queue-max-bytes", i, 1024, 1 << 40))
        {
            mts_limits.max_bytes = n as usize;
        }
        m.finish(&mut ctx);
    }
    let mut redundancy = None;
    if let Some(mut r) = t.sub(&mut ctx, "redundancy") {
        let abs = |p: String| {
            if Path::new(&p).is_absolute() {
                PathBuf::from(p)
            } else {
                base.join(p)
            }
        };
        let endpoint = |p: String| match p.strip_prefix("tcp:") {
            Some(a) => Endpoint::Tcp(a.to_string()),
            None => Endpoint::Unix(abs(p)),
        };
        fn string(ctx: &mut Ctx<'_>, r: &mut Tbl<'_>, key: &str) -> Option<String> {
            r.get(key).and_then(|i| walk::non_empty_string(ctx, key, i))
        }
        let lock_file = string(&mut ctx, &mut r, "lock-file").map(abs);
        let etcd = string(&mut ctx, &mut r, "etcd");
        let etcd_key =
            string(&mut ctx, &mut r, "etcd-key").unwrap_or_else(|| "/sysmgr/active".into());
        let link = string(&mut ctx, &mut r, "link")
            .map(endpoint)
            .unwrap_or_else(|| Endpoint::Unix(data_dir.join("repl.sock")));
        let peer_link = string(&mut ctx, &mut r, "peer-link").map(endpoint);
        let peer = string(&mut ctx, &mut r, "peer");
        let heartbeat = r
            .get("heartbeat")
            .and_then(|i| walk::duration(&mut ctx, "heartbeat", i))
            .unwrap_or(Duration::from_millis(100));
        let dead_after = r
            .get("dead-after")
            .and_then(|i| walk::duration(&mut ctx, "dead-after", i))
            .unwrap_or(Duration::from_secs(1));
        let standby_restart_delay = r
            .get("standby-restart-delay")
            .and_then(|i| walk::duration(&mut ctx, "standby-restart-delay", i))
            .unwrap_or(Duration::from_secs(30));
        let ttl = r
            .get("lease-ttl")
            .and_then(|i| walk::duration(&mut ctx, "lease-ttl", i))
            .unwrap_or(Duration::from_secs(2));
        let span = t.get("redundancy").and_then(|i| i.span());
        let arbiter = match (lock_file, etcd) {
            (Some(f), None) => Some(Arbiter::Flock(f)),
            (None, Some(e)) => Some(Arbiter::Etcd {
                endpoint: e
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string(),
                key: etcd_key,
                ttl,
            }),
            (Some(_), Some(_)) => {
                ctx.err(
                    span.clone(),
                    "[redundancy]: `lock-file` (one host) or `etcd` (two hosts), not both",
                );
                None
            }
            (None, None) => {
                ctx.err(
                    span.clone(),
                    "[redundancy] needs an arbiter: `lock-file` (one host) or `etcd` (two hosts)",
                );
                None
            }
        };
        for (key, missing) in [("peer", peer.is_none()), ("peer-link", peer_link.is_none())] {
            if missing {
                ctx.err(span.clone(), format!("[redundancy] needs `{key}`"));
            }
        }
        if supervisors != 2 {
            ctx.err(span.clone(), "[redundancy] needs `supervisors = 2`");
        }
        if dead_after <= heartbeat {
            ctx.err(span.clone(), "`dead-after` must be longer than `heartbeat`");
        }
        if ttl < Duration::from_secs(1) {
            ctx.err(
                span.clone(),
                "`lease-ttl` must be at least 1s (etcd leases are whole seconds; etcd raises a shorter one to its own minimum, 2s with its default timings)",
            );
        }
        r.finish(&mut ctx);
        if let (Some(arbiter), Some(peer), Some(peer_link)) = (arbiter, peer, peer_link) {
            redundancy = Some(Redundancy {
                arbiter,
                link,
                peer,
                peer_link,
                heartbeat,
                dead_after,
                standby_restart_delay,
            });
        }
    }
    t.finish(&mut ctx);
    (ctx.errors.len() == n0).then_some(SysmgrConfig {
        path,
        name,
        data_dir,
        policy_dir,
        socket,
        supervisors,
        admin_group,
        min_lifetime_floor,
        failure_window,
        log_max_bytes,
        proclog_max_records,
        redundancy,
        mts_limits,
        nice,
        pss_poll,
    })
}

/// The policy files of a directory: every `*.toml` except the supervisor's own config.
pub fn policy_files(dir: &Path, exclude: Option<&Path>) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "sysmgr.toml"))
        .filter(|p| exclude.is_none_or(|x| absolute(x) != absolute(p)))
        .collect();
    v.sort();
    Ok(v)
}

/// Read and validate every service policy in `sys.policy_dir`, then check them against each
/// other (unknown or cyclic dependencies, duplicate names).
pub fn load_services(
    sys: &SysmgrConfig,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, ServicePolicy> {
    let files = match policy_files(&sys.policy_dir, Some(&sys.path)) {
        Ok(f) => f,
        Err(e) => {
            errors.push(ConfigError {
                file: sys.policy_dir.clone(),
                line: 1,
                col: 1,
                msg: format!("cannot list policy directory: {e}"),
            });
            return BTreeMap::new();
        }
    };
    let mut services = BTreeMap::new();
    let mut sources = BTreeMap::new();
    for f in files {
        let Some(src) = read(&f, errors) else {
            continue;
        };
        let Some(doc) = parse(&f, &src, errors) else {
            continue;
        };
        if let Some(p) = policy::parse_service(&f, &src, &doc, sys, errors) {
            if let Some(prev) = services.get(&p.name) {
                let prev: &ServicePolicy = prev;
                let mut ctx = Ctx {
                    file: &f,
                    src: &src,
                    errors,
                };
                ctx.err(
                    p.spans.name.clone(),
                    format!(
                        "service {:?} is already defined in {}",
                        p.name,
                        prev.file.display()
                    ),
                );
                continue;
            }
            sources.insert(p.name.clone(), src.clone());
            services.insert(p.name.clone(), p);
        }
    }
    policy::check_dependencies(&services, &sources, errors);
    services
}

fn finish(
    sys: SysmgrConfig,
    services: BTreeMap<String, ServicePolicy>,
    mut errors: Vec<ConfigError>,
) -> Result<Lab, ConfigErrors> {
    if errors.is_empty() {
        return Ok(Lab {
            sysmgr: sys,
            services,
        });
    }
    errors.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    errors.dedup();
    Err(ConfigErrors(errors))
}

/// Load and validate a whole lab; nothing is returned unless every file is valid.
pub fn load(config: &Path, data_dir: Option<&Path>) -> Result<Lab, ConfigErrors> {
    let mut errors = Vec::new();
    let Some(mut sys) = load_sysmgr(config, &mut errors) else {
        return Err(ConfigErrors(errors));
    };
    if let Some(d) = data_dir {
        sys.override_data_dir(d);
    }
    let services = load_services(&sys, &mut errors);
    finish(sys, services, errors)
}

/// `sysmgr policy check DIR`: validate a policy directory (with its `sysmgr.toml` if present).
pub fn check_dir(dir: &Path) -> Result<Lab, ConfigErrors> {
    let cfg = dir.join("sysmgr.toml");
    if cfg.exists() {
        let mut lab = load(&cfg, None)?;
        if absolute(&lab.sysmgr.policy_dir) != absolute(dir) {
            // The config points elsewhere; validate the directory we were asked about.
            lab.sysmgr.policy_dir = absolute(dir);
            let mut errors = Vec::new();
            let services = load_services(&lab.sysmgr, &mut errors);
            return finish(lab.sysmgr, services, errors);
        }
        return Ok(lab);
    }
    let sys = SysmgrConfig {
        path: dir.join("sysmgr.toml"),
        name: "sup-1".into(),
        data_dir: dir.join("data"),
        policy_dir: absolute(dir),
        socket: dir.join("data/sysmgr.sock"),
        supervisors: 1,
        admin_group: None,
        min_lifetime_floor: DEFAULT_MIN_LIFETIME_FLOOR,
        failure_window: FailureWindow {
            services: 3,
            window: Duration::from_secs(10),
        },
        log_max_bytes: 1 << 20,
        proclog_max_records: 10_000,
        redundancy: None,
        mts_limits: crate::broker::Limits::default(),
        nice: None,
        pss_poll: DEFAULT_PSS_POLL,
    };
    let mut errors = Vec::new();
    let services = load_services(&sys, &mut errors);
    finish(sys, services, errors)
}
