#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strait_store::{Error, MemoryDir, PeerSlot, RawId, Store, StoreOptions, HEADER_LEN};

mod common;
use common::{cfg, chunk};

fn open(dir: &Path) -> Store {
    Store::open(cfg(dir, 64 << 20, 1 << 20)).unwrap()
}

fn seg(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("seg-{n:06}.dat"))
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

#[test]
fn put_then_get_returns_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = store.peer_slot("edge-a").unwrap();
    let (id, data) = chunk(1, 10_000);
    store.put(&id, &data, p).unwrap();
    assert_eq!(store.get(&id, Some(p)).unwrap().unwrap(), data);
    assert_eq!(store.get(&id, None).unwrap().unwrap(), data);
    assert!(store.peer_has(&id, p));
    let (absent, _) = chunk(2, 10);
    assert_eq!(store.get(&absent, None).unwrap(), None);
    let s = store.stats();
    assert_eq!((s.hits, s.misses, s.entries), (2, 1, 1));
    assert_eq!(s.bytes, (HEADER_LEN + 10_000) as u64);
    assert_eq!(s.live_bytes, s.bytes);
}

#[test]
fn reopen_keeps_entries_peer_sets_and_slots() {
    let dir = tempfile::tempdir().unwrap();
    let (a, da) = chunk(1, 3000);
    let (b, db) = chunk(2, 0);
    {
        let store = open(dir.path());
        let pa = store.peer_slot("edge-a").unwrap();
        let pb = store.peer_slot("edge-b").unwrap();
        store.put(&a, &da, pa).unwrap();
        store.put(&b, &db, pa).unwrap();
        assert!(store.mark_peer(&a, pb).unwrap());
        store.forget_peer(&b, pa);
        store.put(&b, &db, pb).unwrap();
        store.flush().unwrap();
    }
    let store = open(dir.path());
    // Slots are handed out in reverse order of first asking, but must match.
    let pb = store.peer_slot("edge-b").unwrap();
    let pa = store.peer_slot("edge-a").unwrap();
    assert_eq!((pa.index(), pb.index()), (0, 1));
    assert!(store.peer_has(&a, pa) && store.peer_has(&a, pb));
    assert!(!store.peer_has(&b, pa) && store.peer_has(&b, pb));
    assert_eq!(store.get(&a, Some(pb)).unwrap().unwrap(), da);
    assert_eq!(store.get(&b, Some(pb)).unwrap().unwrap(), db);
    assert_eq!(store.get(&b, Some(pa)).unwrap(), None);
    assert_eq!(store.stats().entries, 2);
}

#[test]
fn another_peers_slot_sees_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pa = store.peer_slot("edge-a").unwrap();
    let pb = store.peer_slot("edge-b").unwrap();
    let (id, data) = chunk(7, 500);
    store.put(&id, &data, pa).unwrap();
    assert!(!store.peer_has(&id, pb));
    assert_eq!(store.get(&id, Some(pb)).unwrap(), None);
    assert!(!store.mark_peer(&chunk(8, 1).0, pb).unwrap());
    // Once b has sent it too, b may reference it.
    store.put(&id, &data, pb).unwrap();
    assert_eq!(store.get(&id, Some(pb)).unwrap().unwrap(), data);
    // An existing entry is not rewritten: one chunk record + one peer-set record.
    assert_eq!(store.stats().bytes, (2 * HEADER_LEN + 500) as u64);
}

#[test]
fn peer_table_is_bounded_and_names_validated() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..64 {
        assert_eq!(store.peer_slot(&format!("p{i}")).unwrap().index(), i as u8);
    }
    assert!(matches!(
        store.peer_slot("p64"),
        Err(Error::TooManyPeers { max: 64, .. })
    ));
    assert_eq!(store.peer_slot("p63").unwrap().index(), 63);
    assert!(matches!(store.peer_slot(""), Err(Error::PeerName { .. })));
    assert!(store.peer_slot(&"x".repeat(256)).is_err());
}

#[test]
fn oversized_chunk_and_bad_budget_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(cfg(dir.path(), 1 << 20, 1 << 20)).unwrap();
    let p = store.peer_slot("a").unwrap();
    // Segment size is capped to max_bytes / 4 = 256 KiB.
    let (id, data) = chunk(1, 256 * 1024);
    assert!(matches!(
        store.put(&id, &data, p),
        Err(Error::ChunkTooLarge { .. })
    ));
    drop(store);
    assert!(matches!(
        Store::open(cfg(dir.path(), 1000, 1 << 20)),
        Err(Error::MaxBytes { value: 1000, .. })
    ));
}

