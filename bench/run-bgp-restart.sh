#!/usr/bin/env bash
# Hitless BGP restart (root): a BIRD peer has fed N IPv4 prefixes to our bgp (under sysmgr, fib
# programming the kernel, stateful restart policy); then ROUNDS times: SIGKILL bgp and measure
# the time from the kill to the new instance processing the session's byte stream again. That
# moment is the end of bgp's start: the checkpoint read from PSS, the session's socket taken
# back from sysmgr's fd store, the applied-but-unconsumed bytes skipped, our KEEPALIVE recorded
# and queued, and the Adj-RIBs and Loc-RIB rebuilt, so the reader is applying the peer's bytes
# from then on. The kill time is taken by this script just before `kill -9`; the end is bgp's
# own log timestamp. BIRD's hold time is 3 s: its session must never reset (counted).
#   bench/run-bgp-restart.sh [ROUNDS] [PREFIXES...]     (defaults 20, then 100000 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need bird=bird2 ip=iproute2
rounds="${1:-20}"
shift || true
sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(100000 1000000)
cargo build --release --locked -p sysmgr -p fib -p bgp
root=$(pwd)
dir=$(mktemp -d /tmp/bgp-restart.XXXXXX)
chmod 755 "$dir"
nss=(bgpr-send bgpr-ours)
cleanup() { ns_gone "${nss[@]}"; [ -n "${KEEP:-}" ] && rm -rf /tmp/bgp-restart-logs && cp -r "$dir/lab/data/logs" /tmp/bgp-restart-logs; rm -rf "$dir"; }
trap cleanup EXIT
results=()

stats() {   # median, p99, worst of integers
    py -c 'import sys, statistics; v = sorted(int(x) for x in sys.argv[1:]); p99 = v[min(len(v) - 1, int(len(v) * 0.99))]; print(f"{int(statistics.median(v))} | {p99} | {v[-1]}")' "$@"
}
# The timestamp (ms) of the first line of FILE after SINCE (ms) that contains TEXT.
log_ms() { py - "$1" "$2" "$3" <<'PY'
import sys, datetime
path, since, text = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for line in open(path):
    try:
        ms = int(datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp() * 1000)
    except (ValueError, IndexError):
        continue
    if ms >= since and text in line:
        print(ms); break
PY
}

for n in "${sizes[@]}"; do
    ns_gone "${nss[@]}"
    ns_fresh "${nss[@]}"
    ip link add s0 netns bgpr-send type veth peer name r0 netns bgpr-ours
    ip -n bgpr-send addr add 10.84.1.2/24 dev s0
    ip -n bgpr-ours addr add 10.84.1.1/24 dev r0
    ip -n bgpr-send link set s0 up
    ip -n bgpr-ours link set r0 up
    rm -rf "$dir/send" "$dir/lab"
    mkdir -p "$dir/send" "$dir/lab"
    py - "$dir" "$n" <<'PY'
import sys, ipaddress
d, n = sys.argv[1], int(sys.argv[2])
with open(f"{d}/send/bird.conf", "w") as f:
    f.write(f'log "{d}/send/bird.log" all;\n')
    f.write("router id 10.84.1.2;\nprotocol device {}\nprotocol static st {\n  ipv4;\n")
    for i in range(n):
        f.write(f"  route {ipaddress.IPv4Address(0x0b000000 + (i << 8))}/24 blackhole;\n")
    f.write("}\n")
    f.write("protocol bgp r1 {\n  local 10.84.1.2 as 65100;\n  neighbor 10.84.1.1 as 65001;\n"
            "  hold time 3;\n  keepalive time 1;\n  debug { states };\n"
            "  ipv4 { import none; export all; next hop self; };\n}\n")
PY
    ip netns exec bgpr-send bird -c "$dir/send/bird.conf" -s "$dir/send/ctl" -P "$dir/send/pid"
    lab_sysmgr "$dir/lab" sup-bench
    lab_fib "$dir/lab" "$root"
    echo 'backend = "kernel"' > "$dir/lab/fib.conf"
    cat > "$dir/lab/bgp.toml" <<CONF
command = ["$root/target/release/bgp", "--config", "bgp.conf"]
env = { RUST_LOG = "info,bgp::instance=debug" }
restart = ["stateful", "stateless"]
readiness = "notify"
depends-on = ["fib"]
[saps]
bgp = 179
[ha.single-sup.primary]
action = "stateful"
max-retries = 1000
min-lifetime = "1s"
CONF
    cat > "$dir/lab/bgp.conf" <<CONF
router-id = "10.84.1.1"
local-as = 65001
hold-time = 3
connect-retry = "1s"
graceful-restart = true
[[neighbor]]
address = "10.84.1.2"
remote-as = 65100
local-address = "10.84.1.1"
CONF
    ip netns exec bgpr-ours "$root/target/release/sysmgr" boot --config "$dir/lab/sysmgr.toml" > "$dir/sysmgr.log" 2>&1 &
    blog="$dir/lab/data/logs/bgp.stderr.log"
    t0=$(( $(date +%s%N) / 1000000 ))
    until [ -n "$(log_ms "$blog" "$t0" "loc_rib=$n" 2>/dev/null)" ]; do
        sleep 0.2
        [ $(( $(date +%s%N) / 1000000 - t0 )) -gt 600000 ] && { echo "$n: the feed never completed"; exit 1; }
    done
    # Until the kernel has it all (fib's work would otherwise share the CPUs with the first
    # restarts).
    until [ "$(ip -n bgpr-ours route show proto 199 | wc -l)" -ge "$n" ]; do sleep 1; done
    sleep 2
    totals=()
    inside=()
    for r in $(seq "$rounds"); do
        pid=$(pgrep -f "release/bgp --config" | head -1)
        # Polled by counting lines (cheap: the restart has the CPUs), timed afterwards.
        started=$(log_count "$blog" " started ms=")
        eors=$(log_count "$blog" "fib: End-of-RIB")
        t_kill=$(( $(date +%s%N) / 1000000 ))
        kill -9 "$pid"
        until [ "$(log_count "$blog" " started ms=")" -gt "$started" ]; do sleep 0.01; done
        t_ready=$(log_ms "$blog" "$t_kill" " started ms=")
        [ -n "$(log_ms "$blog" "$t_kill" "session resumed in place")" ] || { echo "round $r: the session was not resumed"; exit 1; }
        totals+=($(( t_ready - t_kill )))
        inside+=($(py - "$blog" "$t_kill" <<'PY'
import sys, re, datetime
for line in open(sys.argv[1]):
    try:
        ms = int(datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp() * 1000)
    except (ValueError, IndexError):
        continue
    if ms >= int(sys.argv[2]) and (m := re.search(r" started ms=(\d+)", line)):
        print(m.group(1)); break
PY
))
        # fib re-learns the table from the new instance (End-of-RIB) before the next kill.
        until [ "$(log_count "$blog" "fib: End-of-RIB")" -gt "$eors" ]; do sleep 0.05; done
        sleep 0.5
    done
    ups=$(grep -c "r1: State changed to up" "$dir/send/bird.log" || true)
    results+=("| $n | $rounds | $(stats "${totals[@]}") | $(stats "${inside[@]}" | cut -d'|' -f1) | $ups |")
    ns_gone "${nss[@]}"
done

echo
echo "command: bench/run-bgp-restart.sh $rounds ${sizes[*]}"
echo "| prefixes in the RIB | SIGKILLs | kill → stream processed again, ms: median | p99 | worst | of which bgp's own start, ms (median) | BIRD sessions up (1 = never reset) |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${results[@]}"
