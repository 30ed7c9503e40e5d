//! An edge–core pair of real `strait` processes with generated configs and certificates.
//!
//! Ports: the first start uses port 0 everywhere and reads the bound addresses from the logs
//! (`core listening listen=Some(ADDR)`, `admin server listening admin=ADDR`, `forward listening
//! forward=NAME listen=ADDR`); the configs are then rewritten with those ports, so a restart
//! (after SIGKILL or SIGTERM) comes back on the same addresses with the same stores.

use crate::admin;
use crate::bin::strait_bin;
use crate::proc::Proc;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long a process may take to log its addresses.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an edge may take to report the tunnel up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `strait certs --out DIR [args]`.
pub fn certs(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(strait_bin())
        .arg("certs")
        .arg("--out")
        .arg(dir)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "strait certs failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// TLS file paths.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA.
    pub ca: PathBuf,
    /// Certificate.
    pub cert: PathBuf,
    /// Key.
    pub key: PathBuf,
}

/// Settings both roles have.
#[derive(Debug, Clone)]
pub struct Common {
    /// `admin.listen`.
    pub admin: String,
    /// `[tls]`.
    pub tls: TlsFiles,
    /// `dedup.key_file`.
    pub key_file: PathBuf,
    /// `store.path`.
    pub store_path: PathBuf,
    /// `store.max_bytes`.
    pub store_max: String,
    /// `shutdown.drain_timeout`.
    pub drain_timeout: String,
    /// `tunnel.keep_alive`.
    pub keep_alive: String,
    /// `tunnel.idle_timeout`.
    pub idle_timeout: String,
    /// `dedup.flush_delay`.
    pub flush_delay: String,
    /// Extra lines appended to `[tunnel]`.
    pub tunnel_extra: String,
    /// Extra lines appended to `[dedup]`.
    pub dedup_extra: String,
}

impl Common {
    fn toml(&self) -> String {
        let p = |p: &Path| p.display().to_string();
        format!(
            "[log]\nlevel = \"info\"\n\n[admin]\nlisten = \"{}\"\n\n[shutdown]\ndrain_timeout = \"{}\"\n\n\
             [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n\
             [tunnel]\nudp_buffer = \"8MiB\"\nkeep_alive = \"{}\"\nidle_timeout = \"{}\"\n{}\n\
             [dedup]\nkey_file = \"{}\"\nflush_delay = \"{}\"\n{}\n\
             [store]\npath = \"{}\"\nmax_bytes = \"{}\"\n\n",
            self.admin,
            self.drain_timeout,
            p(&self.tls.ca),
            p(&self.tls.cert),
            p(&self.tls.key),
            self.keep_alive,
            self.idle_timeout,
            self.tunnel_extra,
            p(&self.key_file),
            self.flush_delay,
            self.dedup_extra,
            p(&self.store_path),
            self.store_max,
        )
    }
}

/// One `[[core.service]]`.
#[derive(Debug, Clone)]
pub struct ServiceCfg {
    /// Name.
    pub name: String,
    /// host:port.
    pub upstream: String,
    /// Dedup of downloads.
    pub dedup: bool,
    /// zstd level or "false".
    pub compression: String,
}

/// A core's config.
#[derive(Debug, Clone)]
pub struct CoreCfg {
    /// Shared sections.
    pub common: Common,
    /// `core.listen`.
    pub listen: String,
    /// Services.
    pub services: Vec<ServiceCfg>,
}

impl CoreCfg {
    /// The TOML text.
    pub fn toml(&self) -> String {
        let mut s = self.common.toml();
        s.push_str(&format!("[core]\nlisten = \"{}\"\n", self.listen));
        for v in &self.services {
            s.push_str(&format!(
                "\n[[core.service]]\nname = \"{}\"\nupstream = \"{}\"\ndedup = {}\ncompression = {}\n",
                v.name, v.upstream, v.dedup, v.compression
            ));
        }
        s
    }
}

/// One `[[edge.forward]]`.
#[derive(Debug, Clone)]
pub struct ForwardCfg {
    /// Route name.
    pub name: String,
    /// Listen address.
    pub listen: String,
    /// Core service.
    pub service: String,
    /// Dedup of uploads.
    pub dedup: bool,
    /// zstd level or "false".
    pub compression: String,
}

/// An edge's config.
#[derive(Debug, Clone)]
pub struct EdgeCfg {
    /// Shared sections.
    pub common: Common,
    /// `edge.core`.
    pub core: String,
    /// `edge.server_name`.
    pub server_name: String,
    /// `edge.flow_wait`.
    pub flow_wait: String,
    /// `edge.reconnect_max`.
    pub reconnect_max: String,
    /// Forwards.
    pub forwards: Vec<ForwardCfg>,
}