#[test]
fn second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(dir.path());
    assert!(matches!(
        Store::open(cfg(dir.path(), 64 << 20, 1 << 20)),
        Err(Error::Locked { .. })
    ));
}

#[test]
fn eviction_keeps_the_budget_and_hot_chunks_outlive_cold_ones() {
    let dir = tempfile::tempdir().unwrap();
    let max = 256 * 1024;
    let store = Store::open(cfg(dir.path(), max, 32 * 1024)).unwrap();
    let p = store.peer_slot("a").unwrap();
    let q = store.peer_slot("b").unwrap();
    let chunks: Vec<_> = (0..400).map(|i| chunk(i, 2048)).collect();
    for (i, (id, data)) in chunks.iter().enumerate() {
        store.put(id, data, p).unwrap();
        if i == 0 {
            assert!(store.mark_peer(id, q).unwrap());
        }
        assert!(store.stats().bytes <= max, "over budget after put {i}");
        // Chunks 0..10 are hot: one of them is read after every put.
        if i >= 10 {
            let (hid, hdata) = &chunks[i % 10];
            assert_eq!(
                store.get(hid, Some(p)).unwrap().as_deref(),
                Some(&hdata[..])
            );
        }
    }
    let survived = |r: std::ops::Range<usize>| {
        r.filter(|&i| store.get(&chunks[i].0, Some(p)).unwrap().is_some())
            .count()
    };
    let s = store.stats();
    // Counted from the index first: the gets below copy forward and evict.
    let indexed = (0..400)
        .filter(|&i| store.peer_has(&chunks[i].0, p))
        .count();
    assert_eq!(s.entries as usize, indexed);
    assert_eq!(survived(0..10), 10, "hot chunks must survive");
    assert_eq!(survived(10..20), 0, "cold chunks of the same age are gone");
    assert!(s.segments_evicted > 0 && s.evictions > 0);
    assert!(s.copied_forward > 0);
    // Copy-forward cost is bounded: each hot chunk moves at most once per
    // half-store written (400 puts * 2 KiB / 128 KiB ≈ 7 times).
    assert!(s.copied_forward <= 10 * 8, "copied {}", s.copied_forward);
    assert!(s.bytes <= max);
    let s = store.stats();
    // The index agrees with disk after a reopen.
    drop(store);
    let store = Store::open(cfg(dir.path(), max, 32 * 1024)).unwrap();
    assert_eq!(store.stats().entries, s.entries);
    for (id, data) in &chunks[..10] {
        assert_eq!(store.get(id, None).unwrap().as_deref(), Some(&data[..]));
    }
    // Copy-forward carried the peer set along.
    assert!(store.peer_has(&chunks[0].0, q) && !store.peer_has(&chunks[1].0, q));
}

#[test]
fn flipped_payload_byte_is_never_served_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = store.peer_slot("a").unwrap();
    let cs: Vec<_> = (0..3).map(|i| chunk(i, 1000)).collect();
    for (id, d) in &cs {
        store.put(id, d, p).unwrap();
    }
    let rec = (HEADER_LEN + 1000) as u64;
    flip_byte(&seg(dir.path(), 1), rec + HEADER_LEN as u64 + 500);
    assert_eq!(store.get(&cs[1].0, Some(p)).unwrap(), None);
    assert_eq!(store.stats().corrupt_dropped, 1);
    assert!(!store.peer_has(&cs[1].0, p));
    assert_eq!(store.get(&cs[0].0, Some(p)).unwrap().unwrap(), cs[0].1);
    assert_eq!(store.get(&cs[2].0, Some(p)).unwrap().unwrap(), cs[2].1);
    // Storing it again works (the sender resends the bytes).
    store.put(&cs[1].0, &cs[1].1, p).unwrap();
    assert_eq!(store.get(&cs[1].0, Some(p)).unwrap().unwrap(), cs[1].1);
}

