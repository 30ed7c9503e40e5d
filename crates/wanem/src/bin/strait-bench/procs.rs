//! Processes of one site: spawned inside a namespace, metered from `/proc` while they run and
//! with `wait4` when they end, always killed when their guard drops (also on error or panic).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use strait_wanem::Wan;

/// Which site a process runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Site A: client, edge.
    A,
    /// Site B: origin, core.
    B,
}

/// CPU and memory a process (with its reaped children) used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User + system seconds.
    pub cpu: f64,
    /// Peak resident set, KiB.
    pub peak_kib: u64,
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime+stime+cutime+cstime of `pid` in seconds, or 0 when it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may hold spaces: fields start after the last ')'.
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = (11..15)
        .filter_map(|i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    ticks as f64 / clk_tck()
}

/// VmHWM of `pid` in KiB (0 when gone).
pub fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A process running `sh -c <script>` inside one site. Killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pid: u32,
    reaped: bool,
}

/// Builds `ip netns exec <ns> sh -c <script>`, dying with the harness (PR_SET_PDEATHSIG).
fn command(wan: &Wan, side: Side, script: &str, log: &Path) -> Result<Command> {
    let mut c = match side {
        Side::A => wan.command_in_a("sh"),
        Side::B => wan.command_in_b("sh"),
    };
    c.arg("-c").arg(script);
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone().context("log file")?;
    c.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Ok(c)
}

impl Proc {
    /// Starts `script` in `side`; output goes to `log`.
    pub fn spawn(wan: &Wan, side: Side, name: &str, script: &str, log: &Path) -> Result<Proc> {
        let child = command(wan, side, script, log)?
            .spawn()
            .with_context(|| format!("starting {name}: {script}"))?;
        Ok(Proc {
            name: name.to_string(),
            pid: child.id(),
            reaped: false,
        })
    }

    /// CPU seconds so far, children that were reaped included.
    pub fn cpu(&self) -> f64 {
        cpu_seconds(self.pid)
    }

    /// Peak RSS so far.
    pub fn peak_kib(&self) -> u64 {
        peak_kib(self.pid)
    }

    fn wait4(&mut self, flags: i32) -> Result<Option<(i32, Usage)>> {
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid out-parameter.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our child; status and ru are valid out-pointers.
        let r = unsafe { libc::wait4(self.pid as libc::pid_t, &mut status, flags, &mut ru) };
        if r == 0 {
            return Ok(None);
        }
        if r < 0 {
            bail!(
                "wait4({}) for {}: {}",
                self.pid,
                self.name,
                std::io::Error::last_os_error()
            );
        }
        self.reaped = true;
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let usage = Usage {
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            peak_kib: ru.ru_maxrss.max(0) as u64,
        };
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        Ok(Some((code, usage)))
    }

    /// Waits up to `limit` for the process to exit by itself; on timeout it is killed and
    /// `timed_out` is true. Returns (exit code, usage, timed_out).
    pub fn wait(mut self, limit: Duration) -> Result<(i32, Usage, bool)> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((code, u)) = self.wait4(libc::WNOHANG)? {
                return Ok((code, u, false));
            }
            if Instant::now() >= deadline {
                let (code, u) = self.terminate_inner()?;
                return Ok((code, u, true));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn terminate_inner(&mut self) -> Result<(i32, Usage)> {
        // SAFETY: kill on a pid we spawned and have not reaped.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(r) = self.wait4(libc::WNOHANG)? {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                // SAFETY: as above.
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
                if let Some(r) = self.wait4(0)? {
                    return Ok(r);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM (SIGKILL after 5 s), reap, and return the lifetime usage.
    pub fn terminate(mut self) -> Result<Usage> {
        Ok(self.terminate_inner()?.1)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: kill/waitpid on our own unreaped child.
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
                libc::waitpid(self.pid as libc::pid_t, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Runs `script` in `side` to completion (or `limit`), returning (code, usage, seconds, timed_out).
pub fn run(
    wan: &Wan,
    side: Side,
    name: &str,
    script: &str,
    log: &Path,
    limit: Duration,
) -> Result<(i32, Usage, f64, bool)> {
    let t0 = Instant::now();
    let p = Proc::spawn(wan, side, name, script, log)?;
    let (code, u, to) = p.wait(limit)?;
    Ok((code, u, t0.elapsed().as_secs_f64(), to))
}

/// Output of a short command in a site (readiness probes, admin reads).
pub fn output(wan: &Wan, side: Side, script: &str) -> Result<(bool, String)> {
    let mut c = match side {
        Side::A => wan.command_in_a("sh"),
        Side::B => wan.command_in_b("sh"),
    };
    let o = c
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {script}"))?;
    Ok((
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    ))
}

/// Waits until something listens on `port` (TCP, or UDP when `udp`) in `side`. `ss` only looks,
/// so a one-connection server (nc -l) is not consumed by the probe.
pub fn wait_listen(wan: &Wan, side: Side, port: u16, udp: bool, limit: Duration) -> Result<()> {
    let flag = if udp { "-Hlun" } else { "-Hltn" };
    let script = format!("ss {flag} 'sport = :{port}'");
    let deadline = Instant::now() + limit;
    loop {
        let (_, out) = output(wan, side, &script)?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("nothing listens on port {port} in site {side:?} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
