//! Service-specific shows: the CLI asks the service over MTS (its own SAP) and renders the
//! answer; sysmgr itself holds none of the service's state (DESIGN.md §6).

use std::path::Path;
use std::time::Duration;

use bfd::proto::Neighbor;
use mts::{MtsError, codec};

use crate::cli::{BfdCmd, NeighborsCmd, ShowCmd};

/// How long a show waits for a service (it may be restarting: MTS queues the request).
const DEADLINE: Duration = Duration::from_secs(5);

/// A show answered by a service rather than by sysmgr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceShow {
    BfdNeighbors { details: bool },
}

pub fn for_cmd(cmd: &ShowCmd) -> Option<ServiceShow> {
    match cmd {
        ShowCmd::Bfd {
            cmd: BfdCmd::Neighbors { cmd },
        } => Some(ServiceShow::BfdNeighbors {
            details: matches!(cmd, Some(NeighborsCmd::Details)),
        }),
        _ => None,
    }
}

/// Ask the service and render its answer.
pub fn run(socket: &Path, show: ServiceShow, json: bool) -> Result<String, MtsError> {
    match show {
        ServiceShow::BfdNeighbors { details } => {
            let raw = crate::control::request_service(
                socket,
                bfd::proto::SAP_NAME,
                bfd::proto::OP_SHOW,
                codec::encode(&())?,
                DEADLINE,
            )?;
            let rows: Vec<Neighbor> = codec::decode(&raw)?;
            Ok(if json {
                serde_json::to_string_pretty(&rows).unwrap_or_default() + "\n"
            } else if details {
                bfd_details(&rows, now_ms())
            } else {
                bfd_table(&rows, now_ms())
            })
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hms(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn addr(a: Option<std::net::Ipv4Addr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
}

fn bfd_table(rows: &[Neighbor], now: u64) -> String {
    let mut o = format!(
        "{:<16}{:<16}{:<23}{:<10}{:<15}{:<10}{:<12}{:<10}{}\n",
        "OurAddr",
        "NeighAddr",
        "LD/RD",
        "RH/RS",
        "Holdown(mult)",
        "State",
        "Int",
        "Uptime",
        "Flaps"
    );
    for n in rows {
        o += &format!(
            "{:<16}{:<16}{:<23}{:<10}{:<15}{:<10}{:<12}{:<10}{}\n",
            addr(n.local),
            n.peer,
            format!("{}/{}", n.local_disc, n.remote_disc),
            n.remote_state.word(),
            format!("{}({})", n.detect_time_us / 1000, n.remote_detect_mult),
            n.state.word(),
            n.interface.as_deref().unwrap_or("-"),
            if n.state == bfd::packet::State::Up {
                hms(now.saturating_sub(n.since_ms))
            } else {
                "-".into()
            },
            n.flaps,
        );
    }
    o
}

fn bfd_details(rows: &[Neighbor], now: u64) -> String {
    let mut o = String::new();
    for n in rows {
        let ms = |us: u64| format!("{} ms", us / 1000);
        o += &format!(
            "Neighbor {} (interface {}, source {}:{}), requested by {}\n\
             \x20 Local discr {}, remote discr {}\n\
             \x20 Session state {}, remote state {}, last diagnostic: {}\n\
             \x20 {} for {}, {} flaps\n\
             \x20 Local timers: desired min tx {}, required min rx {}, multiplier {}\n\
             \x20 Remote timers: desired min tx {}, required min rx {}, multiplier {}\n\
             \x20 Negotiated tx interval {}, detection time {}{}\n\
             \x20 Packets: rx {}, tx {}, polls sent {}, finals sent {}\n\n",
            n.peer,
            n.interface.as_deref().unwrap_or("any"),
            addr(n.local),
            n.source_port,
            n.owner,
            n.local_disc,
            n.remote_disc,
            n.state.word(),
            n.remote_state.word(),
            n.diag.word(),
            n.state.word(),
            hms(now.saturating_sub(n.since_ms)),
            n.flaps,
            ms(n.timers.desired_min_tx.into()),
            ms(n.timers.required_min_rx.into()),
            n.timers.detect_mult,
            ms(n.remote_desired_min_tx_us.into()),
            ms(n.remote_min_rx_us.into()),
            n.remote_detect_mult,
            ms(n.tx_interval_us),
            ms(n.detect_time_us),
            if n.poll { ", poll in progress" } else { "" },
            n.counters.rx,
            n.counters.tx,
            n.counters.polls_sent,
            n.counters.finals_sent,
        );
    }
    if rows.is_empty() {
        o += "No BFD sessions.\n";
    }
    o
}
