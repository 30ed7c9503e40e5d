//! The matrix: links × workloads × methods, each method metered the same way (emulator byte
//! counters, process CPU, peak RSS).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use strait_wanem::{GilbertElliott, LinkParams, Wan, WanConfig};

use crate::pair::{Pair, Tuning, FORWARD_PORT};
use crate::procs::{run, wait_listen, Proc, Side, Usage};

/// HTTP origin port in site B (python3 -m http.server on 0.0.0.0).
pub const ORIGIN_PORT: u16 = 8000;
const RSYNC_PORT: u16 = 8873;
const NC_PORT: u16 = 8874;
/// Longest any single transfer may take before the harness gives up on the cell.
const TRANSFER_LIMIT: Duration = Duration::from_secs(240);

/// One emulated path.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    pub key: &'static str,
    pub label: &'static str,
    pub rate_mbit: u64,
    pub rtt_ms: u64,
    /// Random loss per packet, each direction.
    pub loss: f64,
    /// Gilbert–Elliott (mean loss, mean burst), each direction.
    pub burst: Option<(f64, f64)>,
    /// Workload size relative to the first link (slower links move less so the matrix fits).
    pub scale: f64,
}

impl LinkSpec {
    pub fn config(&self, seed: u64, cc: &str) -> WanConfig {
        let link = LinkParams {
            delay: Duration::from_micros(self.rtt_ms * 500),
            rate_bps: Some(self.rate_mbit * 1_000_000),
            loss: self.loss,
            burst: self.burst.map(|(mean_loss, mean_burst)| GilbertElliott {
                mean_loss,
                mean_burst,
            }),
            ..LinkParams::default()
        };
        WanConfig {
            seed,
            congestion_control: Some(cc.to_string()),
            ..WanConfig::symmetric(link)
        }
    }
}

/// The three paths of issue 4.
pub fn links() -> Vec<LinkSpec> {
    vec![
        LinkSpec {
            key: "500m-20ms",
            label: "500 Mbit/s, 20 ms RTT, lossless",
            rate_mbit: 500,
            rtt_ms: 20,
            loss: 0.0,
            burst: None,
            scale: 1.0,
        },
        LinkSpec {
            key: "100m-100ms-1pct",
            label: "100 Mbit/s, 100 ms RTT, 1% random loss",
            rate_mbit: 100,
            rtt_ms: 100,
            loss: 0.01,
            burst: None,
            scale: 0.5,
        },
        LinkSpec {
            key: "50m-200ms-burst",
            label: "50 Mbit/s, 200 ms RTT, 1% bursty loss (mean burst 4)",
            rate_mbit: 50,
            rtt_ms: 200,
            loss: 0.0,
            burst: Some((0.01, 4.0)),
            scale: 0.25,
        },
    ]
}

/// Workload kinds.
pub const WORKLOADS: &[(&str, &str)] = &[
    ("jsonl", "JSONL text dataset"),
    ("jpeg", "JPEG-like image shards (incompressible)"),
    (
        "bulk",
        "one incompressible object, 4× the cell size (issue 4's transport targets)",
    ),
    (
        "ckpt-v2",
        "safetensors bf16 checkpoint v2 (20% of tensors changed; v1 held)",
    ),
    (
        "dataset-v2",
        "dataset v2: v1 shards with 1% of records edited + new shards (v1 held)",
    ),
];

/// Generated files of one workload on disk: `<dir>/prior/*` (v1, may be empty) and
/// `<dir>/target/*` (what is fetched), with the target's digests.
#[derive(Debug, Clone)]
pub struct Workload {
    pub dir: PathBuf,
    pub prior: Vec<String>,
    pub target: Vec<(String, blake3::Hash, u64)>,
}

impl Workload {
    pub fn logical(&self) -> u64 {
        self.target.iter().map(|t| t.2).sum()
    }
}

/// A generated file: name and contents.
type NamedFile = (String, Vec<u8>);

fn write_all(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (n, b) in files {
        std::fs::write(dir.join(n), b).with_context(|| format!("writing {n}"))?;
    }
    Ok(())
}

