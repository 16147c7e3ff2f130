//! Connection collision (RFC 4271 §6.8) with the real bgp under sysmgr: the peer side is a
//! hand-driven BGP speaker on real sockets in its own namespace, so both connections exist at
//! once deterministically. The connection opened by the speaker with the higher BGP
//! Identifier stays; the other is closed with NOTIFICATION Cease / Connection Collision
//! Resolution (6/7), and the session comes up exactly once.
//!
//! ```text
//!   ns bgpc-peer  vp0 10.78.1.2 (AS 65002, BGP ID 10.78.1.2) ──veth── vs0 10.78.1.1  ns bgpc-sut
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use sysmgr_tests::netns::{Netns, spawn_in_netns, veth};
use sysmgr_tests::{Lab, bin, is_root, wait_for};

static SERIAL: Mutex<()> = Mutex::new(());

fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

/// OPEN: version 4, AS 65002, hold 9, BGP Identifier 10.78.1.2, no parameters.
fn open() -> Vec<u8> {
    let mut b = vec![4];
    b.extend_from_slice(&65002u16.to_be_bytes());
    b.extend_from_slice(&9u16.to_be_bytes());
    b.extend_from_slice(&[10, 78, 1, 2, 0]);
    msg(1, &b)
}

/// (type, body), or None at the end of the stream.
fn read_msg(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 19];
    s.read_exact(&mut h).ok()?;
    let len = usize::from(u16::from_be_bytes([h[16], h[17]]));
    let mut body = vec![0u8; len.saturating_sub(19)];
    s.read_exact(&mut body).ok()?;
    Some((h[18], body))
}

/// Who wins, seen from the peer: `peer_wins` when our router id is the lower one.
fn collide(router_id: &str, peer_wins: bool) {
    if !is_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sut = Netns::new("bgpc-sut");
    let peer = Netns::new("bgpc-peer");
    veth(&sut, "vs0", "10.78.1.1/24", &peer, "vp0", "10.78.1.2/24");
    let mut lab = Lab::new("1s");
    lab.write(
        "bgp.toml",
        &format!(
            "command = [{:?}, \"--config\", \"bgp.conf\"]\nreadiness = \"notify\"\n\
             restart = [\"stateless\"]\n[saps]\nbgp = 179\n",
            bin("bgp").display().to_string()
        ),
    );
    lab.write(
        "bgp.conf",
        &format!(
            "router-id = \"{router_id}\"\nlocal-as = 65001\nhold-time = 9\nconnect-retry = \"1s\"\n\
             [[neighbor]]\naddress = \"10.78.1.2\"\nremote-as = 65002\nlocal-address = \"10.78.1.1\"\n"
        ),
    );
    // The peer listens first, so our first connection reaches it.
    let listener = spawn_in_netns(&peer, || {
        TcpListener::bind("10.78.1.2:179").expect("bind 179")
    })
    .join()
    .expect("listener");
    lab.wrapper = sut.wrapper();
    lab.boot();
    let side = spawn_in_netns(&peer, move || {
        let t = Some(Duration::from_secs(15));
        // Ours: OPEN, then we leave it in OpenSent.
        let (mut ours, _) = listener.accept().expect("our connection");
        ours.set_read_timeout(t).expect("timeout");
        assert_eq!(read_msg(&mut ours).map(|m| m.0), Some(1), "our OPEN");
        // Theirs, while ours waits: bgp answers with its OPEN too.
        let mut theirs = TcpStream::connect("10.78.1.1:179").expect("connect to bgp");
        theirs.set_read_timeout(t).expect("timeout");
        assert_eq!(
            read_msg(&mut theirs).map(|m| m.0),
            Some(1),
            "OPEN on the peer's connection"
        );
        theirs.write_all(&open()).expect("OPEN");
        let (mut stays, mut goes) = if peer_wins {
            (theirs, ours)
        } else {
            (ours, theirs)
        };
        assert_eq!(
            read_msg(&mut goes),
            Some((3, vec![6, 7])),
            "NOTIFICATION Cease / Connection Collision Resolution on the losing connection"
        );
        assert_eq!(read_msg(&mut goes), None, "the losing connection closes");
        if !peer_wins {
            stays.write_all(&open()).expect("OPEN");
        }
        assert_eq!(
            read_msg(&mut stays).map(|m| m.0),
            Some(4),
            "KEEPALIVE (OpenConfirm)"
        );
        stays.write_all(&msg(4, &[])).expect("KEEPALIVE");
        stays
    })
    .join()
    .expect("the peer's side");
    wait_for(Duration::from_secs(10), "Established", || {
        let s = lab.json(&["show", "bgp", "summary"]);
        (s["neighbors"][0]["state"] == "Established").then_some(())
    });
    drop(side);
}

#[test]
fn collision_keeps_the_peers_connection_when_its_identifier_is_higher() {
    collide("10.78.1.1", true);
}

#[test]
fn collision_keeps_our_connection_when_our_identifier_is_higher() {
    collide("10.78.1.200", false);
}
