#![allow(clippy::unwrap_used)]
use super::*;
use proptest::prelude::*;

fn roundtrip(f: &Frame) -> Frame {
    let mut out = BytesMut::new();
    f.encode(&mut out);
    let (frames, rest) = decode_all(&out).unwrap();
    assert_eq!(rest, 0);
    assert_eq!(frames.len(), 1);
    frames.into_iter().next().unwrap()
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let id = prop::array::uniform32(any::<u8>());
    prop_oneof![
        (any::<u16>(), prop::array::uniform16(any::<u8>())).prop_map(
            |(version, key_fingerprint)| {
                Frame::Hello {
                    version,
                    key_fingerprint,
                }
            }
        ),
        any::<u16>().prop_map(|version| Frame::HelloOk { version }),
        ("[a-z0-9-]{0,40}", "[a-z0-9-]{0,40}")
            .prop_map(|(service, route)| Frame::Open { service, route }),
        Just(Frame::OpenOk),
        ".{0,100}".prop_map(|reason| Frame::Refuse {
            code: RefuseCode::UnknownService,
            reason
        }),
        (
            id,
            any::<u8>(),
            0u32..1_000_000,
            prop::collection::vec(any::<u8>(), 0..2000)
        )
            .prop_map(|(id, codec, len, p)| Frame::Literal {
                id,
                codec,
                len,
                payload: Bytes::from(p)
            }),
        (
            id,
            any::<u8>(),
            0u32..1_000_000,
            prop::collection::vec(any::<u8>(), 0..2000)
        )
            .prop_map(|(id, codec, len, p)| Frame::Supply {
                id,
                codec,
                len,
                payload: Bytes::from(p)
            }),
        prop::collection::vec((id, 0u32..1_000_000), 0..50).prop_map(|v| Frame::Refs(
            v.into_iter()
                .map(|(id, len)| ChunkRef { id, len })
                .collect()
        )),
        (
            id,
            any::<u8>(),
            0u32..1_000_000,
            prop::collection::vec((id, 0u32..1_000_000), 1..=MAX_DELTA_BASES),
            prop::collection::vec(any::<u8>(), 0..2000)
        )
            .prop_map(|(id, codec, len, b, p)| Frame::Delta {
                id,
                codec,
                len,
                bases: b
                    .into_iter()
                    .map(|(id, len)| ChunkRef { id, len })
                    .collect(),
                payload: Bytes::from(p)
            }),
        Just(Frame::End),
        prop::collection::vec(id, 0..50).prop_map(Frame::Want),
        any::<u64>().prop_map(Frame::Ack),
    ]
}

proptest! {
    #[test]
    fn every_frame_roundtrips(f in arb_frame()) {
        prop_assert_eq!(roundtrip(&f), f);
    }

    #[test]
    fn frames_split_anywhere_decode_identically(fs in prop::collection::vec(arb_frame(), 1..8), cut in any::<prop::sample::Index>()) {
        let mut out = BytesMut::new();
        for f in &fs { f.encode(&mut out); }
        let at = cut.index(out.len() + 1);
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        d.extend(&out[..at]);
        while let Some((f, _)) = d.next_frame().unwrap() { got.push(f); }
        d.extend(&out[at..]);
        while let Some((f, _)) = d.next_frame().unwrap() { got.push(f); }
        prop_assert_eq!(got, fs);
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = decode_all(&data);
    }
}

#[test]
fn oversized_frame_length_is_rejected_before_buffering() {
    let mut d = FrameDecoder::new();
    let mut hdr = vec![T_LITERAL];
    hdr.extend_from_slice(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes());
    d.extend(&hdr);
    assert_eq!(
        d.next_frame().unwrap_err(),
        Error::FrameTooLong {
            len: MAX_FRAME_LEN + 1,
            max: MAX_FRAME_LEN
        }
    );
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut out = BytesMut::new();
    Frame::Ack(7).encode(&mut out);
    // Grow the announced body by one byte and append it.
    out[4] += 1;
    out.put_u8(0);
    assert_eq!(
        decode_all(&out).unwrap_err(),
        Error::Trailing {
            ty: T_ACK,
            extra: 1
        }
    );
}

