#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

/// A real safetensors file: JSON header padded with spaces to 8-byte alignment (as the reference
/// writer does), then tensor data laid out in the given order.
pub(crate) fn build_safetensors(tensors: &[(&str, &str, &[u64])], seed: u64) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0u64;
    for (name, dtype, shape) in tensors {
        let size = TensorDtype::parse(dtype).size().unwrap() * shape.iter().product::<u64>();
        header.insert(
            (*name).into(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}),
        );
        offset += size;
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    let mut data = vec![0u8; offset as usize];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    out.extend_from_slice(&data);
    out
}

/// A file whose header is exactly `json` (no validation of the JSON by the builder).
fn with_header(json: &str) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

#[test]
fn parses_tensor_ranges_in_offset_order() {
    let file = build_safetensors(
        &[
            ("b.weight", "BF16", &[4, 8]),
            ("a.bias", "F32", &[8]),
            ("c.ids", "I64", &[3]),
            ("empty", "F16", &[0]),
        ],
        1,
    );
    let h = parse_safetensors_header(&file).unwrap();
    let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    // Insertion order in JSON is alphabetical (serde_json map), offsets follow the build order.
    assert_eq!(h.tensors[0].start, 0);
    assert_eq!(h.data_len(), 64 + 32 + 24);
    assert_eq!(h.file_len(), Some(file.len() as u64));
    assert_eq!(h.metadata, vec![("format".to_owned(), "pt".to_owned())]);
    let b = h.tensors.iter().find(|t| t.name == "b.weight").unwrap();
    assert_eq!(
        (b.start, b.end, b.dtype.clone()),
        (0, 64, TensorDtype::BF16)
    );
    let a = h.tensors.iter().find(|t| t.name == "a.bias").unwrap();
    assert_eq!((a.start, a.end), (64, 96));
    assert!(names.contains(&"empty"));
    let bounds: Vec<u64> = h.tensor_boundaries().collect();
    assert!(bounds.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(bounds[0], h.data_start());
    assert_eq!(h.data_start() % 8, 0);
}

#[test]
fn reports_bytes_needed_when_prefix_ends_inside_header() {
    let file = build_safetensors(&[("w", "F32", &[16])], 2);
    let need = safetensors_header_end(&file).unwrap().unwrap();
    match parse_safetensors_header(&file[..20]) {
        Err(Error::Truncated {
            need: n, have: 20, ..
        }) => assert_eq!(n, need),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        parse_safetensors_header(&file[..5]),
        Err(Error::Truncated { need: 8, .. })
    ));
    assert!(parse_safetensors_header(&file[..need as usize]).is_ok());
}

#[test]
fn rejects_header_longer_than_100_mb() {
    let mut file = (MAX_SAFETENSORS_HEADER + 1).to_le_bytes().to_vec();
    file.extend_from_slice(b"{}");
    assert_eq!(
        parse_safetensors_header(&file),
        Err(Error::TooLarge {
            what: "safetensors header",
            len: MAX_SAFETENSORS_HEADER + 1,
            max: MAX_SAFETENSORS_HEADER
        })
    );
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.push(b'{');
    assert!(parse_safetensors_header(&huge).is_err());
}

#[test]
fn rejects_malformed_and_inconsistent_headers() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}}"#,
            "gap",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            "overlap",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            "shape",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
            "backwards",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            "does not start at 0",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            "duplicate",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#,
            "overflow",
        ),
        (r#"{"a":{"dtype":"F32","shape":[2]}}"#, "missing offsets"),
        (
            r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
            "negative dim",
        ),
        (r#"{"__metadata__":{"k":1}}"#, "non-string metadata"),
        (
            r#"{"__metadata__":{"k":"v","k":"w"}}"#,
            "duplicate metadata",
        ),
        (r#"["a"]"#, "not an object"),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} xx"#,
            "trailing bytes",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#,
            "unterminated",
        ),
        (" {}", "leading space"),
    ];
    for (json, why) in cases {
        assert!(
            parse_safetensors_header(&with_header(json)).is_err(),
            "accepted header with {why}: {json}"
        );
    }
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(
        parse_safetensors_header(&with_header(&format!(r#"{{"__metadata__":{deep}}}"#))).is_err()
    );
    let rank = vec!["1"; MAX_RANK + 1].join(",");
    let json = format!(r#"{{"a":{{"dtype":"U8","shape":[{rank}],"data_offsets":[0,1]}}}}"#);
    assert!(parse_safetensors_header(&with_header(&json)).is_err());
}

#[test]
fn accepts_trailing_space_padding_and_unknown_dtypes() {
    let h = parse_safetensors_header(&with_header(
        r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}   "#,
    ))
    .unwrap();
    assert_eq!(h.tensors[0].dtype, TensorDtype::Other("F4".into()));
    assert_eq!(h.data_len(), 3);
    assert_eq!(
        parse_safetensors_header(&with_header("{}"))
            .unwrap()
            .tensors,
        vec![]
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_safetensors_header(&bytes);
    }

    #[test]
    fn random_json_body_with_valid_length_never_panics(body in "\\{[\"a-z0-9:,\\[\\]{}_ .-]{0,200}") {
        let _ = parse_safetensors_header(&with_header(&body));
    }

    #[test]
    fn mutated_real_header_is_accepted_only_if_still_consistent(pos in 8usize..200, byte in any::<u8>()) {
        let mut file = build_safetensors(&[("w", "F32", &[4, 4]), ("b", "BF16", &[4])], 3);
        let pos = pos.min(file.len() - 1);
        file[pos] = byte;
        if let Ok(h) = parse_safetensors_header(&file) {
            let mut expected = 0;
            for t in &h.tensors {
                prop_assert_eq!(t.start, expected);
                expected = t.end;
            }
        }
    }
}
