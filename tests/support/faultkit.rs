//! Fault-matrix support: transfers that can be interrupted and report how they ended, seeded
//! bit flips in a store directory, a small tmpfs mounted for the length of a test, pairs whose
//! processes run in the WAN emulator's namespaces, and a partition of that WAN.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::origin::{OP_GEN, OP_SINK, SINK_REPLY_LEN};
use crate::pair::{addr_after, CoreCfg, EdgeCfg, START_TIMEOUT};
use crate::proc::Proc;
use crate::seeded::Seeded;

/// How a client transfer ended.
#[derive(Debug)]
pub enum Outcome {
    /// The receiving end got `len` bytes hashing to `hash` and the connection closed cleanly.
    Complete {
        /// Bytes received (download) or acknowledged by the upstream (upload).
        len: u64,
        /// BLAKE3 of them.
        hash: blake3::Hash,
    },
    /// The connection failed (reset, broken pipe, ...) after `after` bytes.
    Failed {
        /// Bytes moved before the error.
        after: u64,
        /// The error.
        error: std::io::Error,
    },
}

impl Outcome {
    /// Whether this is exactly `len` bytes hashing to `hash`.
    pub fn is_exact(&self, want_len: u64, want: blake3::Hash) -> bool {
        matches!(self, Outcome::Complete { len, hash } if *len == want_len && *hash == want)
    }
}

/// A transfer running on a runtime; `progress` counts bytes moved so far.
pub struct Running {
    /// Bytes received (download) or written (upload) so far.
    pub progress: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<Outcome>,
}

impl Running {
    /// Waits until `bytes` have moved.
    pub fn wait_progress(&self, bytes: u64, timeout: Duration) -> anyhow::Result<()> {
        crate::poll("transfer progress", timeout, || {
            (self.progress.load(Relaxed) >= bytes || self.handle.is_finished()).then_some(())
        })?;
        anyhow::ensure!(
            !self.handle.is_finished(),
            "the transfer ended after {} bytes, before reaching {bytes}",
            self.progress.load(Relaxed)
        );
        Ok(())
    }

    /// Waits for the end; fails if it takes longer than `timeout` (a hang).
    pub fn finish(
        self,
        rt: &tokio::runtime::Runtime,
        timeout: Duration,
    ) -> anyhow::Result<Outcome> {
        rt.block_on(async { tokio::time::timeout(timeout, self.handle).await })
            .map_err(|_| anyhow::anyhow!("the client hung for {timeout:?}"))?
            .map_err(|e| anyhow::anyhow!("client task: {e}"))
    }
}

fn failed(progress: &AtomicU64, error: std::io::Error) -> Outcome {
    Outcome::Failed {
        after: progress.load(Relaxed),
        error,
    }
}

/// Starts a download of `len` seeded bytes (seed `seed`) through `addr`.
pub fn start_download(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    seed: u64,
    len: u64,
) -> Running {
    let progress = Arc::new(AtomicU64::new(0));
    let p = progress.clone();
    let handle = rt.spawn(async move {
        let run = async {
            let mut s = TcpStream::connect(addr).await?;
            let mut req = vec![OP_GEN];
            req.extend_from_slice(&seed.to_le_bytes());
            req.extend_from_slice(&len.to_le_bytes());
            s.write_all(&req).await?;
            let mut h = blake3::Hasher::new();
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                p.fetch_add(n as u64, Relaxed);
            }
            Ok::<_, std::io::Error>(h.finalize())
        };
        match run.await {
            Ok(hash) => Outcome::Complete {
                len: p.load(Relaxed),
                hash,
            },
            Err(e) => failed(&p, e),
        }
    });
    Running { progress, handle }
}

/// Starts an upload of `len` seeded bytes (seed `seed`) through `addr` to the origin's sink;
/// completes with what the sink reports having received.
pub fn start_upload(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    seed: u64,
    len: u64,
) -> Running {
    let progress = Arc::new(AtomicU64::new(0));
    let p = progress.clone();
    let handle = rt.spawn(async move {
        let run = async {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(&[OP_SINK]).await?;
            let mut g = Seeded::new(seed, len);
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = g.fill(&mut buf);
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).await?;
                p.fetch_add(n as u64, Relaxed);
            }
            s.shutdown().await?;
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).await?;
            if reply.len() != SINK_REPLY_LEN as usize {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("sink answered {} bytes, not {SINK_REPLY_LEN}", reply.len()),
                ));
            }
            let mut l = [0u8; 8];
            l.copy_from_slice(&reply[..8]);
            let mut h = [0u8; 32];
            h.copy_from_slice(&reply[8..]);
            Ok((u64::from_le_bytes(l), blake3::Hash::from(h)))
        };
        match run.await {
            Ok((len, hash)) => Outcome::Complete { len, hash },
            Err(e) => failed(&p, e),
        }
    });
    Running { progress, handle }
}

