//! The fib service under sysmgr, programming the kernel of a network namespace the test creates
//! (three veth pairs, e1..e3 with gateways 10.9.N.2). Everything is checked in the kernel with
//! `ip -j route` / `ip -j nexthop` / `ip -j nexthop bucket`.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use fib::proto::{self as fp, Path, Prefix, RouteGroup, Update};
use serde_json::Value;
use sysmgr_tests::netns::{KernelWatch, Netns, spawn_in_netns};
use sysmgr_tests::{Lab, ask, bin, is_root, wait_for};

static SERIAL: Mutex<()> = Mutex::new(());

const PROTO: &str = "199";

struct FibLab {
    lab: Lab,
    ns: Netns,
    /// One topology at a time (held for the test's life).
    _serial: std::sync::MutexGuard<'static, ()>,
}

fn gw(n: u8) -> String {
    format!("10.9.{n}.2")
}

fn path(n: u8) -> Path {
    Path {
        gw: gw(n).parse().expect("gw"),
        ifname: format!("e{n}"),
    }
}

/// `top`: extra top-level keys of fib.conf; `sticky`: extra keys of its [sticky] table.
fn setup(name: &str, top: &str, sticky: &str) -> FibLab {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new(name);
    for i in 1..=3 {
        ns.ip(&[
            "link",
            "add",
            &format!("e{i}"),
            "type",
            "veth",
            "peer",
            "name",
            &format!("p{i}"),
        ]);
        ns.ip(&[
            "addr",
            "add",
            &format!("10.9.{i}.1/24"),
            "dev",
            &format!("e{i}"),
        ]);
        ns.ip(&["link", "set", &format!("e{i}"), "up"]);
        ns.ip(&["link", "set", &format!("p{i}"), "up"]);
    }
    let mut lab = Lab::new("1s");
    lab.write(
        "fib.conf",
        &format!("backend = \"kernel\"\nprotocol = {PROTO}\n{top}[sticky]\nbuckets = 16\n{sticky}"),
    );
    lab.write(
        "fib.toml",
        &format!(
            "command = [{:?}, \"--config\", \"fib.conf\"]\nrestart = [\"stateful\", \"stateless\"]\n\
             readiness = \"notify\"\n[saps]\nfib = 130\n\
             [ha.single-sup.primary]\naction = \"stateful\"\nmax-retries = 100\nmin-lifetime = \"1s\"\n",
            bin("fib").display().to_string()
        ),
    );
    lab.wrapper = ns.wrapper();
    lab.boot();
    lab.wait_running("fib", None);
    FibLab {
        lab,
        ns,
        _serial: serial,
    }
}

impl FibLab {
    fn update(&self, producer: &str, announce: Vec<RouteGroup>, withdraw: Vec<Prefix>) {
        let u = Update {
            producer: producer.into(),
            announce,
            withdraw,
        };
        let r: Result<(), String> = ask(&self.lab, fp::SAP_NAME, fp::OP_UPDATE, &u);
        r.expect("update accepted");
    }

    fn announce(&self, prefix: &str, paths: &[u8], sticky: bool) {
        self.update(
            "bgp-sim",
            vec![RouteGroup {
                paths: paths.iter().map(|n| path(*n)).collect(),
                sticky,
                prefixes: vec![prefix.parse().expect("prefix")],
            }],
            vec![],
        );
    }

    fn ipj(&self, args: &[&str]) -> Value {
        ip_json(&self.ns, args)
    }

    /// Our routes in the kernel: prefix → nhid.
    fn kernel_routes(&self) -> BTreeMap<String, u64> {
        self.ipj(&["route", "show", "proto", PROTO])
            .as_array()
            .expect("routes")
            .iter()
            .map(|r| {
                (
                    r["dst"].as_str().expect("dst").to_string(),
                    r["nhid"].as_u64().expect("nhid"),
                )
            })
            .collect()
    }

    fn nexthops(&self) -> BTreeMap<u64, Value> {
        self.ipj(&["nexthop", "show", "proto", PROTO])
            .as_array()
            .expect("nexthops")
            .iter()
            .map(|n| (n["id"].as_u64().expect("id"), n.clone()))
            .collect()
    }

