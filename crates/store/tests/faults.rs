//! The store under injected faults (the store test double: `StoreOptions::with_faults`),
//! in memory, and with random bit flips in its segment files.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strait_store::{
    decode_header, Error, FaultKind, FaultSwitch, IoOp, MemoryDir, PeerSlot, RawId, RecordKind,
    Store, StoreOptions, HEADER_LEN,
};

use common::{cfg, chunk, seg_name, KEY};

const MAX: u64 = 4 << 20;
const SEG: u64 = 16 * 1024;

fn open_faulty(dir: &Path, faults: &Arc<FaultSwitch>) -> Store {
    Store::open_with(
        cfg(dir, MAX, SEG),
        StoreOptions::disk().with_faults(faults.clone()),
    )
    .unwrap()
}

/// A disk store in a temp dir behind a fault switch, with peer "a".
fn faulty() -> (tempfile::TempDir, Arc<FaultSwitch>, Store, PeerSlot) {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultSwitch::new();
    let store = open_faulty(dir.path(), &faults);
    let p = store.peer_slot("a").unwrap();
    (dir, faults, store, p)
}

fn put_all(store: &Store, p: PeerSlot, cs: &[(RawId, Vec<u8>)]) {
    for (id, d) in cs {
        store.put(id, d, p).unwrap();
    }
}

fn assert_all_exact(store: &Store, cs: &[(RawId, Vec<u8>)]) {
    for (i, (id, d)) in cs.iter().enumerate() {
        let got = store.get(id, None).unwrap();
        assert_eq!(got.as_deref(), Some(&d[..]), "chunk {i}");
    }
}

