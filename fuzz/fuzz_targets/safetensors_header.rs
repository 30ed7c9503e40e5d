//! The safetensors header parser on hostile input: no panic, bounded work, and any accepted
//! header describes tensors that tile the data region exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_classify::{parse_safetensors_header, MAX_SAFETENSORS_HEADER};

fuzz_target!(|data: &[u8]| {
    // Also exercise the length path with a consistent prefix, which raw fuzz bytes rarely hit.
    let mut framed = (data.len() as u64).to_le_bytes().to_vec();
    framed.extend_from_slice(data);
    for input in [data, framed.as_slice()] {
        if let Ok(h) = parse_safetensors_header(input) {
            assert!(h.header_len <= MAX_SAFETENSORS_HEADER);
            let mut expected = 0;
            for t in &h.tensors {
                assert_eq!(t.start, expected);
                assert!(t.end >= t.start);
                expected = t.end;
            }
            assert_eq!(h.data_len(), expected);
        }
    }
});
