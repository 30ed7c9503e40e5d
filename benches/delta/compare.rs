//! Delta compression vs rsync and `zstd --patch-from` on scattered-edit workloads (issue 7).
//!
//! For each workload (generated from a seed) version 1 crosses first, then version 2; the table
//! shows the WAN bytes of version 2: strait's frame bytes from the sans-IO encoder (plus any
//! supplies; QUIC adds a roughly constant few percent on top, not counted), `rsync -z` updating
//! v1 in place over a pipe (`Total bytes sent + received`), and the size of
//! `zstd --long=27 --patch-from=v1 v2`. Also the cold-encode throughput on data without
//! near-duplicates, delta off vs on, in the same run.
//!
//! Run: `cargo bench -p strait-benches --bench delta-compare` (needs `rsync` and `zstd` on PATH).
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use strait_admin::RouteStats;
use strait_chunk::{ChunkHasher, ChunkId, ChunkerConfig};
use strait_dedup::{DeltaConfig, DeltaStats, EncoderConfig, FlowDecoder, FlowEncoder, SketchIndex};
use strait_store::{Store, StoreConfig};
use strait_wire::{Frame, FrameDecoder};

const KEY: [u8; 32] = [5; 32];

fn cfg(delta: bool) -> EncoderConfig {
    EncoderConfig {
        chunker: ChunkerConfig::default(),
        dedup: true,
        compress: strait_codec::CompressConfig::default(),
        window: u64::MAX / 4,
        delta: DeltaConfig {
            enabled: delta,
            ..DeltaConfig::default()
        },
        // As the product runs a route with delta on: no record-aligned cuts (they leave smaller
        // chunks that cost deltas more). Every column uses the same cuts, so v1 and v2 align.
        format_cuts: false,
    }
}

struct Pair {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    tx: Arc<Store>,
    rx: Arc<Store>,
    index: Arc<SketchIndex>,
    rx_index: Arc<SketchIndex>,
}

fn pair() -> Pair {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let tx = Arc::new(Store::open(StoreConfig::new(a.path(), 4 << 30, KEY)).unwrap());
    let rx = Arc::new(Store::open(StoreConfig::new(b.path(), 4 << 30, KEY)).unwrap());
    Pair {
        _dirs: (a, b),
        tx,
        rx,
        index: Arc::new(SketchIndex::new(strait_dedup::delta::DEFAULT_INDEX_BYTES)),
        rx_index: Arc::new(SketchIndex::new(strait_dedup::delta::DEFAULT_INDEX_BYTES)),
    }
}

/// One transfer through encoder → frames → decoder; returns WAN bytes (frames incl. supplies).
fn transfer(
    p: &Pair,
    input: &[u8],
    delta: bool,
    hints: &[ChunkId],
    dstats: &Arc<DeltaStats>,
) -> u64 {
    let hasher = ChunkHasher::new(KEY);
    let tp = p.tx.peer_slot("rx").unwrap();
    let rp = p.rx.peer_slot("tx").unwrap();
    let rstats = Arc::new(RouteStats::default());
    // As the product wires a flow (crates/transport/src/flow.rs): both halves always get the
    // process's index; the config decides whether deltas are sent.
    let mut enc = FlowEncoder::new(cfg(delta), hasher.clone(), p.tx.clone(), tp, rstats.clone())
        .with_delta(p.index.clone(), dstats.clone());
    enc.add_base_hints(hints);
    let mut dec = FlowDecoder::new(
        hasher,
        p.rx.clone(),
        rp,
        u64::MAX / 4,
        Arc::new(RouteStats::default()),
    )
    .with_delta(Some(p.rx_index.clone()), Arc::new(DeltaStats::default()));
    let mut wire = BytesMut::new();
    for piece in input.chunks(256 << 10) {
        enc.push(piece, &mut wire);
    }
    enc.finish(&mut wire);
    let mut wan = 0u64;
    let mut out = Vec::with_capacity(input.len());
    let mut fd = FrameDecoder::new();
    while !wire.is_empty() {
        wan += wire.len() as u64;
        fd.extend(&wire);
        wire.clear();
        let mut wants = Vec::new();
        while let Some((f, _)) = fd.next_frame().unwrap() {
            dec.on_frame(f, &mut wants).unwrap();
            while let Some(b) = dec.pop_ready() {
                out.extend_from_slice(&b);
            }
            if let Some(Frame::Ack(n)) = dec.take_ack() {
                enc.on_ack(n).unwrap();
            }
        }
        if !wants.is_empty() {
            enc.on_want(&wants).unwrap();
            while enc.poll_supply(&mut wire) {}
        }
    }
    assert!(out == input, "transfer not byte-exact");
    if std::env::var_os("DELTA_DEBUG").is_some() {
        eprintln!(
            "literals {} refs {} deltas {} runs {} attempts {} rejected {} wan {wan}",
            rstats.literal_chunks.load(Relaxed),
            rstats.ref_chunks.load(Relaxed),
            dstats.delta_chunks.load(Relaxed),
            dstats.runs.load(Relaxed),
            dstats.attempts.load(Relaxed),
            dstats.rejected.load(Relaxed)
        );
    }
    wan
}

