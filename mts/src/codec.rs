//! The payload codec: the only module that names the serialisation crate, so it can be swapped
//! (bincode 1.3.3 today; 3.0.0 is a tombstone release) without touching any caller.

use serde::{Serialize, de::DeserializeOwned};

use crate::MtsError;

/// Encode a value as an MTS payload.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, MtsError> {
    bincode::serialize(value).map_err(|e| MtsError::Encode(e.to_string()))
}

/// Decode an MTS payload. Never panics on hostile bytes; the size limit caps allocations.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MtsError> {
    use bincode::Options;
    bincode::options()
        .with_fixint_encoding()
        .with_limit(bytes.len() as u64 + 1024)
        .deserialize(bytes)
        .map_err(|e| MtsError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage_is_an_error() {
        let v = (7u32, "bgp".to_string(), vec![1u8, 2, 3]);
        let b = encode(&v).expect("encode");
        assert_eq!(decode::<(u32, String, Vec<u8>)>(&b).expect("decode"), v);
        // A string whose length prefix claims far more bytes than exist must fail, not allocate.
        let mut bad = vec![0u8; 4];
        bad.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<(u32, String)>(&bad).is_err());
    }
}