/// Record offsets of a store segment file, read from its header chain (public layout: magic,
/// kind, reserved, u32 LE length at 8..12, 56-byte header).
fn record_offsets(bytes: &[u8]) -> Vec<(usize, usize)> {
    const HEADER: usize = 56;
    let mut out = Vec::new();
    let mut off = 0;
    while off + HEADER <= bytes.len() && &bytes[off..off + 4] == b"STR1" {
        let mut l = [0u8; 4];
        l.copy_from_slice(&bytes[off + 8..off + 12]);
        let len = u32::from_le_bytes(l) as usize;
        out.push((off, len));
        off += HEADER + len;
    }
    out
}

/// Flips `n` seeded random bits in the segment files of the store in `dir`: half in record
/// headers, half in payloads. Returns how many bits were flipped.
pub fn flip_store_bits(dir: &Path, seed: u64, n: usize) -> anyhow::Result<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seg-"))
        })
        .collect();
    segs.sort();
    anyhow::ensure!(!segs.is_empty(), "no segment files in {}", dir.display());
    let mut flipped = 0;
    for i in 0..n {
        let path = &segs[rng.gen_range(0..segs.len())];
        let mut bytes = std::fs::read(path)?;
        let recs = record_offsets(&bytes);
        if recs.is_empty() {
            continue;
        }
        let (off, len) = recs[rng.gen_range(0..recs.len())];
        let at = if i % 2 == 0 || len == 0 {
            off + rng.gen_range(0..56)
        } else {
            off + 56 + rng.gen_range(0..len)
        };
        bytes[at] ^= 1 << rng.gen_range(0..8);
        std::fs::write(path, bytes)?;
        flipped += 1;
    }
    Ok(flipped)
}

