//! The bfd service's own configuration file (TOML, kebab-case).
//!
//! ```toml
//! [defaults]                 # optional; these are the defaults
//! desired-min-tx = "300ms"
//! required-min-rx = "300ms"
//! multiplier = 3
//!
//! [[session]]
//! peer = "10.0.1.2"
//! local = "10.0.1.1"         # optional: source address
//! interface = "veth-sut0"    # optional: bind to this interface (single hop)
//! desired-min-tx = "50ms"    # optional: overrides [defaults]
//! ```

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::BfdError;
use crate::fsm::Timers;
use crate::proto::{SessionKey, SessionSpec};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    #[serde(default)]
    defaults: Option<TimerKeys>,
    #[serde(default)]
    session: Vec<SessionKeys>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TimerKeys {
    desired_min_tx: Option<toml::Spanned<String>>,
    required_min_rx: Option<toml::Spanned<String>>,
    multiplier: Option<toml::Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SessionKeys {
    peer: toml::Spanned<String>,
    local: Option<toml::Spanned<String>>,
    interface: Option<String>,
    desired_min_tx: Option<toml::Spanned<String>>,
    required_min_rx: Option<toml::Spanned<String>>,
    multiplier: Option<toml::Spanned<i64>>,
}

/// Defaults of RFC 5880's spirit for a router: 300 ms × 3.
pub const DEFAULT_TIMERS: Timers = Timers {
    desired_min_tx: 300_000,
    required_min_rx: 300_000,
    detect_mult: 3,
};

struct Errors<'a> {
    path: &'a Path,
    text: &'a str,
    list: Vec<(usize, String)>,
}

impl Errors<'_> {
    fn at(&mut self, offset: usize, msg: String) {
        self.list.push((offset, msg));
    }
    fn finish(mut self) -> Result<(), BfdError> {
        if self.list.is_empty() {
            return Ok(());
        }
        self.list.sort();
        let lines: Vec<String> = self
            .list
            .iter()
            .map(|(off, m)| {
                let before = &self.text[..(*off).min(self.text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("{}:{line}:{col}: {m}", self.path.display())
            })
            .collect();
        Err(BfdError::Config(lines.join("\n")))
    }
}

fn interval(e: &mut Errors<'_>, v: &Option<toml::Spanned<String>>, dflt: u32) -> u32 {
    let Some(v) = v else { return dflt };
    match humantime::parse_duration(v.get_ref()) {
        Ok(d) if d >= Duration::from_millis(1) && d <= Duration::from_secs(60) => {
            d.as_micros() as u32
        }
        Ok(_) => {
            e.at(
                v.span().start,
                format!("interval {:?} is outside 1ms..60s", v.get_ref()),
            );
            dflt
        }
        Err(err) => {
            e.at(
                v.span().start,
                format!("{:?} is not a duration ({err})", v.get_ref()),
            );
            dflt
        }
    }
}

fn mult(e: &mut Errors<'_>, v: &Option<toml::Spanned<i64>>, dflt: u8) -> u8 {
    let Some(v) = v else { return dflt };
    match u8::try_from(*v.get_ref()) {
        Ok(m) if m >= 1 => m,
        _ => {
            e.at(
                v.span().start,
                format!("multiplier {} is outside 1..255", v.get_ref()),
            );
            dflt
        }
    }
}

fn timers(e: &mut Errors<'_>, k: &TimerKeys, d: Timers) -> Timers {
    Timers {
        desired_min_tx: interval(e, &k.desired_min_tx, d.desired_min_tx),
        required_min_rx: interval(e, &k.required_min_rx, d.required_min_rx),
        detect_mult: mult(e, &k.multiplier, d.detect_mult),
    }
}

fn addr(e: &mut Errors<'_>, v: &toml::Spanned<String>) -> Option<Ipv4Addr> {
    match v.get_ref().parse::<Ipv4Addr>() {
        Ok(a) if !a.is_unspecified() && !a.is_broadcast() && !a.is_multicast() => Some(a),
        _ => {
            e.at(
                v.span().start,
                format!("{:?} is not a unicast IPv4 address", v.get_ref()),
            );
            None
        }
    }
}

/// Parse a configuration text; every error is reported as `path:line:col: message`.
pub fn parse(path: &Path, text: &str) -> Result<Vec<SessionSpec>, BfdError> {
    let f: File = toml::from_str(text).map_err(|err| {
        let (line, col) = err
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                (
                    before.matches('\n').count() + 1,
                    before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1,
                )
            })
            .unwrap_or((1, 1));
        BfdError::Config(format!(
            "{}:{line}:{col}: {}",
            path.display(),
            err.message()
        ))
    })?;
    let mut e = Errors {
        path,
        text,
        list: Vec::new(),
    };
    let d = timers(
        &mut e,
        &f.defaults.clone().unwrap_or_default(),
        DEFAULT_TIMERS,
    );
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for s in &f.session {
        let peer = addr(&mut e, &s.peer);
        let local = s.local.as_ref().and_then(|l| addr(&mut e, l));
        let t = timers(
            &mut e,
            &TimerKeys {
                desired_min_tx: s.desired_min_tx.clone(),
                required_min_rx: s.required_min_rx.clone(),
                multiplier: s.multiplier.clone(),
            },
            d,
        );
        if let Some(ifn) = &s.interface
            && (ifn.is_empty() || ifn.len() >= 16 || ifn.contains(['/', ' ', '\0']))
        {
            e.at(
                s.peer.span().start,
                format!("{ifn:?} is not an interface name"),
            );
        }
        let Some(peer) = peer else { continue };
        let key = SessionKey {
            peer,
            interface: s.interface.clone(),
        };
        if !seen.insert(key.clone()) {
            e.at(s.peer.span().start, format!("duplicate session {key}"));
            continue;
        }
        out.push(SessionSpec {
            key,
            local,
            timers: t,
            owner: "config".into(),
        });
    }
    e.finish()?;
    Ok(out)
}

