//! Service-specific commands: the CLI asks the service over MTS (its own SAP) and renders the
//! answer; sysmgr itself holds none of the service's state (DESIGN.md §6).

mod bfd;
mod bgp;
mod fib;

use std::path::Path;
use std::time::Duration;

use mts::{MtsError, codec};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cli::{
    BfdCmd, ClearCmd, Cmd, IpCmd, IpRouteCmd, NeighborsCmd, ShowBgpCmd, ShowCmd, ShowIpCmd,
};

/// How long a command waits for a service (it may be restarting: MTS queues the request).
const DEADLINE: Duration = Duration::from_secs(10);

/// A command answered by a service rather than by sysmgr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceCmd {
    BgpSummary,
    BgpNeighbors {
        addr: Option<String>,
    },
    BgpRoutes {
        prefix: Option<String>,
        v6: bool,
    },
    BfdNeighbors {
        details: bool,
    },
    IpRoute {
        prefix: Option<String>,
        v6: bool,
    },
    Cef {
        prefix: String,
    },
    ClearRoute {
        prefix: String,
    },
    ClearBgpSoft {
        addr: String,
        inbound: bool,
    },
    StaticAdd {
        prefix: String,
        via: Vec<String>,
        sticky: bool,
    },
    StaticDel {
        prefix: String,
    },
}

pub fn for_cmd(cmd: &Cmd) -> Option<ServiceCmd> {
    Some(match cmd {
        Cmd::Show {
            cmd: ShowCmd::Bfd {
                cmd: BfdCmd::Neighbors { cmd },
            },
        } => ServiceCmd::BfdNeighbors {
            details: matches!(cmd, Some(NeighborsCmd::Details)),
        },
        Cmd::Show {
            cmd: ShowCmd::Ip {
                cmd: ShowIpCmd::Route { prefix },
            },
        } => ServiceCmd::IpRoute {
            prefix: prefix.clone(),
            v6: false,
        },
        Cmd::Show {
            cmd: ShowCmd::Ipv6 {
                cmd: ShowIpCmd::Route { prefix },
            },
        } => ServiceCmd::IpRoute {
            prefix: prefix.clone(),
            v6: true,
        },
        Cmd::Show {
            cmd: ShowCmd::Cef { prefix, .. },
        } => ServiceCmd::Cef {
            prefix: prefix.clone(),
        },
        Cmd::Show {
            cmd: ShowCmd::Bgp { cmd },
        } => match cmd {
            ShowBgpCmd::Summary => ServiceCmd::BgpSummary,
            ShowBgpCmd::Neighbors { addr } => ServiceCmd::BgpNeighbors { addr: addr.clone() },
            ShowBgpCmd::Ipv4 { prefix, .. } => ServiceCmd::BgpRoutes {
                prefix: prefix.clone(),
                v6: false,
            },
            ShowBgpCmd::Ipv6 { prefix, .. } => ServiceCmd::BgpRoutes {
                prefix: prefix.clone(),
                v6: true,
            },
        },
        Cmd::Clear {
            cmd: ClearCmd::Route { prefix },
        } => ServiceCmd::ClearRoute {
            prefix: prefix.clone(),
        },
        Cmd::Clear {
            cmd: ClearCmd::Bgp {
                addr, direction, ..
            },
        } => ServiceCmd::ClearBgpSoft {
            addr: addr.clone(),
            inbound: direction == "in",
        },
        Cmd::Ip {
            cmd: IpCmd::Route { cmd },
        } => match cmd {
            IpRouteCmd::Add {
                prefix,
                via,
                sticky,
            } => ServiceCmd::StaticAdd {
                prefix: prefix.clone(),
                via: via.clone(),
                sticky: *sticky,
            },
            IpRouteCmd::Del { prefix } => ServiceCmd::StaticDel {
                prefix: prefix.clone(),
            },
        },
        _ => return None,
    })
}

