#!/usr/bin/env bash
# BFD restart on the wire: 100 SIGKILLs of bfd (stateful restart by sysmgr) while FRR's bfdd
# peers with it at 50 ms x 3; time from each SIGKILL to the new instance's first packet as the
# peer's interface receives it, next to the 150 ms Detection Time it must beat. Needs root
# (network namespaces; packets stay inside them).
#   bench/run-bfd-restart.sh [KILLS]      (default 100)
#   DISK_LOAD=1 bench/run-bfd-restart.sh  (the same while a writer keeps the disk busy writing
#                                          back: fsync then takes up to ~150 ms here)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need /usr/lib/frr/bfdd=frr ip=iproute2
kills="${1:-100}"
cargo build --release --locked -p sysmgr -p bfd -p sysmgr-bench
root=$(pwd)
dir=$(mktemp -d /tmp/bfd-bench.XXXXXX)
chmod 755 "$dir"
stop_load() {
    [ -n "${load_pid:-}" ] || return 0
    kill "$load_pid" 2>/dev/null || true
    pkill -f "of=$dir/load" || true
    rm -f "$dir"/load?
    wait "$load_pid" 2>/dev/null || true
    load_pid=
}
cleanup() {
    stop_load
    [ -f "$dir/sysmgr.pid" ] && kill "$(cat "$dir/sysmgr.pid")" 2>/dev/null || true
    sleep 0.5
    ns_gone bfdb-sut bfdb-frr
    rm -rf "$dir"
}
trap cleanup EXIT
ns_fresh bfdb-sut bfdb-frr
ip link add vs0 netns bfdb-sut type veth peer name vf0 netns bfdb-frr
ip -n bfdb-sut addr add 10.250.1.1/24 dev vs0
ip -n bfdb-frr addr add 10.250.1.2/24 dev vf0
ip -n bfdb-sut link set vs0 up
ip -n bfdb-frr link set vf0 up

mkdir -p "$dir/frr" "$dir/lab"
echo "hostname peer" > "$dir/frr/zebra.conf"
cat > "$dir/frr/bfdd.conf" <<CONF
hostname peer
!
bfd
 peer 10.250.1.1 local-address 10.250.1.2 interface vf0
  receive-interval 50
  transmit-interval 50
  detect-multiplier 3
 !
!
CONF
frr_start bfdb-frr "$dir/frr" bfdd --bfdctl "$dir/frr/bfdd.sock"

lab_sysmgr "$dir/lab" sup-bench
cat > "$dir/lab/bfd.toml" <<CONF
command = ["$root/target/release/bfd", "--config", "bfd.conf"]
restart = ["stateful", "stateless"]
readiness = "notify"
heartbeat = { interval = "1s", misses = 3 }
[saps]
bfd = 110
[ha.single-sup.primary]
action = "stateful"
max-retries = 1000
min-lifetime = "1s"
CONF
cat > "$dir/lab/bfd.conf" <<CONF
[[session]]
peer = "10.250.1.2"
local = "10.250.1.1"
interface = "vs0"
desired-min-tx = "50ms"
required-min-rx = "50ms"
multiplier = 3
CONF
ip netns exec bfdb-sut "$root/target/release/sysmgr" boot --config "$dir/lab/sysmgr.toml" \
    > "$dir/sysmgr.log" 2>&1 &
echo $! > "$dir/sysmgr.pid"
vty() { vtysh --vty_socket "$dir/frr" -c "$1"; }
for _ in $(seq 200); do
    vty 'show bfd peers' 2>/dev/null | grep -q 'Status: up' && break
    sleep 0.1
done
vty 'show bfd peers' | grep -q 'Status: up' || { echo "session did not come up"; cat "$dir/sysmgr.log"; exit 1; }
sleep 1
downs() { vty 'show bfd peers counters json' | py -c 'import json,sys; print(json.load(sys.stdin)[0]["session-down"])'; }
before=$(downs)
if [ "${DISK_LOAD:-0}" = 1 ]; then
    # Dirty pages faster than the disk takes them, in new files (block allocation goes through
    # the journal an fsync waits for); two of 1 GB at most.
    (i=0; while :; do i=$(((i + 1) % 2)); rm -f "$dir/load$i"
        dd if=/dev/zero of="$dir/load$i" bs=1M count=1000 status=none; done) &
    load_pid=$!
    sleep 2
fi
echo "command: ${DISK_LOAD:+DISK_LOAD=$DISK_LOAD }bench/run-bfd-restart.sh $kills"
ip netns exec bfdb-frr "$root/target/release/sysmgr-bench" bfd-restart --iface vf0 --from 10.250.1.1 --kills "$kills"
stop_load
sleep 1
after=$(downs)
echo
echo "FRR bfdd session-down events during the run: $((after - before)) (before $before, after $after)"
