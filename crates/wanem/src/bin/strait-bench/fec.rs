//! The FEC benchmark of issue 5: request/response latency through the pair on a 100 ms path
//! (FEC off vs adaptive, lossless / 2% random / 1% bursty), bulk goodput at 1% loss with Cubic
//! and BBR, and adaptive FEC's overhead at zero loss.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strait_wanem::Wan;

use crate::matrix::{self, Cell, LinkSpec, Sample};
use crate::pair::{Pair, Tuning, FORWARD_PORT};
use crate::report;
use crate::Cli;

/// Request and response sizes of one exchange.
const REQUEST: usize = 2 << 10;
const RESPONSE: usize = 16 << 10;
/// Port of the request/response server in site B (the core's upstream).
const RR_PORT: u16 = 7000;
/// Bulk transfer size and the cap on a bulk run that collapses (Cubic at 1% loss).
/// The bulk object: large enough that slow start (about 1 s at 100 ms) is a small part of the
/// transfer, as in the matrix's full-mode `bulk` cell (at 24 MiB no controller could reach 80 %
/// of the link: BBR read 70 Mbit/s).
const BULK: usize = 96 << 20;
const BULK_CAP: Duration = Duration::from_secs(30);

fn link(loss: f64, burst: Option<(f64, f64)>) -> LinkSpec {
    LinkSpec {
        key: "100m-100ms",
        label: "100 Mbit/s, 100 ms RTT",
        rate_mbit: 100,
        rtt_ms: 100,
        loss,
        burst,
        scale: 1.0,
    }
}

fn fec_toml(adaptive: bool) -> String {
    if adaptive { "\"adaptive\"" } else { "\"off\"" }.to_string()
}

/// Replies `RESPONSE` seeded bytes to every `REQUEST` bytes, until `stop`.
fn rr_server(l: TcpListener, stop: Arc<AtomicBool>, seed: u64) {
    for conn in l.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut s) = conn else { continue };
        let _ = s.set_nodelay(true);
        std::thread::spawn(move || {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut req = vec![0u8; REQUEST];
            let mut resp = vec![0u8; RESPONSE];
            while s.read_exact(&mut req).is_ok() {
                rng.fill_bytes(&mut resp);
                if s.write_all(&resp).is_err() {
                    return;
                }
            }
        });
    }
}

/// `n` exchanges (after one warm-up) over one connection to the edge's forward; latencies.
fn rr_client(n: usize, seed: u64) -> Result<Vec<Duration>> {
    let mut s =
        TcpStream::connect(("127.0.0.1", FORWARD_PORT)).context("connecting the forward")?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xc11e);
    let mut req = vec![0u8; REQUEST];
    let mut resp = vec![0u8; RESPONSE];
    let mut out = Vec::with_capacity(n);
    for i in 0..=n {
        rng.fill_bytes(&mut req);
        let t = Instant::now();
        s.write_all(&req)?;
        s.read_exact(&mut resp)
            .with_context(|| format!("exchange {i}: reading the response"))?;
        if i > 0 {
            out.push(t.elapsed());
        }
    }
    Ok(out)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx].as_secs_f64() * 1e3
}

/// FEC figures of both ends, summed (edge + core), from their `/stats`.
#[derive(Debug, Clone, Copy, Default)]
struct FecNumbers {
    /// Repair datagram bytes sent.
    repair_bytes: f64,
    /// FEC header bytes on plain and source packets.
    header_bytes: f64,
    /// Packets QUIC declared lost (each one a retransmission of its frames).
    quic_lost: f64,
    /// Packets FEC rebuilt.
    rebuilt: f64,
    /// Blocks FEC could not rebuild.
    unrecoverable: f64,
}