#[test]
fn flipped_header_byte_drops_the_rest_of_an_old_segment_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cs: Vec<_> = (0..3).map(|i| chunk(i, 1000)).collect();
    let (late, late_data) = chunk(99, 100);
    {
        let store = Store::open(cfg(dir.path(), 1 << 20, 16 * 1024)).unwrap();
        let p = store.peer_slot("a").unwrap();
        for (id, d) in &cs {
            store.put(id, d, p).unwrap();
        }
        // Fill the segment so the next put rolls to segment 2.
        for i in 0..13 {
            let (id, d) = chunk(100 + i, 1000);
            store.put(&id, &d, p).unwrap();
        }
        store.put(&late, &late_data, p).unwrap();
        assert_eq!(store.stats().segments, 2);
    }
    let rec = (HEADER_LEN + 1000) as u64;
    let seg1_len = fs::metadata(seg(dir.path(), 1)).unwrap().len();
    flip_byte(&seg(dir.path(), 1), rec + 20); // id byte of the second record
    let store = Store::open(cfg(dir.path(), 1 << 20, 16 * 1024)).unwrap();
    assert_eq!(store.get(&cs[0].0, None).unwrap().unwrap(), cs[0].1);
    assert_eq!(store.get(&cs[1].0, None).unwrap(), None);
    assert_eq!(store.get(&cs[2].0, None).unwrap(), None);
    assert_eq!(store.get(&late, None).unwrap().unwrap(), late_data);
    // Old segments are not truncated; their dead tail still counts as used.
    assert_eq!(fs::metadata(seg(dir.path(), 1)).unwrap().len(), seg1_len);
    // cs[0], plus the chunk that rolled into segment 2, plus `late`.
    assert_eq!(store.stats().entries, 3);
}

#[test]
fn torn_tail_is_truncated_on_reopen_and_appends_continue() {
    for cut in [HEADER_LEN as u64 / 2, HEADER_LEN as u64 + 10] {
        let dir = tempfile::tempdir().unwrap();
        let cs: Vec<_> = (0..3).map(|i| chunk(i, 1000)).collect();
        {
            let store = open(dir.path());
            let p = store.peer_slot("a").unwrap();
            for (id, d) in &cs {
                store.put(id, d, p).unwrap();
            }
        }
        let rec = (HEADER_LEN + 1000) as u64;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(seg(dir.path(), 1))
            .unwrap();
        f.set_len(2 * rec + cut).unwrap();
        drop(f);
        let (d_id, d_data) = chunk(3, 77);
        {
            let store = open(dir.path());
            let p = store.peer_slot("a").unwrap();
            assert_eq!(store.stats().bytes, 2 * rec, "torn tail cut");
            assert_eq!(store.get(&cs[2].0, None).unwrap(), None);
            store.put(&d_id, &d_data, p).unwrap();
        }
        let store = open(dir.path());
        let p = store.peer_slot("a").unwrap();
        assert_eq!(store.get(&cs[0].0, Some(p)).unwrap().unwrap(), cs[0].1);
        assert_eq!(store.get(&cs[1].0, Some(p)).unwrap().unwrap(), cs[1].1);
        assert_eq!(store.get(&d_id, Some(p)).unwrap().unwrap(), d_data);
    }
}

#[test]
fn garbage_files_in_the_directory_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (id, data) = chunk(1, 4000);
    {
        let store = open(dir.path());
        let p = store.peer_slot("a").unwrap();
        store.put(&id, &data, p).unwrap();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut junk = vec![0u8; 100_000];
    rng.fill_bytes(&mut junk);
    fs::write(dir.path().join("notes.txt"), &junk).unwrap();
    fs::write(dir.path().join("seg-1.dat"), &junk).unwrap(); // non-canonical name
    fs::write(seg(dir.path(), 7), &junk).unwrap(); // a later "segment" of garbage
    fs::create_dir(seg(dir.path(), 3)).unwrap(); // a directory with a segment's name
    let store = open(dir.path());
    let p = store.peer_slot("a").unwrap();
    assert_eq!(store.get(&id, Some(p)).unwrap().unwrap(), data);
    // The garbage segment held no valid record and became the (empty) head.
    let (id2, d2) = chunk(2, 10);
    store.put(&id2, &d2, p).unwrap();
    assert_eq!(
        fs::metadata(seg(dir.path(), 7)).unwrap().len(),
        (HEADER_LEN + 10) as u64
    );
    assert_eq!(fs::read(dir.path().join("notes.txt")).unwrap(), junk);
}

#[test]
fn segment_of_random_bytes_never_yields_an_entry() {
    for seed in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path())); // writes a valid (empty) peer table
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let len = rng.gen_range(0..20_000);
        let mut junk = vec![0u8; len];
        rng.fill_bytes(&mut junk);
        fs::write(seg(dir.path(), 1), &junk).unwrap();
        let store = open(dir.path());
        assert_eq!(store.stats().entries, 0);
    }
}

