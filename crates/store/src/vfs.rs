//! The store's file interface. Every byte the store reads or writes, every
//! file it opens, truncates, syncs or removes goes through here, so a test can
//! put an in-memory directory ([`MemoryDir`]) or injected faults ([`Faults`])
//! underneath the same store logic.
//!
//! Dispatch is a two-way `enum` (disk or memory), not a trait object: the
//! store has exactly these two backends and the per-call cost is one branch.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use crate::Error;

const LOCK_NAME: &str = "LOCK";

/// A file operation of the store, as seen by a [`Faults`] hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoOp {
    /// Opening or creating a file (segment, peer table, lock file).
    Open,
    /// Reading bytes (record headers at open and eviction, records on `get`).
    Read,
    /// Writing bytes (record appends, the peer table).
    Write,
    /// `fsync` of a file or of the directory.
    Sync,
    /// Truncating a file (cutting a torn tail or a failed append).
    Truncate,
    /// Removing a file (an evicted segment) or renaming one into place.
    Remove,
    /// Listing the directory or reading a file's length.
    List,
}

impl IoOp {
    /// Every operation, for hooks that keep a counter per operation.
    pub const ALL: [IoOp; 7] = [
        IoOp::Open,
        IoOp::Read,
        IoOp::Write,
        IoOp::Sync,
        IoOp::Truncate,
        IoOp::Remove,
        IoOp::List,
    ];

    fn slot(self) -> usize {
        match self {
            IoOp::Open => 0,
            IoOp::Read => 1,
            IoOp::Write => 2,
            IoOp::Sync => 3,
            IoOp::Truncate => 4,
            IoOp::Remove => 5,
            IoOp::List => 6,
        }
    }
}

/// What a [`Faults`] hook decides for one operation.
#[derive(Debug)]
pub enum Injected {
    /// Run the real operation.
    Pass,
    /// Do not run it; return this error instead.
    Fail(io::Error),
    /// For a write: the first half of the bytes land, then this error (a torn
    /// write, as a full disk or a crash produces). Other operations treat it as
    /// [`Injected::Fail`].
    Torn(io::Error),
}

/// A fault-injection hook, called before every file operation of a store
/// opened with [`crate::StoreOptions::with_faults`]. It may also sleep to make
/// the disk slow. Test code only: production stores have no hook.
pub trait Faults: Send + Sync + fmt::Debug {
    /// Decides the fate of operation `op` on `path`.
    fn check(&self, op: IoOp, path: &Path) -> Injected;
}

/// The errors [`FaultSwitch`] injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// `EIO`: the device failed.
    Eio,
    /// `ENOSPC`: the file system is full.
    NoSpace,
}

impl FaultKind {
    fn error(self) -> io::Error {
        io::Error::from_raw_os_error(match self {
            FaultKind::Eio => libc::EIO,
            FaultKind::NoSpace => libc::ENOSPC,
        })
    }
}

#[derive(Debug, Default)]
struct SwitchState {
    fail: BTreeMap<usize, (FaultKind, bool)>,
    delay: Duration,
}

/// A ready-made [`Faults`] hook driven by a test: make chosen operations fail
/// with `EIO` or `ENOSPC` (optionally torn), add a delay to every operation,
/// clear it all again, and count what happened.
#[derive(Debug, Default)]
pub struct FaultSwitch {
    state: Mutex<SwitchState>,
    seen: [AtomicU64; 7],
    injected: AtomicU64,
}

