//! `strait-bench soak`: many concurrent flows through a quickstart pair on loopback for minutes,
//! with both processes' RSS sampled every second (issue 14's soak).
//!
//! ```text
//!  N client threads ──TCP──▶ edge forward ══QUIC══▶ core ──TCP──▶ origin (threads here)
//!  each: request, read the 8 MiB file (at full speed, or --slow: 64 KiB/s), check its BLAKE3,
//!  repeat until the time is up
//! ```
//!
//! The configs are `configs/core.toml` and `configs/edge.toml` (the README quickstart) with
//! only addresses, paths and the log level rewritten, so the figures are those of the defaults.
//! Printed: flows, bytes, completed downloads, errors, RSS min/median/p99/max after warm-up per
//! process, and whether RSS is flat after warm-up (least-squares slope).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{RngCore, SeedableRng};

use crate::procs::cpu_seconds;

/// Size of the file every client downloads (issue 14's measurement: 8 MiB).
pub const FILE_LEN: usize = 8 << 20;
/// Bytes a slow client reads per step.
pub const SLOW_PIECE: usize = 16 * 1024;
/// Pause between a slow client's reads: 16 KiB per 250 ms = 64 KiB/s.
pub const SLOW_PAUSE: Duration = Duration::from_millis(250);
/// RSS sampling period.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// Stack of each client and origin thread: they only copy through a 64 KiB buffer.
pub const THREAD_STACK: usize = 256 * 1024;
/// Bytes per read or write of a fast client and of the origin.
pub const IO_BUF: usize = 64 * 1024;
/// Longest the edge may take to report its tunnel up.
pub const READY_LIMIT: Duration = Duration::from_secs(30);
/// Pause between starting two clients, so 1,000 flows do not all connect in the same
/// millisecond (the forward's accept backlog is finite).
pub const CLIENT_STAGGER: Duration = Duration::from_millis(2);
/// RSS counts as flat when the least-squares trend over the measured window grows it by at
/// most this fraction of its median.
pub const FLAT_FRACTION: f64 = 0.05;
/// Longest a client waits on one read or write before counting an error (a stalled flow).
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// Arguments of `strait-bench soak`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Concurrent flows (client connections through the edge forward).
    #[arg(long, default_value_t = 1000)]
    pub flows: usize,
    /// Duration in minutes (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Clients read slowly (64 KiB/s each) instead of at full speed.
    #[arg(long)]
    pub slow: bool,
    /// Seconds of warm-up left out of the RSS figures (default: a fifth of the run, ≥ 10 s).
    #[arg(long)]
    pub warmup_secs: Option<f64>,
    /// The strait binary.
    #[arg(long, default_value = "target/release/strait")]
    pub strait: PathBuf,
    /// The quickstart configs' directory.
    #[arg(long, default_value = "configs")]
    pub configs: PathBuf,
    /// Seed of the file's bytes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep the work directory (logs, configs, stores).
    #[arg(long)]
    pub keep: bool,
}

