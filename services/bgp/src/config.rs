//! The bgp service's configuration file (TOML, kebab-case).
//!
//! ```toml
//! router-id = "10.70.1.1"
//! local-as = 65001
//! hold-time = 90             # seconds; 0 or ≥ 3
//! connect-retry = "5s"
//! maximum-paths = 1
//! sticky = ["198.51.100.0/22"]   # best paths inside go to the FIB as sticky ECMP
//! [[neighbor]]
//! address = "10.70.1.2"
//! remote-as = 65002
//! local-address = "10.70.1.1"   # optional
//! passive = false               # wait for the peer to connect
//! ```

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use fib::proto::Prefix;

use crate::BgpError;

#[derive(Debug, Clone)]
pub struct Neighbor {
    pub address: Ipv4Addr,
    pub remote_as: u32,
    pub local_address: Option<Ipv4Addr>,
    pub passive: bool,
    /// Accept only prefixes inside these (empty: all).
    pub import: Vec<Prefix>,
    /// Advertise only prefixes inside these (empty: all).
    pub export: Vec<Prefix>,
    /// Follow a BFD session to this neighbour (asked of the bfd service): (interval µs, mult).
    pub bfd: Option<(u32, u8)>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub router_id: Ipv4Addr,
    pub local_as: u32,
    pub hold_time: u16,
    pub connect_retry: Duration,
    pub maximum_paths: usize,
    /// Our own prefixes, originated to every neighbour.
    pub networks: Vec<Prefix>,
    /// Best paths inside these go to the FIB flagged sticky (persistent ECMP buckets).
    pub sticky: Vec<Prefix>,
    /// Graceful Restart (RFC 4724): advertise it, and keep restarting peers' routes. Seconds.
    pub graceful_restart: Option<u16>,
    pub neighbors: Vec<Neighbor>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    router_id: Ipv4Addr,
    local_as: u32,
    hold_time: Option<u16>,
    connect_retry: Option<String>,
    maximum_paths: Option<usize>,
    #[serde(default)]
    networks: Vec<String>,
    #[serde(default)]
    sticky: Vec<String>,
    graceful_restart: Option<bool>,
    restart_time: Option<u16>,
    #[serde(default)]
    neighbor: Vec<NeighborFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct NeighborFile {
    address: Ipv4Addr,
    remote_as: u32,
    local_address: Option<Ipv4Addr>,
    #[serde(default)]
    passive: bool,
    #[serde(default)]
    import: Vec<String>,
    #[serde(default)]
    export: Vec<String>,
    #[serde(default)]
    bfd: bool,
    bfd_interval: Option<String>,
    bfd_multiplier: Option<u8>,
}

pub fn parse(path: &Path, text: &str) -> Result<Config, BgpError> {
    let at = |off: usize| {
        let before = &text[..off.min(text.len())];
        (
            before.matches('\n').count() + 1,
            before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1,
        )
    };
    let f: File = toml::from_str(text).map_err(|e| {
        let (l, c) = e.span().map(|s| at(s.start)).unwrap_or((1, 1));
        BgpError::Config(format!("{}:{l}:{c}: {}", path.display(), e.message()))
    })?;
    let mut errs = Vec::new();
    let hold = f.hold_time.unwrap_or(90);
    if hold == 1 || hold == 2 {
        let (l, c) = at(text.find("hold-time").unwrap_or(0));
        errs.push(format!(
            "{}:{l}:{c}: hold-time must be 0 or at least 3",
            path.display()
        ));
    }
    let retry = match f.connect_retry.as_deref().map(humantime::parse_duration) {
        None => Duration::from_secs(5),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            let (l, c) = at(text.find("connect-retry").unwrap_or(0));
            errs.push(format!("{}:{l}:{c}: connect-retry: {e}", path.display()));
            Duration::from_secs(5)
        }
    };
    let mut prefixes = |list: &[String]| -> Vec<Prefix> {
        let mut v = Vec::new();
        for x in list {
            match x.parse::<Prefix>() {
                Ok(p) => v.push(p),
                Err(e) => {
                    let (l, c) = at(text.find(&format!("\"{x}\"")).unwrap_or(0));
                    errs.push(format!("{}:{l}:{c}: {e}", path.display()));
                }
            }
        }
        v
    };
    let networks = prefixes(&f.networks);
    let sticky = prefixes(&f.sticky);
    let lists: Vec<(Vec<Prefix>, Vec<Prefix>)> = f
        .neighbor
        .iter()
        .map(|n| (prefixes(&n.import), prefixes(&n.export)))
        .collect();
    let mut bfds = Vec::new();
    for n in &f.neighbor {
        let iv = match n.bfd_interval.as_deref().map(humantime::parse_duration) {
            None => 300_000,
            Some(Ok(d)) if d >= Duration::from_millis(1) => d.as_micros() as u32,
            Some(_) => {
                let (l, c) = at(text.find("bfd-interval").unwrap_or(0));
                errs.push(format!(
                    "{}:{l}:{c}: bfd-interval is not a duration of 1ms or more",
                    path.display()
                ));
                300_000
            }
        };
        bfds.push(n.bfd.then_some((iv, n.bfd_multiplier.unwrap_or(3).max(1))));
    }
    if !errs.is_empty() {
        return Err(BgpError::Config(errs.join("\n")));
    }
    Ok(Config {
        router_id: f.router_id,
        local_as: f.local_as,
        hold_time: hold,
        connect_retry: retry,
        maximum_paths: f.maximum_paths.unwrap_or(1).max(1),
        networks,
        sticky,
        graceful_restart: f
            .graceful_restart
            .unwrap_or(true)
            .then(|| f.restart_time.unwrap_or(120).min(4095)),
        neighbors: f
            .neighbor
            .into_iter()
            .zip(lists)
            .zip(bfds)
            .map(|((n, (import, export)), bfd)| Neighbor {
                address: n.address,
                remote_as: n.remote_as,
                local_address: n.local_address,
                passive: n.passive,
                import,
                export,
                bfd,
            })
            .collect(),
    })
}

pub fn load(path: &Path) -> Result<Config, BgpError> {
    let text = std::fs::read_to_string(path).map_err(|source| BgpError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}
