#!/usr/bin/env bash
# FIB benchmark (root): time to install 100k routes into the kernel, and to repoint one path's
# buckets across 10k sticky routes, through fib (MTS → fib → PSS checkpoint → netlink) against
# `ip -batch` doing the same kernel work in an identical namespace. Rounds alternate; medians.
#   bench/run-fib.sh [ROUTES] [STICKY] [ROUNDS]     (defaults 100000 10000 3)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
routes="${1:-100000}"; sticky="${2:-10000}"; rounds="${3:-3}"
cargo build --release --locked -p sysmgr -p fib -p sysmgr-bench
root=$(pwd)
dir=$(mktemp -d /tmp/fib-bench.XXXXXX)
chmod 755 "$dir"
cleanup() {
    [ -f "$dir/sysmgr.pid" ] && kill "$(cat "$dir/sysmgr.pid")" 2>/dev/null || true
    sleep 0.5
    ns_gone fibb-fib fibb-ip
    [ -n "${KEEP:-}" ] && cp "$dir/lab/data/logs/fib.stderr.log" /tmp/fib-bench.log; rm -rf "$dir"
}
trap cleanup EXIT
ns_fresh fibb-fib fibb-ip
for ns in fibb-fib fibb-ip; do
    for i in 1 2 3; do
        ip -n "$ns" link add "e$i" type veth peer name "p$i"
        ip -n "$ns" addr add "10.9.$i.1/24" dev "e$i"
        ip -n "$ns" link set "e$i" up
        ip -n "$ns" link set "p$i" up
    done
done

lab_sysmgr "$dir/lab" sup-bench
lab_fib "$dir/lab" "$root"
printf 'backend = "kernel"\nprotocol = 199\n[sticky]\nbuckets = 16\n' > "$dir/lab/fib.conf"
ip netns exec fibb-fib "$root/target/release/sysmgr" boot --config "$dir/lab/sysmgr.toml" \
    > "$dir/sysmgr.log" 2>&1 &
echo $! > "$dir/sysmgr.pid"
sock="$dir/lab/data/sysmgr.sock"
for _ in $(seq 100); do
    "$root/target/release/sysmgr" show ip route --config "$dir/lab/sysmgr.toml" >/dev/null 2>&1 && break
    sleep 0.1
done

py - "$dir" "$routes" "$sticky" <<'PY'
import sys, ipaddress
d, n, s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def pfx(i): return f"{ipaddress.IPv4Address(0x0a800000 + (i << 8))}/24"
with open(f"{d}/floor-nh.txt", "w") as f:
    f.write("nexthop add id 1 via 10.9.1.2 dev e1 proto 201\n")
    f.write("nexthop add id 2 via 10.9.2.2 dev e2 proto 201\n")
    f.write("nexthop add id 3 group 1/2 proto 201\n")
with open(f"{d}/floor-install.txt", "w") as f, open(f"{d}/floor-uninstall.txt", "w") as g:
    for i in range(n):
        f.write(f"route add {pfx(i)} nhid 3 proto 201\n")
        g.write(f"route del {pfx(i)} proto 201\n")
with open(f"{d}/floor-sticky-uninstall.txt", "w") as g:
    for r in range(s): g.write(f"route del {pfx(r)} proto 201\n")
# Sticky, per route: 16 slot nexthops (paths 1,2,3 round robin) in a resilient group.
with open(f"{d}/floor-sticky-setup.txt", "w") as f, open(f"{d}/floor-sticky-repoint.txt", "w") as g:
    for r in range(s):
        base = 1000 + r * 17
        for b in range(16):
            p = b % 3 + 1
            f.write(f"nexthop add id {base+b} via 10.9.{p}.2 dev e{p} proto 201\n")
        members = "/".join(str(base + b) for b in range(16))
        f.write(f"nexthop add id {base+16} group {members} type resilient buckets 16 idle_timer 0 unbalanced_timer 0 proto 201\n")
        f.write(f"route add {pfx(r)} nhid {base+16} proto 201\n")
        k = 0
        for b in range(16):
            if b % 3 == 1:   # path 2 fails: its buckets go to paths 1 and 3 in turn
                p = 1 if k % 2 == 0 else 3
                k += 1
                g.write(f"nexthop replace id {base+b} via 10.9.{p}.2 dev e{p} proto 201\n")
PY

ms() { echo "$(( ($(date +%s%N) - $1) / 1000000 ))"; }
upd() { "$root/target/release/sysmgr-bench" fib-update --socket "$sock" "$@"; }
fib_install=(); ip_install=(); fib_repoint=(); ip_repoint=()
ip -n fibb-ip -batch "$dir/floor-nh.txt"
for r in $(seq "$rounds"); do
    fib_install+=("$(upd --routes "$routes" --paths 10.9.1.2%e1,10.9.2.2%e2)")
    upd --routes "$routes" --withdraw >/dev/null
    t=$(date +%s%N); ip -n fibb-ip -batch "$dir/floor-install.txt"; ip_install+=("$(ms "$t")")
    ip -n fibb-ip -batch "$dir/floor-uninstall.txt"

    upd --routes "$sticky" --paths 10.9.1.2%e1,10.9.2.2%e2,10.9.3.2%e3 --sticky >/dev/null
    fib_repoint+=("$(upd --routes "$sticky" --paths 10.9.1.2%e1,10.9.3.2%e3 --sticky)")
    upd --routes "$sticky" --withdraw >/dev/null
    ip -n fibb-ip -batch "$dir/floor-sticky-setup.txt"
    t=$(date +%s%N); ip -n fibb-ip -batch "$dir/floor-sticky-repoint.txt"; ip_repoint+=("$(ms "$t")")
    ip -n fibb-ip -batch "$dir/floor-sticky-uninstall.txt"
    ip -n fibb-ip nexthop flush proto 201 >/dev/null
    ip -n fibb-ip -batch "$dir/floor-nh.txt"
done
py - "$routes" "$sticky" "${fib_install[*]}" "${ip_install[*]}" "${fib_repoint[*]}" "${ip_repoint[*]}" <<'PY'
import sys, statistics as st
n, s = sys.argv[1], sys.argv[2]
rows = [(f"install {n} ECMP routes (2 paths)", sys.argv[3], sys.argv[4]),
        (f"repoint one of 3 paths' buckets across {s} sticky routes (16 buckets)", sys.argv[5], sys.argv[6])]
print("| work | fib median ms | fib min–max | ip -batch median ms | ip -batch min–max | fib / ip -batch |")
print("|---|---|---|---|---|---|")
for w, a, b in rows:
    a = [float(x) for x in a.split()]; b = [float(x) for x in b.split()]
    print(f"| {w} | {st.median(a):.0f} | {min(a):.0f}–{max(a):.0f} | {st.median(b):.0f} | {min(b):.0f}–{max(b):.0f} | {st.median(a)/st.median(b):.2f}x |")
PY
echo "command: bench/run-fib.sh $routes $sticky $rounds"