struct StraitResult {
    dedup_only: u64,
    delta: u64,
    delta_hints: u64,
    delta_chunks: u64,
}

fn strait(v1: &[u8], v2: &[u8]) -> StraitResult {
    let s = Arc::new(DeltaStats::default());
    let p = pair();
    transfer(&p, v1, false, &[], &s);
    let dedup_only = transfer(&p, v2, false, &[], &s);

    let p = pair();
    transfer(&p, v1, true, &[], &s);
    let s2 = Arc::new(DeltaStats::default());
    let delta = transfer(&p, v2, true, &[], &s2);

    // Same URL fetched again: the previous version's chunks are hints. The index is emptied
    // first, so the hints alone must find the bases.
    let p = pair();
    transfer(&p, v1, false, &[], &s);
    let hasher = ChunkHasher::new(KEY);
    let hints: Vec<ChunkId> = strait_chunk::chunk_boundaries(ChunkerConfig::default(), v1)
        .into_iter()
        .map(|r| hasher.id(&v1[r]))
        .collect();
    let delta_hints = transfer(&p, v2, true, &hints, &s);
    StraitResult {
        dedup_only,
        delta,
        delta_hints,
        delta_chunks: s2.delta_chunks.load(Relaxed),
    }
}

fn rsync_bytes(dir: &Path, v1: &[u8], v2: &[u8]) -> Option<u64> {
    let dst = dir.join("dst");
    let src = dir.join("src");
    std::fs::create_dir_all(&dst).ok()?;
    std::fs::create_dir_all(&src).ok()?;
    std::fs::write(dst.join("data"), v1).ok()?;
    std::fs::write(src.join("data"), v2).ok()?;
    // A "remote shell" that runs the server side locally over a pipe, so rsync uses its
    // network code path (delta transfer, compression) exactly as over ssh.
    let rsh = dir.join("rsh.sh");
    std::fs::write(&rsh, "#!/bin/sh\nshift\nexec \"$@\"\n").ok()?;
    Command::new("chmod").arg("+x").arg(&rsh).status().ok()?;
    let o = Command::new("rsync")
        .arg("-z")
        .arg("--stats")
        .arg("--no-whole-file")
        // Same size and second as v1 would make rsync skip the file.
        .arg("--ignore-times")
        .arg(format!("--rsh={}", rsh.display()))
        .arg(src.join("data"))
        .arg(format!("localhost:{}", dst.join("data").display()))
        .output()
        .ok()?;
    if !o.status.success() {
        eprintln!("rsync failed: {}", String::from_utf8_lossy(&o.stderr));
        return None;
    }
    assert!(
        std::fs::read(dst.join("data")).ok()? == v2,
        "rsync result differs"
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let num: String = line[name.len()..]
            .chars()
            .filter(|c| c.is_ascii_digit())
            .collect();
        num.parse().ok()
    };
    Some(field("Total bytes sent:")? + field("Total bytes received:")?)
}