fn io_errno(err: &Error) -> Option<i32> {
    match err {
        Error::Io { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

#[test]
fn failed_write_is_an_error_and_writes_work_again_once_it_clears() {
    let (dir, faults, store, p) = faulty();
    let cs: Vec<_> = (0..3).map(|i| chunk(i, 3000)).collect();
    put_all(&store, p, &cs[..2]);
    let before = store.stats();

    faults.fail(IoOp::Write, FaultKind::Eio);
    let err = store.put(&cs[2].0, &cs[2].1, p).unwrap_err();
    assert_eq!(io_errno(&err), Some(libc::EIO), "{err}");
    assert!(err.to_string().contains("seg-000001.dat"), "{err}");
    assert_eq!(store.get(&cs[2].0, None).unwrap(), None);
    let after = store.stats();
    assert_eq!(after.write_errors, 1);
    assert_eq!((after.entries, after.bytes), (before.entries, before.bytes));

    faults.clear();
    store.put(&cs[2].0, &cs[2].1, p).unwrap();
    assert_all_exact(&store, &cs);
    drop(store);
    let store = Store::open(cfg(dir.path(), MAX, SEG)).unwrap();
    assert_all_exact(&store, &cs);
    assert_eq!(store.stats().damaged_segments, 0);
}

#[test]
fn torn_write_that_cannot_be_cut_is_never_trusted_by_a_later_open_or_get() {
    let (dir, faults, store, p) = faulty();
    let cs: Vec<_> = (0..4).map(|i| chunk(10 + i, 3000)).collect();
    put_all(&store, p, &cs[..2]);

    // Half the record lands and the truncate that would remove it fails too.
    faults.fail_torn(FaultKind::Eio);
    faults.fail(IoOp::Truncate, FaultKind::Eio);
    assert!(store.put(&cs[2].0, &cs[2].1, p).is_err());
    assert_eq!(store.get(&cs[2].0, None).unwrap(), None);
    let seg1 = dir.path().join(seg_name(1));
    let torn_len = fs::metadata(&seg1).unwrap().len();
    assert_eq!(
        torn_len,
        2 * (HEADER_LEN as u64 + 3000) + HEADER_LEN as u64 / 2
    );

    // Once the fault clears the store writes on, after (never over) the torn bytes.
    faults.clear();
    store.put(&cs[3].0, &cs[3].1, p).unwrap();
    assert_eq!(fs::metadata(&seg1).unwrap().len(), torn_len);
    assert_eq!(store.stats().segments, 2);
    drop(store);

    let store = Store::open(cfg(dir.path(), MAX, SEG)).unwrap();
    assert_all_exact(&store, &[cs[0].clone(), cs[1].clone(), cs[3].clone()]);
    assert_eq!(store.get(&cs[2].0, None).unwrap(), None);
    let s = store.stats();
    assert_eq!(
        (s.entries, s.damaged_segments, s.corrupt_dropped),
        (3, 1, 0)
    );
}

#[test]
fn torn_write_of_a_payload_is_cut_and_the_record_never_appears() {
    let (dir, faults, store, p) = faulty();
    let (a, da) = chunk(20, 5000);
    let (b, db) = chunk(21, 5000);
    store.put(&a, &da, p).unwrap();
    faults.fail_torn(FaultKind::Eio);
    assert!(store.put(&b, &db, p).is_err());
    // The cut worked: the file ends where the last good record ends.
    let seg1 = dir.path().join(seg_name(1));
    assert_eq!(fs::metadata(&seg1).unwrap().len(), HEADER_LEN as u64 + 5000);
    faults.clear();
    drop(store);
    let store = Store::open(cfg(dir.path(), MAX, SEG)).unwrap();
    assert_all_exact(&store, &[(a, da)]);
    assert_eq!(store.get(&b, None).unwrap(), None);
    assert_eq!(store.stats().damaged_segments, 0);
}

#[test]
fn failed_read_is_a_miss_never_wrong_bytes_and_keeps_the_entry() {
    let (_dir, faults, store, p) = faulty();
    let cs: Vec<_> = (0..5).map(|i| chunk(30 + i, 2000)).collect();
    put_all(&store, p, &cs);

    faults.fail(IoOp::Read, FaultKind::Eio);
    for (id, _) in &cs {
        assert_eq!(store.get(id, Some(p)).unwrap(), None);
    }
    let s = store.stats();
    assert_eq!((s.read_errors, s.misses, s.hits), (5, 5, 0));
    assert_eq!((s.entries, s.corrupt_dropped), (5, 0));
    assert!(faults.injected() >= 5);

    faults.clear();
    assert_all_exact(&store, &cs);
}

#[test]
fn failed_fsync_is_reported_by_flush_and_the_store_keeps_working() {
    let (dir, faults, store, p) = faulty();
    // Enough to roll several segments (their background fsyncs fail too).
    let cs: Vec<_> = (0..20).map(|i| chunk(40 + i, 4000)).collect();
    faults.fail(IoOp::Sync, FaultKind::Eio);
    // Rolling a segment syncs the directory: the put that needs a new segment fails…
    let mut failed = 0;
    for (id, d) in &cs {
        if store.put(id, d, p).is_err() {
            failed += 1;
        }
    }
    assert!(failed > 0);
    let err = store.flush().unwrap_err();
    assert_eq!(io_errno(&err), Some(libc::EIO), "{err}");
    assert_eq!(store.stats().write_errors, failed);

    // …and once the disk recovers every chunk goes in and survives a reopen.
    faults.clear();
    put_all(&store, p, &cs);
    store.flush().unwrap();
    assert_all_exact(&store, &cs);
    drop(store);
    let store = Store::open(cfg(dir.path(), MAX, SEG)).unwrap();
    assert_all_exact(&store, &cs);
}

#[test]
fn failed_open_is_a_clear_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(cfg(dir.path(), MAX, SEG)).unwrap();
        let p = store.peer_slot("a").unwrap();
        let (id, d) = chunk(50, 100);
        store.put(&id, &d, p).unwrap();
    }
    let faults = FaultSwitch::new();
    faults.fail(IoOp::Open, FaultKind::Eio);
    let err = Store::open_with(
        cfg(dir.path(), MAX, SEG),
        StoreOptions::disk().with_faults(faults.clone()),
    )
    .unwrap_err();
    assert_eq!(io_errno(&err), Some(libc::EIO), "{err}");
    assert!(err.to_string().contains(&dir.path().display().to_string()));
    faults.clear();
    let store = open_faulty(dir.path(), &faults);
    let (id, d) = chunk(50, 100);
    assert_all_exact(&store, &[(id, d)]);
}

/// The documented full-disk rule: the first `ENOSPC` of an episode frees the
/// oldest segment and retries once; if the disk is still full the write fails
/// and later writes fail without evicting more, reads keep working, and the
/// next write after space returns succeeds.
#[test]
fn full_disk_frees_one_segment_then_fails_writes_cleanly_until_space_returns() {
    let (dir, faults, store, p) = faulty();
    let cs: Vec<_> = (0..16).map(|i| chunk(60 + i, 4000)).collect();
    put_all(&store, p, &cs);
    let before = store.stats();
    assert_eq!(before.segments, 4);

    faults.fail_torn(FaultKind::NoSpace);
    let extra: Vec<_> = (0..3).map(|i| chunk(90 + i, 4000)).collect();
    for (id, d) in &extra {
        let err = store.put(id, d, p).unwrap_err();
        assert_eq!(io_errno(&err), Some(libc::ENOSPC), "{err}");
        assert_eq!(store.get(id, None).unwrap(), None);
    }
    let s = store.stats();
    assert_eq!((s.no_space_evictions, s.write_errors), (1, 3));
    // Four 4 KiB records fill a 16 KiB segment: segment 1 went, the rest reads back.
    assert_eq!(s.segments_evicted, 1);
    let kept = &cs[4..];
    assert_eq!(s.entries, kept.len() as u64);
    assert_all_exact(&store, kept);

    faults.clear();
    put_all(&store, p, &extra);
    assert_all_exact(&store, &extra);
    drop(store);
    let store = Store::open(cfg(dir.path(), MAX, SEG)).unwrap();
    assert_all_exact(&store, kept);
    assert_all_exact(&store, &extra);
    assert_eq!(store.stats().damaged_segments, 0);
}

#[test]
fn full_disk_with_only_the_head_rolls_it_and_frees_it() {
    let (_dir, faults, store, p) = faulty();
    let (a, da) = chunk(100, 3000);
    let (b, db) = chunk(101, 3000);
    store.put(&a, &da, p).unwrap();
    // One failing write: the store rolls, frees the old head, and the retry lands.
    faults.fail(IoOp::Write, FaultKind::NoSpace);
    let switch = faults.clone();
    std::thread::scope(|s| {
        s.spawn(|| {
            // Clear the fault as soon as the first write has failed.
            let t0 = Instant::now();
            while switch.injected() == 0 && t0.elapsed() < Duration::from_secs(10) {
                std::thread::yield_now();
            }
            switch.clear();
        });
        let t0 = Instant::now();
        while faults.injected() == 0 && t0.elapsed() < Duration::from_secs(10) {
            let _ = store.put(&b, &db, p);
        }
    });
    faults.clear();
    store.put(&b, &db, p).unwrap();
    assert_all_exact(&store, &[(b, db)]);
    assert_eq!(store.get(&a, None).unwrap(), None);
    let s = store.stats();
    assert_eq!(s.no_space_evictions, 1);
    assert_eq!((s.segments, s.entries), (1, 1));
}

#[test]
fn slow_disk_returns_the_same_bytes_and_reads_do_not_queue_behind_each_other() {
    const DELAY: Duration = Duration::from_millis(200);
    const READERS: u32 = 4;
    let (_dir, faults, store, p) = faulty();
    let cs: Vec<_> = (0..READERS)
        .map(|i| chunk(110 + u64::from(i), 8000))
        .collect();
    put_all(&store, p, &cs);

    faults.delay(DELAY);
    let reads_before = faults.seen(IoOp::Read);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for (id, d) in &cs {
            let store = &store;
            s.spawn(move || assert_eq!(store.get(id, Some(p)).unwrap().as_deref(), Some(&d[..])));
        }
    });
    let took = t0.elapsed();
    assert_eq!(faults.seen(IoOp::Read) - reads_before, u64::from(READERS));
    // Each read waited out the delay, but in parallel, not in a queue.
    assert!(took >= DELAY, "{took:?}");
    assert!(
        took < DELAY * READERS - DELAY / 2,
        "reads serialised: {took:?}"
    );

    // Writes are slow, not wrong.
    let (id, d) = chunk(120, 8000);
    let t0 = Instant::now();
    store.put(&id, &d, p).unwrap();
    assert!(t0.elapsed() >= DELAY * 2, "header and payload writes");
    faults.clear();
    assert_all_exact(&store, &[(id, d)]);
}