#[test]
fn damaged_peer_table_resets_the_store_instead_of_mixing_peers() {
    let dir = tempfile::tempdir().unwrap();
    let (id, data) = chunk(1, 100);
    {
        let store = open(dir.path());
        let p = store.peer_slot("edge-a").unwrap();
        store.put(&id, &data, p).unwrap();
    }
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("peers.tbl"))
        .unwrap();
    f.write_all(b"x").unwrap();
    drop(f);
    let store = open(dir.path());
    // "edge-b" would now get slot 0, edge-a's old bit: it must see nothing.
    let pb = store.peer_slot("edge-b").unwrap();
    assert_eq!(pb.index(), 0);
    assert_eq!(store.stats().entries, 0);
    assert!(!store.peer_has(&id, pb));
    assert!(!seg(dir.path(), 2).exists());
}

#[test]
fn index_memory_per_entry_is_measured() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = store.peer_slot("a").unwrap();
    let mut per_entry = Vec::new();
    for i in 0..20_000u64 {
        let (id, d) = chunk(i, 8);
        store.put(&id, &d, p).unwrap();
        if (i + 1) % 1000 == 0 {
            let s = store.stats();
            per_entry.push(s.index_bytes as f64 / s.entries as f64);
        }
    }
    let max = per_entry.iter().cloned().fold(0.0, f64::max);
    let min = per_entry.iter().cloned().fold(f64::MAX, f64::min);
    let mean = per_entry.iter().sum::<f64>() / per_entry.len() as f64;
    println!("index bytes per entry: min {min:.1} mean {mean:.1} max {max:.1}");
    assert!(min >= 37.0 && max <= 90.0, "{min} {max}");
}

#[test]
fn index_key_collision_costs_a_miss_never_the_other_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = store.peer_slot("a").unwrap();
    let (id, data) = chunk(1, 100);
    // Same first 128 bits (the index key), different id.
    let mut other = id;
    other[31] ^= 0xff;
    store.put(&id, &data, p).unwrap();
    assert_eq!(store.get(&other, Some(p)).unwrap(), None);
    assert_eq!(store.get(&id, Some(p)).unwrap().unwrap(), data);
    assert_eq!(store.stats().corrupt_dropped, 0);
}

#[test]
fn concurrent_puts_and_gets_never_see_wrong_bytes_and_keep_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let max = 256 * 1024;
    let store = std::sync::Arc::new(Store::open(cfg(dir.path(), max, 16 * 1024)).unwrap());
    let p = store.peer_slot("a").unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(t);
                for _ in 0..400 {
                    let c = rng.gen_range(0..200u64);
                    let (id, data) = chunk(c, 1000 + (c as usize % 7) * 300);
                    if rng.gen_bool(0.5) {
                        store.put(&id, &data, p).unwrap();
                    } else if let Some(got) = store.get(&id, Some(p)).unwrap() {
                        assert_eq!(&got[..], &data[..]);
                    }
                    assert!(store.stats().bytes <= max);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = store.stats();
    assert_eq!(s.corrupt_dropped, 0);
    assert!(s.segments_evicted > 0 && s.hits > 0);
}

const KILL9_DIR_ENV: &str = "STRAIT_STORE_KILL9_DIR";
/// The writer stops on its own after this much, so an orphaned child ends.
const KILL9_WRITER_LIMIT: u64 = 40;

fn kill9_chunk(i: u64) -> (RawId, Vec<u8>) {
    chunk(10_000 + i, 500 + (i as usize * 131) % 6000)
}

/// Not a test on its own: the body of the child process that
/// `kill_minus_nine_mid_write_loses_nothing_before_the_last_put` kills.
#[test]
fn kill9_child_writer() {
    let Some(dir) = std::env::var_os(KILL9_DIR_ENV) else {
        return;
    };
    let store = Store::open(cfg(Path::new(&dir), 64 << 20, 1 << 20)).unwrap();
    let p = store.peer_slot("a").unwrap();
    let q = store.peer_slot("b").unwrap();
    for i in 0.. {
        let (id, d) = kill9_chunk(i);
        store.put(&id, &d, p).unwrap();
        // Peer-set records interleaved with chunk records: every even chunk
        // ends up held by b as well.
        if i % 2 == 0 {
            store.mark_peer(&id, q).unwrap();
        }
        if store.stats().bytes > KILL9_WRITER_LIMIT << 20 {
            break;
        }
    }
}

