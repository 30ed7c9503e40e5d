//! `strait-bench`: the WAN benchmark of issue 4 (and the FEC benchmark of issue 5) on the
//! userspace emulator. Test support, never part of the production binary.
//!
//! ```text
//! strait-bench [--quick] [--write BENCHMARKS.md] [--check bench/thresholds.toml]
//! strait-bench --fec [--write BENCHMARKS.md]
//! strait-bench --fec --workload bulk --method "cubic, FEC adaptive" --trace-rate   # one cell, its rate
//! strait-bench soak --flows 1000 --minutes 10 [--slow]   # issue 14's soak, loopback, no emulator
//! ```
//! Site A (client + edge) and site B (origin + core) are the emulator's namespaces; every
//! method crosses the same emulated link and is metered by the emulator's byte counters.

mod fec;
mod matrix;
mod pair;
mod procs;
mod report;
mod soak;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Deserialize;
use strait_wanem::Wan;

use matrix::{Cell, Method, Sample};
use report::Row;

#[derive(Parser, Debug)]
#[command(
    name = "strait-bench",
    about = "WAN benchmark matrix of strait against the baselines"
)]
struct Cli {
    /// A benchmark other than the matrix.
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Small sizes, one run per cell (CI regression gate; ≤ 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Run the FEC benchmark (issue 5) instead of the matrix.
    #[arg(long)]
    fec: bool,
    /// Write tables between the markers of this Markdown file (e.g. BENCHMARKS.md).
    #[arg(long)]
    write: Option<PathBuf>,
    /// Fail (exit 1) when strait's figures break a rule of this thresholds file.
    #[arg(long)]
    check: Option<PathBuf>,
    /// Runs per cell (median reported). Default 3, or 1 with --quick.
    #[arg(long)]
    runs: Option<usize>,
    /// The strait binary.
    #[arg(long, default_value = "target/release/strait")]
    strait: PathBuf,
    /// Where the chart goes (the Markdown links to it relative to the written file).
    #[arg(long, default_value = "bench/wan-matrix.svg")]
    svg: PathBuf,
    /// Only links whose key contains this text.
    #[arg(long)]
    link: Option<String>,
    /// Only workloads whose key contains this text.
    #[arg(long)]
    workload: Option<String>,
    /// FEC bulk/overhead runs: only methods whose name contains this text (e.g. "cubic, FEC
    /// adaptive"), for iterating on one goal.
    #[arg(long)]
    method: Option<String>,
    /// Print the download direction's rate every 100 ms of each strait transfer.
    #[arg(long)]
    trace_rate: bool,
    /// Request/response exchanges per FEC latency cell.
    #[arg(long, default_value_t = 1000)]
    exchanges: usize,
    /// Seed of the data and of the emulator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep the work directory (logs, configs) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

/// Benchmarks with their own arguments.
#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Many concurrent flows through a quickstart pair on loopback, RSS sampled (issue 14).
    Soak(soak::Args),
}

/// A rule of the thresholds file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    method: String,
    #[serde(default = "star")]
    link: String,
    #[serde(default = "star")]
    workload: String,
    max_wan_fraction: Option<f64>,
    min_goodput_mbit: Option<f64>,
    /// Goodput at least this fraction of direct HTTP (BBR) on the same cell.
    min_goodput_vs_http: Option<f64>,
}

