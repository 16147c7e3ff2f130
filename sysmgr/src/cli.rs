//! The NX-OS-style command line: grammar and rendering. Requests go to the running daemon.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::control::proto::{ProcessRow, Request, Response, ServiceDetail};
use crate::proclog::{CoreRecord, ProcRecord, signal_name};

#[derive(Debug, Parser)]
#[command(
    name = "sysmgr",
    about = "NX-OS-style service-level HA supervisor",
    version
)]
pub struct Cli {
    /// The supervisor configuration; the CLI finds the daemon's socket from it.
    #[arg(long, global = true, default_value = "policies/sysmgr.toml")]
    pub config: PathBuf,
    /// Override the data directory the config names (several instances side by side).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print show output as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the supervisor in the foreground.
    Boot {
        /// If the PSS database cannot be opened or is corrupt, move it aside and start empty
        /// (without this flag sysmgr refuses to boot and names the path).
        #[arg(long)]
        move_aside_corrupt_db: bool,
    },
    /// Policy file tools.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Show commands.
    Show {
        #[command(subcommand)]
        cmd: ShowCmd,
    },
    /// Restart a service.
    Restart {
        #[command(subcommand)]
        cmd: RestartCmd,
    },
    /// Re-read the policy files; only services whose policy changed are touched.
    Reload,
    /// ip route add|del (static routes, via the fib service)
    Ip {
        #[command(subcommand)]
        cmd: IpCmd,
    },
    /// clear pss service NAME | clear route PREFIX | clear bgp ADDR soft in|out
    Clear {
        #[command(subcommand)]
        cmd: ClearCmd,
    },
    /// system switchover: the active supervisor hands over to the standby
    System {
        #[command(subcommand)]
        cmd: SystemActionCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum SystemActionCmd {
    /// Stop the services here and let the standby supervisor take over.
    Switchover,
}

#[derive(Debug, Subcommand)]
pub enum ClearCmd {
    Pss {
        #[command(subcommand)]
        cmd: ClearPssCmd,
    },
    /// Recompute a sticky route's load distribution from its current paths (answered by fib).
    Route { prefix: String },
    /// clear bgp ADDR soft in|out: ask the neighbour for its routes again (ROUTE-REFRESH), or
    /// send it ours again (answered by bgp; no session reset).
    Bgp {
        addr: String,
        #[arg(value_parser = ["soft"])]
        soft: String,
        #[arg(value_parser = ["in", "out"])]
        direction: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClearPssCmd {
    /// Drop every PSS key of a service, in all scopes.
    Service { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PssCmd {
    /// The keys of one service.
    Service {
        name: String,
        /// private, local or global.
        #[arg(long)]
        scope: Option<String>,
        /// Only this key.
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy directory without starting anything.
    Check { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum ShowCmd {
    /// show processes [log [details | pid N]]
    Processes {
        #[command(subcommand)]
        cmd: Option<ProcessesCmd>,
    },
    /// show cores
    Cores,
    /// show pss [service NAME [--scope S] [--key K]]
    Pss {
        #[command(subcommand)]
        cmd: Option<PssCmd>,
    },
    /// show mts sap | queues | dead-letter
    Mts {
        #[command(subcommand)]
        cmd: MtsCmd,
    },
    /// show system internal sysmgr service name NAME
    System {
        #[command(subcommand)]
        cmd: SystemCmd,
    },
    /// show bfd neighbors [details] (answered by the bfd service)
    Bfd {
        #[command(subcommand)]
        cmd: BfdCmd,
    },
    /// show ip route [PREFIX] (answered by the fib service)
    Ip {
        #[command(subcommand)]
        cmd: ShowIpCmd,
    },
    /// show ipv6 route [PREFIX] (answered by the fib service)
    Ipv6 {
        #[command(subcommand)]
        cmd: ShowIpCmd,
    },
    /// show bgp summary | neighbors [ADDR] | ipv4|ipv6 unicast [PREFIX] (answered by bgp)
    Bgp {
        #[command(subcommand)]
        cmd: ShowBgpCmd,
    },
    /// show cef PREFIX detail: path list and load distribution table (answered by fib)
    Cef {
        prefix: String,
        #[arg(value_parser = ["detail"])]
        detail: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ShowBgpCmd {
    /// Neighbours: AS, messages, up/down time, state or prefixes received.
    Summary,
    /// One neighbour (or all) in full.
    Neighbors { addr: Option<String> },
    /// The BGP table: show bgp ipv4 unicast [PREFIX]
    Ipv4 {
        #[arg(value_parser = ["unicast"])]
        safi: String,
        prefix: Option<String>,
    },
    /// The BGP table: show bgp ipv6 unicast [PREFIX]
    Ipv6 {
        #[arg(value_parser = ["unicast"])]
        safi: String,
        prefix: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ShowIpCmd {
    /// The FIB's routes (all, or those inside PREFIX).
    Route { prefix: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum IpCmd {
    /// Static routes, sent to the fib service as producer "static".
    Route {
        #[command(subcommand)]
        cmd: IpRouteCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum IpRouteCmd {
    /// ip route add PREFIX --via GW%IF [--via GW%IF ...] [--sticky]
    Add {
        prefix: String,
        /// A path: gateway%interface (repeat for ECMP).
        #[arg(long, required = true)]
        via: Vec<String>,
        /// Sticky ECMP (persistent load balancing).
        #[arg(long)]
        sticky: bool,
    },
    /// ip route del PREFIX
    Del { prefix: String },
}

#[derive(Debug, Subcommand)]
pub enum BfdCmd {
    /// Sessions: addresses, discriminators, states, hold-down, uptime, flaps.
    Neighbors {
        #[command(subcommand)]
        cmd: Option<NeighborsCmd>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NeighborsCmd {
    /// Every session in full: timers, diagnostics, counters.
    Details,
}

#[derive(Debug, Subcommand)]
pub enum MtsCmd {
    /// Service access points: number, name, owner, bound, subscriptions.
    Sap,
    /// Per-SAP queues: depth, bytes, pending acks, oldest age.
    Queues,
    /// Quarantined messages.
    DeadLetter,
}

#[derive(Debug, Subcommand)]
pub enum ProcessesCmd {
    /// The persistent process log.
    Log {
        #[command(subcommand)]
        cmd: Option<LogCmd>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LogCmd {
    /// Every record in full.
    Details,
    /// The records of one instance.
    Pid { pid: i32 },
}

#[derive(Debug, Subcommand)]
pub enum SystemCmd {
    Internal {
        #[command(subcommand)]
        cmd: InternalCmd,
    },
    /// show system redundancy status
    Redundancy {
        #[command(subcommand)]
        cmd: RedundancyCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum RedundancyCmd {
    /// Redundancy mode, this supervisor, the other one.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum InternalCmd {
    Sysmgr {
        #[command(subcommand)]
        cmd: SysmgrCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum SysmgrCmd {
    Service {
        #[command(subcommand)]
        cmd: ServiceSel,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceSel {
    Name { name: String },
}

#[derive(Debug, Subcommand)]
pub enum RestartCmd {
    /// restart service NAME [--stateless]
    Service {
        name: String,
        /// Drop the service's stored state and descriptors.
        #[arg(long)]
        stateless: bool,
    },
}

/// How a show should be rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Plain,
    Details,
}

/// The request a CLI command maps to, and how to render its answer.
pub fn request_for(cmd: &Cmd) -> Option<(Request, View)> {
    Some(match cmd {
        Cmd::Show { cmd } => match cmd {
            ShowCmd::Processes { cmd: None } => (Request::ShowProcesses, View::Plain),
            ShowCmd::Processes {
                cmd: Some(ProcessesCmd::Log { cmd }),
            } => match cmd {
                None => (Request::ShowProcessLog { pid: None }, View::Plain),
                Some(LogCmd::Details) => (Request::ShowProcessLog { pid: None }, View::Details),
                Some(LogCmd::Pid { pid }) => {
                    (Request::ShowProcessLog { pid: Some(*pid) }, View::Details)
                }
            },
            ShowCmd::Cores => (Request::ShowCores, View::Plain),
            ShowCmd::Pss { cmd: None } => (Request::ShowPss, View::Plain),
            ShowCmd::Pss {
                cmd: Some(PssCmd::Service { name, scope, key }),
            } => (
                Request::ShowPssService {
                    name: name.clone(),
                    scope: scope.clone(),
                    key: key.clone(),
                },
                View::Plain,
            ),
            ShowCmd::Mts { cmd: MtsCmd::Sap } => (Request::ShowMtsSap, View::Plain),
            ShowCmd::Mts {
                cmd: MtsCmd::Queues,
            } => (Request::ShowMtsQueues, View::Plain),
            ShowCmd::Mts {
                cmd: MtsCmd::DeadLetter,
            } => (Request::ShowMtsDeadLetter, View::Plain),
            ShowCmd::System {
                cmd:
                    SystemCmd::Internal {
                        cmd:
                            InternalCmd::Sysmgr {
                                cmd:
                                    SysmgrCmd::Service {
                                        cmd: ServiceSel::Name { name },
                                    },
                            },
                    },
            } => (Request::ShowService { name: name.clone() }, View::Plain),
            ShowCmd::System {
                cmd:
                    SystemCmd::Redundancy {
                        cmd: RedundancyCmd::Status,
                    },
            } => (Request::ShowRedundancy, View::Plain),
            ShowCmd::Bfd { .. }
            | ShowCmd::Ip { .. }
            | ShowCmd::Ipv6 { .. }
            | ShowCmd::Cef { .. }
            | ShowCmd::Bgp { .. } => return None,
        },
        Cmd::Restart {
            cmd: RestartCmd::Service { name, stateless },
        } => (
            Request::Restart {
                name: name.clone(),
                stateless: *stateless,
            },
            View::Plain,
        ),
        Cmd::Reload => (Request::Reload, View::Plain),
        Cmd::Clear {
            cmd: ClearCmd::Pss {
                cmd: ClearPssCmd::Service { name },
            },
        } => (Request::ClearPss { name: name.clone() }, View::Plain),
        Cmd::System {
            cmd: SystemActionCmd::Switchover,
        } => (Request::Switchover, View::Plain),
        Cmd::Boot { .. }
        | Cmd::Policy { .. }
        | Cmd::Ip { .. }
        | Cmd::Clear {
            cmd: ClearCmd::Route { .. } | ClearCmd::Bgp { .. },
        } => return None,
    })
}

/// Where the daemon listens: `SYSMGR_SOCKET`, else the socket the config (and data dir) name.
pub fn socket_path(config: &Path, data_dir: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(s) = std::env::var_os("SYSMGR_SOCKET") {
        return Ok(s.into());
    }
    let mut errors = Vec::new();
    let mut sys = crate::config::load_sysmgr(config, &mut errors).ok_or_else(|| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    if let Some(d) = data_dir {
        sys.override_data_dir(d);
    }
    Ok(sys.socket)
}

fn time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn dur(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 86400 {
        format!(
            "{}d{:02}:{:02}:{:02}",
            s / 86400,
            s / 3600 % 24,
            s / 60 % 60,
            s % 60
        )
    } else if s >= 1 {
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{ms}ms")
    }
}

fn yn(b: bool) -> &'static str {
    if b { "Y" } else { "N" }
}

/// A table column: title, width, alignment (the last column is never padded).
type Col = (&'static str, usize, Align);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}
use Align::{Left as L, Right as R};

/// A text table the NX-OS way: titles, dashes under each title, then one line per row.
fn table<T>(
    cols: &[Col],
    rows: impl IntoIterator<Item = T>,
    cells: impl Fn(T) -> Vec<String>,
) -> String {
    fn line(o: &mut String, cols: &[Col], cells: Vec<String>) {
        for (i, ((_, w, align), c)) in cols.iter().zip(cells).enumerate() {
            match (i + 1 == cols.len(), align) {
                (true, _) => o.push_str(&c),
                (false, Align::Right) => *o += &format!("{c:>w$}  "),
                (false, Align::Left) => *o += &format!("{c:<w$}  "),
            }
        }
        o.push('\n');
    }
    let mut o = String::new();
    line(&mut o, cols, cols.iter().map(|c| c.0.to_string()).collect());
    line(
        &mut o,
        cols,
        cols.iter().map(|c| "-".repeat(c.0.len())).collect(),
    );
    for r in rows {
        line(&mut o, cols, cells(r));
    }
    o
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn processes(rows: &[ProcessRow]) -> String {
    const COLS: &[Col] = &[
        ("PID", 8, R),
        ("State", 12, L),
        ("Start_cnt", 9, R),
        ("Uptime", 10, R),
        ("Type", 10, L),
        ("Process", 16, L),
        ("Status", 0, L),
    ];
    table(COLS, rows, |r| {
        vec![
            opt(r.pid),
            r.state.clone(),
            r.start_count.to_string(),
            r.uptime_ms.map(dur).unwrap_or_else(|| "-".into()),
            r.start_kind.clone().unwrap_or_else(|| "-".into()),
            r.name.clone(),
            r.status.clone(),
        ]
    })
}

fn proc_log(records: &[ProcRecord], cores: &[CoreRecord]) -> String {
    const COLS: &[Col] = &[
        ("Process", 16, L),
        ("PID", 8, R),
        ("Normal-exit", 11, L),
        ("Stack", 5, L),
        ("Core", 4, L),
        ("Log-create-time", 0, L),
    ];
    table(COLS, records, |r| {
        let core = cores
            .iter()
            .find(|c| c.pid == r.pid && c.service == r.service);
        vec![
            r.service.clone(),
            r.pid.to_string(),
            yn(r.death.normal()).into(),
            yn(core.is_some_and(|c| !c.stderr_tail.is_empty())).into(),
            yn(core.is_some_and(|c| c.core_file.is_some())).into(),
            time(r.ended_ms),
        ]
    })
}

fn proc_log_details(records: &[ProcRecord], cores: &[CoreRecord]) -> String {
    let mut o = String::new();
    for r in records {
        o += "======================================================\n";
        o += &format!("Service: {}   (supervisor {})\n", r.service, r.supervisor);
        o += &format!("Record {}: {}\n", r.seq, time(r.ended_ms));
        if r.service == "sysmgr" {
            o += &format!("Supervisor event: {} (PID {})\n", r.action, r.pid);
            continue;
        }
        o += &format!(
            "PID: {}   start type: {}   start count: {}\n",
            r.pid,
            r.start_kind.word(),
            r.start_count
        );
        o += &format!(
            "Started at {}, ended at {}, uptime {}\n",
            time(r.started_ms),
            time(r.ended_ms),
            dur(r.uptime_ms())
        );
        o += &format!(
            "Normal exit: {}   Reason: {}\n",
            yn(r.death.normal()),
            r.death.describe()
        );
        if let Some(s) = r.death.signal() {
            o += &format!("Signal: {s} ({})\n", signal_name(s));
        }
        o += &format!(
            "Action: {}{}\n",
            r.action,
            r.new_pid
                .map(|p| format!(", new PID {p}"))
                .unwrap_or_default()
        );
        if !r.policy.is_empty() {
            o += &format!("Policy in force: {}\n", r.policy);
        }
        if let Some(c) = cores
            .iter()
            .find(|c| c.pid == r.pid && c.service == r.service)
        {
            o += &format!(
                "Core: {}\n",
                c.core_file
                    .as_deref()
                    .unwrap_or("not written by the kernel")
            );
            if !c.stderr_tail.is_empty() {
                o += "Last stderr lines:\n";
                for l in &c.stderr_tail {
                    o += &format!("    {l}\n");
                }
            }
        }
    }
    o
}

fn cores_table(cores: &[CoreRecord]) -> String {
    const COLS: &[Col] = &[
        ("Process-name", 16, L),
        ("PID", 8, R),
        ("Signal", 12, L),
        ("Date(Year-Month-Day Time)", 25, L),
        ("Core-file", 0, L),
    ];
    table(COLS, cores, |c| {
        vec![
            c.service.clone(),
            c.pid.to_string(),
            format!("{} ({})", c.signal, signal_name(c.signal)),
            time(c.time_ms),
            c.core_file.clone().unwrap_or_else(|| "-".into()),
        ]
    })
}

fn service(d: &ServiceDetail) -> String {
    let mut o = format!(
        "Service \"{}\" on supervisor {} ({}):\n",
        d.name, d.supervisor, d.policy_file
    );
    o += &format!("        Command: {}\n", d.command.join(" "));
    o += &format!(
        "        State: {}{}, PID = {}\n",
        d.state,
        if d.ready { " (ready)" } else { "" },
        opt(d.pid)
    );
    if !d.status.is_empty() {
        o += &format!("        Status: {}\n", d.status);
    }
    o += &format!(
        "        Start count: {}   last start type: {}   uptime: {}\n",
        d.start_count,
        d.start_kind.as_deref().unwrap_or("-"),
        d.uptime_ms.map(dur).unwrap_or_else(|| "-".into())
    );
    o += &format!(
        "        Depends on: [{}]   readiness: {}   restart kinds: [{}]\n",
        d.depends_on.join(", "),
        d.readiness,
        d.restart_kinds.join(", ")
    );
    o += &format!(
        "        Heartbeat: {}\n",
        d.heartbeat.as_deref().unwrap_or("not monitored")
    );
    o += "        Restart policies:\n";
    for p in &d.policies {
        o += &format!("            {p}\n");
    }
    o += &format!(
        "        Policy in force: {}   retries left: {}\n",
        d.policy_in_force,
        opt(d.retries_left)
    );
    o += &format!(
        "        Minimum lifetime floor: {}{}\n",
        d.min_lifetime_floor,
        if d.floor_lowered {
            " (LOWERED by this lab; NX-OS requires at least 4m)"
        } else {
            ""
        }
    );
    match (&d.last_failure, d.last_failure_ms) {
        (Some(f), Some(t)) => o += &format!("        Last failure: {f} at {}\n", time(t)),
        _ => o += "        The service never crashed since sysmgr booted.\n",
    }
    if !d.stored_fds.is_empty() {
        o += &format!("        Stored descriptors: {}\n", d.stored_fds.join(", "));
    }
    o
}

fn pss_usage(rows: &[pss::server::Usage]) -> String {
    const COLS: &[Col] = &[
        ("Service", 16, L),
        ("Scope", 8, L),
        ("Keys", 8, R),
        ("Bytes", 10, R),
        ("Last-seq", 8, R),
        ("Last-checkpoint", 0, L),
    ];
    table(COLS, rows, |r| {
        let when = if r.last_ms == 0 {
            "-".to_string()
        } else {
            time(r.last_ms)
        };
        vec![
            r.service.clone(),
            r.scope.clone(),
            r.keys.to_string(),
            r.bytes.to_string(),
            r.last_seq.to_string(),
            when,
        ]
    })
}

fn pss_entries(rows: &[crate::control::proto::PssEntry]) -> String {
    const COLS: &[Col] = &[
        ("Scope", 8, L),
        ("Key", 32, L),
        ("Bytes", 8, R),
        ("Value (hex, first 64 bytes)", 0, L),
    ];
    table(COLS, rows, |r| {
        vec![
            r.scope.clone(),
            r.key.clone(),
            r.bytes.to_string(),
            r.value_hex.clone(),
        ]
    })
}

fn mts_saps(rows: &[crate::broker::SapRow]) -> String {
    const COLS: &[Col] = &[
        ("SAP", 10, R),
        ("Name", 16, L),
        ("Owner", 20, L),
        ("Bound", 5, L),
        ("Subscriptions", 0, L),
    ];
    table(COLS, rows, |r| {
        let subs: Vec<String> = r.subscriptions.iter().map(u32::to_string).collect();
        vec![
            r.number.to_string(),
            r.name.clone(),
            r.owner.clone(),
            yn(r.bound).into(),
            subs.join(","),
        ]
    })
}

fn mts_queues(rows: &[crate::broker::QueueRow]) -> String {
    const COLS: &[Col] = &[
        ("SAP", 10, R),
        ("Name", 16, L),
        ("Depth", 8, R),
        ("Bytes", 10, R),
        ("Pending-acks", 12, R),
        ("Persistent", 10, R),
        ("Oldest-age", 12, L),
        ("Written", 10, R),
        ("Not-written", 0, R),
    ];
    table(COLS, rows, |r| {
        vec![
            r.sap.to_string(),
            r.name.clone(),
            r.depth.to_string(),
            r.bytes.to_string(),
            r.pending_acks.to_string(),
            r.persistent.to_string(),
            r.oldest_age_ms.map(dur).unwrap_or_else(|| "-".into()),
            r.persistent_written.to_string(),
            r.persistent_delivered_unwritten.to_string(),
        ]
    })
}

fn mts_dead(rows: &[crate::broker::DeadLetter]) -> String {
    const COLS: &[Col] = &[
        ("Msg", 10, R),
        ("SAP", 16, L),
        ("Service", 16, L),
        ("From-SAP", 10, R),
        ("Opcode", 8, R),
        ("Bytes", 8, R),
        ("Date", 20, L),
        ("Reason", 0, L),
    ];
    table(COLS, rows, |d| {
        vec![
            d.seq.to_string(),
            d.sap.clone(),
            d.service.clone(),
            d.src_sap.to_string(),
            d.opcode.to_string(),
            d.bytes.to_string(),
            time(d.time_ms),
            d.reason.clone(),
        ]
    })
}

/// Render a response for a human, or as JSON.
pub fn render(resp: &Response, view: View, json: bool) -> String {
    if json {
        let v = match resp {
            Response::Processes(r) => serde_json::to_string_pretty(r),
            Response::ProcessLog { records, cores } => serde_json::to_string_pretty(
                &serde_json::json!({"records": records, "cores": cores}),
            ),
            Response::Cores(c) => serde_json::to_string_pretty(c),
            Response::Service(d) => serde_json::to_string_pretty(d),
            Response::Done(s) => serde_json::to_string_pretty(&serde_json::json!({"result": s})),
            Response::MtsSaps(r) => serde_json::to_string_pretty(r),
            Response::Pss(r) => serde_json::to_string_pretty(r),
            Response::PssEntries(r) => serde_json::to_string_pretty(r),
            Response::MtsQueues(r) => serde_json::to_string_pretty(r),
            Response::MtsDead(r) => serde_json::to_string_pretty(r),
            Response::Redundancy(r) => serde_json::to_string_pretty(r),
        };
        return v.unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")) + "\n";
    }
    match (resp, view) {
        (Response::Processes(r), _) => processes(r),
        (Response::ProcessLog { records, cores }, View::Plain) => proc_log(records, cores),
        (Response::ProcessLog { records, cores }, View::Details) => {
            proc_log_details(records, cores)
        }
        (Response::Cores(c), _) => cores_table(c),
        (Response::Service(d), _) => service(d),
        (Response::Done(s), _) => format!("{s}\n"),
        (Response::MtsSaps(r), _) => mts_saps(r),
        (Response::Pss(r), _) => pss_usage(r),
        (Response::PssEntries(r), _) => pss_entries(r),
        (Response::MtsQueues(r), _) => mts_queues(r),
        (Response::MtsDead(r), _) => mts_dead(r),
        (Response::Redundancy(r), _) => redundancy(r),
    }
}

/// `show system redundancy status`, in the NX-OS layout.
fn redundancy(r: &crate::control::proto::RedundancyStatus) -> String {
    let sup = |title: &str, s: &crate::control::proto::SupStatus| {
        let head = format!("{title} ({})", s.name);
        format!(
            "{head}\n{}\n    Redundancy state:   {}\n    Supervisor state:   {}\n      Internal state:   {}\n",
            "-".repeat(head.len()),
            s.redundancy_state,
            s.supervisor_state,
            s.internal_state
        )
    };
    let mut out = format!(
        "Redundancy mode\n---------------\n      administrative:   {}\n         operational:   {}\n\n",
        r.administrative, r.operational
    );
    out += &sup("This supervisor", &r.this);
    out += "\n";
    out += &sup("Other supervisor", &r.other);
    out += &format!(
        "\nEpoch {} (arbiter: {}), replication: {} changes sent, {} applied\n",
        r.epoch,
        r.lock_file.as_deref().unwrap_or("none"),
        r.replication_sent,
        r.replication_applied
    );
    out
}