impl EdgeCfg {
    /// The TOML text.
    pub fn toml(&self) -> String {
        let mut s = self.common.toml();
        s.push_str(&format!(
            "[edge]\ncore = \"{}\"\nserver_name = \"{}\"\nconnect_timeout = \"2s\"\nflow_wait = \"{}\"\n\
             reconnect_min = \"50ms\"\nreconnect_max = \"{}\"\n",
            self.core, self.server_name, self.flow_wait, self.reconnect_max
        ));
        for f in &self.forwards {
            s.push_str(&format!(
                "\n[[edge.forward]]\nname = \"{}\"\nlisten = \"{}\"\nservice = \"{}\"\ndedup = {}\ncompression = {}\n",
                f.name, f.listen, f.service, f.dedup, f.compression
            ));
        }
        s
    }
}

/// Parses the address after `key` in a log line (`key=ADDR` or `key=Some(ADDR)`).
pub fn addr_after(line: &str, key: &str) -> anyhow::Result<SocketAddr> {
    let at = line
        .find(key)
        .ok_or_else(|| anyhow::anyhow!("no {key:?} in {line:?}"))?;
    let rest = &line[at + key.len()..];
    let rest = rest.strip_prefix("Some(").unwrap_or(rest);
    let end = rest
        .find(|c: char| c.is_whitespace() || c == ')' || c == ',')
        .unwrap_or(rest.len());
    rest[..end]
        .trim_matches('"')
        .parse()
        .map_err(|e| anyhow::anyhow!("{:?} in {line:?}: {e}", &rest[..end]))
}

/// A running core.
pub struct CoreProc {
    /// The process.
    pub proc: Proc,
    /// Admin address.
    pub admin: SocketAddr,
    /// Tunnel (UDP) address.
    pub tunnel: SocketAddr,
}

/// A running edge.
pub struct EdgeProc {
    /// The process.
    pub proc: Proc,
    /// Admin address.
    pub admin: SocketAddr,
    /// Forward addresses by route name.
    pub forwards: Vec<(String, SocketAddr)>,
}

