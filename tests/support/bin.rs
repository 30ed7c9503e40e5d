//! Finding (and building) the `strait` binary, and serializing heavy tests.
//!
//! `env!("CARGO_BIN_EXE_strait")` only exists inside the `strait` package, and `cargo test
//! --workspace` does not build that package's executable (only its unit-test harness). So the
//! first test that needs it runs `cargo build --release -p strait` once per test process, into
//! the same target directory the tests were built in: a no-op when it is fresh, and never a
//! stale binary. `STRAIT_BIN` overrides all of this.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Path of a release build of `strait`, built on first use.
pub fn strait_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match locate() {
        Ok(p) => p,
        Err(e) => panic!("cannot provide the strait binary: {e:#}"),
    })
}

fn target_dir() -> anyhow::Result<PathBuf> {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(t));
    }
    // <target>/<profile>/deps/<test binary>
    let exe = std::env::current_exe()?;
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("cannot derive the target dir from {}", exe.display()))
}

fn locate() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("STRAIT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow::anyhow!("tests/ has no parent"))?;
    let target = target_dir()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "strait", "--bin", "strait"])
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .map_err(|e| anyhow::anyhow!("running {cargo} build: {e}"))?;
    anyhow::ensure!(
        status.success(),
        "cargo build --release -p strait failed: {status}"
    );
    let bin = target.join("release").join("strait");
    anyhow::ensure!(bin.is_file(), "{} missing after the build", bin.display());
    Ok(bin)
}

/// An exclusive lock held by tests that move a lot of data or measure time, so they do not run
/// at the same time as each other (nextest runs tests in parallel processes, `cargo test` in
/// parallel threads; a 2-core machine cannot time two 1 GiB transfers at once).
pub struct HeavyLock(#[allow(dead_code)] File);

/// Takes the heavy-test lock exclusively (blocking): no other e2e test runs meanwhile.
pub fn heavy() -> HeavyLock {
    lock(libc::LOCK_EX)
}

/// Takes the lock shared: light tests run together, but never during a heavy one (whose
/// timings they would disturb).
pub fn light() -> HeavyLock {
    lock(libc::LOCK_SH)
}

fn lock(mode: i32) -> HeavyLock {
    use std::os::fd::AsRawFd;
    let path = std::env::temp_dir().join("strait-e2e-heavy.lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    // SAFETY: flock(2) on a file descriptor we own; blocks until the lock is ours.
    let rc = unsafe { libc::flock(f.as_raw_fd(), mode) };
    assert_eq!(rc, 0, "flock {}", path.display());
    HeavyLock(f)
}
