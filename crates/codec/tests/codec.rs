#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use strait_codec::fuzzing::fuzz_decode;
use strait_codec::testdata::{
    bf16_weights, fp16_weights, fp32_weights, jsonl_text, random_bytes, Rng,
};
use strait_codec::{
    CodecId, CompressConfig, Decoder, Encoder, Error, MAX_CHUNK_LEN, MAX_KEPT_PERMILLE,
};

const ALL: [CodecId; 4] = [
    CodecId::Raw,
    CodecId::Zstd,
    CodecId::ByteGroup2Zstd,
    CodecId::ByteGroup4Zstd,
];

fn cfg(level: i32) -> CompressConfig {
    CompressConfig {
        level: Some(level),
        tensor: true,
    }
}

/// Data of one of several kinds, `len` bytes, from `seed`.
fn sample(kind: u8, seed: u64, len: usize) -> Vec<u8> {
    let mut v = match kind % 6 {
        0 => random_bytes(seed, len),
        1 => jsonl_text(seed, len),
        2 => bf16_weights(seed, len / 2 + 1),
        3 => fp32_weights(seed, len / 4 + 1),
        4 => fp16_weights(seed, len / 2 + 1),
        _ => {
            // Mostly zeros with sparse noise: extreme ratios.
            let mut v = vec![0u8; len];
            let mut rng = Rng::new(seed);
            for _ in 0..len / 100 {
                let i = rng.below(len.max(1));
                if let Some(b) = v.get_mut(i) {
                    *b = rng.next_u64() as u8;
                }
            }
            v
        }
    };
    v.truncate(len);
    v
}

fn round_trip(codec: CodecId, payload: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![7, 7];
    Decoder::new()
        .decode(codec, payload, len, &mut out)
        .unwrap();
    assert_eq!(&out[..2], &[7, 7], "decode must append");
    out.split_off(2)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_forced_codec_round_trips(kind in 0u8..6, seed in any::<u64>(), len in 0usize..150_000) {
        let data = sample(kind, seed, len);
        let mut enc = Encoder::new(cfg(1));
        for codec in ALL {
            let mut payload = Vec::new();
            enc.encode_as(codec, &data, &mut payload).unwrap();
            prop_assert_eq!(round_trip(codec, &payload, data.len()), data.clone());
        }
    }

    #[test]
    fn chosen_codec_round_trips_and_never_expands(
        kind in 0u8..6,
        seed in any::<u64>(),
        len in 0usize..150_000,
        level in 1i32..4,
        tensor in any::<bool>(),
    ) {
        let data = sample(kind, seed, len);
        let mut enc = Encoder::new(CompressConfig { level: Some(level), tensor });
        let mut payload = vec![1, 2, 3];
        let codec = enc.encode(&data, &mut payload);
        prop_assert_eq!(&payload[..3], &[1, 2, 3]);
        let payload = &payload[3..];
        if codec == CodecId::Raw {
            prop_assert_eq!(payload, &data[..]);
        } else {
            prop_assert!(payload.len() * 1000 <= data.len() * MAX_KEPT_PERMILLE);
        }
        if !tensor {
            prop_assert!(matches!(codec, CodecId::Raw | CodecId::Zstd));
        }
        prop_assert_eq!(round_trip(codec, payload, data.len()), data);
    }
}

#[test]
fn random_chunks_are_sent_raw_with_exactly_their_bytes() {
    let mut enc = Encoder::new(cfg(3));
    for (seed, len) in [(1, 65_536), (2, 16_384), (3, 262_144), (4, 3000), (5, 64)] {
        let data = random_bytes(seed, len);
        let mut out = Vec::new();
        assert_eq!(enc.encode(&data, &mut out), CodecId::Raw);
        assert_eq!(out, data);
    }
    // Only the 64-byte chunk (too small to sample separately) may have been tried with zstd.
    let stats = enc.stats();
    assert_eq!(stats.chunks, 5);
    assert!(stats.raw_by_probe >= 3, "{stats:?}");
    assert_eq!(stats.attempts, stats.attempts_rejected);
}

#[test]
fn high_entropy_chunks_with_long_repeats_are_still_compressed() {
    // Each byte value is equally likely, but the chunk is one 1 KiB block repeated: the LZ
    // probe must catch what the histogram cannot.
    let block = random_bytes(8, 1024);
    let data = block.repeat(64);
    for tensor in [false, true] {
        let mut enc = Encoder::new(CompressConfig {
            level: Some(1),
            tensor,
        });
        let (codec, r) = ratio(&mut enc, &data);
        assert_ne!(codec, CodecId::Raw);
        assert!(r > 10.0, "tensor {tensor}: {codec:?} ratio {r}");
    }
}

