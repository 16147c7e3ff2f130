#!/usr/bin/env bash
# BGP ingest (root): one BIRD sender advertises N IPv4 prefixes to three receivers, one at a
# time, each in its own namespace: our bgp (under sysmgr, with fib programming the kernel),
# BIRD 2 (once as a route server, once with its kernel protocol programming the kernel) and
# FRR 8 (bgpd, with zebra programming the kernel). For each: time from the session
# reaching Established to the last prefix in its Loc-RIB, and (ours, FRR) to every prefix in the
# kernel (the count of prefixes in its main table, /proc/net/fib_triestat, every 0.1 s); and
# the receiver's peak RSS. Polled every 20 ms; ROUNDS sessions per receiver (the sender's session
# is disabled and the receiver drained after each), median and worst reported. Beside it, for
# every receiver alike, the wire: how long the sender took from its first to its last UPDATE as
# they reached the receiver's interface (tcpdump in the receiver's namespace). The session is
# up before the first and no receiver has the last prefix before the last arrives, so this is a
# lower bound of the Loc-RIB column, measured the same way for all; it matters for BIRD and
# FRR, whose Loc-RIB is known only to a 20 ms poll of their CLI (ours comes from bgp's log).
#   bench/run-bgp-ingest.sh [PREFIXES] [ROUNDS]      (defaults 100000 and 5)
#   KEEP=1: keep our services' logs in /tmp/bgp-ingest-logs; PERF=1: perf-record our bgp;
#   RS_ONLY=1: stop after BIRD as a route server (ours and it only); SYSMGR_TOML: see lib.sh;
#   SETTLE=S: wait S seconds after each drain, so that no receiver's cleanup of the previous
#   round overlaps the next (default 0).
#
# The sender is kicked: a client asks its CLI socket for its status every 20 ms, for every
# receiver alike. BIRD 2.0.12 schedules the transmission of the last feed batch from its work
# list after its loop has already decided to sleep, so without any wake-up that last UPDATE
# and End-of-RIB wait for the 3 s poll timeout; any packet, CLI command or connection attempt
# reaching the sender ends the wait early, which made the first runs of this benchmark measure
# the sender, not the receivers.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need bird=bird2 /usr/lib/frr/bgpd=frr ip=iproute2 tcpdump=tcpdump
n="${1:-100000}"
rounds="${2:-5}"
# IPv4 prefixes in a namespace's main table, from the kernel's trie statistics: about 40 ms at
# 1M routes, where a dump (`ip route show | wc -l`) takes 1.6 s and a CPU.
kcount() { ip netns exec "$1" awk '/^Main:/ {m = 1} m && /Prefixes:/ {print $2; exit}' /proc/net/fib_triestat; }
cargo build --release --locked -p sysmgr -p fib -p bgp
root=$(pwd)
dir=$(mktemp -d /tmp/bgp-ingest.XXXXXX)
chmod 755 "$dir"
nss=(bgpi-send bgpi-ours bgpi-bird bgpi-frr)   # receiver i (r<i> at the sender) lives in ${nss[i]}
cleanup() {
    ns_gone "${nss[@]}"
    [ -n "${KEEP:-}" ] && rm -rf /tmp/bgp-ingest-logs && cp -r "$dir/lab/data/logs" /tmp/bgp-ingest-logs; rm -rf "$dir"
}
trap cleanup EXIT
ns_fresh "${nss[@]}"
i=1
for r in ours bird frr; do
    ip link add "s$i" netns bgpi-send type veth peer name r0 netns "bgpi-$r"
    ip -n bgpi-send addr add "10.80.$i.2/24" dev "s$i"
    ip -n "bgpi-$r" addr add "10.80.$i.1/24" dev r0
    ip -n bgpi-send link set "s$i" up
    ip -n "bgpi-$r" link set r0 up
    i=$((i + 1))
done

# The sender: N static routes, one BGP session per receiver, all disabled until its turn.
mkdir -p "$dir/send" "$dir/bird" "$dir/frr" "$dir/lab"
py - "$dir" "$n" <<'PY'
import sys, ipaddress
d, n = sys.argv[1], int(sys.argv[2])
with open(f"{d}/send/bird.conf", "w") as f:
    f.write("router id 10.80.0.2;\nprotocol device {}\nprotocol static st {\n  ipv4;\n")
    for i in range(n):
        f.write(f"  route {ipaddress.IPv4Address(0x0b000000 + (i << 8))}/24 blackhole;\n")
    f.write("}\n")
    for i, asn in ((1, 65001), (2, 65011), (3, 65021)):
        f.write(f"protocol bgp r{i} {{\n  disabled;\n  local 10.80.{i}.2 as 65100;\n"
                f"  neighbor 10.80.{i}.1 as {asn};\n  ipv4 {{ import none; export all; next hop self; }};\n}}\n")