fn zstd_patch_bytes(dir: &Path, v1: &[u8], v2: &[u8]) -> Option<u64> {
    let a = dir.join("v1");
    let b = dir.join("v2");
    let out = dir.join("patch.zst");
    std::fs::write(&a, v1).ok()?;
    std::fs::write(&b, v2).ok()?;
    let s = Command::new("zstd")
        .arg("-q")
        .arg("-f")
        .arg("--long=27")
        .arg(format!("--patch-from={}", a.display()))
        .arg(&b)
        .arg("-o")
        .arg(&out)
        .status()
        .ok()?;
    if !s.success() {
        return None;
    }
    Some(std::fs::metadata(&out).ok()?.len())
}

// ---- workloads ----------------------------------------------------------------------------

const TOKENS: &[&str] = &[
    "fn", "let", "mut", "self", "return", "if", "else", "for", "in", "match", "struct", "impl",
    "pub", "use", "crate", "::", "(", ")", "{", "}", ";", "=", "+=", "->", "&", "Vec", "String",
    "Option", "Some", "None", "Ok", "Err", "buffer", "index", "count", "value", "config", "len",
    "data", "result", "error", "item", "node", "parse", "write", "read", "0", "1", "42", "\"ok\"",
];

fn source_file(r: &mut ChaCha8Rng, lines: usize) -> Vec<u8> {
    let mut s = String::new();
    for _ in 0..lines {
        let indent = r.gen_range(0..4) * 4;
        s.push_str(&" ".repeat(indent));
        for i in 0..r.gen_range(2..12) {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(TOKENS[r.gen_range(0..TOKENS.len())]);
        }
        s.push('\n');
    }
    s.into_bytes()
}

fn small_edit(r: &mut ChaCha8Rng, f: &mut Vec<u8>) {
    for _ in 0..r.gen_range(1..4) {
        let at = r.gen_range(0..f.len());
        match r.gen_range(0..3) {
            0 => {
                let tok = TOKENS[r.gen_range(0..TOKENS.len())].as_bytes();
                f.splice(at..at, tok.iter().copied());
            }
            1 => {
                let end = (at + r.gen_range(1..8)).min(f.len());
                f.drain(at..end);
            }
            _ => f[at] = b'a' + r.gen_range(0..26),
        }
    }
}

