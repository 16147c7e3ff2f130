//! The fib service's configuration file (TOML, kebab-case).
//!
//! ```toml
//! backend = "kernel"        # or "memory"; default: kernel as root, memory otherwise
//! protocol = 199            # rtm_protocol / nh_protocol that marks our routes and nexthops
//! stale-time = "120s"       # a restarted producer's routes go after this without End-of-RIB
//! [sticky]
//! prefixes = ["10.0.0.0/8"] # routes inside these are sticky ECMP
//! buckets = 64
//! auto-recovery = false
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::FibError;
use crate::table::{Prefix, StickyConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Kernel,
    Memory,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub backend: BackendKind,
    pub protocol: u8,
    pub stale_time: Duration,
    pub sticky: StickyConfig,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    backend: Option<String>,
    protocol: Option<i64>,
    stale_time: Option<String>,
    sticky: Option<StickyFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct StickyFile {
    prefixes: Option<Vec<String>>,
    buckets: Option<i64>,
    auto_recovery: Option<bool>,
}

fn pos(text: &str, off: usize) -> (usize, usize) {
    let before = &text[..off.min(text.len())];
    (
        before.matches('\n').count() + 1,
        before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1,
    )
}

/// Parse a configuration; errors are `path:line:col: message`, all of them.
pub fn parse(path: &Path, text: &str) -> Result<Config, FibError> {
    let f: File = toml::from_str(text).map_err(|e| {
        let (l, c) = e.span().map(|s| pos(text, s.start)).unwrap_or((1, 1));
        FibError::Config(format!("{}:{l}:{c}: {}", path.display(), e.message()))
    })?;
    let mut errs = Vec::new();
    let at = |key: &str| {
        let off = text.find(key).unwrap_or(0);
        let (l, c) = pos(text, off);
        format!("{}:{l}:{c}", path.display())
    };
    let backend = match f.backend.as_deref() {
        None => {
            if nix::unistd::geteuid().is_root() {
                BackendKind::Kernel
            } else {
                BackendKind::Memory
            }
        }
        Some("kernel") => BackendKind::Kernel,
        Some("memory") => BackendKind::Memory,
        Some(o) => {
            errs.push(format!(
                "{}: backend {o:?} is not \"kernel\" or \"memory\"",
                at("backend")
            ));
            BackendKind::Memory
        }
    };
    let protocol = match f.protocol {
        None => 199,
        Some(p) if (5..=254).contains(&p) => p as u8,
        Some(p) => {
            errs.push(format!(
                "{}: protocol {p} is outside 5..254",
                at("protocol")
            ));
            199
        }
    };
    let stale_time = match f.stale_time.as_deref().map(humantime::parse_duration) {
        None => Duration::from_secs(120),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errs.push(format!("{}: stale-time: {e}", at("stale-time")));
            Duration::from_secs(120)
        }
    };
    let s = f.sticky.unwrap_or_default();
    let mut sticky = StickyConfig::default();
    if let Some(b) = s.buckets {
        if (2..=1024).contains(&b) {
            sticky.buckets = b as usize;
        } else {
            errs.push(format!("{}: buckets {b} is outside 2..1024", at("buckets")));
        }
    }
    sticky.auto_recovery = s.auto_recovery.unwrap_or(false);
    for p in s.prefixes.unwrap_or_default() {
        match p.parse::<Prefix>() {
            Ok(p) => sticky.prefixes.push(p),
            Err(e) => errs.push(format!("{}: {e}", at(&format!("\"{p}\"")))),
        }
    }
    if !errs.is_empty() {
        return Err(FibError::Config(errs.join("\n")));
    }
    Ok(Config {
        backend,
        protocol,
        stale_time,
        sticky,
    })
}

pub fn load(path: Option<&Path>) -> Result<Config, FibError> {
    match path {
        None => parse(Path::new("(defaults)"), ""),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| FibError::Read {
                path: p.to_path_buf(),
                source,
            })?;
            parse(p, &text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = parse(Path::new("f"), "backend = \"memory\"\n").expect("ok");
        assert_eq!(c.protocol, 199);
        assert_eq!(c.sticky.buckets, 64);
        let e = parse(
            Path::new("f"),
            "backend = \"x\"\n[sticky]\nbuckets = 1\nprefixes = [\"10.0.0.0/40\"]\n",
        )
        .expect_err("bad")
        .to_string();
        assert!(e.contains("f:1:1: backend"), "{e}");
        assert!(e.contains("f:3:1: buckets 1"), "{e}");
        assert!(e.contains("f:4:13:"), "{e}");
    }
}