#[test]
fn reference_count_over_cap_is_rejected() {
    let mut body = BytesMut::new();
    body.put_u16((MAX_REFS_PER_FRAME + 1) as u16);
    let err = Frame::decode_body(T_REFS, body.freeze()).unwrap_err();
    assert!(matches!(
        err,
        Error::OverLimit {
            what: "reference count",
            ..
        }
    ));
}

#[test]
fn literal_claiming_huge_decoded_length_is_rejected() {
    let mut out = BytesMut::new();
    Frame::Literal {
        id: [1; 32],
        codec: 1,
        len: (MAX_CHUNK_LEN + 1) as u32,
        payload: Bytes::from_static(b"x"),
    }
    .encode(&mut out);
    assert!(matches!(
        decode_all(&out).unwrap_err(),
        Error::OverLimit {
            what: "chunk length",
            ..
        }
    ));
}

#[test]
fn unknown_type_is_named() {
    let err = Frame::decode_body(0x7f, Bytes::new()).unwrap_err();
    assert_eq!(err.to_string(), "unknown frame type 0x7f");
}

#[test]
fn encode_chunk_matches_frame_encoding() {
    for supply in [false, true] {
        let payload = Bytes::from_static(b"some payload bytes");
        let f = if supply {
            Frame::Supply {
                id: [9; 32],
                codec: 2,
                len: 99,
                payload: payload.clone(),
            }
        } else {
            Frame::Literal {
                id: [9; 32],
                codec: 2,
                len: 99,
                payload: payload.clone(),
            }
        };
        let mut a = BytesMut::new();
        f.encode(&mut a);
        let mut b = BytesMut::new();
        Frame::encode_chunk(&mut b, supply, &[9; 32], 2, 99, &payload);
        assert_eq!(a, b);
    }
}

#[test]
fn encode_delta_matches_frame_encoding() {
    let bases = vec![
        ChunkRef {
            id: [1; 32],
            len: 10,
        },
        ChunkRef {
            id: [2; 32],
            len: 20,
        },
    ];
    let f = Frame::Delta {
        id: [9; 32],
        codec: DELTA_ZSTD_PREFIX,
        len: 99,
        bases: bases.clone(),
        payload: Bytes::from_static(b"delta bytes"),
    };
    let mut a = BytesMut::new();
    f.encode(&mut a);
    let mut b = BytesMut::new();
    Frame::encode_delta(
        &mut b,
        &[9; 32],
        DELTA_ZSTD_PREFIX,
        99,
        &bases,
        b"delta bytes",
    );
    assert_eq!(a, b);
    assert_eq!(a.len(), Frame::delta_overhead(2) + 11);
}

#[test]
fn delta_with_zero_or_too_many_bases_is_rejected() {
    for n in [0usize, MAX_DELTA_BASES + 1] {
        let mut body = vec![0u8; 32];
        body.push(DELTA_ZSTD_PREFIX);
        body.extend_from_slice(&100u32.to_be_bytes());
        body.push(n as u8);
        for _ in 0..n {
            body.extend_from_slice(&[3u8; 32]);
            body.extend_from_slice(&5u32.to_be_bytes());
        }
        let err = Frame::decode_body(0x14, Bytes::from(body)).unwrap_err();
        assert!(
            matches!(err, Error::OverLimit { value, .. } if value == n),
            "{err}"
        );
    }
}

#[test]
fn delta_with_oversized_base_length_is_rejected() {
    let mut body = vec![0u8; 32];
    body.push(DELTA_ZSTD_PREFIX);
    body.extend_from_slice(&100u32.to_be_bytes());
    body.push(1);
    body.extend_from_slice(&[3u8; 32]);
    body.extend_from_slice(&(MAX_CHUNK_LEN as u32 + 1).to_be_bytes());
    let err = Frame::decode_body(0x14, Bytes::from(body)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "base chunk length {} exceeds limit {MAX_CHUNK_LEN}",
            MAX_CHUNK_LEN + 1
        )
    );
}