impl FaultSwitch {
    /// A switch with no faults and no delay.
    pub fn new() -> Arc<FaultSwitch> {
        Arc::new(FaultSwitch::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SwitchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on every `op` fails with `kind`.
    pub fn fail(&self, op: IoOp, kind: FaultKind) {
        self.state().fail.insert(op.slot(), (kind, false));
    }

    /// From now on every write lands half its bytes, then fails with `kind`.
    pub fn fail_torn(&self, kind: FaultKind) {
        self.state().fail.insert(IoOp::Write.slot(), (kind, true));
    }

    /// From now on every operation first sleeps `delay` (a slow disk).
    pub fn delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// Stops failing and delaying.
    pub fn clear(&self) {
        *self.state() = SwitchState::default();
    }

    /// Operations of kind `op` seen so far (failed or not).
    pub fn seen(&self, op: IoOp) -> u64 {
        self.seen[op.slot()].load(Relaxed)
    }

    /// Operations failed so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Relaxed)
    }
}

impl Faults for FaultSwitch {
    fn check(&self, op: IoOp, _path: &Path) -> Injected {
        self.seen[op.slot()].fetch_add(1, Relaxed);
        let (delay, fail) = {
            let s = self.state();
            (s.delay, s.fail.get(&op.slot()).copied())
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        match fail {
            None => Injected::Pass,
            Some((kind, torn)) => {
                self.injected.fetch_add(1, Relaxed);
                if torn {
                    Injected::Torn(kind.error())
                } else {
                    Injected::Fail(kind.error())
                }
            }
        }
    }
}

/// An in-memory store directory. Clones share the same files, so a store
/// dropped and opened again on a clone replays what the first one wrote
/// (recovery tests without a disk); tests can read and damage the files.
#[derive(Clone, Debug, Default)]
pub struct MemoryDir(Arc<Mutex<MemState>>);

#[derive(Debug, Default)]
struct MemState {
    files: BTreeMap<String, Arc<MemFile>>,
    locked: bool,
}

#[derive(Debug, Default)]
struct MemFile(RwLock<Vec<u8>>);

impl MemFile {
    fn bytes(&self) -> std::sync::RwLockReadGuard<'_, Vec<u8>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }
    fn bytes_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<u8>> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MemoryDir {
    /// An empty directory.
    pub fn new() -> MemoryDir {
        MemoryDir::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Names of the files in the directory, sorted.
    pub fn file_names(&self) -> Vec<String> {
        self.state().files.keys().cloned().collect()
    }

    /// A copy of file `name`'s bytes.
    pub fn read(&self, name: &str) -> Option<Vec<u8>> {
        self.state().files.get(name).map(|f| f.bytes().clone())
    }

    /// Replaces file `name`'s bytes (creating it), as damage or a stray file would.
    pub fn write(&self, name: &str, bytes: &[u8]) {
        let f = self
            .state()
            .files
            .entry(name.to_owned())
            .or_default()
            .clone();
        *f.bytes_mut() = bytes.to_vec();
    }

    fn open(&self, name: &str, create: bool) -> io::Result<Arc<MemFile>> {
        let mut s = self.state();
        match s.files.get(name) {
            Some(f) => Ok(f.clone()),
            None if create => Ok(s.files.entry(name.to_owned()).or_default().clone()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }
}

enum FileImp {
    Disk(File),
    Mem(Arc<MemFile>),
}

/// One open segment file of either backend, with the store's fault hook.
pub(crate) struct SegFile {
    imp: FileImp,
    faults: Option<Arc<dyn Faults>>,
    path: PathBuf,
}

fn check(faults: &Option<Arc<dyn Faults>>, op: IoOp, path: &Path) -> io::Result<()> {
    match faults.as_ref().map(|f| f.check(op, path)) {
        None | Some(Injected::Pass) => Ok(()),
        Some(Injected::Fail(e) | Injected::Torn(e)) => Err(e),
    }
}

impl SegFile {
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        check(&self.faults, IoOp::Read, &self.path)?;
        match &self.imp {
            FileImp::Disk(f) => f.read_exact_at(buf, off),
            FileImp::Mem(m) => {
                let b = m.bytes();
                let src = usize::try_from(off)
                    .ok()
                    .and_then(|o| b.get(o..o.checked_add(buf.len())?))
                    .ok_or(io::ErrorKind::UnexpectedEof)?;
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }

    pub(crate) fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let torn = match self
            .faults
            .as_ref()
            .map(|f| f.check(IoOp::Write, &self.path))
        {
            None | Some(Injected::Pass) => None,
            Some(Injected::Fail(e)) => return Err(e),
            Some(Injected::Torn(e)) => Some(e),
        };
        let (buf, torn) = match torn {
            Some(e) => (&buf[..buf.len() / 2], Some(e)),
            None => (buf, None),
        };
        match &self.imp {
            FileImp::Disk(f) => f.write_all_at(buf, off)?,
            FileImp::Mem(m) => {
                let mut b = m.bytes_mut();
                let start = usize::try_from(off).map_err(io::Error::other)?;
                let end = start + buf.len();
                if b.len() < end {
                    b.resize(end, 0);
                }
                b[start..end].copy_from_slice(buf);
            }
        }
        torn.map_or(Ok(()), Err)
    }

    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        check(&self.faults, IoOp::Truncate, &self.path)?;
        match &self.imp {
            FileImp::Disk(f) => f.set_len(len),
            FileImp::Mem(m) => {
                let len = usize::try_from(len).map_err(io::Error::other)?;
                m.bytes_mut().resize(len, 0);
                Ok(())
            }
        }
    }

    pub(crate) fn sync_data(&self) -> io::Result<()> {
        check(&self.faults, IoOp::Sync, &self.path)?;
        match &self.imp {
            FileImp::Disk(f) => f.sync_data(),
            FileImp::Mem(_) => Ok(()),
        }
    }

    pub(crate) fn len(&self) -> io::Result<u64> {
        check(&self.faults, IoOp::List, &self.path)?;
        match &self.imp {
            FileImp::Disk(f) => Ok(f.metadata()?.len()),
            FileImp::Mem(m) => Ok(m.bytes().len() as u64),
        }
    }
}

/// Held for the life of a store: the `flock` of `LOCK` on disk, a flag in memory.
pub(crate) enum DirLock {
    Disk(#[allow(dead_code)] File),
    Mem(MemoryDir),
}

impl Drop for DirLock {
    fn drop(&mut self) {
        if let DirLock::Mem(m) = self {
            m.state().locked = false;
        }
    }
}

/// A small file read whole, bounded before it is read.
pub(crate) enum Small {
    Missing,
    TooLarge,
    Bytes(Vec<u8>),
}

enum Root {
    Disk,
    Mem(MemoryDir),
}

/// The store directory of either backend, with the store's fault hook.
pub(crate) struct Vfs {
    /// The directory on disk; for a memory store only a label in errors.
    dir: PathBuf,
    root: Root,
    faults: Option<Arc<dyn Faults>>,
}

impl Vfs {
    pub(crate) fn disk(dir: PathBuf, faults: Option<Arc<dyn Faults>>) -> Vfs {
        Vfs {
            dir,
            root: Root::Disk,
            faults,
        }
    }

    pub(crate) fn memory(label: PathBuf, mem: MemoryDir, faults: Option<Arc<dyn Faults>>) -> Vfs {
        Vfs {
            dir: label,
            root: Root::Mem(mem),
            faults,
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn check(&self, op: IoOp, path: &Path) -> Result<(), Error> {
        check(&self.faults, op, path).map_err(|e| Error::io(path, e))
    }

    /// Creates the directory if missing and takes its lock.
    pub(crate) fn create_and_lock(&self) -> Result<DirLock, Error> {
        let path = self.path(LOCK_NAME);
        self.check(IoOp::Open, &path)?;
        let mem = match &self.root {
            Root::Mem(m) => m,
            Root::Disk => {
                fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
                return lock_disk(&self.dir, &path).map(DirLock::Disk);
            }
        };
        let mut s = mem.state();
        if s.locked {
            return Err(Error::Locked {
                path: self.dir.clone(),
            });
        }
        s.locked = true;
        Ok(DirLock::Mem(mem.clone()))
    }

    /// Numbers of the segment files, sorted, each parsed by `parse`.
    pub(crate) fn list(&self, parse: impl Fn(&str) -> Option<u32>) -> Result<Vec<u32>, Error> {
        self.check(IoOp::List, &self.dir)?;
        let mut ids = Vec::new();
        match &self.root {
            Root::Mem(m) => ids.extend(m.state().files.keys().filter_map(|n| parse(n))),
            Root::Disk => {
                let listing = fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
                for ent in listing {
                    let ent = ent.map_err(|e| Error::io(&self.dir, e))?;
                    if let Some(n) = ent.file_name().to_str().and_then(&parse) {
                        // A directory (or other non-file) with a segment's name
                        // is foreign: skip it rather than fail on it.
                        if ent.file_type().map(|t| t.is_file()).unwrap_or(false) {
                            ids.push(n);
                        }
                    }
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Opens file `name` read-write, creating it when `create`.
    pub(crate) fn open(&self, name: &str, create: bool) -> Result<SegFile, Error> {
        let path = self.path(name);
        self.check(IoOp::Open, &path)?;
        let imp = match &self.root {
            Root::Mem(m) => FileImp::Mem(m.open(name, create).map_err(|e| Error::io(&path, e))?),
            Root::Disk => FileImp::Disk(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(create)
                    .truncate(false)
                    .open(&path)
                    .map_err(|e| Error::io(&path, e))?,
            ),
        };
        Ok(SegFile {
            imp,
            faults: self.faults.clone(),
            path,
        })
    }

    pub(crate) fn remove(&self, name: &str) -> Result<(), Error> {
        let path = self.path(name);
        self.check(IoOp::Remove, &path)?;
        match &self.root {
            Root::Mem(m) => {
                m.state().files.remove(name);
                Ok(())
            }
            Root::Disk => fs::remove_file(&path).map_err(|e| Error::io(&path, e)),
        }
    }

    /// Makes new and removed names durable.
    pub(crate) fn sync_dir(&self) -> Result<(), Error> {
        self.check(IoOp::Sync, &self.dir)?;
        match &self.root {
            Root::Mem(_) => Ok(()),
            Root::Disk => File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(&self.dir, e)),
        }
    }

    /// Reads file `name` whole if it is at most `max` bytes.
    pub(crate) fn read_small(&self, name: &str, max: usize) -> Result<Small, Error> {
        let path = self.path(name);
        self.check(IoOp::Read, &path)?;
        let bytes = match &self.root {
            Root::Mem(m) => match m.read(name) {
                None => return Ok(Small::Missing),
                Some(b) => b,
            },
            Root::Disk => {
                let meta = match fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Small::Missing),
                    Err(e) => return Err(Error::io(&path, e)),
                };
                // Checked before reading so a huge stray file cannot make us allocate it.
                if meta.len() > max as u64 {
                    return Ok(Small::TooLarge);
                }
                fs::read(&path).map_err(|e| Error::io(&path, e))?
            }
        };
        Ok(if bytes.len() > max {
            Small::TooLarge
        } else {
            Small::Bytes(bytes)
        })
    }

    /// Atomically replaces file `name` with `bytes`: a crash leaves the old or
    /// the new content, never a torn one (temp file, fsync, rename, fsync dir).
    pub(crate) fn replace(&self, name: &str, tmp_name: &str, bytes: &[u8]) -> Result<(), Error> {
        let tmp = self.path(tmp_name);
        let path = self.path(name);
        self.check(IoOp::Open, &tmp)?;
        self.check(IoOp::Write, &tmp)?;
        self.check(IoOp::Sync, &tmp)?;
        self.check(IoOp::Remove, &path)?;
        match &self.root {
            Root::Mem(m) => {
                m.write(name, bytes);
                Ok(())
            }
            Root::Disk => {
                let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
                f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
                f.sync_all().map_err(|e| Error::io(&tmp, e))?;
                drop(f);
                fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
                self.sync_dir()
            }
        }
    }
}

fn lock_disk(dir: &Path, path: &Path) -> Result<File, Error> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    // SAFETY: flock on a file descriptor we own and keep open; no memory is shared.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(if err.kind() == io::ErrorKind::WouldBlock {
            Error::Locked {
                path: dir.to_path_buf(),
            }
        } else {
            Error::io(path, err)
        });
    }
    Ok(f)
}

/// Whether a write failed because the file system is full (or over quota).
pub(crate) fn is_no_space(err: &Error) -> bool {
    matches!(err, Error::Io { source, .. }
        if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
}
