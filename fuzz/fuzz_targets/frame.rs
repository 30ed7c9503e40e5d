//! Tunnel frames from a hostile peer: decoding never panics, and whatever decodes survives an
//! encode → decode round trip unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = strait_wire::FrameDecoder::new();
    d.extend(data);
    while let Ok(Some((frame, _))) = d.next_frame() {
        let mut out = bytes::BytesMut::new();
        frame.encode(&mut out);
        let (again, rest) = strait_wire::decode_all(&out).expect("re-encoded frame decodes");
        assert_eq!(rest, 0);
        assert_eq!(again, vec![frame]);
    }
});
