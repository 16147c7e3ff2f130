//! Arbitrary bytes as an MTS stream: headers, frames and broker payloads must decode or fail
//! cleanly, never panic or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mts::frame::{DEFAULT_MAX_PAYLOAD, HEADER_LEN, Header};

fuzz_target!(|data: &[u8]| {
    if data.len() >= HEADER_LEN {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&data[..HEADER_LEN]);
        if let Ok(hd) = Header::decode(&h, DEFAULT_MAX_PAYLOAD) {
            assert!(hd.len <= DEFAULT_MAX_PAYLOAD);
            assert_eq!(hd.encode()[4..36], h[4..36]);
        }
    }
    let mut r = data;
    while let Ok(f) = mts::io::read_frame(&mut r, 1 << 20) {
        let _ = mts::codec::decode::<mts::proto::Bind>(&f.payload);
        let _ = mts::codec::decode::<mts::proto::Ack>(&f.payload);
        let _ = mts::codec::decode::<mts::proto::Subscribe>(&f.payload);
        let _ = mts::codec::decode::<String>(&f.payload);
        let _ = f.into_result();
    }
});