/// BLAKE3 and length of a file, read in pieces: the harness's own peak RSS stays small, because
/// every process it forks inherits that peak into its `ru_maxrss`.
fn hash_file(p: &Path) -> Result<(blake3::Hash, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((h.finalize(), n))
}

fn sorted_names(dir: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

/// Generates workload `key` of about `size` bytes under `root` from `seed` in a child process
/// (`strait-bench __gen`), so the generated buffers never raise this process's peak RSS.
pub fn generate(root: &Path, key: &'static str, size: usize, seed: u64) -> Result<Workload> {
    let dir = root.join(format!("{key}-{size}"));
    let exe = std::env::current_exe().context("locating strait-bench")?;
    let st = std::process::Command::new(exe)
        .args([
            "__gen",
            &root.display().to_string(),
            key,
            &size.to_string(),
            &seed.to_string(),
        ])
        .status()
        .context("running the data generator")?;
    if !st.success() {
        bail!("generating {key} failed: {st}");
    }
    let prior = sorted_names(&dir.join("prior"))?;
    let mut target = Vec::new();
    for n in sorted_names(&dir.join("target"))? {
        let (h, len) = hash_file(&dir.join("target").join(&n))?;
        target.push((n, h, len));
    }
    Ok(Workload { dir, prior, target })
}

/// The generator proper (runs in the `__gen` child).
pub fn generate_files(root: &Path, key: &str, size: usize, seed: u64) -> Result<()> {
    use strait_datagen as g;
    let dir = root.join(format!("{key}-{size}"));
    let (prior, target): (Vec<NamedFile>, Vec<NamedFile>) = match key {
        "jsonl" => (vec![], vec![("train.jsonl".into(), g::jsonl(seed, size))]),
        "jpeg" => {
            let shard = (size / 4).clamp(1 << 20, 8 << 20);
            let n = size.div_ceil(shard);
            let t = (0..n)
                .map(|i| {
                    (
                        format!("images-{i:05}.jpg"),
                        g::jpeg_like(seed + 100 + i as u64, shard),
                    )
                })
                .collect();
            (vec![], t)
        }
        // One object: the transport targets are about filling the link, not about the round
        // trip each of several sequential HTTP/1.0 fetches costs (the jpeg cell has four).
        "bulk" => (
            vec![],
            vec![("bulk.bin".into(), g::jpeg_like(seed + 7, size))],
        ),
        "ckpt-v2" => {
            // At least ~32 tensors, so "20% changed" changes several at every size.
            let elements = (size / 64).clamp(1 << 14, 1 << 19);
            let n = (size / (elements * 2)).max(16);
            let v1 = g::safetensors_bf16(&g::checkpoint_seeds(seed, n, 0, 0.2), elements);
            let v2 = g::safetensors_bf16(&g::checkpoint_seeds(seed, n, 1, 0.2), elements);
            (
                vec![("model.safetensors".into(), v1)],
                vec![("model.safetensors".into(), v2)],
            )
        }
        "dataset-v2" => {
            let shard = size / 6;
            let v1: Vec<(String, Vec<u8>)> = (0..4)
                .map(|i| {
                    (
                        format!("train-{i:05}.jsonl"),
                        g::jsonl(seed + 1000 + i, shard),
                    )
                })
                .collect();
            let mut v2: Vec<(String, Vec<u8>)> = v1
                .iter()
                .enumerate()
                .map(|(i, (n, b))| (n.clone(), g::jsonl_edit(seed + 7 + i as u64, b, 0.01)))
                .collect();
            for i in 4..6 {
                v2.push((
                    format!("train-{i:05}.jsonl"),
                    g::jsonl(seed + 1000 + i, shard),
                ));
            }
            (v1, v2)
        }
        other => bail!("unknown workload {other:?}"),
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    write_all(&dir.join("prior"), &prior)?;
    write_all(&dir.join("target"), &target)?;
    Ok(())
}

/// How the data crosses the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    HttpBbr,
    HttpCubic,
    Rsync,
    ZstdNc,
    StraitCold,
    StraitDelta,
    StraitWarm,
}

impl Method {
    pub fn key(self) -> &'static str {
        match self {
            Method::HttpBbr => "http-bbr",
            Method::HttpCubic => "http-cubic",
            Method::Rsync => "rsync-z",
            Method::ZstdNc => "zstd-nc",
            Method::StraitCold => "strait-cold",
            Method::StraitDelta => "strait-after-v1",
            Method::StraitWarm => "strait-warm",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Method::HttpBbr => "direct HTTP (curl, TCP BBR)",
            Method::HttpCubic => "direct HTTP (curl, TCP Cubic)",
            Method::Rsync => "rsync -z (daemon, in place, BBR)",
            Method::ZstdNc => "zstd --long=27 -T0 | nc (BBR)",
            Method::StraitCold => "strait, empty stores",
            Method::StraitDelta => "strait, stores hold v1",
            Method::StraitWarm => "strait, second fetch",
        }
    }
}

