//! Literal payloads from a hostile peer: every codec's decoder rejects garbage without panicking
//! and never allocates more than the announced length.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strait_codec::fuzzing::fuzz_decode(data);
});