/// Read and parse a configuration file.
pub fn load(path: &Path) -> Result<Vec<SessionSpec>, BfdError> {
    let text = std::fs::read_to_string(path).map_err(|source| BfdError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_with_defaults_and_overrides() {
        let s = parse(
            Path::new("bfd.conf"),
            "[defaults]\ndesired-min-tx = \"50ms\"\nrequired-min-rx = \"50ms\"\n\
             [[session]]\npeer = \"10.0.1.2\"\nlocal = \"10.0.1.1\"\ninterface = \"veth0\"\n\
             [[session]]\npeer = \"10.0.2.2\"\nmultiplier = 5\n",
        )
        .expect("valid");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].timers.desired_min_tx, 50_000);
        assert_eq!(s[0].key.interface.as_deref(), Some("veth0"));
        assert_eq!(s[1].timers.detect_mult, 5);
        assert_eq!(s[1].timers.required_min_rx, 50_000);
    }

    #[test]
    fn every_error_at_once_with_line_and_column() {
        let err = parse(
            Path::new("bfd.conf"),
            "[[session]]\npeer = \"10.0.1.300\"\n\
             [[session]]\npeer = \"10.0.1.2\"\ndesired-min-tx = \"fast\"\nmultiplier = 0\n\
             [[session]]\npeer = \"10.0.1.2\"\n",
        )
        .expect_err("invalid")
        .to_string();
        assert!(
            err.contains("bfd.conf:2:8: \"10.0.1.300\" is not a unicast"),
            "{err}"
        );
        assert!(
            err.contains("bfd.conf:5:18: \"fast\" is not a duration"),
            "{err}"
        );
        assert!(err.contains("bfd.conf:6:14: multiplier 0"), "{err}");
        assert!(
            err.contains("bfd.conf:8:8: duplicate session 10.0.1.2"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = parse(
            Path::new("b"),
            "[[session]]\npeer = \"10.0.0.1\"\nfoo = 1\n",
        )
        .expect_err("unknown key")
        .to_string();
        assert!(err.starts_with("b:3:1:"), "{err}");
    }
}
