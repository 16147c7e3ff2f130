//! bgp under sysmgr against BIRD and FRR (first slice of issue 7): the session comes up, the peer's
//! routes reach the kernel through fib, and leave it when the session goes down.
//!
//! ```text
//!   ns bgp1-bird  vb0 10.70.1.2 (AS 65002, 100 static routes) ──veth── vs0 10.70.1.1  ns bgp1-sut
//!   ns bgp1-frr   vf0 10.70.2.2 (AS 65003, 50 networks)       ──veth── vs1 10.70.2.1  (sysmgr →
//!                                                                      fib, bgp AS 65001)
//! ```

use std::sync::Mutex;
use std::time::Duration;

use sysmgr_tests::netns::{Bird, Frr, KernelWatch, Netns, veth};
use sysmgr_tests::{Lab, bin, is_root, wait_for};

/// One topology at a time: BFD at 50 ms and the routing daemons share two CPUs.
static SERIAL: Mutex<()> = Mutex::new(());

fn kernel_routes(sut: &Netns) -> usize {
    let out = sut.ip(&["-j", "route", "show", "proto", "199"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().map(|a| a.len()))
        .unwrap_or(0)
}

fn kernel_routes6(sut: &Netns) -> usize {
    let out = sut.ip(&["-6", "-j", "route", "show", "proto", "199"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().map(|a| a.len()))
        .unwrap_or(0)
}

/// An IPv6 address on a test interface (no duplicate address detection to wait for).
fn addr6(ns: &Netns, dev: &str, addr: &str) {
    let out = ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"]);
    assert!(out.status.success(), "ip -6 addr add {addr}: {out:?}");
}

/// The first neighbour Established again, with its End-of-RIB in.
fn wait_established_with_eor(lab: &Lab, secs: u64) {
    wait_for(
        Duration::from_secs(secs),
        "the session back with End-of-RIB",
        || {
            let s = lab.json(&["show", "bgp", "summary"]);
            let n = &s["neighbors"][0];
            (n["state"] == "Established" && n["end_of_rib_received"] == true).then_some(())
        },
    );
}

/// fib (kernel backend) and bgp (stateless restarts, `bgp.conf` written by the test), and
/// with `bfd` the bfd service too.
fn services(lab: &Lab, bfd: bool) {
    let cmd = |name: &str, conf: bool| {
        let mut c = format!("command = [{:?}", bin(name).display().to_string());
        if conf {
            c += &format!(", \"--config\", \"{name}.conf\"");
        }
        c + "]\nreadiness = \"notify\"\n"
    };
    lab.write(
        "fib.toml",
        &(cmd("fib", true) + "restart = [\"stateful\", \"stateless\"]\n[saps]\nfib = 130\n"),
    );
    lab.write("fib.conf", "backend = \"kernel\"\n");
    let deps = if bfd {
        "[\"fib\", \"bfd\"]"
    } else {
        "[\"fib\"]"
    };
    lab.write(
        "bgp.toml",
        &(cmd("bgp", true)
            + &format!(
                "restart = [\"stateless\"]\ndepends-on = {deps}\n[saps]\nbgp = 179\n\
                 [ha.single-sup.primary]\naction = \"stateless\"\nmax-retries = 10\nmin-lifetime = \"1s\"\n"
            )),
    );
    if bfd {
        lab.write(
            "bfd.toml",
            &(cmd("bfd", false) + "restart = [\"stateful\", \"stateless\"]\n[saps]\nbfd = 110\n"),
        );
    }
}

#[test]
fn routes_from_bird_reach_the_kernel_and_leave_with_the_session() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sut = Netns::new("bgp1-sut");
    let bird_ns = Netns::new("bgp1-bird");
    let frr_ns = Netns::new("bgp1-frr");
    veth(&sut, "vs0", "10.70.1.1/24", &bird_ns, "vb0", "10.70.1.2/24");
    veth(&sut, "vs1", "10.70.2.1/24", &frr_ns, "vf0", "10.70.2.2/24");
    let mut lab = Lab::new("1s");
    // FRR (AS 65003): 10 prefixes BIRD also sends, and 40 of its own.
    let networks: String = (0..10)
        .map(|i| format!("  network 10.100.{i}.0/24\n"))
        .chain((0..40).map(|i| format!("  network 10.110.{i}.0/24\n")))
        .collect();
    let statics: String = (0..10)
        .map(|i| format!("ip route 10.100.{i}.0/24 blackhole\n"))
        .chain((0..40).map(|i| format!("ip route 10.110.{i}.0/24 blackhole\n")))
        .collect();
    let frr = Frr::start_daemons(
        &frr_ns,
        &lab.path("frr"),
        &[
            ("staticd", statics.as_str()),
            (
                "bgpd",
                &format!(
                    "router bgp 65003\n bgp router-id 10.70.2.2\n no bgp ebgp-requires-policy\n                      no bgp network import-check\n neighbor 10.70.2.1 remote-as 65001\n                      neighbor 10.70.2.1 timers 3 9\n neighbor 10.70.2.1 timers connect 1\n                      address-family ipv4 unicast\n{networks} exit-address-family\n!\n"
                ),
            ),
        ],
    );
    let statics: String = (0..100)
        .map(|i| format!("  route 10.100.{i}.0/24 blackhole;\n"))
        .collect();
    let bird = Bird::start(
        &bird_ns,
        &lab.path("bird"),
        &format!(
            "router id 10.70.1.2;\nprotocol device {{}}\nprotocol static st {{\n  ipv4;\n{statics}}}\n\
             protocol bgp peer1 {{\n  local 10.70.1.2 as 65002;\n  neighbor 10.70.1.1 as 65001;\n  \
             hold time 9;\n  error wait time 1, 10;\n  ipv4 {{ import all; export all; next hop self; }};\n}}\n"
        ),
    );
    services(&lab, false);
    lab.write(
        "bgp.conf",
        "router-id = \"10.70.1.1\"\nlocal-as = 65001\nhold-time = 9\nconnect-retry = \"1s\"\n\
         networks = [\"203.0.113.0/24\"]\nsticky = [\"10.100.3.0/24\"]\n\
         [[neighbor]]\naddress = \"10.70.1.2\"\nremote-as = 65002\nlocal-address = \"10.70.1.1\"\n\
         [[neighbor]]\naddress = \"10.70.2.2\"\nremote-as = 65003\nlocal-address = \"10.70.2.1\"\n",
    );
    lab.wrapper = sut.wrapper();
    lab.boot();
    let kernel = || kernel_routes(&sut);
    let t0 = std::time::Instant::now();
    while kernel() != 140 {
        if t0.elapsed() > Duration::from_secs(30) {
            panic!(
                "timed out waiting for 140 kernel routes (have {}):\n{}\n{}",
                kernel(),
                String::from_utf8_lossy(&lab.cli(&["show", "bgp", "summary"]).stdout),
                std::fs::read_to_string(lab.path("data/logs/bgp.stderr.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = lab.json(&["show", "bgp", "summary"]);
    let n = &s["neighbors"][0];
    assert_eq!(n["state"], "Established", "{s}");
    assert_eq!(n["prefixes_received"], 100, "{s}");
    assert_eq!(n["hold_time"], 9, "negotiated the smaller hold time: {s}");
    let f = &s["neighbors"][1];
    assert_eq!(f["state"], "Established", "{s}");
    assert_eq!(f["prefixes_received"], 50, "{s}");
    assert_eq!(f["hold_time"], 9, "{s}");
    // A prefix from both: equal AS path length, the lower router id (BIRD) is best.
    let both = lab.json(&["show", "bgp", "ipv4", "unicast", "10.100.3.0/24"]);
    let paths = both[0]["paths"].as_array().expect("paths");
    assert_eq!(paths.len(), 2, "{both}");
    assert_eq!(paths[0]["peer"], "10.70.1.2", "{both}");
    assert_eq!(paths[0]["selected"], true, "{both}");
    assert_eq!(paths[1]["selected"], false, "{both}");
    // The sticky flag from bgp.conf reaches the FIB (a resilient group in the kernel).
    let f = lab.json(&["show", "ip", "route", "10.100.3.0/24"]);
    assert_eq!(f[0]["sticky"], true, "{f}");
    assert_eq!(f[0]["producer"], "bgp", "{f}");
    let f = lab.json(&["show", "ip", "route", "10.100.7.0/24"]);
    assert_eq!(f[0]["sticky"], false, "{f}");
    let r = lab.json(&["show", "bgp", "ipv4", "unicast", "10.100.7.0/24"]);
    assert_eq!(r[0]["paths"][0]["next_hop"], "10.70.1.2", "{r}");
    assert_eq!(r[0]["paths"][0]["as_path"][0], 65002, "{r}");
    let text = String::from_utf8_lossy(&lab.cli(&["show", "bgp", "summary"]).stdout).into_owned();
    assert!(
        text.contains("10.70.1.2") && text.contains("65002"),
        "{text}"
    );
    // What we advertise: our network to both, FRR's own prefixes to BIRD (AS path 65001
    // 65003, packed: far fewer UPDATEs than prefixes), never a peer's routes back to it.
    wait_for(Duration::from_secs(10), "BIRD to learn our routes", || {
        bird.birdc("show route 10.110.39.0/24 all")
            .contains("65001 65003")
            .then_some(())
    });
    assert!(
        bird.birdc("show route 203.0.113.0/24 all")
            .contains("BGP.as_path: 65001")
    );
    let s = lab.json(&["show", "bgp", "summary"]);
    assert_eq!(s["neighbors"][0]["prefixes_sent"], 41, "{s}");
    assert_eq!(s["neighbors"][1]["prefixes_sent"], 101, "{s}");
    assert!(
        s["neighbors"][0]["msgs_out"].as_u64().expect("n") < 15,
        "41 prefixes packed into a few UPDATEs: {s}"
    );
    // BIRD asks for our routes again (ROUTE-REFRESH): we send the Adj-RIB-Out again.
    bird.birdc("reload in peer1");
    wait_for(Duration::from_secs(5), "the refresh answered", || {
        std::fs::read_to_string(lab.path("data/logs/bgp.stderr.log"))
            .ok()?
            .contains("ROUTE-REFRESH: Adj-RIB-Out sent again")
            .then_some(())
    });
    // Enhanced route refresh (RFC 7313) with FRR, both ways, without a flap or a withdrawal:
    // asked by us (clear bgp soft in), FRR re-sends its routes between BoRR and EoRR; asked
    // by FRR, we answer the same way.
    let bgp_log =
        || std::fs::read_to_string(lab.path("data/logs/bgp.stderr.log")).unwrap_or_default();
    let watch = KernelWatch::start(&sut, &["route"]);
    let out = lab.cli(&["clear", "bgp", "10.70.2.2", "soft", "in"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(Duration::from_secs(10), "FRR's EoRR", || {
        bgp_log()
            .contains("EoRR: stale routes swept peer=10.70.2.2 swept=0")
            .then_some(())
    });
    assert!(bgp_log().contains("BoRR: its routes are stale until EoRR peer=10.70.2.2"));
    frr.vtysh("clear bgp 10.70.2.1 soft in");
    wait_for(Duration::from_secs(10), "our answer to FRR", || {
        bgp_log()
            .contains("ROUTE-REFRESH: Adj-RIB-Out sent again peer=10.70.2.2 enhanced=true")
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(kernel(), 140);
    let deleted = watch.deleted();
    assert!(deleted.is_empty(), "kernel routes deleted: {deleted:?}");
    let s = lab.json(&["show", "bgp", "summary"]);
    assert_eq!(s["neighbors"][1]["flaps"], 0, "{s}");
    // BIRD stops the session (Cease): its routes leave the kernel, FRR's stay, and the shared
    // prefixes fall back to FRR's path.
    bird.birdc("disable peer1");
    wait_for(Duration::from_secs(10), "BIRD's routes withdrawn", || {
        (kernel() == 50).then_some(())
    });
    let both = lab.json(&["show", "bgp", "ipv4", "unicast", "10.100.3.0/24"]);
    assert_eq!(both[0]["paths"][0]["peer"], "10.70.2.2", "{both}");
    bird.birdc("enable peer1");
    wait_for(Duration::from_secs(20), "routes back", || {
        (kernel() == 140).then_some(())
    });
    let s = lab.json(&["show", "bgp", "summary"]);
    assert_eq!(s["neighbors"][0]["flaps"], 1, "{s}");
}

/// MP-BGP IPv6 unicast (RFC 4760) over the IPv4 sessions, with BIRD and FRR: their IPv6
/// routes reach the kernel through fib via their IPv6 next hops, ours (and each other's) reach
/// them with our interface's IPv6 address as next hop, and a withdrawal leaves the kernel.
#[test]
fn ipv6_routes_both_ways_with_bird_and_frr() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sut = Netns::new("bgp7-sut");
    let bird_ns = Netns::new("bgp7-bird");
    let frr_ns = Netns::new("bgp7-frr");
    veth(&sut, "vs0", "10.77.1.1/24", &bird_ns, "vb0", "10.77.1.2/24");
    veth(&sut, "vs1", "10.77.2.1/24", &frr_ns, "vf0", "10.77.2.2/24");
    addr6(&sut, "vs0", "2001:db8:77:1::1/64");
    addr6(&bird_ns, "vb0", "2001:db8:77:1::2/64");
    addr6(&sut, "vs1", "2001:db8:77:2::1/64");
    addr6(&frr_ns, "vf0", "2001:db8:77:2::2/64");
    let mut lab = Lab::new("1s");
    let statics: String = (0..20)
        .map(|i| format!("  route 2001:db8:100:{i}::/64 blackhole;\n"))
        .collect();
    let bird = Bird::start(
        &bird_ns,
        &lab.path("bird"),
        &format!(
            "router id 10.77.1.2;\nprotocol device {{}}\nprotocol static st6 {{\n  ipv6;\n{statics}}}\n\
             protocol bgp peer1 {{\n  local 10.77.1.2 as 65002;\n  neighbor 10.77.1.1 as 65001;\n  \
             hold time 9;\n  error wait time 1, 10;\n  ipv4 {{ import all; export none; }};\n  \
             ipv6 {{ import all; export all; next hop address 2001:db8:77:1::2; }};\n}}\n"
        ),
    );
    let frr = Frr::start_daemons(
        &frr_ns,
        &lab.path("frr"),
        &[(
            "bgpd",
            "router bgp 65003\n bgp router-id 10.77.2.2\n no bgp ebgp-requires-policy\n \
             no bgp network import-check\n neighbor 10.77.2.1 remote-as 65001\n \
             neighbor 10.77.2.1 timers 3 9\n address-family ipv6 unicast\n  \
             network 2001:db8:200::/48\n  network 2001:db8:201::/48\n  \
             neighbor 10.77.2.1 activate\n exit-address-family\n",
        )],
    );
    services(&lab, false);
    lab.write(
        "bgp.conf",
        "router-id = \"10.77.1.1\"\nlocal-as = 65001\nhold-time = 9\nconnect-retry = \"1s\"\n\
         networks = [\"2001:db8:ff::/48\"]\n\
         [[neighbor]]\naddress = \"10.77.1.2\"\nremote-as = 65002\nlocal-address = \"10.77.1.1\"\n\
         [[neighbor]]\naddress = \"10.77.2.2\"\nremote-as = 65003\nlocal-address = \"10.77.2.1\"\n",
    );
    lab.wrapper = sut.wrapper();
    lab.boot();
    let logs = || {
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&lab.cli(&["show", "bgp", "summary"]).stdout),
            std::fs::read_to_string(lab.path("data/logs/bgp.stderr.log")).unwrap_or_default()
        )
    };
    let t0 = std::time::Instant::now();
    while kernel_routes6(&sut) != 22 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for 22 IPv6 kernel routes (have {}):\n{}\n{}",
            kernel_routes6(&sut),
            String::from_utf8_lossy(&sut.ip(&["-6", "route", "show", "proto", "199"]).stdout),
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let via = String::from_utf8_lossy(
        &sut.ip(&["-6", "route", "show", "2001:db8:100:3::/64"])
            .stdout,
    )
    .into_owned();
    assert!(via.contains("via 2001:db8:77:1::2 dev vs0"), "{via}");
    let via =
        String::from_utf8_lossy(&sut.ip(&["-6", "route", "show", "2001:db8:200::/48"]).stdout)
            .into_owned();
    assert!(via.contains("via 2001:db8:77:2::2 dev vs1"), "{via}");
    // Our table.
    let r = lab.json(&["show", "bgp", "ipv6", "unicast", "2001:db8:100:3::/64"]);
    assert_eq!(r[0]["paths"][0]["next_hop"], "2001:db8:77:1::2", "{r}");
    let v4 = lab.json(&["show", "bgp", "ipv4", "unicast"]);
    assert_eq!(
        v4.as_array().map(|a| a.len()),
        Some(0),
        "no IPv4 here: {v4}"
    );
    // Ours and FRR's reach BIRD, with our IPv6 address as next hop.
    wait_for(
        Duration::from_secs(10),
        "BIRD to learn our IPv6 routes",
        || {
            let ours = bird.birdc("show route 2001:db8:ff::/48 all");
            let frrs = bird.birdc("show route 2001:db8:200::/48 all");
            (ours.contains("BGP.as_path: 65001")
                && ours.contains("2001:db8:77:1::1")
                && frrs.contains("65001 65003"))
            .then_some(())
        },
    );
    // Ours and BIRD's reach FRR.
    wait_for(
        Duration::from_secs(10),
        "FRR to learn our IPv6 routes",
        || {
            let t = frr.vtysh("show bgp ipv6 unicast");
            (t.contains("2001:db8:ff::/48") && t.contains("2001:db8:100:7::/64")).then_some(())
        },
    );
    // BIRD withdraws its IPv6 routes: they leave the kernel, FRR's stay.
    bird.birdc("disable st6");
    wait_for(
        Duration::from_secs(10),
        "BIRD's IPv6 routes withdrawn",
        || (kernel_routes6(&sut) == 2).then_some(()),
    );
    let s = lab.json(&["show", "bgp", "summary"]);
    assert_eq!(s["neighbors"][0]["flaps"], 0, "{s}");
    assert_eq!(s["neighbors"][1]["flaps"], 0, "{s}");
}

/// Graceful Restart both ways around a SIGKILL of bgp: BIRD (helper) keeps our route while we
/// restart (its route log shows no removal), and the kernel keeps BIRD's routes (fib holds them
/// stale until our End-of-RIB; `ip monitor` shows no deletion).
#[test]
fn a_sigkill_of_bgp_loses_no_route_on_either_side() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sut = Netns::new("bgp2-sut");
    let bird_ns = Netns::new("bgp2-bird");
    veth(&sut, "vs0", "10.71.1.1/24", &bird_ns, "vb0", "10.71.1.2/24");
    let mut lab = Lab::new("1s");
    let statics: String = (0..100)
        .map(|i| format!("  route 10.120.{i}.0/24 blackhole;\n"))
        .collect();
    let bird = Bird::start(
        &bird_ns,
        &lab.path("bird"),
        &format!(
            "router id 10.71.1.2;\nprotocol device {{}}\nprotocol static st {{\n  ipv4;\n{statics}}}\n\
             protocol bgp peer1 {{\n  local 10.71.1.2 as 65002;\n  neighbor 10.71.1.1 as 65001;\n  \
             hold time 9;\n  graceful restart on;\n  error wait time 1, 10;\n  debug {{ states, routes }};\n  \
             ipv4 {{ import all; export all; next hop self; }};\n}}\n"
        ),
    );
    services(&lab, false);
    lab.write(
        "bgp.conf",
        "router-id = \"10.71.1.1\"\nlocal-as = 65001\nhold-time = 9\nconnect-retry = \"1s\"\n\
         networks = [\"203.0.113.0/24\"]\n\
         [[neighbor]]\naddress = \"10.71.1.2\"\nremote-as = 65002\nlocal-address = \"10.71.1.1\"\n",
    );
    lab.wrapper = sut.wrapper();
    lab.boot();
    let kernel = || kernel_routes(&sut);
    wait_for(Duration::from_secs(20), "100 routes in the kernel", || {
        (kernel() == 100).then_some(())
    });
    wait_for(Duration::from_secs(10), "BIRD has our network", || {
        bird.birdc("show route 203.0.113.0/24")
            .contains("203.0.113.0/24")
            .then_some(())
    });
    let watch = KernelWatch::start(&sut, &["route"]);
    lab.kill9("bgp");
    wait_established_with_eor(&lab, 20);
    std::thread::sleep(Duration::from_secs(1));
    let deleted = watch.deleted();
    // BIRD logs every change of its table (debug routes): our route was never removed, and the
    // session did go down and up (BIRD kept the route stale meanwhile).
    let log = std::fs::read_to_string(bird.dir.join("bird.log")).unwrap_or_default();
    let ours: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("203.0.113.0/24"))
        .collect();
    assert!(
        !ours.iter().any(|l| l.contains("removed")),
        "BIRD removed our route: {ours:?}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains("peer1: State changed to up"))
            .count()
            >= 2,
        "the session restarted:\n{log}"
    );
    assert!(deleted.is_empty(), "kernel routes deleted: {deleted:?}");
    assert_eq!(kernel(), 100);
}

/// The RIB checkpoint: a stateful restart of bgp (SIGKILL) rebuilds the Adj-RIB-In from its
/// PSS log, withdrawals included, while the peer cannot send a thing, and the kernel keeps every
/// route.
#[test]
fn a_stateful_restart_rebuilds_the_rib_from_the_pss_checkpoint() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sut = Netns::new("bgp6-sut");
    let bird_ns = Netns::new("bgp6-bird");
    veth(&sut, "vs0", "10.76.1.1/24", &bird_ns, "vb0", "10.76.1.2/24");
    let mut lab = Lab::new("1s");
    let routes = |from: usize, to: usize| -> String {
        (from..to)
            .map(|i| format!("  route 10.121.{i}.0/24 blackhole;\n"))
            .collect()
    };
    let bird = Bird::start(
        &bird_ns,
        &lab.path("bird"),
        &format!(
            "router id 10.76.1.2;\nprotocol device {{}}\nprotocol static st1 {{\n  ipv4;\n{}}}\n\
             protocol static st2 {{\n  ipv4;\n{}}}\n\
             protocol bgp peer1 {{\n  local 10.76.1.2 as 65002;\n  neighbor 10.76.1.1 as 65001;\n  \
             hold time 9;\n  graceful restart on;\n  error wait time 1, 10;\n  \
             debug {{ states, events, packets }};\n  \
             ipv4 {{ import all; export all; next hop self; }};\n}}\n",
            routes(0, 90),
            routes(90, 100)
        ),
    );
    services(&lab, false);
    lab.write(
        "bgp.toml",
        &format!(
            "command = [{:?}, \"--config\", \"bgp.conf\"]\nreadiness = \"notify\"\n\
             restart = [\"stateful\"]\ndepends-on = [\"fib\"]\n[saps]\nbgp = 179\n\
             [ha.single-sup.primary]\naction = \"stateful\"\nmax-retries = 10\nmin-lifetime = \"1s\"\n",
            bin("bgp").display().to_string()
        ),
    );
    lab.write(
        "bgp.conf",
        "router-id = \"10.76.1.1\"\nlocal-as = 65001\nhold-time = 9\nconnect-retry = \"1s\"\n\
         graceful-restart = true\n\
         [[neighbor]]\naddress = \"10.76.1.2\"\nremote-as = 65002\nlocal-address = \"10.76.1.1\"\n",
    );
    lab.wrapper = sut.wrapper();
    lab.boot();
    let kernel = || kernel_routes(&sut);
    wait_for(Duration::from_secs(20), "100 routes in the kernel", || {
        (kernel() == 100).then_some(())
    });
    // Ten withdrawals: they must be in the checkpoint too.
    bird.birdc("disable st2");
    wait_for(Duration::from_secs(10), "90 routes in the kernel", || {
        (kernel() == 90).then_some(())
    });
    // The checkpoint is a log of UPDATEs in PSS, not a key per prefix.
    let pss = lab.json(&["show", "pss", "service", "bgp"]).to_string();
    assert!(
        pss.contains("in/10.76.1.2/log/"),
        "no Adj-RIB-In log in PSS: {pss}"
    );
    assert!(
        pss.contains("session/10.76.1.2"),
        "no session checkpoint: {pss}"
    );
    // BIRD cannot send us anything for a while (a prohibit route back to us), so what the new
    // instance has comes from PSS alone. The session itself resumes in place (issue 8: the
    // socket waits in sysmgr's fd store).
    let watch = KernelWatch::start(&sut, &["route"]);
    let block = |verb: &str| {
        let out = bird_ns.ip(&["route", verb, "prohibit", "10.76.1.1/32"]);
        assert!(out.status.success(), "ip route {verb}: {out:?}");
    };
    block("add");
    lab.kill9("bgp");
    let rows = wait_for(Duration::from_secs(20), "the Loc-RIB restored", || {
        let out = lab.cli(&["show", "bgp", "ipv4", "unicast", "--json"]);
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let n = r.as_array().map_or(0, |a| a.len());
        (out.status.success() && n > 0).then_some(r)
    });
    let n = rows.as_array().map_or(0, |a| a.len());
    assert_eq!(n, 90, "the restored Loc-RIB: {rows}");
    assert!(
        !rows.to_string().contains("10.121.95.0/24"),
        "a withdrawn prefix came back: {rows}"
    );
    let log = lab.service_log_when("bgp", |l| {
        l.contains("checkpoint: RIBs restored")
            && l.contains("prefixes=90")
            && l.contains("session resumed in place")
    });
    assert!(
        log.contains("checkpoint: RIBs restored")
            && log.contains("prefixes=90")
            && log.contains("session resumed in place"),
        "{log}"
    );
    block("del");
    wait_established_with_eor(&lab, 30);
    std::thread::sleep(Duration::from_secs(1));
    let deleted = watch.deleted();
    let logs = || {
        let mut l = ["bgp", "fib"]
            .map(|s| {
                std::fs::read_to_string(lab.path(&format!("data/logs/{s}.stderr.log")))
                    .unwrap_or_default()
            })
            .join("\n");
        l += &std::fs::read_to_string(bird.dir.join("bird.log")).unwrap_or_default();
        l
    };
    assert!(
        deleted.is_empty(),
        "kernel routes deleted: {} of them, first {:?}\n{}",
        deleted.len(),
        deleted.first(),
        logs()
    );
    assert_eq!(kernel(), 90);
}

/// A neighbour configured with `bfd`: bgp asks the bfd service for the session over MTS, and
/// when BFD says the peer is gone the BGP session is reset at once, long before its hold timer.
#[test]
fn bfd_down_resets_the_bgp_session_long_before_the_hold_timer() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sut = Netns::new("bgp3-sut");
    let bird_ns = Netns::new("bgp3-bird");
    veth(&sut, "vs0", "10.72.1.1/24", &bird_ns, "vb0", "10.72.1.2/24");
    let mut lab = Lab::new("1s");
    let statics: String = (0..20)
        .map(|i| format!("  route 10.130.{i}.0/24 blackhole;\n"))
        .collect();
    let _bird = Bird::start(
        &bird_ns,
        &lab.path("bird"),
        &format!(
            "router id 10.72.1.2;\nprotocol device {{}}\nprotocol static st {{\n  ipv4;\n{statics}}}\n\
             protocol bfd {{\n  interface \"vb0\" {{ min rx interval 50 ms; min tx interval 50 ms; multiplier 3; }};\n}}\n\
             protocol bgp peer1 {{\n  local 10.72.1.2 as 65002;\n  neighbor 10.72.1.1 as 65001;\n  \
             hold time 9;\n  bfd on;\n  error wait time 1, 10;\n  \
             ipv4 {{ import all; export all; next hop self; }};\n}}\n"
        ),
    );
    services(&lab, true);
    lab.write(
        "bgp.conf",
        "router-id = \"10.72.1.1\"\nlocal-as = 65001\nhold-time = 9\nconnect-retry = \"1s\"\n\
         [[neighbor]]\naddress = \"10.72.1.2\"\nremote-as = 65002\nlocal-address = \"10.72.1.1\"\n\
         bfd = true\nbfd-interval = \"50ms\"\n",
    );
    lab.wrapper = sut.wrapper();
    lab.boot();
    let kernel = || kernel_routes(&sut);
    wait_for(Duration::from_secs(20), "20 routes in the kernel", || {
        (kernel() == 20).then_some(())
    });
    let n = wait_for(
        Duration::from_secs(10),
        "the BFD session bgp asked for, Up",
        || {
            let v = lab.json(&["show", "bfd", "neighbors"]);
            v.as_array()?
                .iter()
                // Up, and done with the Poll Sequences that bring both sides to 50 ms.
                .find(|n| {
                    n["peer"] == "10.72.1.2" && n["state"] == "Up" && n["detect_time_us"] == 150_000
                })
                .cloned()
        },
    );
    assert_eq!(n["owner"], "bgp", "{n}");
    // The peer's link goes away: TCP cannot tell for 9 s (the hold time), BFD in 150 ms.
    let t0 = std::time::Instant::now();
    bird_ns.ip(&["link", "set", "vb0", "down"]);
    wait_for(
        Duration::from_secs(3),
        "the BGP session reset by BFD",
        || {
            let s = lab.json(&["show", "bgp", "summary"]);
            (s["neighbors"][0]["state"] != "Established").then_some(())
        },
    );
    let took = t0.elapsed();
    eprintln!("BGP session reset {took:?} after the link went down (hold time 9 s)");
    wait_for(Duration::from_secs(3), "the peer's routes gone", || {
        (kernel() == 0).then_some(())
    });
    let log = lab.service_log_when("bgp", |l| l.contains("BFD down: resetting the BGP session"));
    assert!(log.contains("BFD down: resetting the BGP session"), "{log}");
}

/// GoBGP 3.10 as the peer: its routes reach the kernel, ours reach its RIB.
#[test]
fn routes_from_gobgp_reach_the_kernel_and_ours_reach_gobgp() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sut = Netns::new("bgp4-sut");
    let gobgp_ns = Netns::new("bgp4-gobgp");
    veth(
        &sut,
        "vs0",
        "10.73.1.1/24",
        &gobgp_ns,
        "vg0",
        "10.73.1.2/24",
    );
    let mut lab = Lab::new("1s");
    std::fs::create_dir_all(lab.path("gobgp")).expect("dir");
    lab.write(
        "gobgp/gobgpd.toml",
        "[global.config]\n  as = 65004\n  router-id = \"10.73.1.2\"\n  port = 179\n  \
         local-address-list = [\"10.73.1.2\"]\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"10.73.1.1\"\n    peer-as = 65001\n  \
         [neighbors.timers.config]\n    hold-time = 9\n    connect-retry = 1\n  \
         [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n\
         [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv6-unicast\"\n",
    );
    addr6(&sut, "vs0", "2001:db8:73:1::1/64");
    addr6(&gobgp_ns, "vg0", "2001:db8:73:1::2/64");
    let mut gobgpd = gobgp_ns
        .command("gobgpd")
        .args(["-f", &lab.path("gobgp/gobgpd.toml").display().to_string()])
        .args([
            "-t",
            "toml",
            "--api-hosts",
            "127.0.0.1:50051",
            "--pprof-disable",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("gobgpd");
    let gobgp = |args: &[&str]| {
        let mut a = vec!["gobgp", "-p", "50051"];
        a.extend_from_slice(args);
        let out = gobgp_ns
            .command(a[0])
            .args(&a[1..])
            .output()
            .expect("gobgp");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for(Duration::from_secs(10), "gobgpd to answer", || {
        (!gobgp(&["global"]).is_empty()).then_some(())
    });
    for i in 0..10 {
        gobgp(&[
            "global",
            "rib",
            "add",
            &format!("10.140.{i}.0/24"),
            "nexthop",
            "10.73.1.2",
        ]);
    }
    for i in 0..5 {
        gobgp(&[
            "global",
            "rib",
            "-a",
            "ipv6",
            "add",
            &format!("2001:db8:140:{i}::/64"),
            "nexthop",
            "2001:db8:73:1::2",
        ]);
    }
    services(&lab, false);
    lab.write(
        "bgp.conf",
        "router-id = \"10.73.1.1\"\nlocal-as = 65001\nhold-time = 9\nconnect-retry = \"1s\"\n\
         networks = [\"203.0.113.0/24\", \"2001:db8:ff::/48\"]\n\
         [[neighbor]]\naddress = \"10.73.1.2\"\nremote-as = 65004\nlocal-address = \"10.73.1.1\"\n",
    );
    lab.wrapper = sut.wrapper();
    lab.boot();
    wait_for(
        Duration::from_secs(20),
        "GoBGP's 10 routes in the kernel",
        || (kernel_routes(&sut) == 10).then_some(()),
    );
    wait_for(
        Duration::from_secs(10),
        "our network in GoBGP's RIB",
        || {
            gobgp(&["global", "rib", "203.0.113.0/24"])
                .contains("65001")
                .then_some(())
        },
    );
    // IPv6 both ways.
    wait_for(
        Duration::from_secs(10),
        "GoBGP's 5 IPv6 routes in the kernel",
        || (kernel_routes6(&sut) == 5).then_some(()),
    );
    wait_for(
        Duration::from_secs(10),
        "our IPv6 network in GoBGP's RIB",
        || {
            let r = gobgp(&["global", "rib", "-a", "ipv6", "2001:db8:ff::/48"]);
            (r.contains("65001") && r.contains("2001:db8:73:1::1")).then_some(())
        },
    );
    let s = lab.json(&["show", "bgp", "summary"]);
    assert_eq!(s["neighbors"][0]["state"], "Established", "{s}");
    assert_eq!(s["neighbors"][0]["prefixes_received"], 15, "{s}");
    // A withdrawn route leaves the kernel.
    gobgp(&["global", "rib", "del", "10.140.3.0/24"]);
    wait_for(Duration::from_secs(10), "the withdrawn route gone", || {
        (kernel_routes(&sut) == 9).then_some(())
    });
    let _ = gobgpd.kill();
    let _ = gobgpd.wait();
}

/// RFC 7606 against ExaBGP, which puts arbitrary bytes into path attributes: a malformed
/// COMMUNITIES or MED is treat-as-withdraw for that UPDATE's prefixes, the session stays up, and
/// the good routes stay installed.
#[test]
fn malformed_attributes_are_treat_as_withdraw_not_a_reset() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sut = Netns::new("bgp5-sut");
    let exa_ns = Netns::new("bgp5-exa");
    veth(&sut, "vs0", "10.74.1.1/24", &exa_ns, "ve0", "10.74.1.2/24");
    let mut lab = Lab::new("1s");
    lab.write(
        "exabgp.conf",
        "neighbor 10.74.1.1 {\n  router-id 10.74.1.2;\n  local-address 10.74.1.2;\n  local-as 65005;\n  \
         peer-as 65001;\n  hold-time 9;\n  static {\n    \
         route 10.150.1.0/24 next-hop 10.74.1.2;\n    \
         route 10.150.2.0/24 next-hop 10.74.1.2 attribute [ 0x08 0xc0 0x0102 ];\n    \
         route 10.150.3.0/24 next-hop 10.74.1.2 attribute [ 0x04 0x80 0x010203 ];\n    \
         route 10.150.4.0/24 next-hop 10.74.1.2;\n  }\n}\n",
    );
    let mut exa = exa_ns
        .command("env")
        .args([
            "exabgp_daemon_user=root",
            "exabgp_daemon_drop=false",
            "exabgp_api_cli=false",
            "exabgp_tcp_bind=10.74.1.2",
            "exabgp",
        ])
        .arg(lab.path("exabgp.conf"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("exabgp");
    services(&lab, false);
    lab.write(
        "bgp.conf",
        "router-id = \"10.74.1.1\"\nlocal-as = 65001\nhold-time = 9\nconnect-retry = \"1s\"\n\
         [[neighbor]]\naddress = \"10.74.1.2\"\nremote-as = 65005\nlocal-address = \"10.74.1.1\"\n",
    );
    lab.wrapper = sut.wrapper();
    lab.boot();
    wait_for(
        Duration::from_secs(30),
        "the two good routes in the kernel",
        || (kernel_routes(&sut) == 2).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(1));
    let s = lab.json(&["show", "bgp", "summary"]);
    let n = &s["neighbors"][0];
    assert_eq!(n["state"], "Established", "{s}");
    assert_eq!(n["flaps"], 0, "no session reset: {s}");
    assert_eq!(n["prefixes_received"], 2, "{s}");
    assert_eq!(kernel_routes(&sut), 2);
    let log = lab.service_log_when("bgp", |l| l.contains("treat-as-withdraw"));
    assert!(log.contains("treat-as-withdraw"), "{log}");
    let _ = exa.kill();
    let _ = exa.wait();
}
