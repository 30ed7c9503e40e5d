//! Issue 14, fault matrix: real edge and core processes under kill -9, a damaged store, a full
//! disk, WAN partitions, half-open TCP peers and a lossy WAN. Every case ends byte-exact or with
//! an error the client sees (a reset or a failed read), never a clean short result.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use strait_e2e::admin::{self, metric, route};
use strait_e2e::bin::{heavy, light};
use strait_e2e::faultkit::{
    flip_store_bits, start_download, start_upload, NsOrigin, NsPair, Outcome, Partition, Running,
    Tmpfs,
};
use strait_e2e::origin::{self, Origin};
use strait_e2e::pair::Pair;
use strait_e2e::{rt, seeded};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Long enough that a kill always lands mid-transfer.
const ENDLESS: u64 = 64 * GIB;
/// How long a client may take to see the failure of the process it went through.
const FAIL_WITHIN: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dir {
    Download,
    Upload,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    Core,
    Edge,
}

fn start_transfer(rt: &tokio::runtime::Runtime, pair: &Pair, dir: Dir, seed: u64) -> Running {
    match dir {
        Dir::Download => start_download(rt, pair.forward(), seed, ENDLESS),
        Dir::Upload => start_upload(rt, pair.forward(), seed, ENDLESS),
    }
}

/// A full transfer of `len` seeded bytes; asserts it is byte-exact and returns the receiving
/// side's route counters for it.
fn exact_transfer(
    rt: &tokio::runtime::Runtime,
    pair: &Pair,
    dir: Dir,
    seed: u64,
    len: u64,
) -> admin::Route {
    let receiver = |p: &Pair| match dir {
        Dir::Download => route(&p.edge_stats(), "origin", "download"),
        Dir::Upload => route(&p.core_stats(), "origin", "upload"),
    };
    let before = receiver(pair);
    let t = match dir {
        Dir::Download => rt.block_on(origin::download(pair.forward(), seed, len)),
        Dir::Upload => rt.block_on(origin::upload(pair.forward(), seed, len)),
    }
    .unwrap_or_else(|e| panic!("{dir:?} of seed {seed}: {e:#}"));
    assert_eq!(t.len, len, "{dir:?} of seed {seed}: length");
    assert_eq!(t.hash, seeded::hash(seed, len), "{dir:?} of seed {seed}: bytes differ");
    strait_e2e::poll("receiver counters settle", Duration::from_secs(10), || {
        let r = receiver(pair).since(&before);
        (r.logical_bytes >= len).then_some(r)
    })
    .unwrap()
}

/// The client of a killed process must see an error, except in one case the kernel decides:
/// a SIGKILLed edge's sockets are closed by the kernel, which sends FIN (not RST) on a socket
/// with no unread data — a download client that has sent its whole request. That client
/// sees a short end and can only tell by the length, which this test checks is short.
fn assert_failed_visibly(out: &Outcome, victim: Victim, dir: Dir) -> String {
    match out {
        Outcome::Failed { after, error } => format!("{:?} after {} MiB", error.kind(), after >> 20),
        Outcome::Complete { len, .. } if victim == Victim::Edge && dir == Dir::Download => {
            assert!(*len < ENDLESS, "a killed edge delivered everything?");
            format!("FIN from the kernel after {} MiB (short)", len >> 20)
        }
        Outcome::Complete { len, .. } => panic!(
            "{victim:?} killed mid-{dir:?}: the client saw a clean end after {len} bytes"
        ),
    }
}

#[test]
fn kill_9_of_either_side_mid_transfer_fails_the_client_and_restarts_transfer_byte_exact() {
    let _h = heavy();
    let rt = rt();
    let origin = rt.block_on(Origin::start()).unwrap();
    let mut pair = Pair::new(origin.addr).unwrap();
    pair.start().unwrap();
    let len = 4 * MIB;
    let mut seed = 0x4b00;
    for round in 0..3 {
        for victim in [Victim::Core, Victim::Edge] {
            for dir in [Dir::Download, Dir::Upload] {
                seed += 1;
                let t = start_transfer(&rt, &pair, dir, seed);
                t.wait_progress(2 * MIB, Duration::from_secs(30)).unwrap();
                let killed = Instant::now();
                let mut proc = match victim {
                    Victim::Core => pair.core.take().unwrap().proc,
                    Victim::Edge => pair.edge.take().unwrap().proc,
                };
                proc.signal(libc::SIGKILL);
                let out = t.finish(&rt, FAIL_WITHIN).unwrap();
                let took = killed.elapsed();
                let seen = assert_failed_visibly(&out, victim, dir);
                let _ = proc.wait_exit(Duration::from_secs(5));
                drop(proc);
                match victim {
                    Victim::Core => pair.start_core().unwrap(),
                    Victim::Edge => pair.start_edge().unwrap(),
                }
                pair.edge_mut().wait_ready(Duration::from_secs(20)).unwrap();
                let first = exact_transfer(&rt, &pair, dir, seed + 1000, len);
                let second = exact_transfer(&rt, &pair, dir, seed + 1000, len);
                println!(
                    "round {round}: {victim:?} killed mid-{dir:?}: client saw {seen} in {:.0} ms; \
                     after restart {} then {} of {} MiB by reference",
                    took.as_secs_f64() * 1e3,
                    first.dedup_saved_bytes >> 20,
                    second.dedup_saved_bytes >> 20,
                    len >> 20
                );
                assert!(
                    second.dedup_saved_bytes * 100 >= len * 90,
                    "the repeat after a restart did not dedup: {second:?}"
                );
            }
        }
    }
    pair.stop().unwrap();
}