#[test]
fn compression_off_sends_everything_raw() {
    let mut enc = Encoder::new(CompressConfig {
        level: None,
        tensor: true,
    });
    let text = jsonl_text(1, 65_536);
    let mut out = Vec::new();
    assert_eq!(enc.encode(&text, &mut out), CodecId::Raw);
    assert_eq!(out, text);
}

fn ratio(enc: &mut Encoder, data: &[u8]) -> (CodecId, f64) {
    let mut out = Vec::new();
    let codec = enc.encode(data, &mut out);
    assert_eq!(round_trip(codec, &out, data.len()), data);
    (codec, data.len() as f64 / out.len() as f64)
}

#[test]
fn text_is_zstd_compressed_at_least_threefold() {
    let (codec, r) = ratio(&mut Encoder::new(cfg(3)), &jsonl_text(9, 65_536));
    assert_eq!(codec, CodecId::Zstd);
    assert!(r > 3.0, "ratio {r}");
}

#[test]
fn float_weights_pick_byte_grouping_and_beat_plain_zstd() {
    let mut tensor = Encoder::new(cfg(3));
    let mut plain = Encoder::new(CompressConfig {
        level: Some(3),
        tensor: false,
    });
    let cases = [
        (
            "bf16",
            bf16_weights(11, 32_768),
            CodecId::ByteGroup2Zstd,
            1.40,
        ),
        (
            "fp16",
            fp16_weights(12, 32_768),
            CodecId::ByteGroup2Zstd,
            1.15,
        ),
        (
            "fp32",
            fp32_weights(13, 16_384),
            CodecId::ByteGroup4Zstd,
            1.15,
        ),
    ];
    for (name, data, want, min_ratio) in cases {
        let (codec, r) = ratio(&mut tensor, &data);
        let (_, r_plain) = ratio(&mut plain, &data);
        assert_eq!(codec, want, "{name}");
        assert!(r >= min_ratio, "{name}: ratio {r:.3}");
        assert!(r > r_plain, "{name}: grouped {r:.3} vs plain {r_plain:.3}");
    }
}

#[test]
fn unaligned_tensor_chunks_still_group() {
    // CDC cuts anywhere, so a chunk may start in the middle of an element.
    let data = bf16_weights(5, 40_000);
    let (codec, r) = ratio(&mut Encoder::new(cfg(1)), &data[1..65_538]);
    assert_eq!(codec, CodecId::ByteGroup2Zstd);
    assert!(r > 1.35, "ratio {r}");
}

fn valid_payloads() -> Vec<(CodecId, Vec<u8>, usize)> {
    let mut enc = Encoder::new(cfg(1));
    let mut v = Vec::new();
    for (codec, data) in [
        (CodecId::Raw, jsonl_text(1, 5000)),
        (CodecId::Zstd, jsonl_text(2, 5000)),
        (CodecId::ByteGroup2Zstd, bf16_weights(3, 2501)),
        (CodecId::ByteGroup4Zstd, fp32_weights(4, 1251)),
    ] {
        let mut p = Vec::new();
        enc.encode_as(codec, &data, &mut p).unwrap();
        v.push((codec, p, data.len()));
    }
    v
}

#[test]
fn truncated_payloads_are_rejected_and_leave_output_untouched() {
    let mut dec = Decoder::new();
    for (codec, payload, len) in valid_payloads() {
        for cut in 0..payload.len() {
            let mut out = vec![1];
            assert!(
                dec.decode(codec, &payload[..cut], len, &mut out).is_err(),
                "{codec:?} cut at {cut}"
            );
            assert_eq!(out, [1]);
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert!(dec.decode(codec, &longer, len, &mut Vec::new()).is_err());
    }
}

#[test]
fn wrong_expected_lengths_are_rejected() {
    let mut dec = Decoder::new();
    for (codec, payload, len) in valid_payloads() {
        for wrong in [0, len - 1, len + 1, len * 2] {
            let err = dec
                .decode(codec, &payload, wrong, &mut Vec::new())
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::LengthMismatch { .. } | Error::Zstd { .. } | Error::Malformed { .. }
                ),
                "{codec:?} len {wrong}: {err}"
            );
        }
    }
    let err = dec
        .decode(CodecId::Zstd, &[], MAX_CHUNK_LEN + 1, &mut Vec::new())
        .unwrap_err();
    assert_eq!(
        err,
        Error::TooLong {
            len: MAX_CHUNK_LEN + 1,
            max: MAX_CHUNK_LEN
        }
    );
    assert_eq!(
        dec.decode(CodecId::Raw, b"abc", 4, &mut Vec::new())
            .unwrap_err()
            .to_string(),
        "Raw payload decodes to 3 bytes, expected 4"
    );
}