fn star() -> String {
    "*".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Thresholds {
    rule: Vec<Rule>,
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("strait-bench: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!(
        "cargo run --release -p strait-wanem --bin strait-bench -- {}",
        args.join(" ")
    )
}

fn real_main() -> Result<bool> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__gen") {
        let [_, _, root, key, size, seed] = args.as_slice() else {
            bail!("usage: strait-bench __gen ROOT KEY SIZE SEED");
        };
        matrix::generate_files(Path::new(root), key, size.parse()?, seed.parse()?)?;
        return Ok(true);
    }
    let cli = Cli::parse();
    if let Some(Cmd::Soak(a)) = &cli.command {
        return soak::run(a);
    }
    if let Some(reason) = strait_wanem::skip_reason() {
        println!("skipped: {reason}");
        return Ok(true);
    }
    if !cli.strait.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p strait`",
            cli.strait.display()
        );
    }
    let strait = std::fs::canonicalize(&cli.strait)?;
    for tool in ["curl", "rsync", "nc", "zstd", "tar", "ss", "python3"] {
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            bail!("`{tool}` not found; run crates/wanem/bench-deps.sh (as root) first");
        }
    }
    // tmpfs when there is one: the client's writes then cost memory bandwidth, not disk I/O.
    let mut b = tempfile::Builder::new();
    b.prefix("strait-bench-");
    let tmp = if Path::new("/dev/shm").is_dir() {
        b.tempdir_in("/dev/shm")
    } else {
        b.tempdir()
    }
    .context("creating the work directory")?;
    let work = tmp.path().to_path_buf();
    let res = (|| {
        let certs = pair::make_certs(&strait, &work)?;
        if cli.fec {
            fec::run(&cli, &strait, &work, &certs)?;
            Ok(true)
        } else {
            run_matrix(&cli, &strait, &work, &certs)
        }
    })();
    if cli.keep {
        let kept = tmp.keep();
        eprintln!("work directory kept: {}", kept.display());
    }
    res
}

fn run_matrix(cli: &Cli, strait: &Path, work: &Path, certs: &Path) -> Result<bool> {
    let t_all = Instant::now();
    let runs = cli.runs.unwrap_or(if cli.quick { 1 } else { 3 });
    let base: usize = if cli.quick { 16 << 20 } else { 48 << 20 };
    let cubic_cap = Duration::from_secs(if cli.quick { 3 } else { 10 });
    let data_root = work.join("data");
    let mut rows: Vec<Row> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let links: Vec<_> = matrix::links()
        .into_iter()
        .filter(|l| cli.link.as_deref().is_none_or(|f| l.key.contains(f)))
        .collect();
    for link in &links {
        let wan = Wan::start(link.config(cli.seed, "cubic"))
            .with_context(|| format!("starting the emulated link {}", link.key))?;
        // Wan::start widened the allowed list with cubic; BBR is this kernel's default.
        for ns in [wan.ns_a(), wan.ns_b()] {
            strait_wanem::netns::write_sysctl(ns, "net/ipv4/tcp_congestion_control", "bbr")?;
        }
        for (wkey, _) in matrix::WORKLOADS {
            if cli.workload.as_deref().is_some_and(|f| !wkey.contains(f)) {
                continue;
            }
            let mut size = ((base as f64) * link.scale) as usize;
            if *wkey == "bulk" {
                // Long enough that start-up and the request round trip are a small part of it
                // (×2 in --quick, which must stay under 3 minutes).
                size *= if cli.quick { 2 } else { 4 };
            }
            let t0 = Instant::now();
            let wl = matrix::generate(&data_root, wkey, size, cli.seed)?;
            eprintln!(
                "[{:>5.0}s] {} / {}: {:.1} MiB (generated in {:.1}s)",
                t_all.elapsed().as_secs_f64(),
                link.key,
                wkey,
                wl.logical() as f64 / (1 << 20) as f64,
                t0.elapsed().as_secs_f64()
            );
            let cell = Cell {
                wan: &wan,
                wl: &wl,
                work,
                strait,
                certs,
                cubic_cap,
                trace_rate: cli.trace_rate,
            };
            let origin = cell.start_origin()?;
            let mut samples: BTreeMap<Method, Vec<Sample>> = BTreeMap::new();
            for r in 0..runs {
                let mut push = |m: Method, s: Sample| {
                    eprintln!(
                        "    run {r} {:<16} {:>7.2}s {:>8.1} Mbit/s wan {:>8.1} MiB{}",
                        m.key(),
                        s.secs,
                        s.goodput_mbit(),
                        s.wan as f64 / (1 << 20) as f64,
                        if s.partial { " (partial)" } else { "" }
                    );
                    samples.entry(m).or_default().push(s);
                };
                // A failed transfer is recorded and the matrix goes on (one stuck baseline must
                // not cost a 20-minute run); the failure is listed in the report and fails --check.
                let mut attempt = |what: &str, res: Result<Vec<(Method, Sample)>>| match res {
                    Ok(v) => {
                        for (m, s) in v {
                            push(m, s);
                        }
                    }
                    Err(e) => {
                        let mut msg = format!("{} / {wkey} / run {r} / {what}: {e:#}", link.key);
                        if what == "strait" {
                            msg.push_str(&format!("; {}", pair::log_tails(&work.join("pair"))));
                        }
                        eprintln!("    FAILED {msg}");
                        failures.push(msg);
                    }
                };
                attempt(
                    "http-bbr",
                    cell.http(&origin, "bbr", None)
                        .map(|s| vec![(Method::HttpBbr, s)]),
                );
                if *wkey == "jpeg" || (*wkey == "bulk" && !cli.quick) {
                    let cap = (link.loss > 0.0 || link.burst.is_some()).then_some(cell.cubic_cap);
                    attempt(
                        "http-cubic",
                        cell.http(&origin, "cubic", cap)
                            .map(|s| vec![(Method::HttpCubic, s)]),
                    );
                }
                // One incompressible object: rsync and zstd|nc add nothing the jpeg cell does
                // not show, and the bulk cell is the matrix's longest.
                if *wkey != "bulk" {
                    attempt("rsync-z", cell.rsync().map(|s| vec![(Method::Rsync, s)]));
                    attempt("zstd-nc", cell.zstd_nc().map(|s| vec![(Method::ZstdNc, s)]));
                }
                let mut st = BTreeMap::new();
                let res = cell.strait(&origin, &pair::Tuning::default(), &mut st);
                let got: Vec<(Method, Sample)> = st
                    .into_iter()
                    .flat_map(|(m, v)| v.into_iter().map(move |s| (m, s)))
                    .collect();
                attempt("strait", Ok(got));
                attempt("strait", res.map(|()| vec![]));
            }
            origin.terminate()?;
            for (m, v) in samples {
                rows.push(Row {
                    link: link.key,
                    link_label: link.label,
                    workload: wkey,
                    method: m,
                    runs: v.len(),
                    m: matrix::median(&v),
                });
            }
            std::fs::remove_dir_all(&wl.dir).ok();
        }
        let stats = wan.stop();
        eprintln!("{} emulator totals:\n{stats}", link.key);
    }
    let elapsed = t_all.elapsed();
    let mut md = markdown(cli, &rows, runs, elapsed)?;
    md.push_str(&format!(
        "\nPeak RSS note: `ru_maxrss` of a process the harness starts can include what it inherited at \
         fork (at most the harness's own {:.0} MiB peak in this run; data generation runs in a child \
         process to keep it small), so values at or below that mean \"small\".\n",
        procs::peak_kib(std::process::id()) as f64 / 1024.0
    ));
    if !failures.is_empty() {
        md.push_str("\n**Failed transfers** (excluded from the medians):\n\n");
        for f in &failures {
            md.push_str(&format!("- {}\n", f.replace('\n', " ")));
        }
    }
    println!("{md}");
    if let Some(path) = &cli.write {
        report::write_between_markers(path, "wan-matrix", &md)?;
        if let Some(dir) = cli.svg.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&cli.svg, report::svg(&rows))
            .with_context(|| format!("writing {}", cli.svg.display()))?;
        eprintln!("wrote {} and {}", path.display(), cli.svg.display());
    }
    match &cli.check {
        Some(path) => {
            let strait_failed = failures.iter().any(|f| f.contains("/ strait:"));
            if strait_failed {
                println!("check FAIL: a transfer through strait failed (see above)");
            }
            Ok(check(path, &rows)? && !strait_failed)
        }
        None => Ok(true),
    }
}

fn targets(rows: &[Row]) -> String {
    let find = |link: &str, wl: &str, m: Method| {
        rows.iter()
            .find(|r| r.link == link && r.workload == wl && r.method == m)
    };
    let mut s = String::from(
        "\n**Transport targets of issue 4** (`bulk`: one cold incompressible object, fetched with curl):\n\n",
    );
    match (
        find("500m-20ms", "bulk", Method::StraitCold),
        find("500m-20ms", "bulk", Method::HttpBbr),
    ) {
        (Some(st), Some(h)) => {
            let r = st.m.goodput_mbit() / h.m.goodput_mbit().max(1e-9);
            s.push_str(&format!(
                "- 500 Mbit/s lossless: strait {:.0} Mbit/s vs direct TCP {:.0} Mbit/s = {:.0}% (target ≥ 90%): **{}**\n",
                st.m.goodput_mbit(),
                h.m.goodput_mbit(),
                100.0 * r,
                if r >= 0.9 { "met" } else { "not met" }
            ));
        }
        _ => s.push_str("- 500 Mbit/s lossless: not measured in this run\n"),
    }
    match find("100m-100ms-1pct", "bulk", Method::StraitCold) {
        Some(st) => {
            let g = st.m.goodput_mbit();
            let cubic = find("100m-100ms-1pct", "bulk", Method::HttpCubic)
                .map(|c| format!("; TCP Cubic {:.1} Mbit/s", c.m.goodput_mbit()))
                .unwrap_or_default();
            s.push_str(&format!(
                "- 100 Mbit/s, 1% loss, strait BBR: {g:.0} Mbit/s = {:.0}% of the link (target ≥ 80%){cubic}: **{}**\n",
                g,
                if g >= 80.0 { "met" } else { "not met" }
            ));
        }
        None => s.push_str("- 100 Mbit/s 1% loss: not measured in this run\n"),
    }
    s
}

fn markdown(cli: &Cli, rows: &[Row], runs: usize, elapsed: Duration) -> Result<String> {
    let mut md = String::new();
    md.push_str("## WAN matrix (issue 4)\n\n");
    md.push_str(&format!(
        "Reproduce (root; needs rsync, netcat-openbsd, zstd, curl, python3 — `crates/wanem/bench-deps.sh` installs them):\n\n```sh\ncargo build --release -p strait\n{}\n```\n\n",
        command_line()
    ));
    md.push_str(&format!(
        "Machine: {}. Matrix took {:.0} s, {} run(s) per cell, median shown; seed {}.\n\n",
        report::machine(),
        elapsed.as_secs_f64(),
        runs,
        cli.seed
    ));
    md.push_str(
        "Topology: site A (client curl/rsync/nc + strait edge) and site B (python3 http.server origin, \
         rsync daemon, zstd sender + strait core) are network namespaces joined only by the userspace \
         emulator (`strait-wanem`); loss and delay apply in both directions, drop-tail queue of 100 ms. \
         **WAN bytes** are the emulator's IP byte counters (both directions, all headers) — the same \
         neutral meter for every method. CPU is user+system seconds of every process of a site \
         (client/origin included; strait rows add the edge at A and the core at B) per GB of logical \
         bytes; peak RSS is the largest process of the side. Every transfer is verified byte-exact \
         (BLAKE3) except capped Cubic runs. TCP baselines run with BBR (this kernel's default) set \
         explicitly in both namespaces; `http-cubic` sets Cubic and, on lossy links, is stopped at a \
         time cap (its goodput is bytes received / cap). rsync 3.2 with `-z` negotiates zstd; v2 \
         workloads update v1 in place (`--inplace --no-whole-file`). strait runs BBR, FEC off, \
         default windows; `strait-after-v1` fetches v2 after the stores were filled by a v1 fetch.\n\n\
         **Emulator ceiling:** unshaped, the emulator forwards ~0.65–0.84 Gbit/s on this loaded 2-core \
         machine, and the two cores are shared by the emulator, both proxies, the client and the \
         origin — so 500 Mbit/s is near the emulator's limit and CPU-heavy methods are slowed by \
         contention there, not by the link alone.\n",
    );
    md.push_str(&report::table(rows));
    md.push_str(&targets(rows));
    let rel = cli
        .write
        .as_ref()
        .and_then(|w| w.parent())
        .and_then(|p| cli.svg.strip_prefix(p).ok())
        .unwrap_or(&cli.svg)
        .display()
        .to_string();
    md.push_str(&format!(
        "\n![WAN matrix: WAN bytes and goodput per method]({rel})\n"
    ));
    Ok(md)
}

fn matches(pat: &str, v: &str) -> bool {
    pat == "*" || pat == v
}

/// Applies the thresholds; prints every violation; `Ok(false)` when any rule fails.
fn check(path: &Path, rows: &[Row]) -> Result<bool> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let t: Thresholds =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut ok = true;
    let mut checked = 0;
    for rule in &t.rule {
        for r in rows.iter().filter(|r| {
            r.method.key() == rule.method
                && matches(&rule.link, r.link)
                && matches(&rule.workload, r.workload)
        }) {
            checked += 1;
            let frac = r.m.wan as f64 / (r.m.logical as f64).max(1.0);
            let g = r.m.goodput_mbit();
            let mut fail = Vec::new();
            if let Some(max) = rule.max_wan_fraction {
                if frac > max {
                    fail.push(format!("WAN/logical {frac:.4} > {max}"));
                }
            }
            if let Some(min) = rule.min_goodput_mbit {
                if g < min {
                    fail.push(format!("goodput {g:.1} Mbit/s < {min}"));
                }
            }
            if let Some(min) = rule.min_goodput_vs_http {
                if let Some(h) = rows.iter().find(|h| {
                    h.link == r.link && h.workload == r.workload && h.method == Method::HttpBbr
                }) {
                    let q = g / h.m.goodput_mbit().max(1e-9);
                    if q < min {
                        fail.push(format!("goodput {q:.2} of direct HTTP < {min}"));
                    }
                }
            }
            let name = format!("{} {} {}", r.link, r.workload, r.method.key());
            if fail.is_empty() {
                println!("check ok:   {name} (WAN/logical {frac:.4}, {g:.1} Mbit/s)");
            } else {
                ok = false;
                println!("check FAIL: {name}: {}", fail.join("; "));
            }
        }
    }
    if checked == 0 {
        println!("check FAIL: no row matched any rule of {}", path.display());
        return Ok(false);
    }
    Ok(ok)
}
