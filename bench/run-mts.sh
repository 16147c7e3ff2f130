#!/usr/bin/env bash
# MTS benchmark: round trip and one-way throughput through the broker, against a raw Unix-socket
# ping-pong between two processes (the floor), in one run. Run as root (the driver is an operator).
#   bench/run-mts.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p sysmgr -p sysmgr-bench
target/release/sysmgr-bench mts "$@"