#[test]
fn failed_peer_table_write_refuses_the_new_peer_and_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultSwitch::new();
    let store = open_faulty(dir.path(), &faults);
    let a = store.peer_slot("a").unwrap();
    faults.fail(IoOp::Sync, FaultKind::Eio);
    assert!(store.peer_slot("b").is_err());
    faults.clear();
    assert_eq!(store.peer_slot("a").unwrap(), a);
    assert_eq!(store.peer_slot("b").unwrap().index(), 1);
    drop(store);
    let store = Store::open(cfg(dir.path(), MAX, SEG)).unwrap();
    assert_eq!(store.peer_slot("b").unwrap().index(), 1);
}

#[test]
fn in_memory_store_evicts_verifies_and_recovers_like_the_disk_store() {
    let mem = MemoryDir::new();
    let open = || {
        Store::open_with(
            cfg(Path::new("<memory>"), 256 * 1024, SEG),
            StoreOptions::memory(mem.clone()),
        )
    };
    let store = open().unwrap();
    assert!(matches!(open(), Err(Error::Locked { .. })));
    let p = store.peer_slot("a").unwrap();
    let cs: Vec<_> = (0..100).map(|i| chunk(200 + i, 4000)).collect();
    put_all(&store, p, &cs);
    let s = store.stats();
    assert!(s.bytes <= s.max_bytes && s.evictions > 0, "{s:?}");
    let newest = &cs[cs.len() - 5..];
    assert_all_exact(&store, newest);
    drop(store);

    // Damage a payload byte of the newest chunk, then reopen the same directory.
    let head = mem
        .file_names()
        .into_iter()
        .rfind(|n| n.starts_with("seg-"))
        .unwrap();
    let mut bytes = mem.read(&head).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x10;
    mem.write(&head, &bytes);
    let store = open().unwrap();
    let (last, rest) = newest.split_last().unwrap();
    assert_all_exact(&store, rest);
    assert_eq!(store.get(&last.0, None).unwrap(), None);
    assert_eq!(store.stats().corrupt_dropped, 1);

    let fresh = Store::open_in_memory(1 << 20, KEY).unwrap();
    let q = fresh.peer_slot("q").unwrap();
    fresh.put(&cs[0].0, &cs[0].1, q).unwrap();
    assert_all_exact(&fresh, &cs[..1]);
}