    /// bucket index → gateway, for the sticky route `prefix`, as the kernel does it.
    fn buckets(&self, prefix: &str) -> BTreeMap<u64, String> {
        let g = self.kernel_routes()[prefix];
        let nhs = self.nexthops();
        self.ipj(&["nexthop", "bucket", "show", "id", &g.to_string()])
            .as_array()
            .expect("buckets")
            .iter()
            .map(|b| {
                let slot = b["bucket"]["nhid"].as_u64().expect("nhid");
                (
                    b["bucket"]["index"].as_u64().expect("index"),
                    nhs[&slot]["gateway"].as_str().expect("gw").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for FibLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let t = std::fs::read_to_string(self.lab.path("data/logs/fib.stderr.log"))
                .unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            eprintln!(
                "---- fib stderr ----\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
    }
}

/// `ip -j ARGS` in `ns`, parsed (an empty list when it prints nothing).
fn ip_json(ns: &Netns, args: &[&str]) -> Value {
    let mut a = vec!["-j"];
    a.extend_from_slice(args);
    serde_json::from_slice(&ns.ip(&a).stdout).unwrap_or(Value::Array(vec![]))
}

/// A namespace with one veth link `e1` (10.9.1.1/24, up); its ifindex.
fn one_link(name: &str) -> (Netns, u32) {
    let ns = Netns::new(name);
    ns.ip(&["link", "add", "e1", "type", "veth", "peer", "name", "p1"]);
    ns.ip(&["addr", "add", "10.9.1.1/24", "dev", "e1"]);
    ns.ip(&["link", "set", "e1", "up"]);
    ns.ip(&["link", "set", "p1", "up"]);
    let oif = ip_json(&ns, &["link", "show", "e1"])[0]["ifindex"]
        .as_u64()
        .expect("ifindex") as u32;
    (ns, oif)
}

fn skip() -> bool {
    if !is_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return true;
    }
    false
}

fn counts(m: &BTreeMap<u64, String>) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for g in m.values() {
        *c.entry(g.clone()).or_default() += 1;
    }
    c
}

#[test]
fn ecmp_and_sticky_ecmp_in_the_kernel() {
    if skip() {
        return;
    }
    let l = setup("fib1", "", "");
    // ECMP: one hash-threshold group of two path nexthops.
    l.announce("192.0.2.0/24", &[1, 2], false);
    let g = l.kernel_routes()["192.0.2.0/24"];
    let nhs = l.nexthops();
    let members = members(&nhs, g);
    assert_eq!(members, vec![gw(1), gw(2)]);

    // Sticky: 16 buckets over three paths.
    let p = "198.51.100.0/24";
    l.announce(p, &[1, 2, 3], true);
    let group = l.kernel_routes()[p];
    let m0 = l.buckets(p);
    assert_eq!(m0.len(), 16);
    assert_eq!(counts(&m0).len(), 3);

    // Path 2 goes down: only its buckets move; the route keeps its group.
    l.announce(p, &[1, 3], true);
    let m1 = l.buckets(p);
    for (b, g0) in &m0 {
        if *g0 == gw(2) {
            assert_ne!(m1[b], gw(2), "bucket {b} still on the failed path");
        } else {
            assert_eq!(&m1[b], g0, "bucket {b} moved although its path is up");
        }
    }
    assert_eq!(l.kernel_routes()[p], group);
    let cef = l.lab.json(&["show", "cef", p, "detail"]);
    let starred = cef["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .filter(|b| b["replaced"] == true)
        .count();
    assert_eq!(starred, m0.values().filter(|g| **g == gw(2)).count());
    let text =
        String::from_utf8_lossy(&l.lab.cli(&["show", "cef", p, "detail"]).stdout).into_owned();
    assert!(text.contains(" *\n"), "{text}");

    // Path 2 back: by default nothing moves.
    l.announce(p, &[1, 2, 3], true);
    assert_eq!(l.buckets(p), m1);

    // clear route: full recompute, balanced again, nothing starred.
    let out = l.lab.cli(&["clear", "route", p]);
    assert!(out.status.success(), "{out:?}");
    let m3 = l.buckets(p);
    let mut c: Vec<usize> = counts(&m3).into_values().collect();
    c.sort();
    assert_eq!(c, vec![5, 5, 6]);
    let cef = l.lab.json(&["show", "cef", p, "detail"]);
    assert!(
        cef["buckets"]
            .as_array()
            .expect("b")
            .iter()
            .all(|b| b["replaced"] == false)
    );
    let routes = l.lab.json(&["show", "ip", "route"]);
    assert_eq!(routes.as_array().expect("rows").len(), 2);
}

#[test]
fn auto_recovery_restores_exactly_the_buckets_that_moved() {
    if skip() {
        return;
    }
    let l = setup("fib2", "", "auto-recovery = true\n");
    let p = "203.0.113.0/24";
    l.announce(p, &[1, 2, 3], true);
    let m0 = l.buckets(p);
    l.announce(p, &[1, 2], true);
    let m1 = l.buckets(p);
    assert_ne!(m1, m0);
    l.announce(p, &[1, 2, 3], true);
    assert_eq!(l.buckets(p), m0, "exactly the moved buckets return");
}

/// Routes `prefix_n(0..n)` over path 1.
fn one_path_routes(n: u32) -> Vec<RouteGroup> {
    vec![RouteGroup {
        paths: vec![path(1)],
        sticky: false,
        prefixes: (0..n).map(prefix_n).collect(),
    }]
}

/// The gateways of group `g`'s members, in order.
fn members(nhs: &BTreeMap<u64, Value>, g: u64) -> Vec<String> {
    nhs[&g]["group"]
        .as_array()
        .expect("group")
        .iter()
        .map(|m| {
            nhs[&m["id"].as_u64().expect("id")]["gateway"]
                .as_str()
                .expect("gw")
                .to_string()
        })
        .collect()
}

fn prefix_n(i: u32) -> Prefix {
    Prefix::new(std::net::Ipv4Addr::from(0x0a80_0000u32 + (i << 8)), 24).expect("prefix")
}

#[test]
fn sigkill_of_fib_with_10k_routes_deletes_no_kernel_route() {
    if skip() {
        return;
    }
    let l = setup("fib3", "", "");
    for chunk in 0..10u32 {
        let announce = (chunk * 1000..(chunk + 1) * 1000)
            .map(|i| RouteGroup {
                paths: if i % 3 == 0 {
                    vec![path(1), path(2), path(3)]
                } else {
                    vec![path(1), path(2)]
                },
                sticky: i % 10 == 0,
                prefixes: vec![prefix_n(i)],
            })
            .collect();
        l.update("bgp-sim", announce, vec![]);
    }
    let routes = l.kernel_routes();
    assert_eq!(routes.len(), 10_000);
    let nexthops = l.nexthops();
    // Watch the kernel for deletions while fib dies and comes back.
    let watch = KernelWatch::start(&l.ns, &["route", "nexthop"]);
    l.lab.kill9("fib");
    // Converged: a show answers only once the restarted instance has reconciled.
    let rows: Vec<fp::RouteRow> = ask(&l.lab, fp::SAP_NAME, fp::OP_SHOW_ROUTES, &None::<Prefix>);
    assert_eq!(rows.len(), 10_000);
    std::thread::sleep(Duration::from_millis(300));
    let deleted = watch.deleted();
    assert!(
        deleted.is_empty(),
        "kernel deletions during the restart: {deleted:?}"
    );
    assert_eq!(
        l.kernel_routes(),
        routes,
        "same routes, same nexthop objects"
    );
    assert_eq!(l.nexthops(), nexthops);
    let log = l.lab.service_log_when("fib", |t| {
        t.lines().filter(|x| x.contains("fib reconciled")).count() >= 2
    });
    assert!(
        log.lines()
            .filter(|x| x.contains("fib reconciled"))
            .nth(1)
            .is_some_and(|x| x.contains("kernel_routes_found=10000") && x.contains(" ops=0 ")),
        "the restarted fib found everything in place:\n{log}"
    );
    // And it is live: a change after the restart reaches the kernel.
    l.update("bgp-sim", vec![], vec![prefix_n(7)]);
    assert_eq!(l.kernel_routes().len(), 9_999);
    // A stateless restart does not flush either: the table is shared-global in PSS.
    let before = l.kernel_routes();
    let pid = l.lab.pid_of("fib").expect("fib");
    let out = l.lab.cli(&["restart", "service", "fib", "--stateless"]);
    assert!(out.status.success(), "{out:?}");
    l.lab.wait_running("fib", Some(pid));
    let rows: Vec<fp::RouteRow> = ask(&l.lab, fp::SAP_NAME, fp::OP_SHOW_ROUTES, &None::<Prefix>);
    assert_eq!(rows.len(), 9_999);
    assert_eq!(l.kernel_routes(), before);
}

#[test]
fn stale_routes_are_swept_only_after_end_of_rib() {
    if skip() {
        return;
    }
    let l = setup("fib4", "stale-time = \"60s\"\n", "");
    l.update("bgp-sim", one_path_routes(100), vec![]);
    l.update(
        "static",
        vec![RouteGroup {
            paths: vec![path(2)],
            sticky: false,
            prefixes: vec!["192.0.2.0/24".parse().expect("p")],
        }],
        vec![],
    );
    // The producer restarts: its routes are stale, still forwarding.
    let n: Result<u64, String> = ask(
        &l.lab,
        fp::SAP_NAME,
        fp::OP_PRODUCER_START,
        &"bgp-sim".to_string(),
    );
    assert_eq!(n, Ok(100));
    let rows = l.lab.json(&["show", "ip", "route"]);
    assert_eq!(
        rows.as_array()
            .expect("rows")
            .iter()
            .filter(|r| r["stale"] == true)
            .count(),
        100
    );
    // It re-sends 60 of them: nothing is removed yet.
    l.update("bgp-sim", one_path_routes(60), vec![]);
    assert_eq!(l.kernel_routes().len(), 101);
    // A FIB restart in the middle keeps the stale marks (they are in PSS).
    l.lab.kill9("fib");
    assert_eq!(l.kernel_routes().len(), 101);
    // End-of-RIB: the 40 it did not re-send go; the other producer's route stays.
    let swept: Result<u64, String> = ask(
        &l.lab,
        fp::SAP_NAME,
        fp::OP_END_OF_RIB,
        &"bgp-sim".to_string(),
    );
    assert_eq!(swept, Ok(40));
    let k = l.kernel_routes();
    assert_eq!(k.len(), 61);
    assert!(k.contains_key("192.0.2.0/24"));
    wait_for(Duration::from_secs(1), "no stale rows", || {
        let rows = l.lab.json(&["show", "ip", "route"]);
        rows.as_array()?
            .iter()
            .all(|r| r["stale"] == false)
            .then_some(())
    });
}

/// Our netlink encoder against iproute2: the same request, byte for byte (except sequence and
/// port numbers), captured from `ip` with strace.
#[test]
fn nexthop_messages_match_what_ip_nexthop_sends() {
    if skip() {
        return;
    }
    if Command::new("strace").arg("-V").output().is_err() {
        panic!("strace is missing (scripts/test-all installs it)");
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use fib::netlink::{Nexthop, NhKind, Resilient, Route, RtMsg, encode};
    let (ns, oif) = one_link("fib5");
    let gwn = |id: u32, gw: &str| {
        RtMsg::NewNexthop(Nexthop {
            id,
            protocol: 199,
            kind: NhKind::Gateway {
                gw: gw.parse().expect("gw"),
                oif,
            },
        })
    };
    let cases: Vec<(&str, RtMsg, u16)> = vec![
        (
            "nexthop add id 7 via 10.9.1.2 dev e1 proto 199",
            gwn(7, "10.9.1.2"),
            0x0600,
        ),
        (
            "nexthop add id 8 via 10.9.1.3 dev e1 proto 199",
            gwn(8, "10.9.1.3"),
            0x0600,
        ),
        (
            "nexthop add id 20 group 7/8,3 proto 199",
            RtMsg::NewNexthop(Nexthop {
                id: 20,
                protocol: 199,
                kind: NhKind::Group {
                    members: vec![(7, 1), (8, 3)],
                    resilient: None,
                },
            }),
            0x0600,
        ),
        (
            "nexthop add id 21 group 7/8 type resilient buckets 8 idle_timer 0 unbalanced_timer 0 proto 199",
            RtMsg::NewNexthop(Nexthop {
                id: 21,
                protocol: 199,
                kind: NhKind::Group {
                    members: vec![(7, 1), (8, 1)],
                    resilient: Some(Resilient {
                        buckets: 8,
                        idle_timer: 0,
                        unbalanced_timer: 0,
                    }),
                },
            }),
            0x0600,
        ),
        (
            "route add 10.50.0.0/24 nhid 21 proto 199",
            RtMsg::NewRoute(Route::new("10.50.0.0".parse().expect("a"), 24, 199, 21)),
            0x0600,
        ),
        (
            "nexthop replace id 8 via 10.9.1.4 dev e1 proto 199",
            gwn(8, "10.9.1.4"),
            0x0500,
        ),
        (
            "route del 10.50.0.0/24 proto 199",
            RtMsg::DelRoute(Route::new("10.50.0.0".parse().expect("a"), 24, 199, 21)),
            0,
        ),
        ("nexthop del id 21", RtMsg::DelNexthop(21), 0),
    ];
    for (cmd, ours, flags) in cases {
        let mut args = vec![
            "netns",
            "exec",
            &ns.name,
            "strace",
            "-e",
            "trace=sendmsg",
            "-e",
            "write=all",
            "-o",
            "/dev/stdout",
            "ip",
        ];
        args.extend(cmd.split_whitespace());
        let out = Command::new("ip").args(&args).output().expect("strace ip");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        // The hex dump of the last sendmsg (the request itself; earlier ones resolve the device).
        let dump = text.rsplit(" * ").next().expect("a dump");
        let theirs: Vec<u8> = dump
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("| "))
            .flat_map(|l| {
                l.get(7..55)
                    .unwrap_or("")
                    .split_whitespace()
                    .map(|h| u8::from_str_radix(h, 16).expect("hex"))
                    .collect::<Vec<u8>>()
            })
            .collect();
        let mut mine = encode(ours, flags | 0x0005, 0);
        assert_eq!(mine.len(), theirs.len(), "{cmd}: length");
        // Sequence and port numbers are per-process.
        mine[8..16].copy_from_slice(&theirs[8..16]);
        assert_eq!(mine, theirs, "{cmd}: bytes differ");
    }
}

#[test]
fn a_link_going_down_moves_only_its_buckets_and_fib_follows_the_kernel() {
    if skip() {
        return;
    }
    let l = setup("fib6", "", "");
    let p = "198.51.100.0/24";
    l.announce(p, &[1, 2, 3], true);
    l.announce("192.0.2.0/24", &[1, 2], false);
    let m0 = l.buckets(p);
    // The kernel deletes e2's nexthops; fib adopts what it did and rebuilds a full group.
    l.ns.ip(&["link", "set", "e2", "down"]);
    let m1 = wait_for(
        Duration::from_secs(5),
        "fib to rebuild the sticky group",
        || {
            let g = *l.kernel_routes().get(p)?;
            let members = l.nexthops().get(&g)?["group"].as_array()?.len();
            (members == 16).then(|| l.buckets(p))
        },
    );
    for (b, g0) in &m0 {
        if *g0 == gw(2) {
            assert_ne!(m1[b], gw(2), "bucket {b} still on the down link");
        } else {
            assert_eq!(&m1[b], g0, "bucket {b} moved although its path is up");
        }
    }
    let cef = l.lab.json(&["show", "cef", p, "detail"]);
    let starred = cef["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .filter(|b| b["replaced"] == true)
        .count();
    assert_eq!(starred, m0.values().filter(|g| **g == gw(2)).count());
    // Link back: the ECMP route gets its second path again; the sticky one moves nothing
    // (no auto-recovery).
    l.ns.ip(&["link", "set", "e2", "up"]);
    wait_for(
        Duration::from_secs(5),
        "the ECMP route over both paths again",
        || {
            let g = *l.kernel_routes().get("192.0.2.0/24")?;
            (l.nexthops().get(&g)?["group"].as_array()?.len() == 2).then_some(())
        },
    );
    assert_eq!(l.buckets(p), m1);
}

#[test]
fn a_producer_that_never_sends_end_of_rib_loses_its_stale_routes_at_the_stale_timer() {
    if skip() {
        return;
    }
    let l = setup("fib7", "stale-time = \"1s\"\n", "");
    l.update("bgp-sim", one_path_routes(5), vec![]);
    let n: Result<u64, String> = ask(
        &l.lab,
        fp::SAP_NAME,
        fp::OP_PRODUCER_START,
        &"bgp-sim".to_string(),
    );
    assert_eq!(n, Ok(5));
    assert_eq!(l.kernel_routes().len(), 5, "stale routes keep forwarding");
    wait_for(Duration::from_secs(5), "the stale timer to sweep", || {
        l.kernel_routes().is_empty().then_some(())
    });
}

/// A producer that keeps several updates in flight (as bgp does): fib takes the next one in
/// while the kernel takes the one before, and a prefix changed by two of them ends with the
/// later.
#[test]
fn pipelined_updates_end_with_the_latest_route_of_each_prefix() {
    if skip() {
        return;
    }
    let l = setup("fib8", "", "");
    let group = |paths: &[u8], prefixes: &[&str]| RouteGroup {
        paths: paths.iter().map(|n| path(*n)).collect(),
        sticky: false,
        prefixes: prefixes.iter().map(|p| p.parse().expect("p")).collect(),
    };
    let update = |announce: Vec<RouteGroup>, withdraw: &[&str]| Update {
        producer: "bgp-sim".into(),
        announce,
        withdraw: withdraw.iter().map(|p| p.parse().expect("p")).collect(),
    };
    // Each update also carries 5000 routes of its own, so fib is still busy with one when the
    // next arrives.
    let bulk = |k: u32, paths: &[u8]| RouteGroup {
        paths: paths.iter().map(|n| path(*n)).collect(),
        sticky: false,
        prefixes: (0..5000).map(|i| prefix_n(k * 5000 + i)).collect(),
    };
    let updates = [
        update(
            vec![
                group(&[1], &["198.51.100.0/24", "203.0.113.0/24"]),
                bulk(0, &[1]),
            ],
            &[],
        ),
        update(vec![group(&[2], &["198.51.100.0/24"]), bulk(1, &[2])], &[]),
        update(
            vec![group(&[1, 2], &["192.0.2.0/24"]), bulk(2, &[1, 2])],
            &["203.0.113.0/24"],
        ),
        update(vec![group(&[3], &["198.51.100.0/24"]), bulk(3, &[3])], &[]),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let c = mts::client::Client::connect(&l.lab.socket())
            .await
            .expect("connect");
        let fib = c.lookup(fp::SAP_NAME).await.expect("fib's SAP");
        // Every update sent before the first answer.
        let sent: Vec<_> = updates
            .iter()
            .map(|u| c.request_start(0, fib, fp::OP_UPDATE, u).expect("send"))
            .collect();
        for p in sent {
            let r: Result<(), String> = p.wait(Duration::from_secs(30)).await.expect("answer");
            r.expect("update accepted");
        }
    });
    let log = l.lab.service_log_when("fib", |t| {
        t.contains("the next update taken in before this one goes to the kernel")
    });
    assert!(
        log.contains("the next update taken in before this one goes to the kernel"),
        "fib took the updates one at a time:\n{log}"
    );
    let routes = l.kernel_routes();
    assert_eq!(routes.len(), 4 * 5000 + 2);
    assert!(routes.contains_key("192.0.2.0/24") && !routes.contains_key("203.0.113.0/24"));
    let nhs = l.nexthops();
    assert_eq!(nhs[&routes["198.51.100.0/24"]]["gateway"], gw(3).as_str());
    let members = members(&nhs, routes["192.0.2.0/24"]);
    assert_eq!(members, [gw(1), gw(2)]);
}

/// Requests go to the kernel 512 to a `sendmsg`; a failed one in the middle of a batch is
/// reported at its own place, and the others succeed.
#[test]
fn a_failed_request_in_a_batch_is_reported_at_its_place() {
    use fib::netlink::{Errno, Nexthop, NhKind, RtMsg, Socket};
    if skip() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (ns, oif) = one_link("fib9");
    let results = spawn_in_netns(&ns, move || {
        let mut s = Socket::open().expect("netlink");
        let nh = |id| {
            (
                RtMsg::NewNexthop(Nexthop {
                    id,
                    protocol: 199,
                    kind: NhKind::Gateway {
                        gw: "10.9.1.2".parse().expect("gw"),
                        oif,
                    },
                }),
                0x0600, // CREATE|REPLACE
            )
        };
        // 1,200 requests: three sendmsgs; two deletions of nexthops that do not exist.
        let mut reqs: Vec<(RtMsg, u16)> = (0..1200u32).map(|i| nh(700_000 + i)).collect();
        reqs[3] = (RtMsg::DelNexthop(999_999), 0);
        reqs[1100] = (RtMsg::DelNexthop(999_998), 0);
        s.apply(reqs).expect("apply")
    })
    .join()
    .expect("thread");
    assert_eq!(results.len(), 1200);
    for (i, r) in results.iter().enumerate() {
        if i == 3 || i == 1100 {
            assert_eq!(*r, Err(Errno(libc::ENOENT)), "request {i}");
        } else {
            assert_eq!(*r, Ok(()), "request {i}");
        }
    }
    assert_eq!(
        ip_json(&ns, &["nexthop", "show", "proto", "199"])
            .as_array()
            .expect("nexthops")
            .len(),
        1198
    );
}