/// A tmpfs of a given size mounted on a fresh directory; unmounted (lazily if busy) on drop.
pub struct Tmpfs {
    /// The mount point.
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `4m`). `Err` names the reason (not
    /// root, no `mount`).
    pub fn mount(size: &str) -> anyhow::Result<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        anyhow::ensure!(euid == 0, "not root (euid {euid}): cannot mount a tmpfs");
        let dir = tempfile::Builder::new().prefix("strait-tmpfs-").tempdir()?;
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Tmpfs { path, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Takes the emulated WAN's link down in both namespaces (every packet dropped both ways);
/// back up on [`Partition::heal`] or drop.
pub struct Partition<'a> {
    wan: &'a strait_wanem::Wan,
    up: bool,
}

fn set_link(wan: &strait_wanem::Wan, state: &str) -> anyhow::Result<()> {
    for ns in [wan.ns_a(), wan.ns_b()] {
        let out = Command::new("ip")
            .args([
                "-n",
                ns,
                "link",
                "set",
                strait_wanem::netns::TUN_NAME,
                state,
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "ip -n {ns} link set {state}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl<'a> Partition<'a> {
    /// Cuts the link.
    pub fn start(wan: &'a strait_wanem::Wan) -> anyhow::Result<Partition<'a>> {
        set_link(wan, "down")?;
        Ok(Partition { wan, up: false })
    }

    /// Restores the link.
    pub fn heal(mut self) -> anyhow::Result<()> {
        self.up = true;
        set_link(self.wan, "up")
    }
}

impl Drop for Partition<'_> {
    fn drop(&mut self) {
        if !self.up {
            let _ = set_link(self.wan, "up");
        }
    }
}

/// Starts `strait <role> --config <path>` inside namespace `ns` with `toml` written to `path`.
pub fn spawn_in_ns(role: &str, ns: &str, path: &Path, toml: &str) -> anyhow::Result<Proc> {
    std::fs::write(path, toml)?;
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(crate::bin::strait_bin())
        .arg(role)
        .arg("--config")
        .arg(path)
        .env(
            "RUST_LOG",
            std::env::var("STRAIT_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
    Proc::spawn(role, c)
}

/// A core and an edge in (possibly different) namespaces.
pub struct NsPair {
    /// The edge.
    pub edge: Proc,
    /// The core.
    pub core: Proc,
    /// Edge admin address (inside the edge's namespace).
    pub edge_admin: SocketAddr,
    /// Core admin address (inside the core's namespace).
    pub core_admin: SocketAddr,
    /// The edge's first forward (inside the edge's namespace).
    pub forward: SocketAddr,
}

impl NsPair {
    /// Starts `core` in `core_ns`, then `edge` (its `core` address filled in) in `edge_ns`,
    /// writing their configs (plus `extra` TOML appended to both) under `dir`.
    pub fn start(
        dir: &Path,
        core: &CoreCfg,
        core_ns: &str,
        edge: &EdgeCfg,
        edge_ns: &str,
        extra: &str,
    ) -> anyhow::Result<NsPair> {
        let mut core_proc = spawn_in_ns(
            "core",
            core_ns,
            &dir.join("core.toml"),
            &format!("{}\n{extra}", core.toml()),
        )?;
        let l = core_proc.wait_log(&["core listening"], START_TIMEOUT)?;
        let tunnel = addr_after(&l, "listen=")?;
        let l = core_proc.wait_log(&["admin server listening"], START_TIMEOUT)?;
        let core_admin = addr_after(&l, "admin=")?;
        let mut edge = edge.clone();
        edge.core = tunnel.to_string();
        let mut edge_proc = spawn_in_ns(
            "edge",
            edge_ns,
            &dir.join("edge.toml"),
            &format!("{}\n{extra}", edge.toml()),
        )?;
        let l = edge_proc.wait_log(&["admin server listening"], START_TIMEOUT)?;
        let edge_admin = addr_after(&l, "admin=")?;
        let name = &edge.forwards[0].name;
        let l = edge_proc.wait_log(
            &["forward listening", &format!("forward={name}")],
            START_TIMEOUT,
        )?;
        let forward = addr_after(&l, "listen=")?;
        Ok(NsPair {
            edge: edge_proc,
            core: core_proc,
            edge_admin,
            core_admin,
            forward,
        })
    }

    /// Waits until the edge (probed inside `edge_ns`) reports the tunnel up.
    pub fn wait_ready(&mut self, edge_ns: &str, timeout: Duration) -> anyhow::Result<()> {
        crate::ingress::wait_pair_ready(
            &mut self.edge,
            &mut self.core,
            self.edge_admin,
            timeout,
            |admin| {
                strait_wanem::run_in_netns(edge_ns, || crate::admin::ready(admin)).unwrap_or(false)
            },
        )
    }
}

/// A server thread inside a namespace; told to stop and joined when dropped.
pub struct NsServer {
    /// The server's address.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), strait_wanem::Error>>>,
}

type AddrTx = std::sync::mpsc::Sender<Result<SocketAddr, String>>;

impl NsServer {
    /// Runs `serve` on a runtime of its own inside `ns`; it reports its address (or why it
    /// could not bind) on the sender and returns when the receiver fires.
    fn spawn<F, Fut>(ns: &str, what: &str, serve: F) -> anyhow::Result<NsServer>
    where
        F: FnOnce(AddrTx, tokio::sync::oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = strait_wanem::spawn_in_netns(ns, move || {
            crate::rt().block_on(serve(addr_tx, stop_rx))
        })?;
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))?
            .map_err(|e| anyhow::anyhow!("{what} in {ns}: {e}"))?;
        Ok(NsServer {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// A seeded origin (GEN/SINK/ECHO) on 127.0.0.1 inside `ns`.
    pub fn origin(ns: &str) -> anyhow::Result<NsServer> {
        NsServer::spawn(ns, "origin", |addr_tx, stop_rx| async move {
            let o = crate::origin::Origin::start().await;
            let _ = addr_tx.send(o.as_ref().map(|o| o.addr).map_err(|e| e.to_string()));
            let _ = stop_rx.await;
            drop(o);
        })
    }

    /// An echo server (every byte read is written back) on `ip:0` inside `ns`.
    pub fn echo(ns: &str, ip: std::net::Ipv4Addr) -> anyhow::Result<NsServer> {
        NsServer::spawn(ns, "echo server", move |addr_tx, stop_rx| async move {
            let l = match tokio::net::TcpListener::bind((ip, 0)).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = addr_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = addr_tx.send(l.local_addr().map_err(|e| e.to_string()));
            let serve = async {
                while let Ok((mut s, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = stop_rx => {}
            }
        })
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A multi-threaded runtime whose worker threads live in namespace `ns`: tasks spawned on it
/// (not `block_on` futures, which run on the caller's thread) open their sockets there.
pub fn rt_in(ns: &str) -> tokio::runtime::Runtime {
    let ns = ns.to_string();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            if let Err(e) = strait_wanem::netns::setns_current_thread(&ns) {
                panic!("runtime thread cannot enter {ns}: {e}");
            }
        })
        .build()
        .unwrap()
}

/// An echo client that sends `len` seeded bytes, checks the echo is byte-exact, then stays
/// connected and idle; it ends when the connection does: `Ok(())` for a clean end (EOF),
/// `Err` for a reset or other error.
pub fn start_idle_echo(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    seed: u64,
    len: usize,
) -> (
    tokio::sync::oneshot::Receiver<anyhow::Result<()>>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (echoed_tx, echoed_rx) = tokio::sync::oneshot::channel();
    let handle = rt.spawn(async move {
        let mut s = TcpStream::connect(addr).await?;
        let data = crate::seeded::bytes(seed, len);
        s.write_all(&data).await?;
        let mut back = vec![0u8; len];
        s.read_exact(&mut back).await?;
        let _ = echoed_tx.send(if back == data {
            Ok(())
        } else {
            Err(anyhow::anyhow!("the echo differs from what was sent"))
        });
        let mut more = [0u8; 1];
        match s.read(&mut more).await? {
            0 => Ok(()),
            _ => Err(std::io::Error::other("unexpected bytes after the echo")),
        }
    });
    (echoed_rx, handle)
}