/// A child process killed (SIGKILL) and reaped when dropped.
struct Running {
    name: &'static str,
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn spawn(name: &'static str, strait: &Path, cfg: &Path, log: &Path) -> Result<Running> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(strait)
            .arg(name)
            .arg("--config")
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {} {name}", strait.display()))?;
        Ok(Running { name, child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_running(&mut self, log: &Path) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            bail!(
                "{} exited ({st}); log tail:\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }
}

/// A free loopback port (TCP or UDP), released for the process to bind.
fn free_port(udp: bool) -> Result<u16> {
    Ok(if udp {
        UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port()
    } else {
        TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
    })
}

/// The quickstart config `name` with its addresses, paths and log level replaced.
fn rewrite(configs: &Path, name: &str, subs: &[(String, String)]) -> Result<String> {
    let p = configs.join(name);
    let mut text =
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    for (from, to) in subs {
        if !text.contains(from.as_str()) {
            bail!(
                "{} no longer contains {from:?}; update the soak",
                p.display()
            );
        }
        text = text.replace(from.as_str(), to);
    }
    Ok(text)
}

/// HTTP status of GET `path` (or `None`).
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut b = Vec::new();
    s.read_to_end(&mut b).ok()?;
    String::from_utf8_lossy(&b)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// VmRSS of `pid` in bytes.
fn rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Counters shared by the client threads.
#[derive(Default)]
struct Counters {
    bytes: AtomicU64,
    downloads: AtomicU64,
    errors: AtomicU64,
    open: AtomicU64,
    /// The first errors' messages (at most [`KEPT_ERRORS`]), with their time since start.
    first_errors: std::sync::Mutex<Vec<String>>,
}

/// Pending connections the origin's listener queues (the kernel caps it at somaxconn).
pub const ORIGIN_BACKLOG: i32 = 4096;
/// Client errors whose message is kept and printed.
pub const KEPT_ERRORS: usize = 5;

/// The origin: for each connection, reads one request byte, sends the file, half-closes, and
/// closes once the peer has.
fn origin(file: Arc<Vec<u8>>) -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    // std listens with a backlog of 128: when a thousand clients finish a round together, the
    // core's thousand upstream connects overflow it, the dropped handshakes leave flows waiting
    // on a request the origin never accepted, and those flows hold the tunnel's stream slots.
    // Listening again on Linux only raises the backlog.
    // SAFETY: listen(2) on a socket this function owns; no memory is passed.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), ORIGIN_BACKLOG) } != 0 {
        bail!("listen: {}", std::io::Error::last_os_error());
    }
    let addr = l.local_addr()?;
    std::thread::Builder::new()
        .name("soak-origin".into())
        .spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let file = file.clone();
                let _ = std::thread::Builder::new()
                    .stack_size(THREAD_STACK)
                    .spawn(move || {
                        let mut req = [0u8; 1];
                        if s.read_exact(&mut req).is_err() {
                            return;
                        }
                        for piece in file.chunks(IO_BUF) {
                            if s.write_all(piece).is_err() {
                                return;
                            }
                        }
                        let _ = s.shutdown(std::net::Shutdown::Write);
                        // Keep the socket until the peer closes. A socket closed with data
                        // still unsent is orphaned: while a core holds the flow back (its
                        // client reads slowly) the window stays at zero, and after
                        // `tcp_orphan_retries` zero-window probes the kernel aborts the
                        // connection with a RST, which the core rightly reports as a reset.
                        let mut rest = [0u8; 64];
                        while matches!(s.read(&mut rest), Ok(n) if n > 0) {}
                    });
            }
        })?;
    Ok(addr)
}

/// One download through the forward: request, read everything, check length and hash.
fn download(fwd: SocketAddr, slow: bool, want: &blake3::Hash, c: &Counters) -> Result<()> {
    let mut s = TcpStream::connect(fwd)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"G")?;
    c.open.fetch_add(1, Relaxed);
    let r = (|| {
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; if slow { SLOW_PIECE } else { IO_BUF }];
        let mut n_total = 0usize;
        loop {
            let n = s
                .read(&mut buf)
                .with_context(|| format!("read after {n_total} bytes"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            n_total += n;
            c.bytes.fetch_add(n as u64, Relaxed);
            if slow {
                std::thread::sleep(SLOW_PAUSE);
            }
        }
        if n_total != FILE_LEN {
            bail!("clean end after {n_total} bytes of {FILE_LEN}");
        }
        if h.finalize() != *want {
            bail!("{FILE_LEN} bytes, WRONG CONTENT");
        }
        Ok(())
    })();
    c.open.fetch_sub(1, Relaxed);
    r
}

/// Summary of one process's RSS samples after warm-up.
#[derive(Debug, Clone, Copy)]
pub struct RssStats {
    /// Smallest.
    pub min: u64,
    /// Median.
    pub median: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
    /// Least-squares slope, bytes per second.
    pub slope: f64,
    /// Seconds the samples span.
    pub span: f64,
}

impl RssStats {
    /// From (seconds, bytes) samples; `None` when there are fewer than two.
    pub fn of(samples: &[(f64, u64)]) -> Option<RssStats> {
        if samples.len() < 2 {
            return None;
        }
        let mut v: Vec<u64> = samples.iter().map(|s| s.1).collect();
        v.sort_unstable();
        let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        let n = samples.len() as f64;
        let mt = samples.iter().map(|s| s.0).sum::<f64>() / n;
        let mr = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
        let (mut num, mut den) = (0.0, 0.0);
        for (t, r) in samples {
            num += (t - mt) * (*r as f64 - mr);
            den += (t - mt) * (t - mt);
        }
        Some(RssStats {
            min: v[0],
            median: pct(0.5),
            p99: pct(0.99),
            max: v[v.len() - 1],
            slope: if den > 0.0 { num / den } else { 0.0 },
            span: samples[samples.len() - 1].0 - samples[0].0,
        })
    }

