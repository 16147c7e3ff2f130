#!/usr/bin/env bash
# PSS benchmark: sysmgr PSS vs raw sled (floor) vs Redis on loopback, fast and durable, one run.
#   bench/run-pss.sh [--quick]        (installs redis-server from Debian if missing; root)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server
fi
cargo build --release --locked -p sysmgr -p sysmgr-bench
target/release/sysmgr-bench pss "$@"