/// One measured transfer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub secs: f64,
    /// Bytes the client got (verified unless `partial`).
    pub logical: u64,
    /// IP bytes offered to the emulated link, both directions.
    pub wan: u64,
    pub cpu_a: f64,
    pub cpu_b: f64,
    pub peak_a_kib: u64,
    pub peak_b_kib: u64,
    /// Stopped at the time cap before completion (only HTTP Cubic on lossy links).
    pub partial: bool,
    /// Packets the emulator's drop-tail queue dropped (the sender overran the bottleneck),
    /// both directions — as opposed to the link's configured random/bursty loss.
    pub queue_drops: u64,
}

impl Sample {
    pub fn goodput_mbit(&self) -> f64 {
        self.logical as f64 * 8.0 / self.secs.max(1e-9) / 1e6
    }
}

/// Per-element median of several samples.
pub fn median(samples: &[Sample]) -> Sample {
    fn med(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return 0.0;
        }
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }
    let f = |g: &dyn Fn(&Sample) -> f64| med(samples.iter().map(g).collect());
    Sample {
        secs: f(&|s| s.secs),
        logical: f(&|s| s.logical as f64) as u64,
        wan: f(&|s| s.wan as f64) as u64,
        cpu_a: f(&|s| s.cpu_a),
        cpu_b: f(&|s| s.cpu_b),
        peak_a_kib: f(&|s| s.peak_a_kib as f64) as u64,
        peak_b_kib: f(&|s| s.peak_b_kib as f64) as u64,
        partial: samples.iter().any(|s| s.partial),
        queue_drops: f(&|s| s.queue_drops as f64) as u64,
    }
}

/// Everything one cell (link × workload) needs.
pub struct Cell<'a> {
    pub wan: &'a Wan,
    pub wl: &'a Workload,
    pub work: &'a Path,
    pub strait: &'a Path,
    pub certs: &'a Path,
    /// Time cap of the Cubic HTTP run on lossy links (it would take minutes to finish).
    pub cubic_cap: Duration,
    /// Print the download direction's rate every 100 ms of each strait transfer.
    pub trace_rate: bool,
}

/// Samples the link every 100 ms until `stop`: `t:Mbit/s(queue drops,random drops)` of the
/// B→A direction per interval.
fn rate_trace(wan: &Wan, stop: &AtomicBool) -> String {
    let t0 = Instant::now();
    let mut prev = wan.stats();
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let now = wan.stats();
        let d = now.since(&prev).b_to_a;
        prev = now;
        line.push_str(&format!(
            "{:.1}:{:.0}({},{}) ",
            t0.elapsed().as_secs_f64(),
            d.delivered_bytes as f64 * 8.0 / 0.1 / 1e6,
            d.dropped_queue,
            d.dropped_loss + d.dropped_burst
        ));
    }
    line
}

fn set_cc(wan: &Wan, cc: &str) -> Result<()> {
    for ns in [wan.ns_a(), wan.ns_b()] {
        strait_wanem::netns::write_sysctl(ns, "net/ipv4/tcp_congestion_control", cc)?;
    }
    Ok(())
}