PY
ip netns exec bgpi-send bird -c "$dir/send/bird.conf" -s "$dir/send/ctl" -P "$dir/send/pid"
for _ in $(seq 100); do birdc -s "$dir/send/ctl" show status >/dev/null 2>&1 && break; sleep 0.1; done
sleep 2   # the static protocol loads its routes
# The kick (see the top): one CLI connection, a status request every 20 ms.
py - "$dir/send/ctl" <<'PY' &
import socket, sys, time, re
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rwb")
def reply():
    while (l := f.readline()) and not re.match(rb"^\d{4} ", l):
        pass
    return l
reply()
while True:
    time.sleep(0.02)
    try:
        f.write(b"show status\n"); f.flush()
        if not reply():
            break
    except OSError:   # the sender stopped (the end of the run)
        break
PY

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
results=()
last=$(py -c "import ipaddress; print(f'{ipaddress.IPv4Address(0x0b000000 + (($n - 1) << 8))}/24')")
stats() {   # median (worst) of integers
    py -c 'import sys, statistics; v = sorted(int(x) for x in sys.argv[1:]); print(f"{int(statistics.median(v))} ({v[-1]})")' "$@"
}
# The wire: the sender's UPDATEs as they reach the receiver's interface, captured in its
# namespace. In each round's time span, the first and the last TCP segment from the sender that
# carries more than 100 bytes (prefixes; a KEEPALIVE or the End-of-RIB carries 19-30). Prints
# the ms between them per span ("-" for a span with none); the spans are ms since the epoch,
# the capture's clock.
wire_spans() {   # pcap, sender address, spans as start:end ms...
    py - "$@" <<'PY'
import struct, sys
path, sender, spans = sys.argv[1], bytes(int(x) for x in sys.argv[2].split(".")), sys.argv[3:]
data = open(path, "rb").read()
end = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
pkts, off = [], 24
while off + 16 <= len(data):
    sec, usec, incl, _ = struct.unpack(end + "IIII", data[off:off + 16])
    p = data[off + 16:off + 16 + incl]
    off += 16 + incl
    if len(p) < 34 or p[12:14] != b"\x08\x00" or p[26:30] != sender:
        continue
    ihl = (p[14] & 15) * 4
    total = struct.unpack(">H", p[16:18])[0]
    tcp = 14 + ihl
    if len(p) < tcp + 13:
        continue
    payload = total - ihl - (p[tcp + 12] >> 4) * 4
    if payload > 100:
        pkts.append(sec * 1000 + usec / 1000)
for span in spans:
    a, b = (int(x) for x in span.split(":"))
    inside = [t for t in pkts if a <= t <= b]
    print(round(inside[-1] - inside[0]) if inside else "-")
PY
}
measure() {   # name, proto-to-enable, established-cmd, rib-count-cmd, kernel namespace, rss-pid-cmd, drained-cmd
    local name=$1 proto=$2 est=$3 rib=$4 kern=$5 pidcmd=$6 drained=$7
    local ribs=() kerns=() spans=() wires=() round
    local i=${proto#r} pcap="$dir/$proto-$RANDOM.pcap"
    ip netns exec "${nss[$i]}" tcpdump -Z root --immediate-mode -i r0 -s 128 -U -w "$pcap" "tcp port 179 and src host 10.80.$i.2" 2> "$pcap.err" &
    local dump=$!
    local w
    for w in $(seq 200); do grep -q listening "$pcap.err" 2>/dev/null && break; sleep 0.05; done
    grep -q listening "$pcap.err" || { echo "$name: tcpdump did not start: $(cat "$pcap.err")"; return 1; }
    for round in $(seq "$rounds"); do
        if [ -n "${PERF:-}" ] && [ "$proto" = r1 ] && [ "$round" = 1 ]; then
            perf record -g -o /tmp/bgp-ingest.perf -p "$(eval "$pidcmd")" -- sleep 5 >/dev/null 2>&1 &
            sleep 0.3
        fi
        local t0 t_up t_rib t_kern="" base=0
        [ -n "$kern" ] && base=$(kcount "$kern")   # connected and local routes
        t0=$(now_ms)
        birdc -s "$dir/send/ctl" enable "$proto" >/dev/null
        until eval "$est" >/dev/null 2>&1; do sleep 0.02; [ $(( $(now_ms) - t0 )) -gt 60000 ] && { echo "$name: no session"; return 1; }; done
        t_up=$(now_ms)
        # Loc-RIB first (cheap to ask), then the kernel: the last prefix present (a route
        # lookup, not a dump of all routes), then the full count once to be sure.
        until [ "$(eval "$rib" 2>/dev/null || echo 0)" -ge "$n" ]; do
            sleep 0.02
            [ $(( $(now_ms) - t_up )) -gt 600000 ] && { echo "$name: timeout"; return 1; }
        done
        t_rib=$(now_ms)
        if [ -n "$kern" ]; then
            until ip -n "$kern" route show "$last" | grep -q .; do
                sleep 0.02
                [ $(( $(now_ms) - t_up )) -gt 1200000 ] && { echo "$name: timeout"; return 1; }
            done
            # Then every route: the main table holds N more prefixes than before the round.
            until [ $(( $(kcount "$kern") - base )) -ge "$n" ]; do
                sleep 0.1
                [ $(( $(now_ms) - t_up )) -gt 1200000 ] && { echo "$name: timeout"; return 1; }
            done
            t_kern=$(now_ms)
        fi
        if [ "$proto" = r1 ]; then
            # Our own clock for ours: Established and the first Loc-RIB batch with all prefixes.
            local up rib_done
            up=$(log_ms up "$t0"); rib_done=$(log_ms "$n" "$t0")
            t_kern=$(( t_kern - t_up + up )); t_up=$up; t_rib=$rib_done
        fi
        ribs+=($((t_rib - t_up)))
        [ -n "$kern" ] && kerns+=($((t_kern - t_up)))
        birdc -s "$dir/send/ctl" disable "$proto" >/dev/null
        spans+=("$t0:$(now_ms)")
        # Drained (routes gone from the receiver) after every round, the last one too: BIRD's
        # second configuration must start empty, not with the table the first one left.
        t0=$(now_ms)
        until eval "$drained" >/dev/null 2>&1; do
            sleep 0.2
            [ $(( $(now_ms) - t0 )) -gt 300000 ] && { echo "$name: not drained"; return 1; }
        done
        sleep "${SETTLE:-0}"
    done
    sleep 0.2; kill -INT "$dump"; wait "$dump" || true
    local took
    while read -r took; do
        [ "$took" = - ] || wires+=("$took")
    done < <(wire_spans "$pcap" "10.80.$i.2" "${spans[@]}")
    echo "$name, per round: Loc-RIB ${ribs[*]} ms; the sender's first to last UPDATE on the wire ${wires[*]} ms"
    local rss
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$(eval "$pidcmd")/status")
    results+=("| $name | $(stats "${ribs[@]}") | ${wires[*]:+$(stats "${wires[@]}")} | ${kern:+$(stats "${kerns[@]}")} | $((rss / 1024)) |")
}

# Ours: sysmgr + fib + bgp.
lab_sysmgr "$dir/lab" sup-bench
lab_fib "$dir/lab" "$root"
echo 'backend = "kernel"' > "$dir/lab/fib.conf"
cat > "$dir/lab/bgp.toml" <<CONF
command = ["$root/target/release/bgp", "--config", "bgp.conf"]
env = { RUST_LOG = "info,bgp::instance=debug" }
restart = ["stateless"]
readiness = "notify"
depends-on = ["fib"]
[saps]
bgp = 179
CONF
cat > "$dir/lab/bgp.conf" <<CONF
router-id = "10.80.1.1"
local-as = 65001
connect-retry = "1s"
[[neighbor]]
address = "10.80.1.2"
remote-as = 65100
local-address = "10.80.1.1"
CONF
ip netns exec bgpi-ours "$root/target/release/sysmgr" boot --config "$dir/lab/sysmgr.toml" > "$dir/sysmgr.log" 2>&1 &
S="$root/target/release/sysmgr --config $dir/lab/sysmgr.toml"
sleep 2
# Ours is read from bgp's own log (session up, then every Loc-RIB batch with the Loc-RIB size,
# at debug level): asking through the CLI would queue behind sysmgr's PSS work and measure
# that instead, and the sender's End-of-RIB comes seconds after its last prefix.
blog="$dir/lab/data/logs/bgp.stderr.log"
log_ms() { py - "$blog" "$1" "$2" <<'PY'
import sys, re, datetime
path, what, since = sys.argv[1], sys.argv[2], int(sys.argv[3])
for line in open(path):
    try:
        ms = int(datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp() * 1000)
    except (ValueError, IndexError):
        continue
    if ms < since:
        continue
    if what == "up" and "to=\"Established\"" in line or what != "up" and (m := re.search(r"loc_rib=(\d+)", line)) and int(m.group(1)) >= int(what):
        print(ms); break
PY
}
# Polled by counting lines (one session up and one full Loc-RIB per round), timed afterwards.
measure "our bgp (sysmgr, fib → kernel)" r1 \
    "[ \"\$(log_count $blog 'to=\"Established\"')\" -ge \$round ]" \
    "[ \"\$(log_count $blog 'Loc-RIB batch .*loc_rib=$n\$')\" -ge \$round ] && echo $n || echo 0" \
    bgpi-ours \
    "pgrep -f 'release/bgp --config'" \
    "[ \"\$(ip -n bgpi-ours route show proto 199 | wc -l)\" = 0 ]"
cpu_s() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }
echo "our processes' CPU over $rounds rounds, s: sysmgr $(cpu_s "$(pgrep -f 'release/sysmgr boot --config '"$dir")"), fib $(cpu_s "$(pgrep -f 'release/fib --config')"), bgp $(cpu_s "$(pgrep -f 'release/bgp --config')")"
# Ours is stopped before the others run: its connection attempts would wake the sender.
ns_gone bgpi-ours