/// Sum of the numeric leaves of `v` whose path ends with `name` (after the `.0.value` of a
/// metric family sample).
fn leaf_sum(v: &serde_json::Value, name: &str) -> f64 {
    fn walk(v: &serde_json::Value, path: &str, name: &str, sum: &mut f64) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    walk(x, &format!("{path}{k}."), name, sum)
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk(x, &format!("{path}{i}."), name, sum)
                }
            }
            serde_json::Value::Number(n) => {
                let p = path.trim_end_matches('.').trim_end_matches(".0.value");
                if p == name || p.ends_with(&format!(".{name}")) {
                    *sum += n.as_f64().unwrap_or(0.0);
                }
            }
            _ => {}
        }
    }
    let mut sum = 0.0;
    walk(v, "", name, &mut sum);
    sum
}

/// FEC-related counters of both ends (any key naming fec/repair/rebuilt/lost), and their sums.
fn fec_counters(wan: &Wan) -> (String, FecNumbers) {
    let (e, c) = (Pair::edge_stats(wan), Pair::core_stats(wan));
    let both = |name: &str| leaf_sum(&e, name) + leaf_sum(&c, name);
    let n = FecNumbers {
        repair_bytes: both("fec_repair_bytes_total"),
        header_bytes: both("fec_header_bytes_total"),
        quic_lost: both("lost_packets"),
        rebuilt: both("fec_packets_rebuilt_total"),
        unrecoverable: both("fec_blocks_unrecoverable_total"),
    };
    (
        format!("edge: {}<br>core: {}", counters_of(&e), counters_of(&c)),
        n,
    )
}

fn counters_of(v: &serde_json::Value) -> String {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    walk(x, &format!("{path}{k}."), out)
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk(x, &format!("{path}{i}."), out)
                }
            }
            other => {
                let p = path.trim_end_matches('.');
                let l = p.to_ascii_lowercase();
                if ["fec", "repair", "rebuil", "lost", "unrecover"]
                    .iter()
                    .any(|k| l.contains(k))
                {
                    let short = p
                        .trim_start_matches("extra.")
                        .trim_end_matches(".0.value")
                        .trim_start_matches("tunnel.");
                    out.push(format!("{short}={other}"));
                }
            }
        }
    }
    walk(v, "", &mut out);
    if out.is_empty() {
        "–".into()
    } else {
        out.join(", ")
    }
}

struct LatencyRow {
    loss: &'static str,
    fec: &'static str,
    p50: f64,
    p99: f64,
    p999: f64,
    wan: u64,
    counters: String,
    n: FecNumbers,
}