fn build_tar(files: &[(String, Vec<u8>, u64)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, mtime) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(*mtime);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// A tar of ~3000 small source files; v2 edits 30% of them slightly, removes 2%, adds 2%.
fn tar_workload(seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut files: Vec<(String, Vec<u8>, u64)> = (0..3000)
        .map(|i| {
            let lines = r.gen_range(20..300);
            (
                format!("src/mod{:02}/file{i:05}.rs", i % 40),
                source_file(&mut r, lines),
                1_700_000_000,
            )
        })
        .collect();
    let v1 = build_tar(&files);
    let mut next = Vec::with_capacity(files.len());
    for (i, (name, mut data, mtime)) in files.drain(..).enumerate() {
        let roll: f64 = r.gen();
        if roll < 0.02 {
            continue; // removed
        }
        let mut mtime = mtime;
        if roll < 0.32 {
            small_edit(&mut r, &mut data);
            mtime += 86_400;
        }
        next.push((name, data, mtime));
        if r.gen_bool(0.02) {
            let lines = r.gen_range(20..300);
            next.push((
                format!("src/new/file{i:05}.rs"),
                source_file(&mut r, lines),
                1_700_086_400,
            ));
        }
    }
    (v1, build_tar(&next))
}

/// A bf16 safetensors checkpoint of 48 tensors × 256 Ki elements; v2 "fine-tunes" 5% of the
/// tensors: 2% of their elements move by ±1 ulp.
fn checkpoint_workload(seed: u64) -> (Vec<u8>, Vec<u8>) {
    let tensors = 48;
    let elements = 256 * 1024;
    let seeds = strait_datagen::checkpoint_seeds(seed, tensors, 0, 0.0);
    let v1 = strait_datagen::safetensors_bf16(&seeds, elements);
    let header = u64::from_le_bytes(v1[..8].try_into().unwrap()) as usize;
    let data_start = 8 + header;
    let mut v2 = v1.clone();
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0xf1e);
    let changed = (tensors * 5).div_ceil(100).max(2);
    for _ in 0..changed {
        let t = r.gen_range(0..tensors);
        let base = data_start + t * elements * 2;
        for e in 0..elements {
            if r.gen_bool(0.02) {
                let at = base + e * 2;
                let v = u16::from_le_bytes([v2[at], v2[at + 1]]);
                let v = if r.gen() {
                    v.wrapping_add(1)
                } else {
                    v.wrapping_sub(1)
                };
                v2[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    (v1, v2)
}

fn mb(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

fn throughput(data: &[u8], delta: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(StoreConfig::new(dir.path(), 8 << 30, KEY)).unwrap());
    let p = store.peer_slot("peer").unwrap();
    let mut c = cfg(delta);
    c.compress.level = Some(1);
    let mut enc = FlowEncoder::new(
        c,
        ChunkHasher::new(KEY),
        store,
        p,
        Arc::new(RouteStats::default()),
    );
    if delta {
        enc = enc.with_delta(
            Arc::new(SketchIndex::new(strait_dedup::delta::DEFAULT_INDEX_BYTES)),
            Arc::new(DeltaStats::default()),
        );
    }
    let t = Instant::now();
    let mut out = BytesMut::with_capacity(data.len());
    for piece in data.chunks(256 << 10) {
        enc.push(piece, &mut out);
    }
    enc.finish(&mut out);
    data.len() as f64 / t.elapsed().as_secs_f64() / 1e6
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let work = tempfile::tempdir().unwrap();
    let jsonl_v1 = strait_datagen::jsonl(1, 32 << 20);
    let jsonl_v2 = strait_datagen::jsonl_edit(2, &jsonl_v1, 0.02);
    let (tar1, tar2) = tar_workload(3);
    let (ck1, ck2) = checkpoint_workload(4);
    let workloads: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("JSONL, 2% of records edited", jsonl_v1.clone(), jsonl_v2),
        (
            "tar of 3000 source files, 30% edited, ±2% added/removed",
            tar1,
            tar2,
        ),
        (
            "bf16 checkpoint, 5% of tensors fine-tuned (2% of values ±1 ulp)",
            ck1,
            ck2,
        ),
    ];
    println!("| workload | v2 size | strait dedup only | strait dedup + delta | strait + delta, previous-version hints | rsync -z | zstd --long=27 --patch-from | delta ≤ rsync | delta ≤ 1.2 × zstd |");
    println!("|---|---|---|---|---|---|---|---|---|");
    // `DELTA_ONLY=<index>` runs one workload and skips the throughput run (for iterating).
    let only: Option<usize> = std::env::var("DELTA_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    for (i, (name, v1, v2)) in workloads.iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let d = work.path().join(format!("w{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let s = strait(v1, v2);
        let rs = rsync_bytes(&d, v1, v2);
        let zs = zstd_patch_bytes(&d, v1, v2);
        let fmt = |o: Option<u64>| o.map_or("n/a".to_string(), mb);
        let ok_r = rs.map_or("n/a".into(), |r| {
            if s.delta <= r {
                "yes".to_string()
            } else {
                format!("no ({:.2}×)", s.delta as f64 / r as f64)
            }
        });
        let ok_z = zs.map_or("n/a".into(), |z| {
            let x = s.delta as f64 / z as f64;
            if x <= 1.2 {
                format!("yes ({x:.2}×)")
            } else {
                format!("no ({x:.2}×)")
            }
        });
        println!(
            "| {name} | {} | {} | {} ({} deltas) | {} | {} | {} | {ok_r} | {ok_z} |",
            mb(v2.len() as u64),
            mb(s.dedup_only),
            mb(s.delta),
            s.delta_chunks,
            mb(s.delta_hints),
            fmt(rs),
            fmt(zs),
        );
    }
    if only.is_some() {
        return;
    }
    // Throughput without near-duplicates: fresh store and index each run, best of 5, alternated.
    let text = &jsonl_v1[..32 << 20];
    let (mut off, mut on) = (0f64, 0f64);
    for _ in 0..5 {
        off = off.max(throughput(text, false));
        on = on.max(throughput(text, true));
    }
    println!();
    println!(
        "Cold encode of 32 MiB JSONL without near-duplicates (zstd-1, best of 5): delta off {off:.0} MB/s, delta on {on:.0} MB/s ({:+.1}%).",
        (on / off - 1.0) * 100.0
    );
}
