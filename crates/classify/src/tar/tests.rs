#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

/// A real tar (GNU format, via the `tar` crate) of `(name, len)` files with seeded contents.
pub(crate) fn build_tar(files: &[(&str, usize)], seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut b = ::tar::Builder::new(Vec::new());
    for (name, len) in files {
        let mut data = vec![0u8; *len];
        rng.fill_bytes(&mut data);
        let mut h = ::tar::Header::new_gnu();
        h.set_size(*len as u64);
        h.set_mode(0o644);
        h.set_entry_type(::tar::EntryType::Regular);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn reference_offsets(archive: &[u8]) -> Vec<(String, u64, u64, u64)> {
    let mut a = ::tar::Archive::new(archive);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.raw_header_position(),
                e.raw_file_position(),
                e.size(),
            )
        })
        .collect()
}

#[test]
fn member_offsets_match_the_tar_crate() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let long = format!("deep/{}/file.bin", "d".repeat(150));
    let mut files: Vec<(String, usize)> = (0..20)
        .map(|i| (format!("shard/{i:06}.bin"), rng.gen_range(0..5000)))
        .collect();
    files.push((long.clone(), 1234));
    files.push(("after-long.txt".into(), 0));
    let refs: Vec<(&str, usize)> = files.iter().map(|(n, l)| (n.as_str(), *l)).collect();
    let archive = build_tar(&refs, 8);

    let index = tar_members(&archive).unwrap();
    let ours: Vec<(String, u64, u64, u64)> = index
        .members
        .iter()
        .filter(|m| m.kind == TarMemberKind::File)
        .map(|m| (m.name.clone(), m.header_offset, m.data_offset, m.size))
        .collect();
    // The tar crate reports the header of the real entry, after any GNU long-name entry.
    assert_eq!(ours, reference_offsets(&archive));
    assert!(index
        .members
        .iter()
        .any(|m| m.kind == TarMemberKind::LongName));
    assert!(ours.iter().any(|(n, ..)| *n == long));
    assert!(index.end.is_some());
}

#[test]
fn walker_fed_block_by_block_finds_the_same_members() {
    let archive = build_tar(
        &[
            ("a.jpg", 700),
            ("a.json", 20),
            ("b.jpg", 512),
            ("b.json", 1),
        ],
        9,
    );
    let mut w = TarWalker::new();
    let mut got = Vec::new();
    while let Some(off) = w.next_header_offset() {
        let off = off as usize;
        if let Some(m) = w.feed(&archive[off..off + TAR_BLOCK]).unwrap() {
            got.push(m);
        }
    }
    assert!(w.is_done());
    assert_eq!(got, tar_members(&archive).unwrap().members);
    assert_eq!(
        got.iter().map(|m| m.header_offset).collect::<Vec<_>>(),
        vec![0, 1536, 2560, 3584]
    );
}

#[test]
fn prefix_index_stops_at_first_header_outside_the_buffer() {
    let archive = build_tar(&[("a.bin", 100), ("b.bin", 100), ("c.bin", 100)], 10);
    let index = tar_members(&archive[..1600]).unwrap();
    assert_eq!(index.members.len(), 2);
    assert_eq!(index.next_header, 2048);
    assert_eq!(index.end, None);
}

#[test]
fn rejects_bad_checksum_size_and_block_length() {
    let archive = build_tar(&[("a.bin", 10)], 11);
    let mut bad = archive.clone();
    bad[0] ^= 1;
    assert!(matches!(
        tar_members(&bad),
        Err(Error::Tar { offset: 0, .. })
    ));

    // A non-octal size with a checksum fixed up to match.
    let mut bad = archive[..512].to_vec();
    bad[124..136].copy_from_slice(b"0000000009a\0");
    fix_checksum(&mut bad);
    let err = tar_members(&bad).unwrap_err();
    assert!(err.to_string().contains("size field"), "{err}");

    // Base-256 size of 2^41: over the 1 TiB cap.
    let mut bad = archive[..512].to_vec();
    bad[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0]);
    fix_checksum(&mut bad);
    assert!(
        matches!(tar_members(&bad), Err(Error::TooLarge { what: "tar member", len, .. }) if len == 1 << 41)
    );

    // Base-256 size of 2^72 does not fit a u64: rejected, not wrapped.
    bad[124..136].copy_from_slice(&[0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    fix_checksum(&mut bad);
    assert!(matches!(tar_members(&bad), Err(Error::Tar { .. })));

    assert!(TarWalker::new().feed(&archive[..100]).is_err());
}

#[test]
fn base256_size_is_accepted_under_the_cap() {
    let mut block = build_tar(&[("big.bin", 0)], 12)[..512].to_vec();
    let size: u64 = 10 << 30; // 10 GiB: too large for 11 octal digits
    let mut field = [0u8; 12];
    field[0] = 0x80;
    field[4..].copy_from_slice(&size.to_be_bytes());
    block[124..136].copy_from_slice(&field);
    fix_checksum(&mut block);
    let m = TarWalker::new().feed(&block).unwrap().unwrap();
    assert_eq!(m.size, size);
    assert_eq!(m.next_header_offset(), 512 + size);
}

fn fix_checksum(block: &mut [u8]) {
    block[148..156].copy_from_slice(b"        ");
    let sum: u64 = block.iter().map(|&b| b as u64).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = tar_members(&bytes);
    }

    #[test]
    fn corrupted_real_archive_never_panics_and_offsets_stay_aligned(pos in 0usize..2048, byte in any::<u8>()) {
        let mut archive = build_tar(&[("a.jpg", 600), ("a.json", 30), ("b.jpg", 100)], 13);
        let pos = pos.min(archive.len() - 1);
        archive[pos] = byte;
        if let Ok(index) = tar_members(&archive) {
            for m in &index.members {
                prop_assert_eq!(m.header_offset % TAR_BLOCK as u64, 0);
            }
        }
    }
}
