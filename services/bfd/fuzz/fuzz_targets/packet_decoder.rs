//! Arbitrary bytes as a BFD Control packet, then into a session: decoding must accept or reject
//! without panicking, what it accepts must re-encode to the same 24 bytes, and a session must
//! take any accepted packet without panicking.
#![no_main]

use std::time::{Duration, Instant};

use bfd::fsm::{Session, Timers};
use bfd::packet::ControlPacket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = ControlPacket::decode(data) else {
        return;
    };
    let mut again = p.encode();
    // Only the length byte may differ (longer packets are accepted, re-encoded as 24 bytes).
    again[3] = data[3];
    assert_eq!(&again[..], &data[..24]);
    let t0 = Instant::now();
    let timers = Timers {
        desired_min_tx: 50_000,
        required_min_rx: 50_000,
        detect_mult: 3,
    };
    let mut s = Session::new(1, timers, t0, 7);
    let _ = s.on_packet(t0, &p);
    let _ = s.on_timer(t0 + Duration::from_secs(1));
    let _ = s.detection_time();
    let _ = s.tx_interval();
});