# BIRD receiving.
cat > "$dir/bird/bird.conf" <<CONF
router id 10.80.2.1;
protocol device {}
protocol bgp sender { local 10.80.2.1 as 65011; neighbor 10.80.2.2 as 65100; ipv4 { import all; export none; }; }
protocol kernel k4 { disabled; ipv4 { export all; }; }
CONF
ip netns exec bgpi-bird bird -c "$dir/bird/bird.conf" -s "$dir/bird/ctl" -P "$dir/bird/pid"
sleep 1
measure "BIRD 2 (no kernel protocol)" r2 \
    "birdc -s $dir/bird/ctl show protocols sender | grep -q Established" \
    "birdc -s $dir/bird/ctl show route count | awk '/routes/ {print \$1; exit}'" \
    "" \
    "cat $dir/bird/pid" \
    "[ \"\$(birdc -s $dir/bird/ctl show route count | awk '/routes/ {print \$1; exit}')\" = 0 ]"
if [ -z "${RS_ONLY:-}" ]; then
# The same BIRD as a router: its kernel protocol programs the kernel.
birdc -s "$dir/bird/ctl" enable k4 >/dev/null
measure "BIRD 2 (kernel protocol → kernel)" r2 \
    "birdc -s $dir/bird/ctl show protocols sender | grep -q Established" \
    "birdc -s $dir/bird/ctl show route count | awk '/routes/ {print \$1; exit}'" \
    bgpi-bird \
    "cat $dir/bird/pid" \
    "[ \"\$(ip -n bgpi-bird route show proto bird | wc -l)\" = 0 ]"