/// Where each record of each segment file lies, read from intact files.
fn record_map(dir: &Path) -> BTreeMap<String, Vec<(u64, RecordKind, u32, RawId)>> {
    let mut map = BTreeMap::new();
    for ent in fs::read_dir(dir).unwrap() {
        let name = ent.unwrap().file_name().into_string().unwrap();
        if !name.starts_with("seg-") {
            continue;
        }
        let bytes = fs::read(dir.join(&name)).unwrap();
        let mut off = 0usize;
        let mut recs = Vec::new();
        while off < bytes.len() {
            let h = decode_header(&bytes[off..]).unwrap();
            recs.push((off as u64, h.kind, h.len, h.id));
            off += h.record_len();
        }
        assert_eq!(off, bytes.len());
        map.insert(name, recs);
    }
    map
}

/// Seeded bit flips in headers and payloads of closed segment files: after a
/// reopen every chunk reads back exact or not at all, exactly the damaged
/// records (and those after a damaged header in the same segment) are gone,
/// and the damage is counted (`damaged_segments`, `corrupt_dropped`).
#[test]
fn random_bit_flips_in_segments_never_yield_wrong_bytes_and_are_counted() {
    for seed in 0..6u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let cs: Vec<_> = (0..120)
            .map(|i| chunk(seed * 1000 + i, rng.gen_range(200..6000)))
            .collect();
        {
            let store = Store::open(cfg(dir.path(), MAX, SEG)).unwrap();
            let p = store.peer_slot("a").unwrap();
            let q = store.peer_slot("b").unwrap();
            for (i, (id, d)) in cs.iter().enumerate() {
                store.put(id, d, p).unwrap();
                if i % 7 == 0 {
                    store.mark_peer(id, q).unwrap(); // a peer-set record
                }
            }
        }
        let map = record_map(dir.path());
        assert!(map.len() >= 10, "{} segments", map.len());

        // Flip 1..=3 bits in each of a few segments, at offsets that land in
        // headers half of the time.
        let names: Vec<&String> = map.keys().collect();
        let mut flipped = 0;
        for _ in 0..8 {
            let name = names[rng.gen_range(0..names.len())];
            let recs = &map[name];
            for _ in 0..rng.gen_range(1..=3) {
                let (off, _, len, _) = recs[rng.gen_range(0..recs.len())];
                let span = if rng.gen_bool(0.5) || len == 0 {
                    HEADER_LEN as u64
                } else {
                    HEADER_LEN as u64 + u64::from(len)
                };
                let at = off + rng.gen_range(0..span);
                let path = dir.path().join(name);
                let mut bytes = fs::read(&path).unwrap();
                bytes[at as usize] ^= 1 << rng.gen_range(0..8);
                fs::write(&path, bytes).unwrap();
                flipped += 1;
            }
        }

        // What must survive: per segment, records before the first damaged
        // header; of those, chunk records with a damaged payload are dropped
        // on read. A bit flipped twice is intact again, so judge by the bytes.
        let mut expect_damaged_segments = 0;
        let mut expect_corrupt = 0;
        let mut survives: BTreeMap<RawId, bool> = BTreeMap::new();
        for (name, recs) in &map {
            let now = fs::read(dir.path().join(name)).unwrap();
            let mut broken = false;
            for &(off, kind, len, id) in recs {
                let header_ok = decode_header(&now[off as usize..]).is_ok_and(|h| h.id == id);
                if broken || !header_ok {
                    if !broken {
                        expect_damaged_segments += 1;
                    }
                    broken = true;
                    if kind == RecordKind::Chunk {
                        survives.insert(id, false);
                    }
                    continue;
                }
                if kind == RecordKind::Chunk {
                    let start = off + HEADER_LEN as u64;
                    let payload = &now[start as usize..(start + u64::from(len)) as usize];
                    let intact = blake3::keyed_hash(&KEY, payload).as_bytes() == &id;
                    if !intact {
                        expect_corrupt += 1;
                    }
                    survives.insert(id, intact);
                }
            }
        }

        assert!(flipped >= 8);
        let store = Store::open(cfg(dir.path(), MAX, SEG)).unwrap();
        for (id, d) in &cs {
            let got = store.get(id, None).unwrap();
            match survives[id] {
                true => assert_eq!(got.as_deref(), Some(&d[..]), "seed {seed}"),
                false => assert_eq!(got, None, "seed {seed}"),
            }
        }
        let s = store.stats();
        assert_eq!(s.damaged_segments, expect_damaged_segments, "seed {seed}");
        assert_eq!(s.corrupt_dropped, expect_corrupt, "seed {seed}");
        assert!(s.damaged_segments + s.corrupt_dropped > 0, "seed {seed}");
    }
}
