//! Fuzzes the chunk store's on-disk decoders: segment records and the peer table.
//!
//! Properties: no panic on any input; a decoded record never claims more bytes
//! than it was given; re-encoding a decoded record reproduces its bytes exactly
//! (the encoding is canonical, so nothing is silently accepted and rewritten).
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_store::{
    decode_peer_table, decode_record, encode_peer_table, encode_record, HEADER_LEN, MAX_CHUNK_BYTES,
};

fuzz_target!(|data: &[u8]| {
    // Walk the input as a segment: a chain of records from offset 0, as the scan does.
    let mut rest = data;
    while let Ok((hdr, used)) = decode_record(rest) {
        assert!(used >= HEADER_LEN && used <= rest.len());
        assert_eq!(used, HEADER_LEN + hdr.len as usize);
        assert!(hdr.len as usize <= MAX_CHUNK_BYTES);
        let again = encode_record(&hdr, &rest[HEADER_LEN..used]);
        assert_eq!(&again[..], &rest[..used]);
        rest = &rest[used..];
    }

    if let Ok(names) = decode_peer_table(data) {
        assert_eq!(encode_peer_table(&names), data);
    }
});
