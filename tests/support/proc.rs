//! A child process whose stderr/stdout lines are captured, killed (SIGKILL) when dropped.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most log lines kept per process (older ones are dropped).
pub const MAX_LOG_LINES: usize = 100_000;

/// A running child process. Dropping it kills it; when the test is panicking, the tail of its
/// log is printed so a failure explains itself.
pub struct Proc {
    name: String,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
}

/// Removes ANSI colour sequences (in case the subscriber colours its output).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn pump(r: impl Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            let mut v = lines.lock().unwrap_or_else(|e| e.into_inner());
            if v.len() >= MAX_LOG_LINES {
                v.remove(0);
            }
            v.push(strip_ansi(&l));
        }
    });
}

impl Proc {
    /// Spawns `cmd` with piped output.
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("spawning {name} ({cmd:?}): {e}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(o) = child.stdout.take() {
            pump(o, lines.clone());
        }
        if let Some(e) = child.stderr.take() {
            pump(e, lines.clone());
        }
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            lines,
        })
    }

    /// Process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    /// All captured lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The first captured line containing every one of `needles`, if any.
    pub fn find_log(&self, needles: &[&str]) -> Option<String> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .cloned()
    }

    /// Waits for a line containing every one of `needles`; fails early if the process exits.
    pub fn wait_log(&mut self, needles: &[&str], timeout: Duration) -> anyhow::Result<String> {
        let t0 = Instant::now();
        loop {
            if let Some(l) = self.find_log(needles) {
                return Ok(l);
            }
            if let Some(st) = self.try_wait()? {
                // Give the reader threads a moment to drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                if let Some(l) = self.find_log(needles) {
                    return Ok(l);
                }
                anyhow::bail!(
                    "{} exited ({st}) before logging {needles:?}; log:\n{}",
                    self.name,
                    self.logs().join("\n")
                );
            }
            if t0.elapsed() > timeout {
                anyhow::bail!(
                    "{} did not log {needles:?} within {timeout:?}; log:\n{}",
                    self.name,
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Exit status if it has exited.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => anyhow::bail!("{} was already reaped", self.name),
        }
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        let pid = self.pid();
        if pid > 0 {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// Waits for exit up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            if t0.elapsed() > timeout {
                anyhow::bail!(
                    "{} still running {timeout:?} after it was asked to stop; log tail:\n{}",
                    self.name,
                    self.tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and wait (graceful stop); the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The last `n` log lines joined.
    pub fn tail(&self, n: usize) -> String {
        let l = self.logs();
        l[l.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- last log lines of {} ({} captured) -----\n{}",
                self.name,
                self.logs().len(),
                self.tail(60)
            );
        }
    }
}
