//! The strait pair inside the emulated WAN: core (site B) next to the origin, edge (site A) next
//! to the client, configs written the way `strait demo` writes them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use strait_wanem::Wan;

use crate::procs::{output, wait_listen, Proc, Side};

/// UDP port of the core's tunnel endpoint in site B.
pub const TUNNEL_PORT: u16 = 4433;
/// The edge's forward (TCP, loopback of site A).
pub const FORWARD_PORT: u16 = 9000;
/// Admin listeners, loopback of each site.
pub const EDGE_ADMIN: u16 = 9901;
const CORE_ADMIN: u16 = 9902;
/// How long a fresh pair may take to bring its tunnel up.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// Tunnel tuning that varies across the matrix.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// `[tunnel] congestion`.
    pub congestion: &'static str,
    /// `[tunnel] fec`, as TOML text (`"off"`, `"adaptive"`, `{ data = 32, repair = 4 }`).
    pub fec: String,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            congestion: "bbr",
            fec: "\"off\"".into(),
        }
    }
}

/// Creates certificates and the dedup key with `strait certs`.
pub fn make_certs(strait: &Path, dir: &Path) -> Result<PathBuf> {
    let out = dir.join("certs");
    let st = std::process::Command::new(strait)
        .arg("certs")
        .arg("--out")
        .arg(&out)
        .output()
        .with_context(|| format!("running {} certs", strait.display()))?;
    if !st.status.success() {
        bail!(
            "strait certs failed: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
    Ok(out)
}

fn common(certs: &Path, role: &str, admin: u16, store: &Path, t: &Tuning) -> String {
    let c = certs.display();
    format!(
        "[log]\nlevel = \"warn\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/{role}.pem\"\nkey = \"{c}/{role}.key\"\n\
         [tunnel]\nudp_buffer = \"8MiB\"\ncongestion = \"{cong}\"\nfec = {fec}\n\
         [dedup]\nkey_file = \"{c}/dedup.key\"\n\
         [store]\npath = \"{s}\"\nmax_bytes = \"4GiB\"\n",
        cong = t.congestion,
        fec = t.fec,
        s = store.display()
    )
}

/// Writes `core.toml` and `edge.toml` into `dir`.
pub fn write_configs(
    dir: &Path,
    certs: &Path,
    addr_b: Ipv4Addr,
    upstream_port: u16,
    t: &Tuning,
) -> Result<(PathBuf, PathBuf)> {
    let core = format!(
        "{}[core]\nlisten = \"{addr_b}:{TUNNEL_PORT}\"\n[[core.service]]\nname = \"origin\"\nupstream = \"127.0.0.1:{upstream_port}\"\n",
        common(certs, "core-localhost", CORE_ADMIN, &dir.join("core-store"), t)
    );
    let edge = format!(
        "{}[edge]\ncore = \"{addr_b}:{TUNNEL_PORT}\"\nserver_name = \"localhost\"\n[[edge.forward]]\nname = \"origin\"\nlisten = \"127.0.0.1:{FORWARD_PORT}\"\nservice = \"origin\"\n",
        common(certs, "edge-edge-a", EDGE_ADMIN, &dir.join("edge-store"), t)
    );
    let (cp, ep) = (dir.join("core.toml"), dir.join("edge.toml"));
    std::fs::write(&cp, core).with_context(|| format!("writing {}", cp.display()))?;
    std::fs::write(&ep, edge).with_context(|| format!("writing {}", ep.display()))?;
    Ok((cp, ep))
}

/// `strait check-config` on both files: `Err` with its report when a key (e.g. `fec`) is refused.
pub fn check_configs(strait: &Path, files: &[&Path]) -> Result<()> {
    let o = std::process::Command::new(strait)
        .arg("check-config")
        .args(files)
        .output()
        .context("running strait check-config")?;
    if !o.status.success() {
        bail!(
            "strait check-config refused the bench configs:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

/// A running core + edge with empty stores. Both are killed when dropped.
pub struct Pair {
    pub core: Proc,
    pub edge: Proc,
}

impl Pair {
    /// Starts the pair in `dir` (stores wiped first) and waits until the edge reports the tunnel up.
    pub fn start(
        wan: &Wan,
        strait: &Path,
        dir: &Path,
        certs: &Path,
        upstream_port: u16,
        t: &Tuning,
    ) -> Result<Pair> {
        for s in ["core-store", "edge-store"] {
            let p = dir.join(s);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("wiping {}", p.display()))?;
            }
        }
        std::fs::create_dir_all(dir)?;
        let (cp, ep) = write_configs(dir, certs, wan.addr_b(), upstream_port, t)?;
        let s = strait.display();
        let core = Proc::spawn(
            wan,
            Side::B,
            "strait core",
            &format!("exec {s} core --config {}", cp.display()),
            &dir.join("core.log"),
        )?;
        wait_listen(wan, Side::B, TUNNEL_PORT, true, READY_LIMIT)
            .context("strait core did not open its tunnel port (see core.log)")?;
        let edge = Proc::spawn(
            wan,
            Side::A,
            "strait edge",
            &format!("exec {s} edge --config {}", ep.display()),
            &dir.join("edge.log"),
        )?;
        let pair = Pair { core, edge };
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            let (ok, _) = output(
                wan,
                Side::A,
                &format!("curl -sf -o /dev/null http://127.0.0.1:{EDGE_ADMIN}/ready"),
            )?;
            if ok {
                break;
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(dir.join("edge.log")).unwrap_or_default();
                bail!("strait edge not ready after {READY_LIMIT:?}; edge.log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pair)
    }

    /// The edge's `/stats` JSON (for FEC counters and cross-checks); `Null` if unreadable.
    pub fn edge_stats(wan: &Wan) -> serde_json::Value {
        output(
            wan,
            Side::A,
            &format!("curl -s http://127.0.0.1:{EDGE_ADMIN}/stats"),
        )
        .ok()
        .and_then(|(_, s)| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null)
    }

    /// The core's `/stats` JSON; `Null` if unreadable.
    pub fn core_stats(wan: &Wan) -> serde_json::Value {
        output(
            wan,
            Side::B,
            &format!("curl -s http://127.0.0.1:{CORE_ADMIN}/stats"),
        )
        .ok()
        .and_then(|(_, s)| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null)
    }

    /// Stops both.
    pub fn stop(self) -> Result<()> {
        self.edge.terminate()?;
        self.core.terminate()?;
        Ok(())
    }
}

/// The last lines of the pair's logs in `dir`, for failure reports.
pub fn log_tails(dir: &Path) -> String {
    let mut out = Vec::new();
    for f in ["edge.log", "core.log"] {
        let text = strip_ansi(&std::fs::read_to_string(dir.join(f)).unwrap_or_default());
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
        out.push(format!(
            "{f}: {}",
            if tail.is_empty() { "(empty)" } else { &tail }
        ));
    }
    out.join("; ")
}

/// Removes terminal colour sequences (`ESC [ … m`) that tracing writes to the logs.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
