//! BGP codec measurement: decode 1M IPv4 prefixes (packed UPDATEs, as BIRD would send a full
//! table) through `bgp::wire` (the codec crate behind one module), and through the Loc-RIB,
//! against a raw walk over the same bytes that only counts prefixes (the floor).
//!
//! `sysmgr-bench bgp-decode [--prefixes N] [--rounds R]`

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bgp::export::{OutAttrs, pack};
use fib::proto::Prefix;

use crate::restart::pct;

/// Count the prefixes of a stream of UPDATEs without decoding anything else.
fn raw_walk(stream: &[u8]) -> usize {
    let mut n = 0;
    let mut at = 0;
    while at + 19 <= stream.len() {
        let len = usize::from(u16::from_be_bytes([stream[at + 16], stream[at + 17]]));
        let m = &stream[at..at + len];
        let wl = usize::from(u16::from_be_bytes([m[19], m[20]]));
        let al = usize::from(u16::from_be_bytes([m[21 + wl], m[22 + wl]]));
        let mut i = 23 + wl + al;
        while i < m.len() {
            i += 1 + usize::from(m[i]).div_ceil(8);
            n += 1;
        }
        at += len;
    }
    n
}

type Routes = Vec<(Prefix, Arc<bgp::rib::Attrs>)>;

fn decode_all(stream: &[u8]) -> Result<(usize, Routes)> {
    let mut at = 0;
    let mut out = Vec::new();
    let mut msgs = 0;
    while at < stream.len() {
        let n = bgp::wire::complete_len(&stream[at..])
            .map_err(|e| anyhow::anyhow!(e.why))?
            .context("truncated stream")?;
        match bgp::wire::decode(&stream[at..at + n]).map_err(|e| anyhow::anyhow!(e.why))? {
            bgp::wire::Msg::Update(u) => {
                let r = bgp::wire::routes(&u, true).map_err(|e| anyhow::anyhow!(e.why))?;
                out.extend(r.announce);
            }
            _ => bail!("not an UPDATE"),
        }
        msgs += 1;
        at += n;
    }
    Ok((msgs, out))
}

pub fn decode(mut args: impl Iterator<Item = String>) -> Result<()> {
    let mut prefixes = 1_000_000u32;
    let mut rounds = 5usize;
    while let Some(a) = args.next() {
        let v = args.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--prefixes" => prefixes = v.parse()?,
            "--rounds" => rounds = v.parse()?,
            _ => bail!("unknown argument {a}"),
        }
    }
    // A full-table-like feed: 1000 attribute sets, prefixes spread over them.
    let mut changes: BTreeMap<Prefix, Option<Arc<OutAttrs>>> = BTreeMap::new();
    let sets: Vec<Arc<OutAttrs>> = (0..1000u32)
        .map(|i| {
            Arc::new(OutAttrs {
                origin: 0,
                as_path: vec![65002, 3356 + i % 50, 64512 + i],
                next_hop: Ipv4Addr::new(10, 70, 1, 2).into(),
                local_pref: None,
            })
        })
        .collect();
    for i in 0..prefixes {
        let p = Prefix::new(Ipv4Addr::from(0x0100_0000u32 + (i << 8)), 24).context("prefix")?;
        changes.insert(p, Some(sets[(i % 1000) as usize].clone()));
    }
    let stream: Vec<u8> = pack(&changes, true).concat();
    let mut walk = Vec::new();
    let mut dec = Vec::new();
    let mut rib = Vec::new();
    let mut msgs = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let n = raw_walk(&stream);
        walk.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(n, prefixes as usize);

        let t = Instant::now();
        let (m, routes) = decode_all(&stream)?;
        dec.push(t.elapsed().as_secs_f64() * 1000.0);
        msgs = m;
        assert_eq!(routes.len(), prefixes as usize);

        let t = Instant::now();
        let mut r = bgp::rib::Rib::new(1);
        r.update(Ipv4Addr::new(10, 70, 1, 2), routes, vec![]);
        rib.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.loc_len(), prefixes as usize);
    }
    for v in [&mut walk, &mut dec, &mut rib] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    let (w, d, r) = (pct(&walk, 0.5), pct(&dec, 0.5), pct(&rib, 0.5));
    println!(
        "\n{prefixes} IPv4 prefixes in {msgs} UPDATEs ({} bytes), {rounds} rounds, medians:",
        stream.len()
    );
    println!("| step | median ms | max ms | prefixes/s | vs raw walk |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, med: f64, max: f64| {
        println!(
            "| {name} | {med:.1} | {max:.1} | {:.2} M | {:.1}x |",
            f64::from(prefixes) / med / 1000.0,
            med / w
        )
    };
    row(
        "raw walk over the bytes (floor: counts prefixes)",
        w,
        walk[walk.len() - 1],
    );
    row(
        "bgp::wire decode (rustbgpd-wire) into routes",
        d,
        dec[dec.len() - 1],
    );
    row(
        "Adj-RIB-In + Loc-RIB best path of the decoded routes",
        r,
        rib[rib.len() - 1],
    );
    Ok(())
}