# FRR receiving (zebra installs into the kernel).
echo "hostname r" > "$dir/frr/zebra.conf"
cat > "$dir/frr/bgpd.conf" <<CONF
hostname r
router bgp 65021
 bgp router-id 10.80.3.1
 no bgp ebgp-requires-policy
 neighbor 10.80.3.2 remote-as 65100
CONF
frr_start bgpi-frr "$dir/frr" bgpd
sleep 2
measure "FRR 8 bgpd (zebra → kernel)" r3 \
    "vtysh --vty_socket $dir/frr -c 'show bgp summary json' | grep -q '\"state\":\"Established\"'" \
    "vtysh --vty_socket $dir/frr -c 'show bgp summary json' | py -c 'import json,sys; print(json.load(sys.stdin)[\"ipv4Unicast\"][\"peers\"][\"10.80.3.2\"][\"pfxRcd\"])'" \
    bgpi-frr \
    "cat $dir/frr/bgpd.pid" \
    "[ \"\$(ip -n bgpi-frr route show proto bgp | wc -l)\" = 0 ]"
fi

echo
echo "command: bench/run-bgp-ingest.sh $n $rounds"
echo "| receiver ($n prefixes, $rounds rounds) | session up → last prefix in Loc-RIB, ms: median (worst) | the sender's first → last UPDATE on the wire, ms: median (worst) | → last prefix in the kernel, ms: median (worst) | peak RSS, MiB |"
echo "|---|---|---|---|---|"
printf '%s\n' "${results[@]}"