/// The store's damage counters of a process, from its metrics.
fn store_damage(admin_addr: std::net::SocketAddr) -> (f64, f64) {
    let m = admin::metrics(admin_addr).unwrap();
    let get = |name| metric(&m, name, "").unwrap_or(0.0);
    (
        get("strait_store_damaged_segments"),
        get("strait_store_corrupt_dropped_total"),
    )
}

#[test]
fn bit_flips_in_stopped_stores_never_reach_a_client_and_are_counted() {
    let _h = heavy();
    let rt = rt();
    let origin = rt.block_on(Origin::start()).unwrap();
    let mut pair = Pair::new(origin.addr).unwrap();
    pair.start().unwrap();
    let len = 8 * MIB;
    exact_transfer(&rt, &pair, Dir::Download, 0xb17, len);
    exact_transfer(&rt, &pair, Dir::Upload, 0xb18, len);
    pair.stop().unwrap();
    let mut flipped = 0;
    for (i, role) in ["core", "edge"].iter().enumerate() {
        let dir = pair.dir.path().join(format!("{role}-store"));
        flipped += flip_store_bits(&dir, 0xf11 + i as u64, 24).unwrap();
    }
    assert!(flipped >= 40, "{flipped} bits flipped");
    pair.start().unwrap();
    // The same bytes again (references into damaged stores), then fresh bytes.
    exact_transfer(&rt, &pair, Dir::Download, 0xb17, len);
    exact_transfer(&rt, &pair, Dir::Upload, 0xb18, len);
    exact_transfer(&rt, &pair, Dir::Download, 0xb19, len);
    exact_transfer(&rt, &pair, Dir::Upload, 0xb1a, len);
    let (core_seg, core_bad) = store_damage(pair.core().admin);
    let (edge_seg, edge_bad) = store_damage(pair.edge().admin);
    println!(
        "{flipped} bits flipped: core {core_seg} damaged segments, {core_bad} corrupt records \
         dropped; edge {edge_seg}, {edge_bad}"
    );
    assert!(core_seg + core_bad > 0.0, "core store damage went uncounted");
    assert!(edge_seg + edge_bad > 0.0, "edge store damage went uncounted");
    pair.stop().unwrap();
}

#[test]
fn core_store_on_a_full_tmpfs_keeps_transfers_byte_exact_and_counts_write_failures() {
    let fs = match Tmpfs::mount("4m") {
        Ok(fs) => fs,
        Err(e) => {
            // CI runs as root; only a non-root run skips, and says why.
            eprintln!("SKIP full-disk test: {e:#}");
            return;
        }
    };
    let _h = heavy();
    let rt = rt();
    let origin = rt.block_on(Origin::start()).unwrap();
    // Declared after the mount: the processes die before it is unmounted.
    let mut pair = Pair::new(origin.addr).unwrap();
    pair.core_cfg.common.store_path = fs.path.join("store");
    pair.start().unwrap();
    let len = 64 * MIB;
    for dir in [Dir::Download, Dir::Upload] {
        for round in 0..2 {
            let r = exact_transfer(&rt, &pair, dir, 0xd15c + dir as u64, len);
            println!(
                "{dir:?} {round}: 64 MiB byte-exact, {} MiB by reference",
                r.dedup_saved_bytes >> 20
            );
        }
    }
    assert!(
        pair.core.as_mut().unwrap().proc.try_wait().unwrap().is_none(),
        "the core exited"
    );
    assert!(admin::ready(pair.edge().admin), "tunnel down");
    let m = admin::metrics(pair.core().admin).unwrap();
    let get = |name| metric(&m, name, "").unwrap_or(0.0);
    let (errors, full) = (
        get("strait_store_write_errors_total"),
        get("strait_store_disk_full_total"),
    );
    let bytes = get("strait_store_bytes");
    println!("core store on a 4 MiB tmpfs: {errors} write errors, {full} disk-full retries, {bytes} bytes");
    assert!(errors + full > 0.0, "no store write failure was counted");
    assert!(bytes <= 4.0 * MIB as f64, "store claims {bytes} bytes on a 4 MiB disk");
    pair.stop().unwrap();
}
