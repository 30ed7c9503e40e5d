//! Delta payloads from a hostile peer: decoding against any base never panics, never yields
//! more than the announced length, and a success yields exactly that length.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let len = u16::from_le_bytes([data[0], data[1]]) as usize;
    let split = (data[2] as usize).min(data.len() - 3);
    let (prefix, payload) = data[3..].split_at(split);
    let mut out = Vec::new();
    if strait_sketch::DeltaDecoder::new()
        .decode(prefix, payload, len, &mut out)
        .is_ok()
    {
        assert_eq!(out.len(), len);
    }
});
