//! Arbitrary bytes as a BGP byte stream, as the session reader sees it: framing, decoding and
//! turning UPDATEs into routes must accept or refuse, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        match bgp::wire::complete_len(&data[at..]) {
            Ok(Some(n)) if at + n <= data.len() && n > 0 => {
                if let Ok(bgp::wire::Msg::Update(u)) = bgp::wire::decode(&data[at..at + n]) {
                    let _ = bgp::wire::routes(&u, true);
                    let _ = bgp::wire::routes(&u, false);
                }
                at += n;
            }
            _ => break,
        }
    }
});
