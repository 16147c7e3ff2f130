//! What a group commit's `fdatasync` costs on this disk: a batch appended to a growing file
//! (what Redis's `appendfsync always` does, and sled's log as it grows) against the same batch
//! written over a file that was filled with zeros beforehand (PSS's write-ahead log). The two
//! are alternated batch by batch in one run, in the benchmark's temporary directory.
//!
//! `sysmgr-bench fsync [--batches N] [--kib K]`

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::restart::pct;

pub fn main(args: impl Iterator<Item = String>) -> Result<()> {
    let (mut batches, mut kib) = (1000usize, 64usize);
    let mut args = args;
    while let Some(a) = args.next() {
        let v = args.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--batches" => batches = v.parse().context("--batches")?,
            "--kib" => kib = v.parse().context("--kib")?,
            _ => anyhow::bail!("usage: sysmgr-bench fsync [--batches N] [--kib K]"),
        }
    }
    let dir = std::env::temp_dir().join(format!("sysmgr-fsync-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let open = |name: &str| -> Result<File> {
        Ok(OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(name))?)
    };
    let (grow, pre) = (open("append")?, open("preallocated")?);
    let batch = vec![0x5au8; kib << 10];
    let total = (batches * batch.len()) as u64;
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < total {
        pre.write_all_at(&zeros, at)?;
        at += zeros.len() as u64;
    }
    pre.sync_all()?;
    let (mut t_grow, mut t_pre) = (Vec::new(), Vec::new());
    for i in 0..batches {
        let off = (i * batch.len()) as u64;
        for (f, t) in [(&grow, &mut t_grow), (&pre, &mut t_pre)] {
            let t0 = Instant::now();
            f.write_all_at(&batch, off)?;
            f.sync_data()?;
            t.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    t_grow.sort_by(f64::total_cmp);
    t_pre.sort_by(f64::total_cmp);
    println!("{batches} batches of {kib} KiB, write + fdatasync, alternated\n");
    println!("| file | median µs | p99 µs |");
    println!("|---|---:|---:|");
    for (name, t) in [
        ("appended, the file grows", &t_grow),
        ("written over zeros written before", &t_pre),
    ] {
        println!("| {name} | {:.0} | {:.0} |", pct(t, 0.5), pct(t, 0.99));
    }
    println!(
        "\nratio of medians (over zeros / appended): {:.2}x",
        pct(&t_pre, 0.5) / pct(&t_grow, 0.5)
    );
    drop((grow, pre));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