fn ask<T: Serialize, R: DeserializeOwned>(
    socket: &Path,
    sap: &str,
    opcode: u32,
    v: &T,
) -> Result<R, MtsError> {
    let raw = crate::control::request_service(socket, sap, opcode, codec::encode(v)?, DEADLINE)?;
    codec::decode(&raw)
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

fn prefix(s: &str) -> Result<::fib::proto::Prefix, MtsError> {
    s.parse().map_err(MtsError::Remote)
}

/// Ask the service and render its answer.
pub fn run(socket: &Path, cmd: ServiceCmd, as_json: bool) -> Result<String, MtsError> {
    use ::fib::proto as fp;
    let done = |r: Result<(), String>, what: String| match r {
        Ok(()) => Ok(if as_json {
            json(&serde_json::json!({ "result": what }))
        } else {
            format!("{what}\n")
        }),
        Err(e) => Err(MtsError::Remote(e)),
    };
    match cmd {
        ServiceCmd::BfdNeighbors { details } => {
            let rows: Vec<::bfd::proto::Neighbor> =
                ask(socket, ::bfd::proto::SAP_NAME, ::bfd::proto::OP_SHOW, &())?;
            Ok(if as_json {
                json(&rows)
            } else if details {
                bfd::details(&rows, bfd::now_ms())
            } else {
                bfd::table(&rows, bfd::now_ms())
            })
        }
        ServiceCmd::IpRoute { prefix: p, v6 } => {
            let p = p.as_deref().map(prefix).transpose()?;
            let mut rows: Vec<fp::RouteRow> = ask(socket, fp::SAP_NAME, fp::OP_SHOW_ROUTES, &p)?;
            rows.retain(|r| r.prefix.is_ipv6() == v6);
            Ok(if as_json {
                json(&rows)
            } else {
                fib::routes(&rows)
            })
        }
        ServiceCmd::Cef { prefix: p } => {
            let r: Result<fp::Cef, String> =
                ask(socket, fp::SAP_NAME, fp::OP_SHOW_CEF, &prefix(&p)?)?;
            let c = r.map_err(MtsError::Remote)?;
            Ok(if as_json { json(&c) } else { fib::cef(&c) })
        }
        ServiceCmd::ClearRoute { prefix: p } => {
            let r: Result<(), String> =
                ask(socket, fp::SAP_NAME, fp::OP_CLEAR_ROUTE, &prefix(&p)?)?;
            done(r, format!("route {p}: load distribution recomputed"))
        }
        ServiceCmd::ClearBgpSoft { addr, inbound } => {
            let a: std::net::Ipv4Addr = addr
                .parse()
                .map_err(|_| MtsError::Remote(format!("{addr:?}: not an IPv4 address")))?;
            let r: Result<String, String> = ask(
                socket,
                ::bgp::proto::SAP_NAME,
                ::bgp::proto::OP_CLEAR_SOFT,
                &(a, inbound),
            )?;
            let what = r.map_err(MtsError::Remote)?;
            done(Ok(()), what)
        }
        ServiceCmd::StaticAdd {
            prefix: p,
            via,
            sticky,
        } => {
            let mut paths = Vec::new();
            for v in &via {
                let (gw, ifname) = v.split_once('%').ok_or_else(|| {
                    MtsError::Remote(format!("--via {v:?}: expected GATEWAY%INTERFACE"))
                })?;
                let gw = gw
                    .parse()
                    .map_err(|_| MtsError::Remote(format!("--via {v:?}: bad gateway address")))?;
                paths.push(fp::Path {
                    gw,
                    ifname: ifname.to_string(),
                });
            }
            let u = fp::Update {
                producer: "static".into(),
                announce: vec![fp::RouteGroup {
                    paths,
                    sticky,
                    prefixes: vec![prefix(&p)?],
                }],
                withdraw: vec![],
            };
            let r: Result<(), String> = ask(socket, fp::SAP_NAME, fp::OP_UPDATE, &u)?;
            done(r, format!("static route {p} installed"))
        }
        ServiceCmd::BgpSummary | ServiceCmd::BgpNeighbors { .. } => {
            let s: ::bgp::proto::Summary = ask(
                socket,
                ::bgp::proto::SAP_NAME,
                ::bgp::proto::OP_SHOW_SUMMARY,
                &(),
            )?;
            Ok(match cmd {
                ServiceCmd::BgpNeighbors { addr } => {
                    let rows: Vec<_> = s
                        .neighbors
                        .iter()
                        .filter(|n| addr.as_deref().is_none_or(|a| n.addr.to_string() == a))
                        .cloned()
                        .collect();
                    if as_json {
                        json(&rows)
                    } else {
                        bgp::neighbors(&rows)
                    }
                }
                _ if as_json => json(&s),
                _ => bgp::summary(&s),
            })
        }
        ServiceCmd::BgpRoutes { prefix: p, v6 } => {
            let p = p.as_deref().map(prefix).transpose()?;
            let mut rows: Vec<::bgp::proto::RouteRow> = ask(
                socket,
                ::bgp::proto::SAP_NAME,
                ::bgp::proto::OP_SHOW_ROUTES,
                &p,
            )?;
            rows.retain(|r| r.prefix.is_ipv6() == v6);
            Ok(if as_json {
                json(&rows)
            } else {
                bgp::routes(&rows)
            })
        }
        ServiceCmd::StaticDel { prefix: p } => {
            let u = fp::Update {
                producer: "static".into(),
                announce: vec![],
                withdraw: vec![prefix(&p)?],
            };
            let r: Result<(), String> = ask(socket, fp::SAP_NAME, fp::OP_UPDATE, &u)?;
            done(r, format!("static route {p} removed"))
        }
    }
}
