//! Entry point for fuzz targets (the fuzz crate lives outside this one).

use crate::{CodecId, Decoder, MAX_CHUNK_LEN};

/// Largest expected length a fuzz input can announce: big enough to cover every code path,
/// small enough to keep executions fast.
pub const FUZZ_MAX_LEN: usize = 1 << 20;

/// Interprets `data` as `[codec u8][expected_len u24 LE][payload...]` and decodes it. Panics
/// only if the decoder breaks its contract (an `Ok` with the wrong length, or `out` modified on
/// error).
pub fn fuzz_decode(data: &[u8]) {
    let Some((head, payload)) = data.split_first_chunk::<4>() else {
        return;
    };
    let Ok(codec) = CodecId::try_from(head[0] & 3) else {
        return;
    };
    let expected = (usize::from(head[1]) | usize::from(head[2]) << 8 | usize::from(head[3]) << 16)
        .min(FUZZ_MAX_LEN)
        .min(MAX_CHUNK_LEN);
    let mut decoder = Decoder::new();
    let mut out = vec![0xAA];
    match decoder.decode(codec, payload, expected, &mut out) {
        Ok(()) => assert_eq!(out.len(), 1 + expected, "decoded length"),
        Err(_) => assert_eq!(out, [0xAA], "output changed on error"),
    }
}
