#!/usr/bin/env bash
# Restart-latency benchmark: sysmgr against s6-supervise, runsv, daemontools' supervise,
# supervisord and the bare fork+exec floor, side by side in one run.
#   bench/run-restart-latency.sh [KILLS]      (default 200; needs root for apt-get the first time)
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-200}"
missing=()
command -v s6-supervise >/dev/null || missing+=(s6)
command -v runsv >/dev/null || missing+=(runit)
command -v supervise >/dev/null || missing+=(daemontools)
command -v supervisord >/dev/null || missing+=(supervisor)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
cargo build --release --locked -p sysmgr -p sysmgr-demo -p sysmgr-bench
target/release/sysmgr-bench restart --kills "$kills" --out target/restart-latency.csv
