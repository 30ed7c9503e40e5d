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

fn arb_run_item() -> impl Strategy<Value = RunItem> {
    let base = prop_oneof![
        (1..=MAX_NEXT_STEPS).prop_map(BaseRef::Next),
        prop::array::uniform8(any::<u8>()).prop_map(BaseRef::Prefix),
        prop::array::uniform32(any::<u8>()).prop_map(BaseRef::Id),
    ];
    let max = MAX_CHUNK_LEN as i32;
    (base, prop::option::of(-max..=max)).prop_map(|(base, d)| match d {
        None => RunItem::Same(base),
        Some(len_diff) => RunItem::Delta { base, len_diff },
    })
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let id = prop::array::uniform32(any::<u8>());
    prop_oneof![
        (
            any::<u16>(),
            prop::array::uniform16(any::<u8>()),
            1..=MAX_CHUNK_LEN as u32
        )
            .prop_map(|(version, key_fingerprint, max_chunk)| {
                Frame::Hello {
                    version,
                    key_fingerprint,
                    max_chunk,
                }
            }),
        (any::<u16>(), 1..=MAX_CHUNK_LEN as u32)
            .prop_map(|(version, max_chunk)| Frame::HelloOk { version, max_chunk }),
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
        (
            id,
            prop::collection::vec(arb_run_item(), 1..40),
            prop::collection::vec(any::<u8>(), 0..2000)
        )
            .prop_map(|(digest, items, p)| Frame::DeltaRun {
                digest,
                items,
                payload: Bytes::from(p)
            }),
        (id, 1u32..1_000_000, any::<u32>(), any::<u32>()).prop_map(|(id, len, a, b)| {
            let from = a % len;
            let to = from + 1 + b % (len - from);
            Frame::Part { id, len, from, to }
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
        // Drained: the decoder holds no allocation (an idle flow costs none).
        prop_assert_eq!(d.allocated(), 0);
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

fn run_body(count: &[u8], items: &[u8]) -> Bytes {
    let mut b = vec![7u8; ID_LEN];
    b.extend_from_slice(count);
    b.extend_from_slice(items);
    Bytes::from(b)
}

#[test]
fn delta_run_with_zero_or_too_many_items_is_rejected() {
    for count in [vec![0u8], vec![0x81, 0x02]] {
        let e = Frame::decode_body(T_DELTA_RUN, run_body(&count, &[0; 300])).unwrap_err();
        assert!(
            matches!(e, Error::OverLimit { what, .. } if what.starts_with("delta run item count")),
            "{e}"
        );
    }
}

#[test]
fn delta_run_with_a_malformed_varint_is_rejected() {
    // Not minimal (0x80 0x00), and longer than 5 bytes.
    for count in [vec![0x80, 0x00], vec![0xff; 6]] {
        let e = Frame::decode_body(T_DELTA_RUN, run_body(&count, &[])).unwrap_err();
        assert!(matches!(e, Error::BadVarint { .. }), "{e}");
    }
}

#[test]
fn delta_run_with_an_undefined_item_tag_is_rejected() {
    // Base kind 3 is undefined; a prefix reference with steps bits set is not canonical.
    for tag in [0x06u8, 0x0a] {
        let e = Frame::decode_body(T_DELTA_RUN, run_body(&[1], &[tag; 40])).unwrap_err();
        assert_eq!(e, Error::BadRunItem { index: 0, tag });
    }
}

#[test]
fn delta_run_with_an_oversized_length_difference_is_rejected() {
    let mut items = vec![0x01u8]; // Delta, Next(1)
    let diff = ((MAX_CHUNK_LEN as u32) + 1) << 1; // zigzag of a positive value
    let mut v = diff;
    while v >= 0x80 {
        items.push((v as u8) | 0x80);
        v >>= 7;
    }
    items.push(v as u8);
    let e = Frame::decode_body(T_DELTA_RUN, run_body(&[1], &items)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::OverLimit {
                what: "delta run length difference",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn truncated_delta_run_item_is_rejected() {
    // A prefix reference missing its 8 bytes.
    let e = Frame::decode_body(T_DELTA_RUN, run_body(&[1], &[0x02, 1, 2])).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
}

#[test]
fn encode_delta_run_matches_frame_encoding() {
    let items = vec![
        RunItem::Same(BaseRef::Next(1)),
        RunItem::Delta {
            base: BaseRef::Next(32),
            len_diff: -300,
        },
        RunItem::Delta {
            base: BaseRef::Prefix([1; 8]),
            len_diff: 70_000,
        },
        RunItem::Same(BaseRef::Id([2; 32])),
    ];
    let f = Frame::DeltaRun {
        digest: [3; 32],
        items: items.clone(),
        payload: Bytes::from_static(b"zstd"),
    };
    let mut a = BytesMut::new();
    f.encode(&mut a);
    let mut b = BytesMut::new();
    Frame::encode_delta_run(&mut b, &[3; 32], &items, b"zstd");
    assert_eq!(a, b);
    assert_eq!(a.len(), Frame::delta_run_overhead(&items) + 4);
    assert_eq!(roundtrip(&f), f);
}

#[test]
fn hello_and_hello_ok_reject_a_zero_or_oversized_max_chunk() {
    for (max_chunk, what) in [(0u32, "zero"), (MAX_CHUNK_LEN as u32 + 1, "exceeds limit")] {
        for frame in [
            Frame::Hello {
                version: PROTOCOL_VERSION,
                key_fingerprint: [9; 16],
                max_chunk,
            },
            Frame::HelloOk {
                version: PROTOCOL_VERSION,
                max_chunk,
            },
        ] {
            let mut out = BytesMut::new();
            frame.encode(&mut out);
            let body = Bytes::copy_from_slice(&out[FRAME_HEADER_LEN..]);
            let e = Frame::decode_body(out[0], body).unwrap_err().to_string();
            assert!(
                e.contains("announced max chunk") && e.contains(what),
                "{frame:?}: {e}"
            );
        }
    }
    let mut out = BytesMut::new();
    let ok = Frame::HelloOk {
        version: PROTOCOL_VERSION,
        max_chunk: 256 << 10,
    };
    ok.encode(&mut out);
    let body = Bytes::copy_from_slice(&out[FRAME_HEADER_LEN..]);
    assert_eq!(Frame::decode_body(out[0], body).unwrap(), ok);
}