#[test]
fn unknown_codec_bytes_are_named_in_the_error() {
    for b in 0u8..=3 {
        assert_eq!(u8::from(CodecId::try_from(b).unwrap()), b);
    }
    let err = CodecId::try_from(9).unwrap_err();
    assert_eq!(err, Error::UnknownCodec { value: 9 });
    assert_eq!(err.to_string(), "unknown codec id 9");
}

#[test]
fn malformed_group_headers_are_rejected() {
    let mut dec = Decoder::new();
    let (_, payload, len) = valid_payloads().swap_remove(2);
    let mut bad_flags = payload.clone();
    bad_flags[0] |= 0x80;
    let mut bad_len = payload.clone();
    bad_len[1] ^= 1;
    for p in [bad_flags, bad_len] {
        let err = dec
            .decode(CodecId::ByteGroup2Zstd, &p, len, &mut Vec::new())
            .unwrap_err();
        assert!(
            matches!(err, Error::Malformed { .. } | Error::Zstd { .. }),
            "{err}"
        );
    }
}

#[test]
fn garbage_and_bit_flipped_payloads_never_panic() {
    let mut rng = Rng::new(77);
    for i in 0..3000u64 {
        let len = rng.below(600);
        let mut input = random_bytes(i, len);
        if let Some(b) = input.get_mut(3) {
            *b = 0; // keep announced lengths small so most cases reach the codecs
        }
        fuzz_decode(&input);
    }
    for (codec, payload, len) in valid_payloads() {
        for _ in 0..300 {
            let mut p = payload.clone();
            let i = rng.below(p.len());
            p[i] ^= 1 << rng.below(8);
            let mut input = vec![codec as u8, len as u8, (len >> 8) as u8, (len >> 16) as u8];
            input.extend_from_slice(&p);
            fuzz_decode(&input);
        }
    }
}

#[test]
fn a_thousand_encoders_and_decoders_share_their_threads_few_contexts_with_identical_output() {
    use strait_codec::{
        pooled_decoders, pooled_encoders, POOLED_DECODERS_PER_THREAD, POOLED_ENCODERS_PER_THREAD,
    };
    // One encoder and decoder per flow, as a core with 1,000 flows has: each borrows its
    // thread's context for a call, so the thread holds at most the pool's bound of contexts,
    // and what a fresh, unpooled encoder writes is what the pooled ones write.
    let chunks: Vec<Vec<u8>> = (0..6u8)
        .map(|k| sample(k, 700 + u64::from(k), 64 << 10))
        .collect();
    let mut reference = Vec::new();
    for c in &chunks {
        let mut out = Vec::new();
        let codec = Encoder::new(cfg(3)).encode(c, &mut out);
        reference.push((codec, out));
    }
    let mut encoders: Vec<Encoder> = (0..1000)
        .map(|i| Encoder::new(cfg(if i % 3 == 0 { 1 } else { 3 })))
        .collect();
    let mut decoders: Vec<Decoder> = (0..1000).map(|_| Decoder::new()).collect();
    for (i, (enc, dec)) in encoders.iter_mut().zip(&mut decoders).enumerate() {
        let k = i % chunks.len();
        let mut out = Vec::new();
        let codec = enc.encode(&chunks[k], &mut out);
        if i % 3 != 0 {
            assert_eq!(
                (codec, &out),
                (reference[k].0, &reference[k].1),
                "encoder {i}"
            );
        }
        let mut back = Vec::new();
        dec.decode(codec, &out, chunks[k].len(), &mut back).unwrap();
        assert_eq!(back, chunks[k], "round trip {i}");
        assert!(pooled_encoders() <= POOLED_ENCODERS_PER_THREAD);
        assert!(pooled_decoders() <= POOLED_DECODERS_PER_THREAD);
    }
    // Both levels' contexts and a decompression context wait in the pool for the next call.
    assert!(pooled_encoders() >= 2, "{}", pooled_encoders());
    assert!(pooled_decoders() >= 1);
}
