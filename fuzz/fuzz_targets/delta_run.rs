//! `DeltaRun` frames from a hostile peer: decoding never panics, a decoded run re-encodes to the
//! same bytes (the encoding is canonical), and every item count stays within its cap.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = bytes::Bytes::copy_from_slice(data);
    if let Ok(f @ strait_wire::Frame::DeltaRun { .. }) = strait_wire::Frame::decode_body(0x15, body)
    {
        if let strait_wire::Frame::DeltaRun { items, .. } = &f {
            assert!(!items.is_empty() && items.len() <= strait_wire::MAX_RUN_ITEMS);
        }
        let mut out = bytes::BytesMut::new();
        f.encode(&mut out);
        assert_eq!(&out[5..], data);
    }
});