fn fresh_dest(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

/// Checks every target file arrived byte-exact.
fn verify(wl: &Workload, dest: &Path, what: &str) -> Result<u64> {
    let mut total = 0;
    for (n, h, len) in &wl.target {
        let p = dest.join(n);
        let b = std::fs::read(&p).with_context(|| format!("{what}: {n} missing"))?;
        if b.len() as u64 != *len || blake3::hash(&b) != *h {
            bail!(
                "{what}: {n} differs from the origin's ({} of {len} bytes)",
                b.len()
            );
        }
        total += len;
    }
    Ok(total)
}

fn bytes_in(dest: &Path) -> u64 {
    std::fs::read_dir(dest)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// One curl for all files (curl's `--max-time` is per file, so a cap is enforced by the harness).
fn curl_script(wl: &Workload, base: &str, dest: &Path) -> String {
    let mut s = String::from("exec curl -sS --fail --fail-early");
    for (n, _, _) in &wl.target {
        s.push_str(&format!(" -o {}/{n} {base}/target/{n}", dest.display()));
    }
    s
}

impl Cell<'_> {
    fn log(&self, name: &str) -> PathBuf {
        self.work.join(format!("{name}.log"))
    }

    /// The HTTP origin of this cell (site B), serving `<workload>/{prior,target}`.
    pub fn start_origin(&self) -> Result<Proc> {
        let py = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let p = Proc::spawn(
            self.wan,
            Side::B,
            "origin",
            &format!(
                "exec {py} -m http.server {ORIGIN_PORT} --bind 0.0.0.0 --directory {}",
                self.wl.dir.display()
            ),
            &self.log("origin"),
        )?;
        wait_listen(
            self.wan,
            Side::B,
            ORIGIN_PORT,
            false,
            Duration::from_secs(20),
        )?;
        Ok(p)
    }

    /// curl in site A from the origin over the link.
    pub fn http(&self, origin: &Proc, cc: &str, cap: Option<Duration>) -> Result<Sample> {
        set_cc(self.wan, cc)?;
        let dest = self.work.join("a-dest");
        fresh_dest(&dest)?;
        let base = format!("http://{}:{ORIGIN_PORT}", self.wan.addr_b());
        let (b0, w0) = (origin.cpu(), self.wan.stats());
        let (code, u, secs, capped) = run(
            self.wan,
            Side::A,
            "curl",
            &curl_script(self.wl, &base, &dest),
            &self.log("curl"),
            cap.unwrap_or(TRANSFER_LIMIT),
        )?;
        let d = self.wan.stats().since(&w0);
        let (wan, queue_drops) = (d.wan_bytes(), d.queue_drops());
        let cpu_b = origin.cpu() - b0;
        set_cc(self.wan, "bbr")?;
        let (logical, partial) = if capped && cap.is_some() {
            (bytes_in(&dest), true)
        } else if code != 0 {
            bail!("curl exited {code} (see {})", self.log("curl").display());
        } else {
            (verify(self.wl, &dest, "direct HTTP")?, false)
        };
        Ok(Sample {
            secs,
            logical,
            wan,
            cpu_a: u.cpu,
            cpu_b,
            peak_a_kib: u.peak_kib,
            peak_b_kib: origin.peak_kib(),
            partial,
            queue_drops,
        })
    }

    /// `rsync -z` from a daemon in B, updating v1 in place at A when there is one.
    pub fn rsync(&self) -> Result<Sample> {
        let dest = self.work.join("a-dest");
        fresh_dest(&dest)?;
        for n in &self.wl.prior {
            std::fs::copy(self.wl.dir.join("prior").join(n), dest.join(n))?;
        }
        let conf = self.work.join("rsyncd.conf");
        std::fs::write(
            &conf,
            format!(
                "use chroot = no\nuid = root\ngid = root\n[d]\npath = {}\nread only = yes\n",
                self.wl.dir.join("target").display()
            ),
        )?;
        let daemon = Proc::spawn(
            self.wan,
            Side::B,
            "rsync daemon",
            &format!(
                "exec rsync --daemon --no-detach --config={} --port={RSYNC_PORT} --address={}",
                conf.display(),
                self.wan.addr_b()
            ),
            &self.log("rsyncd"),
        )?;
        wait_listen(
            self.wan,
            Side::B,
            RSYNC_PORT,
            false,
            Duration::from_secs(20),
        )?;
        let (b0, w0) = (daemon.cpu(), self.wan.stats());
        let (code, u, secs, _) = run(
            self.wan,
            Side::A,
            "rsync",
            &format!(
                "exec rsync -rz --inplace --no-whole-file --ignore-times rsync://{}:{RSYNC_PORT}/d/ {}/",
                self.wan.addr_b(),
                dest.display()
            ),
            &self.log("rsync"),
            TRANSFER_LIMIT,
        )?;
        let d = self.wan.stats().since(&w0);
        let (wan, queue_drops) = (d.wan_bytes(), d.queue_drops());
        // The daemon's per-connection child is reaped into its cutime/cmaxrss by now or at exit.
        let du: Usage = daemon.terminate()?;
        if code != 0 {
            bail!("rsync exited {code} (see {})", self.log("rsync").display());
        }
        let logical = verify(self.wl, &dest, "rsync")?;
        Ok(Sample {
            secs,
            logical,
            wan,
            cpu_a: u.cpu,
            cpu_b: du.cpu - b0,
            peak_a_kib: u.peak_kib,
            peak_b_kib: du.peak_kib,
            partial: false,
            queue_drops,
        })
    }

    /// `tar | zstd --long=27 -T0 | nc -l` in B, `nc | zstd -d | tar -x` in A.
    pub fn zstd_nc(&self) -> Result<Sample> {
        let dest = self.work.join("a-dest");
        fresh_dest(&dest)?;
        let sender = Proc::spawn(
            self.wan,
            Side::B,
            "zstd|nc",
            &format!(
                "tar -C {} -cf - . | zstd -q --long=27 -T0 -c | nc -N -l {} {NC_PORT}",
                self.wl.dir.join("target").display(),
                self.wan.addr_b()
            ),
            &self.log("zstd-send"),
        )?;
        wait_listen(self.wan, Side::B, NC_PORT, false, Duration::from_secs(20))?;
        let w0 = self.wan.stats();
        let (code, u, secs, _) = run(
            self.wan,
            Side::A,
            "nc|zstd -d",
            &format!(
                "nc -d {} {NC_PORT} | zstd -q -d --long=27 -c | tar -C {} -xf -",
                self.wan.addr_b(),
                dest.display()
            ),
            &self.log("zstd-recv"),
            TRANSFER_LIMIT,
        )?;
        let d = self.wan.stats().since(&w0);
        let (wan, queue_drops) = (d.wan_bytes(), d.queue_drops());
        let (scode, su, _) = sender.wait(Duration::from_secs(30))?;
        if code != 0 || scode != 0 {
            bail!("zstd|nc failed: receiver {code}, sender {scode}");
        }
        let logical = verify(self.wl, &dest, "zstd|nc")?;
        Ok(Sample {
            secs,
            logical,
            wan,
            cpu_a: u.cpu,
            cpu_b: su.cpu,
            peak_a_kib: u.peak_kib,
            peak_b_kib: su.peak_kib,
            partial: false,
            queue_drops,
        })
    }

    /// One fetch of `which` ("prior" or "target") through the pair; measured as a sample.
    pub fn strait_fetch(
        &self,
        pair: &Pair,
        origin: &Proc,
        which: &str,
        cap: Option<Duration>,
    ) -> Result<Sample> {
        let dest = self.work.join("a-dest");
        fresh_dest(&dest)?;
        let base = format!("http://127.0.0.1:{FORWARD_PORT}");
        let script = if which == "target" {
            curl_script(self.wl, &base, &dest)
        } else {
            let mut s = String::from("exec curl -sS --fail");
            for n in &self.wl.prior {
                s.push_str(&format!(" -o {}/{n} {base}/prior/{n}", dest.display()));
            }
            s
        };
        let st0 = chunk_counts(&Pair::edge_stats(self.wan));
        let a0 = pair.edge.cpu();
        let b0 = pair.core.cpu() + origin.cpu();
        let w0 = self.wan.stats();
        // The rate of the download direction every 100 ms (`--trace-rate`): where a run lost
        // time (slow start, a stall, a window cut) rather than only its mean.
        let stop = AtomicBool::new(false);
        let (code, u, secs, capped) = std::thread::scope(|sc| {
            let tracer = self
                .trace_rate
                .then(|| sc.spawn(|| rate_trace(self.wan, &stop)));
            let r = run(
                self.wan,
                Side::A,
                "curl via strait",
                &script,
                &self.log("curl-strait"),
                cap.unwrap_or(TRANSFER_LIMIT),
            );
            stop.store(true, Ordering::Relaxed);
            if let Some(t) = tracer {
                if let Ok(line) = t.join() {
                    eprintln!("      B->A Mbit/s per 100 ms (queue drops, random drops): {line}");
                }
            }
            r
        })?;
        let d = self.wan.stats().since(&w0);
        let (wan, queue_drops) = (d.wan_bytes(), d.queue_drops());
        let cpu_a = u.cpu + pair.edge.cpu() - a0;
        let cpu_b = pair.core.cpu() + origin.cpu() - b0;
        let st1 = chunk_counts(&Pair::edge_stats(self.wan));
        eprintln!(
            "      edge chunks: ref {} literal {} misses {}",
            st1[0] - st0[0],
            st1[1] - st0[1],
            st1[2] - st0[2]
        );
        let partial = capped && cap.is_some();
        if code != 0 && !partial {
            bail!(
                "curl through strait exited {code} (see {})",
                self.log("curl-strait").display()
            );
        }
        let logical = if partial {
            bytes_in(&dest)
        } else if which == "target" {
            verify(self.wl, &dest, "strait")?
        } else {
            bytes_in(&dest)
        };
        Ok(Sample {
            secs,
            logical,
            wan,
            cpu_a,
            cpu_b,
            peak_a_kib: pair.edge.peak_kib().max(u.peak_kib),
            peak_b_kib: pair.core.peak_kib().max(origin.peak_kib()),
            partial,
            queue_drops,
        })
    }

    /// Cold and warm (and, with a v1, after-v1) samples of the pair with `tuning`.
    pub fn strait(
        &self,
        origin: &Proc,
        tuning: &Tuning,
        out: &mut BTreeMap<Method, Vec<Sample>>,
    ) -> Result<()> {
        let dir = self.work.join("pair");
        let pair = Pair::start(self.wan, self.strait, &dir, self.certs, ORIGIN_PORT, tuning)?;
        let cold = self.strait_fetch(&pair, origin, "target", None)?;
        let warm = self.strait_fetch(&pair, origin, "target", None)?;
        pair.stop()?;
        out.entry(Method::StraitCold).or_default().push(cold);
        out.entry(Method::StraitWarm).or_default().push(warm);
        if !self.wl.prior.is_empty() {
            let pair = Pair::start(self.wan, self.strait, &dir, self.certs, ORIGIN_PORT, tuning)?;
            self.strait_fetch(&pair, origin, "prior", None)?;
            let delta = self.strait_fetch(&pair, origin, "target", None)?;
            pair.stop()?;
            out.entry(Method::StraitDelta).or_default().push(delta);
        }
        Ok(())
    }
}

/// Sum over the edge's routes of (ref_chunks, literal_chunks, misses): shown while running, so
/// a warm fetch that is not all references is visible at once.
fn chunk_counts(v: &serde_json::Value) -> [u64; 3] {
    let mut out = [0; 3];
    if let Some(routes) = v.get("routes").and_then(|r| r.as_array()) {
        for r in routes {
            for (i, k) in ["ref_chunks", "literal_chunks", "misses"]
                .iter()
                .enumerate()
            {
                out[i] += r.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
            }
        }
    }
    out
}
