//! `show ip route` (NX-OS layout) and `show cef PREFIX detail` (IOS-XR's load distribution table).

use std::collections::BTreeMap;

use ::fib::proto::{Cef, RouteRow};

pub fn routes(rows: &[RouteRow]) -> String {
    let mut o = String::from(
        "IP Route Table for VRF \"default\"\n'*' denotes an installed next-hop; [stale] awaits its producer's End-of-RIB\n\n",
    );
    for r in rows {
        o += &format!(
            "{}, ubest/mbest: {}/0, {}{}{}\n",
            r.prefix,
            r.paths.len(),
            r.producer,
            if r.sticky { ", sticky" } else { "" },
            if r.stale { " [stale]" } else { "" },
        );
        for p in &r.paths {
            o += &format!(
                "    {}via {}, {}\n",
                if r.nh_id.is_some() { "*" } else { " " },
                p.gw,
                p.ifname
            );
        }
    }
    if rows.is_empty() {
        o += "No routes.\n";
    }
    o
}

pub fn cef(c: &Cef) -> String {
    let r = &c.route;
    let mut o = format!(
        "{}, producer {}{}{}\n",
        r.prefix,
        r.producer,
        match r.nh_id {
            Some(id) => format!(", nexthop id {id}"),
            None => ", not installed".into(),
        },
        if r.stale { ", stale" } else { "" }
    );
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for b in &c.buckets {
        *per.entry(b.path.to_string()).or_default() += 1;
    }
    for p in &r.paths {
        let n = per.get(&p.to_string()).copied().unwrap_or(0);
        o += &format!(
            "   via {}, {}{}\n",
            p.gw,
            p.ifname,
            if r.sticky {
                format!(", {n} buckets")
            } else {
                String::new()
            }
        );
    }
    if c.buckets.is_empty() {
        o += "    Load distribution: per-flow hash over the paths (ECMP)\n";
        return o;
    }
    o += &format!(
        "    Load distribution (persistent, {} buckets, auto-recovery {}): ",
        c.buckets.len(),
        if c.auto_recovery { "on" } else { "off" }
    );
    let idx: BTreeMap<String, usize> = r
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.to_string(), i))
        .collect();
    let dist: Vec<String> = c
        .buckets
        .iter()
        .map(|b| {
            idx.get(&b.path.to_string())
                .map(|i| i.to_string())
                .unwrap_or_else(|| "?".into())
        })
        .collect();
    o += &dist.join(" ");
    o += "\n\n    Hash  OK  Interface        Address          Slot nexthop\n";
    for b in &c.buckets {
        o += &format!(
            "    {:<6}{:<4}{:<17}{:<17}{}{}\n",
            b.index,
            "Y",
            b.path.ifname,
            b.path.gw,
            b.slot_nh
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            if b.replaced { " *" } else { "" }
        );
    }
    o += "    (* the bucket was moved off its original path)\n";
    o
}