    /// Whether the trend over the span stays within [`FLAT_FRACTION`] of the median.
    pub fn flat(&self) -> bool {
        self.slope * self.span <= FLAT_FRACTION * self.median as f64
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// Runs the soak; `Ok(true)` when no client saw an error and both processes stayed up.
pub fn run(a: &Args) -> Result<bool> {
    if !a.strait.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p strait`",
            a.strait.display()
        );
    }
    let strait = std::fs::canonicalize(&a.strait)?;
    let tmp = tempfile::Builder::new().prefix("strait-soak-").tempdir()?;
    let work = tmp.path().to_path_buf();
    let res = soak(a, &strait, &work);
    if a.keep {
        eprintln!("work directory kept: {}", tmp.keep().display());
    }
    res
}

fn soak(a: &Args, strait: &Path, work: &Path) -> Result<bool> {
    let certs = crate::pair::make_certs(strait, work)?;
    let mut file = vec![0u8; FILE_LEN];
    rand_chacha::ChaCha8Rng::seed_from_u64(a.seed).fill_bytes(&mut file);
    let want = blake3::hash(&file);
    let origin_addr = origin(Arc::new(file))?;

    let (tunnel, core_admin, edge_admin, fwd, proxy) = (
        free_port(true)?,
        free_port(false)?,
        free_port(false)?,
        free_port(false)?,
        free_port(false)?,
    );
    let c = certs.display().to_string();
    let w = work.display().to_string();
    let common = |admin_from: &str, admin: u16| {
        vec![
            (
                "level = \"info\"".to_string(),
                "level = \"warn\"".to_string(),
            ),
            (admin_from.to_string(), format!("127.0.0.1:{admin}")),
            ("\"certs/".to_string(), format!("\"{c}/")),
            ("\"state/".to_string(), format!("\"{w}/state/")),
        ]
    };
    let mut core_subs = common("127.0.0.1:9902", core_admin);
    core_subs.push(("127.0.0.1:4433".into(), format!("127.0.0.1:{tunnel}")));
    core_subs.push(("127.0.0.1:8000".into(), origin_addr.to_string()));
    let mut edge_subs = common("127.0.0.1:9901", edge_admin);
    edge_subs.push(("127.0.0.1:4433".into(), format!("127.0.0.1:{tunnel}")));
    edge_subs.push(("127.0.0.1:9000".into(), format!("127.0.0.1:{fwd}")));
    edge_subs.push(("127.0.0.1:3128".into(), format!("127.0.0.1:{proxy}")));
    let core_cfg = work.join("core.toml");
    let edge_cfg = work.join("edge.toml");
    std::fs::write(&core_cfg, rewrite(&a.configs, "core.toml", &core_subs)?)?;
    std::fs::write(&edge_cfg, rewrite(&a.configs, "edge.toml", &edge_subs)?)?;
    let (core_log, edge_log) = (work.join("core.log"), work.join("edge.log"));
    let mut core = Running::spawn("core", strait, &core_cfg, &core_log)?;
    std::thread::sleep(Duration::from_millis(200));
    let mut edge = Running::spawn("edge", strait, &edge_cfg, &edge_log)?;
    let edge_admin: SocketAddr = ([127, 0, 0, 1], edge_admin).into();
    let t_ready = Instant::now();
    while http_status(edge_admin, "/ready") != Some(200) {
        core.check_running(&core_log)?;
        edge.check_running(&edge_log)?;
        if t_ready.elapsed() > READY_LIMIT {
            bail!("the edge was not ready within {READY_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let fwd: SocketAddr = ([127, 0, 0, 1], fwd).into();
    let total = Duration::from_secs_f64(a.minutes * 60.0);
    let warmup = a
        .warmup_secs
        .unwrap_or_else(|| (total.as_secs_f64() / 5.0).max(10.0));
    eprintln!(
        "soak: {} {} flows of an {} MiB file for {:.1} min (warm-up {warmup:.0} s); core pid {}, edge pid {}",
        a.flows,
        if a.slow { "slow (64 KiB/s)" } else { "full-speed" },
        FILE_LEN >> 20,
        a.minutes,
        core.pid(),
        edge.pid()
    );

    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut clients = Vec::with_capacity(a.flows);
    for _ in 0..a.flows {
        let (c, stop, slow) = (counters.clone(), stop.clone(), a.slow);
        clients.push(
            std::thread::Builder::new()
                .stack_size(THREAD_STACK)
                .spawn(move || {
                    while !stop.load(Relaxed) {
                        match download(fwd, slow, &want, &c) {
                            Ok(()) => c.downloads.fetch_add(1, Relaxed),
                            Err(e) => {
                                let mut kept =
                                    c.first_errors.lock().unwrap_or_else(|p| p.into_inner());
                                if kept.len() < KEPT_ERRORS {
                                    kept.push(format!(
                                        "{:.0} s: {e:#}",
                                        t0.elapsed().as_secs_f64()
                                    ));
                                }
                                c.errors.fetch_add(1, Relaxed)
                            }
                        };
                    }
                })?,
        );
        std::thread::sleep(CLIENT_STAGGER);
    }
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let mut alive = true;
    while t0.elapsed() < total {
        std::thread::sleep(SAMPLE_PERIOD);
        let t = t0.elapsed().as_secs_f64();
        match (rss(core.pid()), rss(edge.pid())) {
            (Some(rc), Some(re)) => samples.push((t, rc, re)),
            _ => {
                alive = false;
                break;
            }
        }
        let (rc, re) = samples.last().map(|s| (s.1, s.2)).unwrap_or_default();
        if samples.len().is_multiple_of(10) {
            eprintln!(
                "[{t:>5.0}s] open {} downloads {} errors {} bytes {:.0} MiB; RSS core {:.0} MiB edge {:.0} MiB",
                counters.open.load(Relaxed),
                counters.downloads.load(Relaxed),
                counters.errors.load(Relaxed),
                mib(counters.bytes.load(Relaxed)),
                mib(rc),
                mib(re)
            );
        }
    }
    let core_cpu = cpu_seconds(core.pid());
    let edge_cpu = cpu_seconds(edge.pid());
    core.check_running(&core_log)
        .and_then(|()| edge.check_running(&edge_log))
        .unwrap_or_else(|e| {
            alive = false;
            eprintln!("soak: {e:#}");
        });
    stop.store(true, Relaxed);
    // Slow clients finish their current download at 64 KiB/s: do not wait for them; the
    // processes are killed when their guards drop and every client then sees an error.
    let secs = t0.elapsed().as_secs_f64();
    let after: Vec<_> = samples.iter().filter(|s| s.0 >= warmup).collect();
    let core_stats = RssStats::of(&after.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>());
    let edge_stats = RssStats::of(&after.iter().map(|s| (s.0, s.2)).collect::<Vec<_>>());
    let bytes = counters.bytes.load(Relaxed);
    println!(
        "soak: flows {} ({}), {secs:.0} s, bytes {bytes} ({:.1} MiB/s), downloads {}, errors {}, processes {}",
        a.flows,
        if a.slow { "slow" } else { "fast" },
        mib(bytes) / secs.max(1e-9),
        counters.downloads.load(Relaxed),
        counters.errors.load(Relaxed),
        if alive { "up" } else { "DOWN" }
    );
    for e in counters
        .first_errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        println!("soak: client error at {e}");
    }
    println!("soak: CPU seconds core {core_cpu:.1}, edge {edge_cpu:.1}");
    for (name, st) in [("core", core_stats), ("edge", edge_stats)] {
        match st {
            Some(s) => println!(
                "soak: {name} RSS after {warmup:.0} s warm-up: min {:.0} / median {:.0} / p99 {:.0} / max {:.0} MiB; \
                 slope {:+.2} MiB/min over {:.0} s: {}",
                mib(s.min),
                mib(s.median),
                mib(s.p99),
                mib(s.max),
                s.slope * 60.0 / (1u64 << 20) as f64,
                s.span,
                if s.flat() { "flat" } else { "GROWING" }
            ),
            None => println!("soak: {name}: too few samples after warm-up"),
        }
    }
    drop(clients);
    Ok(alive && counters.errors.load(Relaxed) == 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rss_stats_fit_a_rising_series_and_call_a_level_one_flat() {
        let rising: Vec<(f64, u64)> = (0..60u64)
            .map(|t| (t as f64, (100 << 20) + (t << 20)))
            .collect();
        let s = RssStats::of(&rising).unwrap();
        assert!((s.slope - (1u64 << 20) as f64).abs() < 1.0, "{}", s.slope);
        assert!(!s.flat());
        assert_eq!(s.min, 100 << 20);
        assert_eq!(s.max, (100 + 59) << 20);
        let level: Vec<(f64, u64)> = (0..60u64)
            .map(|t| (t as f64, (200 << 20) + u64::from(t % 3 == 0) * 4096))
            .collect();
        let l = RssStats::of(&level).unwrap();
        assert!(l.flat(), "{l:?}");
        assert_eq!(l.median, 200 << 20);
    }
}