impl EdgeProc {
    /// Waits until `/ready` answers 200 (tunnel up).
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let t0 = std::time::Instant::now();
        loop {
            if admin::ready(self.admin) {
                return Ok(());
            }
            if let Some(st) = self.proc.try_wait()? {
                anyhow::bail!("edge exited ({st}) before ready:\n{}", self.proc.tail(40));
            }
            if t0.elapsed() > timeout {
                anyhow::bail!(
                    "edge not ready within {timeout:?}; log tail:\n{}",
                    self.proc.tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The forward named `name`.
    pub fn forward(&self, name: &str) -> SocketAddr {
        self.forwards
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no forward {name:?} in {:?}", self.forwards))
    }
}

fn command(role: &str, cfg: &Path) -> Command {
    let mut c = Command::new(strait_bin());
    c.arg(role).arg("--config").arg(cfg);
    // The config's level applies unless RUST_LOG is set; keep the tests' logs at info.
    c.env(
        "RUST_LOG",
        std::env::var("STRAIT_TEST_LOG").unwrap_or_else(|_| "info".into()),
    );
    c
}

/// Starts a core from `cfg` written to `path`.
pub fn start_core(cfg: &CoreCfg, path: &Path) -> anyhow::Result<CoreProc> {
    std::fs::write(path, cfg.toml())?;
    let mut proc = Proc::spawn("core", command("core", path))?;
    let l = proc.wait_log(&["core listening"], START_TIMEOUT)?;
    let tunnel = addr_after(&l, "listen=")?;
    let l = proc.wait_log(&["admin server listening"], START_TIMEOUT)?;
    let admin = addr_after(&l, "admin=")?;
    Ok(CoreProc {
        proc,
        admin,
        tunnel,
    })
}

/// Starts an edge from `cfg` written to `path` (does not wait for the tunnel).
pub fn start_edge(cfg: &EdgeCfg, path: &Path) -> anyhow::Result<EdgeProc> {
    std::fs::write(path, cfg.toml())?;
    let mut proc = Proc::spawn("edge", command("edge", path))?;
    let l = proc.wait_log(&["admin server listening"], START_TIMEOUT)?;
    let admin = addr_after(&l, "admin=")?;
    let mut forwards = Vec::new();
    for f in &cfg.forwards {
        let l = proc.wait_log(
            &["forward listening", &format!("forward={}", f.name)],
            START_TIMEOUT,
        )?;
        forwards.push((f.name.clone(), addr_after(&l, "listen=")?));
    }
    Ok(EdgeProc {
        proc,
        admin,
        forwards,
    })
}

/// A temp directory with certificates (`certs/`: CA, core `localhost`, edge `edge-a`, dedup key)
/// and default configs for one core and one edge.
pub struct Pair {
    // Field order is drop order: processes die before their directory is deleted.
    /// The running edge.
    pub edge: Option<EdgeProc>,
    /// The running core.
    pub core: Option<CoreProc>,
    /// The core's config (ports fixed after the first start).
    pub core_cfg: CoreCfg,
    /// The edge's config (ports fixed after the first start).
    pub edge_cfg: EdgeCfg,
    /// Everything lives here (deleted on drop).
    pub dir: tempfile::TempDir,
}

impl Pair {
    /// Certificates and default configs: service `origin` → `upstream`, forward `origin`.
    pub fn new(upstream: SocketAddr) -> anyhow::Result<Pair> {
        let dir = tempfile::Builder::new().prefix("strait-e2e-").tempdir()?;
        let certs_dir = dir.path().join("certs");
        certs(&certs_dir, &[])?;
        let common = |role: &str, cert: &str| Common {
            admin: "127.0.0.1:0".into(),
            tls: TlsFiles {
                ca: certs_dir.join("ca.pem"),
                cert: certs_dir.join(format!("{cert}.pem")),
                key: certs_dir.join(format!("{cert}.key")),
            },
            key_file: certs_dir.join("dedup.key"),
            store_path: dir.path().join(format!("{role}-store")),
            store_max: "4GiB".into(),
            drain_timeout: "10s".into(),
            keep_alive: "500ms".into(),
            idle_timeout: "3s".into(),
            flush_delay: "2ms".into(),
            tunnel_extra: String::new(),
            dedup_extra: String::new(),
        };
        let core_cfg = CoreCfg {
            common: common("core", "core-localhost"),
            listen: "127.0.0.1:0".into(),
            services: vec![ServiceCfg {
                name: "origin".into(),
                upstream: upstream.to_string(),
                dedup: true,
                compression: "3".into(),
            }],
        };
        let edge_cfg = EdgeCfg {
            common: common("edge", "edge-edge-a"),
            core: String::new(),
            server_name: "localhost".into(),
            flow_wait: "10s".into(),
            reconnect_max: "500ms".into(),
            forwards: vec![ForwardCfg {
                name: "origin".into(),
                listen: "127.0.0.1:0".into(),
                service: "origin".into(),
                dedup: true,
                compression: "3".into(),
            }],
        };
        Ok(Pair {
            dir,
            core_cfg,
            edge_cfg,
            core: None,
            edge: None,
        })
    }

    /// The certificates directory.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Starts the core; fixes its ports in the config for restarts.
    pub fn start_core(&mut self) -> anyhow::Result<()> {
        let c = start_core(&self.core_cfg, &self.dir.path().join("core.toml"))?;
        self.core_cfg.listen = c.tunnel.to_string();
        self.core_cfg.common.admin = c.admin.to_string();
        self.edge_cfg.core = c.tunnel.to_string();
        self.core = Some(c);
        Ok(())
    }

    /// Starts the edge (without waiting for the tunnel); fixes its ports for restarts.
    pub fn start_edge(&mut self) -> anyhow::Result<()> {
        let e = start_edge(&self.edge_cfg, &self.dir.path().join("edge.toml"))?;
        self.edge_cfg.common.admin = e.admin.to_string();
        for (f, (_, a)) in self.edge_cfg.forwards.iter_mut().zip(&e.forwards) {
            f.listen = a.to_string();
        }
        self.edge = Some(e);
        Ok(())
    }

    /// Starts both and waits until the edge is ready.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.start_core()?;
        self.start_edge()?;
        self.edge_mut().wait_ready(READY_TIMEOUT)
    }

    /// Stops both gracefully (SIGTERM; both must exit 0), edge first.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.stop_edge()?;
        self.stop_core()
    }

    /// SIGTERM to the edge; it must exit 0.
    pub fn stop_edge(&mut self) -> anyhow::Result<()> {
        if let Some(mut e) = self.edge.take() {
            let st = e.proc.terminate(Duration::from_secs(20))?;
            anyhow::ensure!(st.success(), "edge exited {st}:\n{}", e.proc.tail(30));
        }
        Ok(())
    }

    /// SIGTERM to the core; it must exit 0.
    pub fn stop_core(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.core.take() {
            let st = c.proc.terminate(Duration::from_secs(20))?;
            anyhow::ensure!(st.success(), "core exited {st}:\n{}", c.proc.tail(30));
        }
        Ok(())
    }

    /// The running edge.
    pub fn edge_mut(&mut self) -> &mut EdgeProc {
        self.edge.as_mut().expect("edge is running")
    }

    /// The running edge.
    pub fn edge(&self) -> &EdgeProc {
        self.edge.as_ref().expect("edge is running")
    }

    /// The running core.
    pub fn core(&self) -> &CoreProc {
        self.core.as_ref().expect("core is running")
    }

    /// The first forward's address.
    pub fn forward(&self) -> SocketAddr {
        self.edge().forwards[0].1
    }

    /// The edge's `/stats`.
    pub fn edge_stats(&self) -> serde_json::Value {
        admin::stats(self.edge().admin).expect("edge /stats")
    }

    /// The core's `/stats`.
    pub fn core_stats(&self) -> serde_json::Value {
        admin::stats(self.core().admin).expect("core /stats")
    }
}
