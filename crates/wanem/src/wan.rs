//! [`Wan`]: two namespaces, two TUN devices, and the forwarder threads between them.

use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::forward::{Counters, Direction, DirectionStats};
use crate::model::LinkModel;
use crate::netns::{self, ip, TUN_MTU, TUN_NAME, TUN_TXQUEUELEN};
use crate::params::WanConfig;
use crate::Error;

/// Counters of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WanStats {
    /// Site A → site B.
    pub a_to_b: DirectionStats,
    /// Site B → site A.
    pub b_to_a: DirectionStats,
}

impl WanStats {
    /// Counters accumulated since `earlier`.
    pub fn since(&self, earlier: &WanStats) -> WanStats {
        WanStats {
            a_to_b: self.a_to_b.since(&earlier.a_to_b),
            b_to_a: self.b_to_a.since(&earlier.b_to_a),
        }
    }

    /// IP bytes offered to the link in both directions: the WAN bytes of a run.
    pub fn wan_bytes(&self) -> u64 {
        self.a_to_b.bytes + self.b_to_a.bytes
    }

    /// Packets the drop-tail queues dropped in both directions (congestion, not random loss).
    pub fn queue_drops(&self) -> u64 {
        self.a_to_b.dropped_queue + self.b_to_a.dropped_queue
    }
}

impl fmt::Display for WanStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, d) in [("a->b", &self.a_to_b), ("b->a", &self.b_to_a)] {
            writeln!(
                f,
                "{name}: packets={} bytes={} delivered_packets={} delivered_bytes={} \
                 dropped_queue={} dropped_loss={} dropped_burst={} dropped_overflow={} \
                 duplicates={} reordered={}",
                d.packets,
                d.bytes,
                d.delivered_packets,
                d.delivered_bytes,
                d.dropped_queue,
                d.dropped_loss,
                d.dropped_burst,
                d.dropped_overflow,
                d.duplicates,
                d.reordered
            )?;
        }
        Ok(())
    }
}

/// A running emulated WAN. Dropping it (also during a panic's unwind) stops the forwarder and
/// deletes both namespaces and their TUN devices.
pub struct Wan {
    ns_a: String,
    ns_b: String,
    addr_a: Ipv4Addr,
    addr_b: Ipv4Addr,
    counters: [Arc<Counters>; 2],
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
    config: WanConfig,
}

impl fmt::Debug for Wan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wan")
            .field("ns_a", &self.ns_a)
            .field("ns_b", &self.ns_b)
            .field("addr_a", &self.addr_a)
            .field("addr_b", &self.addr_b)
            .finish_non_exhaustive()
    }
}

const TCP_CC: &str = "net/ipv4/tcp_congestion_control";
const TCP_CC_AVAILABLE: &str = "net/ipv4/tcp_available_congestion_control";
const TCP_CC_ALLOWED: &str = "net/ipv4/tcp_allowed_congestion_control";