fn latency_cell(
    cli: &Cli,
    strait: &Path,
    work: &Path,
    certs: &Path,
    spec: &LinkSpec,
    adaptive: bool,
) -> Result<(Vec<Duration>, u64, (String, FecNumbers))> {
    let wan = Wan::start(spec.config(cli.seed, "bbr"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let l = wan.enter_b(|| TcpListener::bind(("127.0.0.1", RR_PORT)))??;
    let st = stop.clone();
    let seed = cli.seed;
    let server = wan.spawn_in_b(move || rr_server(l, st, seed))?;
    let tuning = Tuning {
        congestion: "bbr",
        fec: fec_toml(adaptive),
    };
    let dir = work.join("fec-pair");
    let result = (|| {
        let pair = Pair::start(&wan, strait, &dir, certs, RR_PORT, &tuning)?;
        let w0 = wan.stats();
        let n = cli.exchanges;
        let lat = wan.enter_a(move || rr_client(n, seed))??;
        let wan_bytes = wan.stats().since(&w0).wan_bytes();
        let counters = fec_counters(&wan);
        pair.stop()?;
        Ok::<_, anyhow::Error>((lat, wan_bytes, counters))
    })();
    stop.store(true, Ordering::Relaxed);
    // Wakes the accept loop so the server thread ends before its namespace goes.
    let _ = wan.enter_b(|| TcpStream::connect(("127.0.0.1", RR_PORT)));
    let _ = server.join();
    result
}

struct BulkRow {
    what: String,
    s: Sample,
    counters: String,
    n: FecNumbers,
}

fn bulk(
    cli: &Cli,
    strait: &Path,
    work: &Path,
    certs: &Path,
    spec: &LinkSpec,
    rows: &mut Vec<BulkRow>,
    tcp: bool,
) -> Result<()> {
    let wan = Wan::start(spec.config(cli.seed, "cubic"))?;
    // One object: the goal is about filling the link, not the round trip each of several
    // sequential fetches would cost.
    let wl = matrix::generate(&work.join("data"), "bulk", BULK, cli.seed)?;
    let cell = Cell {
        wan: &wan,
        wl: &wl,
        work,
        strait,
        certs,
        cubic_cap: BULK_CAP,
        trace_rate: cli.trace_rate,
    };
    let origin = cell.start_origin()?;
    let lossy = spec.loss > 0.0 || spec.burst.is_some();
    let wanted = |what: &str| cli.method.as_deref().is_none_or(|m| what.contains(m));
    if tcp {
        for cc in ["cubic", "bbr"] {
            if !wanted(&format!("direct HTTP, TCP {cc}")) {
                continue;
            }
            let s = cell.http(&origin, cc, lossy.then_some(BULK_CAP))?;
            eprintln!("    TCP {cc}: {:.1} Mbit/s", s.goodput_mbit());
            rows.push(BulkRow {
                what: format!("direct HTTP, TCP {cc}"),
                s,
                counters: "–".into(),
                n: FecNumbers::default(),
            });
        }
    }
    for cong in ["cubic", "bbr"] {
        if !lossy && cong == "cubic" {
            continue;
        }
        for adaptive in [false, true] {
            let what = format!(
                "strait {cong}, FEC {}",
                if adaptive { "adaptive" } else { "off" }
            );
            if !wanted(&what) {
                continue;
            }
            let tuning = Tuning {
                congestion: cong,
                fec: fec_toml(adaptive),
            };
            let pair = Pair::start(
                &wan,
                strait,
                &work.join("pair"),
                certs,
                matrix::ORIGIN_PORT,
                &tuning,
            )?;
            let s = cell.strait_fetch(&pair, &origin, "target", lossy.then_some(BULK_CAP))?;
            let (counters, n) = fec_counters(&wan);
            pair.stop()?;
            // The pair's directory is reused by the next run: keep each run's logs (`--keep`).
            for side in ["core", "edge"] {
                let log = work.join("pair").join(format!("{side}.log"));
                let fec = if adaptive { "adaptive" } else { "off" };
                let _ = std::fs::copy(&log, work.join(format!("bulk-{cong}-{fec}-{side}.log")));
            }
            eprintln!(
                "    {what}: {:.1} Mbit/s, WAN {} B, repair {} B, FEC headers {} B, QUIC lost {}, queue drops {}",
                s.goodput_mbit(),
                s.wan,
                n.repair_bytes,
                n.header_bytes,
                n.quic_lost,
                s.queue_drops
            );
            eprintln!("      counters: {counters}");
            rows.push(BulkRow {
                what,
                s,
                counters,
                n,
            });
        }
    }
    origin.terminate()?;
    Ok(())
}

/// Runs the whole FEC benchmark and prints (and with `--write`, stores) its tables.
pub fn run(cli: &Cli, strait: &Path, work: &Path, certs: &Path) -> Result<()> {
    let t_all = Instant::now();
    // Refuse early, with strait's own words, if this build does not take `fec = "adaptive"`.
    let probe = work.join("fec-probe");
    std::fs::create_dir_all(&probe)?;
    let (cp, ep) = crate::pair::write_configs(
        &probe,
        certs,
        std::net::Ipv4Addr::LOCALHOST,
        RR_PORT,
        &Tuning {
            congestion: "bbr",
            fec: fec_toml(true),
        },
    )?;
    crate::pair::check_configs(strait, &[&cp, &ep])?;

    let cases: [(&'static str, LinkSpec); 3] = [
        ("lossless", link(0.0, None)),
        ("2% random", link(0.02, None)),
        ("1% bursty (mean burst 4)", link(0.0, Some((0.01, 4.0)))),
    ];
    // `--workload latency|bulk|overhead` runs one section, `--link <text>` only the latency
    // cases whose name contains the text (for iterating on one goal; tables of a partial run
    // are partial).
    let section = |name: &str| cli.workload.as_deref().is_none_or(|w| name.contains(w));
    let mut lat_rows = Vec::new();
    for (name, spec) in &cases {
        if !section("latency") || cli.link.as_deref().is_some_and(|l| !name.contains(l)) {
            continue;
        }
        for adaptive in [false, true] {
            let fec = if adaptive { "adaptive" } else { "off" };
            eprintln!(
                "[{:>5.0}s] latency: {name}, FEC {fec}",
                t_all.elapsed().as_secs_f64()
            );
            // A broken flow is a result, not a reason to drop the other cells.
            let (mut lat, wan, (counters, n)) =
                match latency_cell(cli, strait, work, certs, spec, adaptive) {
                    Ok(x) => x,
                    Err(e) => {
                        let msg =
                            format!("{e:#}; {}", crate::pair::log_tails(&work.join("fec-pair")));
                        eprintln!("    FAILED {msg}");
                        let failed = format!("FAILED: {}", msg.replace('\n', " "));
                        (Vec::new(), 0, (failed, FecNumbers::default()))
                    }
                };
            lat.sort();
            let r = LatencyRow {
                loss: name,
                fec,
                p50: pct(&lat, 0.50),
                p99: pct(&lat, 0.99),
                p999: pct(&lat, 0.999),
                wan,
                counters,
                n,
            };
            eprintln!(
                "    p50 {:.1} p99 {:.1} p99.9 {:.1} ms; QUIC lost {}, FEC rebuilt {}, unrecoverable blocks {}",
                r.p50, r.p99, r.p999, r.n.quic_lost, r.n.rebuilt, r.n.unrecoverable
            );
            lat_rows.push(r);
        }
    }
    let mut bulk_rows = Vec::new();
    if section("bulk") {
        eprintln!("[{:>5.0}s] bulk at 1% loss", t_all.elapsed().as_secs_f64());
        bulk(
            cli,
            strait,
            work,
            certs,
            &link(0.01, None),
            &mut bulk_rows,
            true,
        )?;
    }
    let mut overhead_rows = Vec::new();
    if section("overhead") {
        eprintln!(
            "[{:>5.0}s] overhead at zero loss",
            t_all.elapsed().as_secs_f64()
        );
        bulk(
            cli,
            strait,
            work,
            certs,
            &link(0.0, None),
            &mut overhead_rows,
            false,
        )?;
    }

    let md = markdown(cli, &lat_rows, &bulk_rows, &overhead_rows, t_all.elapsed());
    println!("{md}");
    if let Some(path) = &cli.write {
        report::write_between_markers(path, "fec", &md)?;
    }
    Ok(())
}

fn markdown(
    cli: &Cli,
    lat: &[LatencyRow],
    bulk: &[BulkRow],
    overhead: &[BulkRow],
    elapsed: Duration,
) -> String {
    let mut md = String::from("## FEC (issue 5)\n\n");
    md.push_str(&format!(
        "Reproduce (root): `cargo build --release -p strait && {}`\n\nMachine: {}. Took {:.0} s; seed {}. \
         Link 100 Mbit/s, 100 ms RTT, loss in both directions; strait congestion BBR unless stated.\n\n",
        crate::command_line(),
        report::machine(),
        elapsed.as_secs_f64(),
        cli.seed
    ));
    md.push_str(&format!(
        "**Request/response latency**: {} sequential exchanges of a {REQUEST}-byte request and a {RESPONSE}-byte \
         response over one connection through the pair (server in site B, client in site A).\n\n\
         | loss | FEC | p50 ms | p99 ms | p99.9 ms | p99 / lossless p99 (FEC off) | WAN KiB | FEC counters (edge = receiver of downloads, core = sender) |\n|---|---|---:|---:|---:|---:|---:|---|\n",
        cli.exchanges
    ));
    let base = lat
        .iter()
        .find(|r| r.loss == "lossless" && r.fec == "off")
        .map(|r| r.p99)
        .unwrap_or(0.0);
    for r in lat {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} | {} |\n",
            r.loss,
            r.fec,
            r.p50,
            r.p99,
            r.p999,
            r.p99 / base.max(1e-9),
            r.wan as f64 / 1024.0,
            r.counters
        ));
    }
    md.push_str(&format!(
        "\n**Bulk goodput**, 1% random loss, one incompressible object of {} MiB (runs that cannot finish are \
         stopped after {} s; goodput = bytes received / time):\n\n\
         | method | goodput Mbit/s | % of link | WAN MiB | emulator queue drops | FEC counters (edge = receiver of downloads, core = sender) |\n|---|---:|---:|---:|---:|---|\n",
        BULK >> 20,
        BULK_CAP.as_secs()
    ));
    for r in bulk {
        md.push_str(&format!(
            "| {}{} | {:.1} | {:.0}% | {:.1} | {} | {} |\n",
            r.what,
            if r.s.partial { " (capped)" } else { "" },
            r.s.goodput_mbit(),
            r.s.goodput_mbit(),
            r.s.wan as f64 / (1 << 20) as f64,
            r.s.queue_drops,
            r.counters
        ));
    }
    md.push_str(
        "\n**Adaptive FEC overhead at zero loss** (same bulk transfer, lossless link). WAN bytes differ \
         between runs by QUIC's retransmissions of the drops BBR's start-up causes in the emulator's \
         drop-tail queue (congestion, not loss FEC may hide), so FEC's own bytes are shown apart: repair \
         datagrams (the connection start-up prior's, plus repair for any loss the receiver counted as \
         link loss rather than congestion) and FEC headers, as a share of the run's WAN bytes:\n\n\
         | FEC | WAN bytes | vs off | FEC repair bytes | repair % of WAN | FEC header bytes | header % of WAN | QUIC lost packets (retransmitted) | queue drops | goodput Mbit/s |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let off = overhead.first().map(|r| r.s.wan).unwrap_or(0);
    for r in overhead {
        let share = |b: f64| 100.0 * b / (r.s.wan as f64).max(1.0);
        md.push_str(&format!(
            "| {} | {} | {:+.2}% | {:.0} | {:.2}% | {:.0} | {:.2}% | {:.0} | {} | {:.1} |\n",
            r.what,
            r.s.wan,
            100.0 * (r.s.wan as f64 / (off as f64).max(1.0) - 1.0),
            r.n.repair_bytes,
            share(r.n.repair_bytes),
            r.n.header_bytes,
            share(r.n.header_bytes),
            r.n.quic_lost,
            r.s.queue_drops,
            r.s.goodput_mbit()
        ));
    }
    let lat_off = lat.iter().find(|r| r.loss == "lossless" && r.fec == "off");
    let lat_ad = lat
        .iter()
        .find(|r| r.loss == "lossless" && r.fec == "adaptive");
    if let (Some(o), Some(a)) = (lat_off, lat_ad) {
        md.push_str(&format!(
            "\nRequest/response WAN bytes at zero loss: adaptive {:+.2}% vs off (repair {:.0} B = {:.2}%, \
             FEC headers {:.0} B = {:.2}% of the adaptive run's WAN bytes).\n",
            100.0 * (a.wan as f64 / (o.wan as f64).max(1.0) - 1.0),
            a.n.repair_bytes,
            100.0 * a.n.repair_bytes / (a.wan as f64).max(1.0),
            a.n.header_bytes,
            100.0 * a.n.header_bytes / (a.wan as f64).max(1.0),
        ));
    }
    md
}
