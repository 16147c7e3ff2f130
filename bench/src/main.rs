//! sysmgr benchmarks; each compares sysmgr with its anchors side by side in one run.
//!
//! - `sysmgr-bench restart [--kills N] [--out CSV]`: restart latency (see `restart.rs`).
//! - `sysmgr-bench mts [--quick]`: MTS round trip and throughput (see `mts.rs`).
//! - `sysmgr-bench bfd-restart --iface IF --from ADDR`: SIGKILL of bfd → its next packet on
//!   the wire (see `bfd.rs`; run by `bench/run-bfd-restart.sh`).
//! - `sysmgr-bench fib-update ...`: one timed route update through fib (see `fib.rs`; run by
//!   `bench/run-fib.sh`).
//! - `sysmgr-bench bgp-decode [--prefixes N]`: 1M-prefix decode through `bgp::wire` (see
//!   `bgp.rs`).
//! - `sysmgr-bench mts-echo`: the receiver service of the MTS benchmark (run by sysmgr);
//!   `mts-echo-blocking` the same on the blocking client; `floor-echo` and `floor-relay` are
//!   its anchors' processes.
//! - `sysmgr-bench fsync [--batches N] [--kib K]`: a group commit's `fdatasync`, appended
//!   against written over zeros (see `fsync.rs`).
//! - `sysmgr-bench switchover [--rounds N]`: two supervisors, switchover time against a cold
//!   boot, and replication lag under the PSS writer (see `switchover.rs`).

mod bfd;
mod bgp;
mod fib;
mod fsync;
mod mts;
mod pss;
mod pss_ceiling;
mod restart;
mod switchover;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("restart") => restart::main(args),
        Some("bfd-restart") => bfd::main(args),
        Some("fib-update") => fib::update(args),
        Some("bgp-decode") => bgp::decode(args),
        Some("mts") => mts::main(args),
        Some("mts-echo") => mts::echo(),
        Some("mts-echo-blocking") => mts::echo_blocking(),
        Some("pss") => pss::main(args),
        Some("fsync") => fsync::main(args),
        Some("pss-writer") => pss::writer(args),
        Some("pss-ceiling-server") => pss_ceiling::server(args),
        Some("switchover") => switchover::main(args),
        Some("floor-echo") => {
            mts::floor_echo(std::path::Path::new(&args.next().unwrap_or_default()))
        }
        Some("floor-relay") => {
            let up = args.next().unwrap_or_default();
            mts::floor_relay(up.as_ref(), args.next().unwrap_or_default().as_ref())
        }
        _ => anyhow::bail!(
            "usage: sysmgr-bench restart [--kills N] [--out CSV] | mts [--quick] | pss [--quick] | fsync [--batches N] [--kib K] | switchover [--rounds N] | bfd-restart --iface IF --from ADDR [--kills N]"
        ),
    }
}
