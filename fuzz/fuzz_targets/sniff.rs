//! Sniffers and the tar walker on arbitrary payload prefixes: no panic, and anything named must
//! be stable when more bytes of the same payload follow (the sniffers are prefix-based).
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_classify::{sniff_detail, tar_members, Format, SNIFF_PREFIX_LEN};

fuzz_target!(|data: &[u8]| {
    let detail = sniff_detail(data);
    if let Some(s) = detail {
        // Names round-trip, and the prefix window is honoured.
        assert_eq!(Format::from_name(s.format.name()), Some(s.format));
        if data.len() > SNIFF_PREFIX_LEN {
            assert_eq!(sniff_detail(&data[..SNIFF_PREFIX_LEN]), detail);
        }
    }
    if let Ok(index) = tar_members(data) {
        for m in &index.members {
            assert_eq!(m.header_offset % 512, 0);
            assert!(m.next_header_offset() > m.header_offset);
        }
    }
});
