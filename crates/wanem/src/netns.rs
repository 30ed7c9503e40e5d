//! Network namespaces and TUN devices: creation with `ip`, entering with `setns(2)`, clean-up.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;

/// Prefix of every namespace this crate creates: `swe-<pid>-<n>-a` / `-b`.
pub const NETNS_PREFIX: &str = "swe-";
/// Where `ip netns add` bind-mounts named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";
/// Name of the TUN device inside each namespace (namespaces are private, so it never collides).
pub const TUN_NAME: &str = "wan0";
/// MTU of the TUN devices: TUN has no GSO/GRO, so this is also the size of every packet.
pub const TUN_MTU: u32 = 1500;
/// Kernel-side queue of the TUN device: packets the stack hands over while the forwarder is busy.
pub const TUN_TXQUEUELEN: u32 = 10_000;

static INSTANCE: AtomicU64 = AtomicU64::new(0);

/// A fresh instance number for this process (unique namespace names and subnets).
pub(crate) fn next_instance() -> u64 {
    INSTANCE.fetch_add(1, Ordering::Relaxed)
}

/// Why the emulator cannot run here, or `None` when it can: root, `/dev/net/tun`, `ip`.
/// Tests print `skipped: <reason>` and return when this is `Some`.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!(
            "not root (euid {euid}); the WAN emulator needs root"
        ));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun does not exist".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("`ip -V` failed with {}", o.status)),
        Err(e) => Some(format!("`ip` (iproute2) not runnable: {e}")),
    }
}

/// Runs `ip <args>`, turning a failure into an error carrying the command and its stderr.
pub(crate) fn ip<I, S>(args: I) -> Result<(), Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown = format!(
        "ip {}",
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = Command::new("ip")
        .args(&args)
        .output()
        .map_err(|source| Error::Spawn {
            cmd: shown.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            cmd: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Opens the namespace handle of `name`.
fn open_netns(name: &str) -> Result<File, Error> {
    File::open(Path::new(NETNS_DIR).join(name)).map_err(|source| Error::Netns {
        name: name.to_string(),
        source,
    })
}

/// Moves the calling thread into network namespace `name`. Only call on a thread that is
/// dedicated to that namespace (a fresh thread), never on a shared pool thread.
pub fn setns_current_thread(name: &str) -> Result<(), Error> {
    let f = open_netns(name)?;
    // SAFETY: f is a valid namespace fd for the duration of the call.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(Error::Netns {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside namespace `name` and returns its result. Sockets made in `f`
/// (and threads `f` spawns, e.g. a tokio runtime built inside it) belong to that namespace.
pub fn run_in_netns<F, R>(name: &str, f: F) -> Result<R, Error>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn_scoped(s, move || {
                setns_current_thread(name)?;
                Ok(f())
            })
            .map_err(|source| Error::Io {
                what: "spawning a namespace thread".into(),
                source,
            })?;
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Spawns a detached thread inside namespace `name` running `f` (servers that outlive the call).
pub fn spawn_in_netns<F, R>(
    name: &str,
    f: F,
) -> Result<std::thread::JoinHandle<Result<R, Error>>, Error>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let owned = name.to_string();
    std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            setns_current_thread(&owned)?;
            Ok(f())
        })
        .map_err(|source| Error::Io {
            what: "spawning a namespace thread".into(),
            source,
        })
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates TUN device [`TUN_NAME`] inside namespace `ns`, returning its non-blocking fd.
pub(crate) fn create_tun(ns: &str) -> Result<OwnedFd, Error> {
    run_in_netns(ns, || -> Result<OwnedFd, Error> {
        let path = c"/dev/net/tun";
        // SAFETY: path is a valid NUL-terminated string.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(Error::Io {
                what: "opening /dev/net/tun".into(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..TUN_NAME.len()].copy_from_slice(TUN_NAME.as_bytes());
        // SAFETY: req is a properly sized, initialised ifreq for TUNSETIFF.
        let rc = unsafe { libc::ioctl(owned.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if rc < 0 {
            return Err(Error::Io {
                what: format!("TUNSETIFF {TUN_NAME} in namespace {ns}"),
                source: io::Error::last_os_error(),
            });
        }
        Ok(owned)
    })?
}

/// Writes `value` to `/proc/sys/<key>` (key with slashes) as seen from namespace `ns`.
pub fn write_sysctl(ns: &str, key: &str, value: &str) -> Result<(), Error> {
    run_in_netns(ns, || {
        std::fs::write(Path::new("/proc/sys").join(key), value).map_err(|source| Error::Io {
            what: format!("writing {value:?} to /proc/sys/{key} in namespace {ns}"),
            source,
        })
    })?
}

/// Reads `/proc/sys/<key>` as seen from namespace `ns`.
pub fn read_sysctl(ns: &str, key: &str) -> Result<String, Error> {
    run_in_netns(ns, || {
        std::fs::read_to_string(Path::new("/proc/sys").join(key))
            .map(|s| s.trim().to_string())
            .map_err(|source| Error::Io {
                what: format!("reading /proc/sys/{key} in namespace {ns}"),
                source,
            })
    })?
}

/// Deletes namespace `name`, ignoring "already gone".
pub(crate) fn delete_netns(name: &str) -> Result<(), Error> {
    if !Path::new(NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    ip(["netns", "del", name])
}

/// The pid encoded in a name of ours (`swe-<pid>-<n>-<a|b>`), if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(NETNS_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Removes leftover `swe-*` namespaces whose creating process is dead (a killed test run).
/// Returns the names removed.
pub fn cleanup_stale() -> Result<Vec<String>, Error> {
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                what: format!("listing {NETNS_DIR}"),
                source,
            })
        }
    };
    let mut removed = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        // Another process may be cleaning the same leftover: only a namespace that is still
        // there after a failed delete is an error.
        if let Err(e) = delete_netns(&name) {
            if Path::new(NETNS_DIR).join(&name).exists() {
                return Err(e);
            }
        }
        removed.push(name);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_is_read_only_from_our_names() {
        assert_eq!(owner_pid("swe-1234-0-a"), Some(1234));
        assert_eq!(owner_pid("other-1234"), None);
        assert_eq!(owner_pid("swe-x-0-a"), None);
    }
}