impl Wan {
    /// Creates the namespaces and devices and starts forwarding. Fails with
    /// [`Error::Unavailable`] when not root, without `/dev/net/tun`, or without `ip`.
    pub fn start(config: WanConfig) -> Result<Wan, Error> {
        if let Some(reason) = netns::skip_reason() {
            return Err(Error::Unavailable { reason });
        }
        let models = [
            LinkModel::new(&config.a_to_b, config.seed, 0)?,
            LinkModel::new(&config.b_to_a, config.seed, 1)?,
        ];
        netns::cleanup_stale()?;
        let pid = std::process::id();
        let n = netns::next_instance();
        let subnet = (128 + (pid % 64) as u8, (n % 256) as u8);
        // The guard exists before the first namespace, so any failure below cleans up.
        let mut wan = Wan {
            ns_a: format!("{}{pid}-{n}-a", netns::NETNS_PREFIX),
            ns_b: format!("{}{pid}-{n}-b", netns::NETNS_PREFIX),
            addr_a: Ipv4Addr::new(10, subnet.0, subnet.1, 1),
            addr_b: Ipv4Addr::new(10, subnet.0, subnet.1, 2),
            counters: [Arc::default(), Arc::default()],
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            config,
        };
        let fd_a = wan.setup_site(true)?;
        let fd_b = wan.setup_site(false)?;
        let (fd_a, fd_b) = (Arc::new(fd_a), Arc::new(fd_b));
        let epoch = Instant::now();
        for (i, model) in models.into_iter().enumerate() {
            let (input, output) = if i == 0 {
                (fd_a.clone(), fd_b.clone())
            } else {
                (fd_b.clone(), fd_a.clone())
            };
            let dir = Direction {
                input,
                output,
                model,
                counters: wan.counters[i].clone(),
                stop: wan.stop.clone(),
                epoch,
            };
            let name = if i == 0 { "wanem-a2b" } else { "wanem-b2a" };
            let h = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || dir.run())
                .map_err(|source| Error::Io {
                    what: format!("spawning forwarder thread {name}"),
                    source,
                })?;
            wan.threads.push(h);
        }
        Ok(wan)
    }

    fn setup_site(&self, a: bool) -> Result<OwnedFd, Error> {
        let (ns, addr) = if a {
            (&self.ns_a, self.addr_a)
        } else {
            (&self.ns_b, self.addr_b)
        };
        ip(["netns", "add", ns.as_str()])?;
        let fd = netns::create_tun(ns)?;
        // No IPv6 on the WAN device: router solicitations and MLD would pollute the byte meter.
        let v6 = format!("net/ipv6/conf/{TUN_NAME}/disable_ipv6");
        if netns::run_in_netns(ns, || Path::new("/proc/sys").join(&v6).exists())? {
            netns::write_sysctl(ns, &v6, "1")?;
        }
        ip(["-n", ns, "link", "set", "lo", "up"])?;
        ip([
            "-n",
            ns,
            "link",
            "set",
            TUN_NAME,
            "mtu",
            &TUN_MTU.to_string(),
            "txqueuelen",
            &TUN_TXQUEUELEN.to_string(),
            "up",
        ])?;
        ip([
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            TUN_NAME,
        ])?;
        if let Some(cc) = &self.config.congestion_control {
            set_congestion_control(ns, cc)?;
        }
        let max = self.config.socket_buffer_max;
        for key in ["net/ipv4/tcp_rmem", "net/ipv4/tcp_wmem"] {
            let cur = netns::read_sysctl(ns, key)?;
            let mut parts: Vec<String> = cur.split_whitespace().map(str::to_string).collect();
            if parts.len() == 3 {
                parts[2] = max.to_string();
                netns::write_sysctl(ns, key, &parts.join(" "))?;
            }
        }
        raise_global_buffer_max(max)?;
        Ok(fd)
    }

    /// Name of site A's namespace.
    pub fn ns_a(&self) -> &str {
        &self.ns_a
    }
    /// Name of site B's namespace.
    pub fn ns_b(&self) -> &str {
        &self.ns_b
    }
    /// Site A's address on the WAN device.
    pub fn addr_a(&self) -> Ipv4Addr {
        self.addr_a
    }
    /// Site B's address on the WAN device.
    pub fn addr_b(&self) -> Ipv4Addr {
        self.addr_b
    }
    /// The configuration this WAN runs.
    pub fn config(&self) -> &WanConfig {
        &self.config
    }

    /// `ip netns exec <ns_a> <program>`: add arguments and spawn as usual.
    pub fn command_in_a(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.ns_a, program)
    }
    /// `ip netns exec <ns_b> <program>`.
    pub fn command_in_b(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.ns_b, program)
    }

    /// Runs `f` on a fresh thread inside site A; sockets (and threads, e.g. a tokio runtime)
    /// created in `f` belong to site A.
    pub fn enter_a<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> Result<R, Error> {
        netns::run_in_netns(&self.ns_a, f)
    }
    /// Like [`Wan::enter_a`], for site B.
    pub fn enter_b<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> Result<R, Error> {
        netns::run_in_netns(&self.ns_b, f)
    }
    /// Spawns a detached thread inside site A (a server that outlives the call).
    pub fn spawn_in_a<F, R>(&self, f: F) -> Result<JoinHandle<Result<R, Error>>, Error>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        netns::spawn_in_netns(&self.ns_a, f)
    }
    /// Spawns a detached thread inside site B.
    pub fn spawn_in_b<F, R>(&self, f: F) -> Result<JoinHandle<Result<R, Error>>, Error>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        netns::spawn_in_netns(&self.ns_b, f)
    }

    /// Current counters of both directions.
    pub fn stats(&self) -> WanStats {
        WanStats {
            a_to_b: self.counters[0].snapshot(),
            b_to_a: self.counters[1].snapshot(),
        }
    }

    /// Stops forwarding, deletes the namespaces, and returns the final counters.
    pub fn stop(mut self) -> WanStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            // A forwarder that failed or panicked has nothing left to clean up.
            let _ = h.join();
        }
        // Deletion failures cannot be reported from Drop; cleanup_stale() catches leftovers.
        let _ = netns::delete_netns(&self.ns_a);
        let _ = netns::delete_netns(&self.ns_b);
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Sets the namespace's default TCP congestion control. A non-initial namespace may only pick
/// one listed in the host's `tcp_allowed_congestion_control` (this kernel allows `reno bbr`), so
/// the requested one is appended there first — a host-wide change that only widens the choice.
fn set_congestion_control(ns: &str, cc: &str) -> Result<(), Error> {
    let available = netns::read_sysctl(ns, TCP_CC_AVAILABLE)?;
    if !available.split_whitespace().any(|a| a == cc) {
        return Err(Error::CongestionControl {
            name: cc.to_string(),
            available,
        });
    }
    let allowed_path = Path::new("/proc/sys").join(TCP_CC_ALLOWED);
    let allowed = std::fs::read_to_string(&allowed_path).map_err(|source| Error::Io {
        what: format!("reading {}", allowed_path.display()),
        source,
    })?;
    if !allowed.split_whitespace().any(|a| a == cc) {
        let widened = format!("{} {cc}", allowed.trim());
        std::fs::write(&allowed_path, &widened).map_err(|source| Error::Io {
            what: format!("writing {widened:?} to {}", allowed_path.display()),
            source,
        })?;
    }
    netns::write_sysctl(ns, TCP_CC, cc)?;
    let now = netns::read_sysctl(ns, TCP_CC)?;
    if now != cc {
        return Err(Error::CongestionControl {
            name: cc.to_string(),
            available,
        });
    }
    Ok(())
}

/// `net.core.{r,w}mem_max` are host-wide (read-only inside a namespace). Raise them to `max` if
/// lower — never lower them — so UDP sockets (quinn) can get the buffers they ask for.
fn raise_global_buffer_max(max: u64) -> Result<(), Error> {
    for key in ["/proc/sys/net/core/rmem_max", "/proc/sys/net/core/wmem_max"] {
        let cur: u64 = std::fs::read_to_string(key)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if cur < max {
            std::fs::write(key, max.to_string()).map_err(|source| Error::Io {
                what: format!("raising {key} to {max}"),
                source,
            })?;
        }
    }
    Ok(())
}