#[test]
fn kill_minus_nine_mid_write_loses_nothing_before_the_last_put() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill9_child_writer", "--test-threads=1"])
        .env(KILL9_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the writer is well into its second segment, then SIGKILL it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !seg(dir.path(), 2).exists()
        || fs::metadata(seg(dir.path(), 2)).map_or(0, |m| m.len()) < 300_000
    {
        assert!(
            std::time::Instant::now() < deadline,
            "writer made no progress"
        );
        assert!(child.try_wait().unwrap().is_none(), "writer exited early");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let store = Store::open(cfg(dir.path(), 64 << 20, 1 << 20)).unwrap();
    let (p, q) = (store.peer_slot("a").unwrap(), store.peer_slot("b").unwrap());
    let entries = store.stats().entries;
    assert!(entries > 100, "only {entries} entries");
    // Puts are sequential, so the survivors are exactly a prefix 0..entries
    // (the last one may be the torn one).
    for i in 0..entries {
        let (id, d) = kill9_chunk(i);
        assert_eq!(
            store.get(&id, Some(p)).unwrap().as_deref(),
            Some(&d[..]),
            "chunk {i}"
        );
        if i + 1 < entries {
            assert_eq!(store.peer_has(&id, q), i % 2 == 0, "peer set of chunk {i}");
        }
    }
    assert_eq!(store.get(&kill9_chunk(entries).0, None).unwrap(), None);
    assert_eq!(store.stats().corrupt_dropped, 0);
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Get(u8, Option<u8>),
    Mark(u8, u8),
    Forget(u8, u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..16u8, 0..3u8).prop_map(|(c, p)| Op::Put(c, p)),
        4 => (0..16u8, proptest::option::of(0..3u8)).prop_map(|(c, p)| Op::Get(c, p)),
        1 => (0..16u8, 0..3u8).prop_map(|(c, p)| Op::Mark(c, p)),
        1 => (0..16u8, 0..3u8).prop_map(|(c, p)| Op::Forget(c, p)),
        1 => Just(Op::Reopen),
    ]
}

fn model_chunk(c: u8) -> (RawId, Vec<u8>) {
    chunk(1000 + u64::from(c), (usize::from(c) * 997) % 9000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// With a large budget the store equals the model exactly; with a small one
    /// (evictions) it may forget, but never returns wrong bytes or serves a peer
    /// that the model says lacks the chunk. On disk and in memory alike.
    #[test]
    fn store_matches_a_model_across_reopens(ops in proptest::collection::vec(op(), 1..60), small in any::<bool>(), memory in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let mem = MemoryDir::new();
        let config = || cfg(dir.path(), if small { 64 * 1024 } else { 64 << 20 }, 16 * 1024);
        let reopen = || {
            let opts = if memory { StoreOptions::memory(mem.clone()) } else { StoreOptions::disk() };
            Store::open_with(config(), opts).unwrap()
        };
        let mut store = reopen();
        let slots = |s: &Store| -> Vec<PeerSlot> {
            (0..3).map(|i| s.peer_slot(&format!("peer-{i}")).unwrap()).collect()
        };
        let mut ps = slots(&store);
        let mut model: HashMap<u8, u64> = HashMap::new();
        for op in ops {
            match op {
                Op::Put(c, p) => {
                    let (id, d) = model_chunk(c);
                    store.put(&id, &d, ps[p as usize]).unwrap();
                    *model.entry(c).or_default() |= 1 << p;
                }
                Op::Get(c, p) => {
                    let (id, d) = model_chunk(c);
                    let got = store.get(&id, p.map(|p| ps[p as usize])).unwrap();
                    let allowed = model.get(&c).is_some_and(|m| match p {
                        None => true,
                        Some(p) => m & (1 << p) != 0,
                    });
                    let has = p.map(|p| store.peer_has(&id, ps[p as usize]));
                    if let Some(got) = &got {
                        prop_assert_eq!(&got[..], &d[..]);
                        prop_assert!(allowed);
                    }
                    if !small {
                        prop_assert_eq!(got.is_some(), allowed);
                        if let Some(has) = has { prop_assert_eq!(has, allowed); }
                    } else if has == Some(true) {
                        prop_assert!(allowed);
                    }
                }
                Op::Mark(c, p) => {
                    let (id, _) = model_chunk(c);
                    let present = store.mark_peer(&id, ps[p as usize]).unwrap();
                    if present { *model.entry(c).or_default() |= 1 << p; }
                    if !small { prop_assert_eq!(present, model.contains_key(&c)); }
                }
                Op::Forget(c, p) => {
                    let (id, _) = model_chunk(c);
                    store.forget_peer(&id, ps[p as usize]);
                    if let Some(m) = model.get_mut(&c) { *m &= !(1 << p); }
                }
                Op::Reopen => {
                    drop(store);
                    store = reopen();
                    let again = slots(&store);
                    prop_assert_eq!(&again, &ps);
                    ps = again;
                }
            }
            let s = store.stats();
            prop_assert!(s.bytes <= s.max_bytes);
            prop_assert_eq!(s.corrupt_dropped, 0);
        }
    }
}
