//! FIB benchmark driver: one timed update through the real path (MTS → fib → PSS checkpoint →
//! kernel) as a producer would send it. `bench/run-fib.sh` runs it next to `ip -batch` doing the
//! same kernel work.
//!
//! `sysmgr-bench fib-update --socket S --routes N --paths GW%IF,GW%IF [--sticky] [--withdraw]`
//! prints the milliseconds from sending the update to fib's answer (programmed and checkpointed).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fib::proto::{self as fp, Path, Prefix, RouteGroup, Update};

/// The i-th /24 of 10.128.0.0/9 (same as the floor's batch files).
pub fn prefix(i: u32) -> Prefix {
    Prefix::new(Ipv4Addr::from(0x0a80_0000u32 + (i << 8)), 24).expect("valid prefix")
}

pub fn update(mut args: impl Iterator<Item = String>) -> Result<()> {
    let mut socket = PathBuf::new();
    let mut routes = 0u32;
    let mut paths = Vec::new();
    let (mut sticky, mut withdraw) = (false, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sticky" => sticky = true,
            "--withdraw" => withdraw = true,
            _ => {
                let v = args.next().with_context(|| format!("{a} needs a value"))?;
                match a.as_str() {
                    "--socket" => socket = v.into(),
                    "--routes" => routes = v.parse()?,
                    "--paths" => {
                        for p in v.split(',') {
                            let (gw, ifname) = p.split_once('%').context("GW%IF")?;
                            paths.push(Path {
                                gw: gw.parse()?,
                                ifname: ifname.into(),
                            });
                        }
                    }
                    _ => bail!("unknown argument {a}"),
                }
            }
        }
    }
    let u = Update {
        producer: "bench".into(),
        announce: if withdraw {
            vec![]
        } else {
            vec![RouteGroup {
                paths: paths.clone(),
                sticky,
                prefixes: (0..routes).map(prefix).collect(),
            }]
        },
        withdraw: if withdraw {
            (0..routes).map(prefix).collect()
        } else {
            vec![]
        },
    };
    let payload = mts::codec::encode(&u)?;
    let t0 = Instant::now();
    let raw = sysmgr::control::request_service(
        &socket,
        fp::SAP_NAME,
        fp::OP_UPDATE,
        payload,
        Duration::from_secs(600),
    )?;
    let took = t0.elapsed();
    let r: Result<(), String> = mts::codec::decode(&raw)?;
    if let Err(e) = r {
        bail!("fib refused the update: {e}");
    }
    println!("{:.1}", took.as_secs_f64() * 1000.0);
    Ok(())
}
