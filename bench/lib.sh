# Shared by the bench/run-*.sh scripts that need network namespaces (sourced, not run).

# python3 without a version manager's shim: pyenv's (first in root's PATH on our machines)
# costs ~0.1 s of CPU a call, which a polling loop would take from the processes it measures.
py() {
    if [ -x /usr/bin/python3 ]; then /usr/bin/python3 "$@"; else python3 "$@"; fi
}

# log_count FILE REGEX: how many lines of FILE match (a cheap poll of a service's log).
log_count() {
    local c
    c=$(grep -c -- "$2" "$1" 2>/dev/null)
    echo "${c:-0}"
}

# ns_fresh NS...: new namespaces with lo up and RFC 5881 source ports (an old one is replaced).
ns_fresh() {
    local ns
    for ns in "$@"; do
        ip netns del "$ns" 2>/dev/null || true
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="49152 65535"
    done
}

# ns_gone NS...: kill everything in the namespaces and delete them.
ns_gone() {
    local ns p
    for ns in "$@"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
}

# lab_sysmgr DIR NAME: DIR/sysmgr.toml for a lab with a 1 s minimum-lifetime floor, and the
# top-level keys in $SYSMGR_TOML if set (an A/B of a setting: SYSMGR_TOML='pss-poll-us = 0').
lab_sysmgr() {
    mkdir -p "$1"
    printf 'name = "%s"\ndata-dir = "data"\n%s\n[lab]\nmin-lifetime-floor = "1s"\n' \
        "$2" "${SYSMGR_TOML:-}" > "$1/sysmgr.toml"
}

# lab_fib DIR ROOT: DIR/fib.toml running ROOT's release fib with DIR/fib.conf (the caller writes
# fib.conf); at nice $FIB_NICE if set (an A/B of fib's priority).
lab_fib() {
    cat > "$1/fib.toml" <<CONF
command = ["$2/target/release/fib", "--config", "fib.conf"]
restart = ["stateful", "stateless"]
readiness = "notify"
${FIB_NICE:+nice = $FIB_NICE}
[saps]
fib = 130
CONF
}

# frr_start NS DIR DAEMON [ARGS...]: zebra, then DAEMON, with DIR/zebra.conf and DIR/DAEMON.conf
# (written by the caller), run as frr inside NS; vtysh --vty_socket DIR talks to them.
frr_start() {
    local ns=$1 d=$2 daemon=$3
    shift 3
    chown -R frr:frr "$d"
    local a=(-d -u frr -g frr -P 0 --vty_socket "$d" -z "$d/zserv.api")
    ip netns exec "$ns" /usr/lib/frr/zebra "${a[@]}" -i "$d/zebra.pid" -f "$d/zebra.conf"
    for _ in $(seq 100); do [ -S "$d/zserv.api" ] && break; sleep 0.05; done
    ip netns exec "$ns" "/usr/lib/frr/$daemon" "${a[@]}" -i "$d/$daemon.pid" -f "$d/$daemon.conf" "$@"
}

# need PROGRAM=PACKAGE...: install from Debian each PACKAGE whose PROGRAM (a command or a path)
# is missing, as scripts/test-all does for the tests: a fresh machine has none of the peers.
need() {
    local pkgs=() pair prog
    for pair in "$@"; do
        prog=${pair%%=*}
        [ -x "$prog" ] || command -v "$prog" >/dev/null || pkgs+=("${pair#*=}")
    done
    if [ ${#pkgs[@]} -gt 0 ]; then
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}"
    fi
}
