//! The `Store`: index, segment files, eviction, recovery.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use bytes::Bytes;

use crate::peers::{self, MAX_PEERS, MAX_PEER_NAME_LEN};
use crate::record::{self, RecordHeader, RecordKind, HEADER_LEN, MAX_CHUNK_BYTES};
use crate::{
    Error, MemoryDir, PeerSlot, RawId, StoreConfig, StoreOptions, StoreStats, MAX_SEGMENTS,
    MAX_SEGMENT_BYTES, MAX_STORE_BYTES, MIN_SEGMENT_BYTES, MIN_STORE_BYTES, SEGMENT_TARGET_COUNT,
};

use crate::files::{finish_sync, parse_seg_name, scan_segment, seg_name};
use crate::index::{id_key, Entry, IdKey, Index};
use crate::vfs::{is_no_space, DirLock, SegFile, Vfs};

enum Verdict {
    Good,
    OtherId,
    Corrupt,
}

struct Segment {
    file: Arc<SegFile>,
    len: u64,
}

struct Inner {
    index: Index,
    segments: BTreeMap<u32, Segment>,
    head: u32,
    total_bytes: u64,
    live_bytes: u64,
    /// Segments numbered `<= cold_upto` are in the older half of the budget;
    /// a hit there copies the record forward. 0 = none.
    cold_upto: u32,
    peers: Vec<String>,
    /// fsync of the previous head, run off the lock (see `roll`).
    pending_sync: Option<JoinHandle<Result<(), Error>>>,
    /// The head's file may hold bytes past `len` that could not be cut (a
    /// failed append whose truncate failed too): roll before the next append
    /// so nothing is ever written after them.
    head_dirty: bool,
    /// A full disk was met and freeing a segment did not help: later writes
    /// fail without evicting more until one succeeds (the episode's end), so a
    /// disk that stays full cannot empty the store one segment per put.
    disk_full: bool,
}

/// The chunk store. `Send + Sync`; share it with an `Arc`.
pub struct Store {
    vfs: Vfs,
    key: [u8; 32],
    max_bytes: u64,
    segment_bytes: u64,
    max_chunk: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    segments_evicted: AtomicU64,
    corrupt_dropped: AtomicU64,
    copied_forward: AtomicU64,
    read_errors: AtomicU64,
    write_errors: AtomicU64,
    no_space_evictions: AtomicU64,
    damaged_segments: u64,
    /// Held for its `flock`; released when the store is dropped.
    _lock: DirLock,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.vfs.dir())
            .field("max_bytes", &self.max_bytes)
            .field("segment_bytes", &self.segment_bytes)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `cfg.path` and rebuilds the
    /// index from the segment files.
    pub fn open(cfg: StoreConfig) -> Result<Store, Error> {
        Store::open_with(cfg, StoreOptions::disk())
    }

    /// A fresh store in memory: the same rules as on disk, nothing durable.
    /// For fuzzing and deterministic engine tests.
    pub fn open_in_memory(max_bytes: u64, key: [u8; 32]) -> Result<Store, Error> {
        Store::open_with(
            StoreConfig::new("<memory>", max_bytes, key),
            StoreOptions::memory(MemoryDir::new()),
        )
    }

    /// Opens the store as `opts` say (on disk or in memory, with or without a
    /// fault hook) and rebuilds the index from the segment files.
    pub fn open_with(cfg: StoreConfig, opts: StoreOptions) -> Result<Store, Error> {
        if !(MIN_STORE_BYTES..=MAX_STORE_BYTES).contains(&cfg.max_bytes) {
            return Err(Error::MaxBytes {
                value: cfg.max_bytes,
                min: MIN_STORE_BYTES,
                max: MAX_STORE_BYTES,
            });
        }
        let lower = MIN_SEGMENT_BYTES.max(cfg.max_bytes.div_ceil(SEGMENT_TARGET_COUNT));
        let upper = MAX_SEGMENT_BYTES.min(cfg.max_bytes / 4);
        let segment_bytes = cfg.segment_bytes.clamp(lower, upper.max(lower));
        let max_chunk = MAX_CHUNK_BYTES.min(segment_bytes as usize - HEADER_LEN);

        let vfs = match opts.memory {
            Some(mem) => Vfs::memory(cfg.path, mem, opts.faults),
            None => Vfs::disk(cfg.path, opts.faults),
        };
        let lock = vfs.create_and_lock()?;
        let mut seg_ids = vfs.list(parse_seg_name)?;

        // Peer bits in the segments are only meaningful under the table that
        // assigned them; without it, drop the segments (see crate doc).
        let peers = match peers::load(&vfs)? {
            Some(Ok(names)) => names,
            other => {
                if !seg_ids.is_empty() {
                    tracing::warn!(
                        dir = %vfs.dir().display(),
                        problem = ?other.and_then(Result::err).map(|e| e.to_string()),
                        segments = seg_ids.len(),
                        "chunk store peer table missing or invalid; resetting the store"
                    );
                    for n in seg_ids.drain(..) {
                        vfs.remove(&seg_name(n))?;
                    }
                }
                peers::store(&vfs, &[])?;
                Vec::new()
            }
        };

        let mut inner = Inner {
            index: Index::default(),
            segments: BTreeMap::new(),
            head: 0,
            total_bytes: 0,
            live_bytes: 0,
            cold_upto: 0,
            peers,
            pending_sync: None,
            head_dirty: false,
            disk_full: false,
        };
        let mut damaged_segments = 0;
        let last = seg_ids.last().copied();
        for &n in &seg_ids {
            let path = vfs.path(&seg_name(n));
            let file = vfs.open(&seg_name(n), false)?;
            let file_len = file.len().map_err(|e| Error::io(&path, e))?;
            let idx = &mut inner.index;
            let end = scan_segment(&file, file_len, |h, off| match h.kind {
                RecordKind::Chunk => {
                    idx.insert(
                        &h.id,
                        Entry {
                            peers: h.peers,
                            seg: n,
                            off,
                            len: h.len,
                        },
                    );
                }
                RecordKind::Peers => {
                    if let Some(e) = idx.get_mut(&h.id) {
                        e.peers = h.peers;
                    }
                }
            })
            .map_err(|e| Error::io(&path, e))?;
            let mut len = file_len;
            if end < file_len {
                damaged_segments += 1;
                if Some(n) == last {
                    // Torn append: cut it so new records follow valid ones.
                    tracing::warn!(segment = n, valid = end, file_len, "truncating torn tail");
                    match file.set_len(end) {
                        Ok(()) => len = end,
                        // Left as dead space; the next append starts a new head.
                        Err(err) => {
                            tracing::warn!(segment = n, %err, "cannot truncate torn tail");
                            inner.head_dirty = true;
                        }
                    }
                } else {
                    tracing::warn!(segment = n, valid = end, file_len, "damaged segment tail");
                }
            }
            inner.total_bytes += len;
            inner.segments.insert(
                n,
                Segment {
                    file: Arc::new(file),
                    len,
                },
            );
        }
        // Entries whose latest record sat past a damaged point were never
        // indexed; the survivors' live bytes are summed once here.
        inner.live_bytes = inner.index.values().map(Entry::record_len).sum();

        let store = Store {
            vfs,
            key: cfg.key,
            max_bytes: cfg.max_bytes,
            segment_bytes,
            max_chunk,
            inner: Mutex::new(inner),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            segments_evicted: AtomicU64::new(0),
            corrupt_dropped: AtomicU64::new(0),
            copied_forward: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            no_space_evictions: AtomicU64::new(0),
            damaged_segments,
            _lock: lock,
        };
        {
            let mut inner = store.lock();
            match last {
                Some(n) => inner.head = n,
                None => store.create_segment(&mut inner, 1)?,
            }
            // The budget or segment bound may have shrunk since last run.
            store.make_room(&mut inner, 0)?;
            store.recompute_cold(&mut inner);
        }
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No method leaves Inner half-updated across a panic point, so a
        // poisoned lock still guards consistent state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn seg_path(&self, n: u32) -> PathBuf {
        self.vfs.path(&seg_name(n))
    }

    /// The slot for `peer_name`, assigning and persisting a new one on first use.
    pub fn peer_slot(&self, peer_name: &str) -> Result<PeerSlot, Error> {
        if peer_name.is_empty() || peer_name.len() > MAX_PEER_NAME_LEN {
            return Err(Error::PeerName {
                len: peer_name.len(),
                max: MAX_PEER_NAME_LEN,
            });
        }
        let mut inner = self.lock();
        if let Some(i) = inner.peers.iter().position(|n| n == peer_name) {
            return Ok(PeerSlot(i as u8));
        }
        if inner.peers.len() >= MAX_PEERS {
            return Err(Error::TooManyPeers {
                name: peer_name.to_owned(),
                max: MAX_PEERS,
            });
        }
        let mut names = inner.peers.clone();
        names.push(peer_name.to_owned());
        // Durable before any record can carry the new bit.
        peers::store(&self.vfs, &names)?;
        inner.peers = names;
        Ok(PeerSlot((inner.peers.len() - 1) as u8))
    }

    /// Whether `peer` is known to have chunk `id`. Index only, no I/O.
    pub fn peer_has(&self, id: &RawId, peer: PeerSlot) -> bool {
        self.lock()
            .index
            .get(id)
            .is_some_and(|e| e.peers & peer.bit() != 0)
    }

    /// The chunk's bytes, if present (and, with `peer`, in that peer's set) and
    /// they hash to `id`. A record that fails that check is dropped.
    pub fn get(&self, id: &RawId, peer: Option<PeerSlot>) -> Result<Option<Bytes>, Error> {
        let found = {
            let inner = self.lock();
            inner
                .index
                .get(id)
                .filter(|e| match peer {
                    None => true,
                    Some(p) => e.peers & p.bit() != 0,
                })
                .and_then(|e| Some((*e, inner.segments.get(&{ e.seg })?.file.clone())))
        };
        let Some((e, file)) = found else {
            self.misses.fetch_add(1, Relaxed);
            return Ok(None);
        };
        // The read and the hash run without the lock. Segments are append-only
        // and the Arc keeps an evicted segment's file readable, so the bytes at
        // (seg, off) cannot change under us.
        let mut buf = vec![0u8; e.record_len() as usize];
        match file.read_exact_at(&mut buf, u64::from(e.off)) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                self.drop_corrupt(id, e);
                return Ok(None);
            }
            Err(err) => {
                // A failed read is a miss, never bytes; the entry stays (the
                // error may be transient) and is dropped if it reads back wrong.
                tracing::warn!(segment = { e.seg }, offset = { e.off }, %err, "chunk read failed");
                self.read_errors.fetch_add(1, Relaxed);
                self.misses.fetch_add(1, Relaxed);
                return Ok(None);
            }
        }
        match self.verify(id, &e, &buf) {
            Verdict::Good => {}
            Verdict::OtherId => {
                self.misses.fetch_add(1, Relaxed);
                return Ok(None);
            }
            Verdict::Corrupt => {
                self.drop_corrupt(id, e);
                return Ok(None);
            }
        }
        self.hits.fetch_add(1, Relaxed);
        let data = Bytes::from(buf).slice(HEADER_LEN..);
        self.maybe_copy_forward(id, e, &data);
        Ok(Some(data))
    }

    fn verify(&self, id: &RawId, e: &Entry, buf: &[u8]) -> Verdict {
        let Ok((h, used)) = record::decode_record(buf) else {
            return Verdict::Corrupt;
        };
        if used != buf.len() || h.kind != RecordKind::Chunk || h.len != e.len {
            return Verdict::Corrupt;
        }
        if &h.id != id {
            // A checksummed header naming another id with our 128-bit prefix
            // is a genuine index-key collision, not damage: the entry is fine.
            return if id_key(&h.id) == id_key(id) {
                Verdict::OtherId
            } else {
                Verdict::Corrupt
            };
        }
        if blake3::keyed_hash(&self.key, &buf[HEADER_LEN..]) == blake3::Hash::from(*id) {
            Verdict::Good
        } else {
            Verdict::Corrupt
        }
    }

    fn drop_corrupt(&self, id: &RawId, seen: Entry) {
        let mut inner = self.lock();
        // Only drop the record we read; a concurrent copy-forward may have
        // already replaced it with a good one.
        if let Some(cur) = inner.index.get(id) {
            if { cur.seg } == { seen.seg } && { cur.off } == { seen.off } {
                inner.index.remove(id);
                inner.live_bytes -= seen.record_len();
                self.corrupt_dropped.fetch_add(1, Relaxed);
                tracing::warn!(
                    segment = { seen.seg },
                    offset = { seen.off },
                    "dropped corrupt chunk record"
                );
            }
        }
        self.misses.fetch_add(1, Relaxed);
    }

    fn maybe_copy_forward(&self, id: &RawId, seen: Entry, data: &[u8]) {
        let mut inner = self.lock();
        if seen.seg > inner.cold_upto || seen.seg == inner.head {
            return;
        }
        let Some(cur) = inner.index.get(id).copied() else {
            return;
        };
        if { cur.seg } != { seen.seg } || { cur.off } != { seen.off } {
            return;
        }
        // Best effort: a failed copy leaves the old record in place.
        match self.append_chunk(&mut inner, id, data, cur.peers) {
            Ok(()) => {
                self.copied_forward.fetch_add(1, Relaxed);
            }
            Err(err) => tracing::warn!(%err, "copy-forward of a hot chunk failed"),
        }
    }

    /// Stores chunk `id` (already verified by the caller) as held by `peer`, or
    /// adds `peer` to an existing entry's set.
    pub fn put(&self, id: &RawId, data: &[u8], peer: PeerSlot) -> Result<(), Error> {
        if data.len() > self.max_chunk {
            return Err(Error::ChunkTooLarge {
                len: data.len(),
                max: self.max_chunk,
            });
        }
        let mut inner = self.lock();
        if let Some(e) = inner.index.get(id).copied() {
            if e.peers & peer.bit() == 0 {
                self.append_peers(&mut inner, id, e.peers | peer.bit())?;
            }
            return Ok(());
        }
        self.append_chunk(&mut inner, id, data, peer.bit())
    }

    /// Adds `peer` to an existing entry's set; `false` if `id` is absent.
    pub fn mark_peer(&self, id: &RawId, peer: PeerSlot) -> Result<bool, Error> {
        let mut inner = self.lock();
        let Some(e) = inner.index.get(id).copied() else {
            return Ok(false);
        };
        if e.peers & peer.bit() == 0 {
            self.append_peers(&mut inner, id, e.peers | peer.bit())?;
        }
        Ok(true)
    }

    /// Clears `peer` from the entry's set (the peer turned out not to have it).
    /// Takes effect in memory even if persisting fails: the only cost of the
    /// bit coming back after a restart is one more miss.
    pub fn forget_peer(&self, id: &RawId, peer: PeerSlot) {
        let mut inner = self.lock();
        let Some(e) = inner.index.get(id).copied() else {
            return;
        };
        if e.peers & peer.bit() == 0 {
            return;
        }
        let peers = e.peers & !peer.bit();
        if let Err(err) = self.append_peers(&mut inner, id, peers) {
            tracing::warn!(%err, "persisting forget_peer failed");
            if let Some(cur) = inner.index.get_mut(id) {
                cur.peers = peers;
            }
        }
    }

    /// Counters and gauges.
    pub fn stats(&self) -> StoreStats {
        let inner = self.lock();
        let cap = inner.index.capacity();
        // hashbrown: buckets are a power of two holding at most 7/8 items.
        let buckets = match cap {
            0 => 0,
            1..=7 => (cap + 1).next_power_of_two(),
            _ => (cap * 8 / 7).next_power_of_two(),
        };
        let bucket_bytes = std::mem::size_of::<(IdKey, Entry)>() + 1;
        StoreStats {
            bytes: inner.total_bytes,
            live_bytes: inner.live_bytes,
            entries: inner.index.len() as u64,
            segments: inner.segments.len() as u64,
            max_bytes: self.max_bytes,
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            segments_evicted: self.segments_evicted.load(Relaxed),
            corrupt_dropped: self.corrupt_dropped.load(Relaxed),
            copied_forward: self.copied_forward.load(Relaxed),
            index_bytes: (buckets * bucket_bytes) as u64,
            read_errors: self.read_errors.load(Relaxed),
            write_errors: self.write_errors.load(Relaxed),
            no_space_evictions: self.no_space_evictions.load(Relaxed),
            damaged_segments: self.damaged_segments,
        }
    }

    /// Replaces the hints file (see `hints`) with `body`, atomically.
    pub fn save_hints(&self, body: &[u8]) -> Result<(), Error> {
        self.vfs.replace(
            crate::hints::FILE_NAME,
            crate::hints::TMP_NAME,
            &crate::hints::encode(body),
        )
    }

    /// The body of the hints file, `None` when there is none; a damaged file or one whose body
    /// is over `max` bytes is an error (and nothing is loaded).
    pub fn load_hints(&self, max: usize) -> Result<Option<Vec<u8>>, Error> {
        match self
            .vfs
            .read_small(crate::hints::FILE_NAME, max.saturating_add(12))?
        {
            crate::vfs::Small::Missing => Ok(None),
            crate::vfs::Small::TooLarge => Err(Error::HintsInvalid {
                reason: "larger than the index it would fill",
            }),
            crate::vfs::Small::Bytes(b) => crate::hints::decode(b).map(Some),
        }
    }

    /// Fsyncs the head segment and waits for the previous head's fsync.
    pub fn flush(&self) -> Result<(), Error> {
        let mut inner = self.lock();
        if let Some(prev) = inner.pending_sync.take() {
            prev.join().unwrap_or(Ok(()))?;
        }
        let head = inner.head;
        if let Some(s) = inner.segments.get(&head) {
            s.file
                .sync_data()
                .map_err(|e| Error::io(&self.seg_path(head), e))?;
        }
        Ok(())
    }

    // ---- writing ----

    fn append_chunk(
        &self,
        inner: &mut Inner,
        id: &RawId,
        data: &[u8],
        peers: u64,
    ) -> Result<(), Error> {
        let h = RecordHeader {
            kind: RecordKind::Chunk,
            len: data.len() as u32,
            id: *id,
            peers,
        };
        let (seg, off) = self.append(inner, &record::encode_header(&h), data)?;
        let e = Entry {
            peers,
            seg,
            off,
            len: h.len,
        };
        inner.live_bytes += e.record_len();
        // Eviction during the append may already have removed the old entry.
        if let Some(old) = inner.index.insert(id, e) {
            inner.live_bytes -= old.record_len();
        }
        Ok(())
    }

    fn append_peers(&self, inner: &mut Inner, id: &RawId, peers: u64) -> Result<(), Error> {
        let h = RecordHeader {
            kind: RecordKind::Peers,
            len: 0,
            id: *id,
            peers,
        };
        self.append(inner, &record::encode_header(&h), &[])?;
        // The append may have evicted the entry's own segment.
        if let Some(e) = inner.index.get_mut(id) {
            e.peers = peers;
        }
        Ok(())
    }

    /// Appends one record to the head; returns its (segment, offset). A
    /// failure is counted and returned; the index is never touched by a
    /// failed append, and a full disk gets one eviction and one retry.
    fn append(
        &self,
        inner: &mut Inner,
        header: &[u8],
        payload: &[u8],
    ) -> Result<(u32, u32), Error> {
        let first = self.try_append(inner, header, payload);
        let result = match first {
            Err(err) if is_no_space(&err) && !inner.disk_full => {
                inner.disk_full = true;
                if self.free_a_segment(inner) {
                    self.no_space_evictions.fetch_add(1, Relaxed);
                    tracing::warn!(%err, "disk full: evicted the oldest segment, retrying");
                    self.try_append(inner, header, payload)
                } else {
                    Err(err)
                }
            }
            other => other,
        };
        match &result {
            Ok(_) => inner.disk_full = false,
            Err(_) => {
                self.write_errors.fetch_add(1, Relaxed);
            }
        }
        result
    }

    /// On a full disk: frees the oldest segment for a retry. When the head is
    /// the only segment it is rolled first, so it can be the one freed.
    /// `false` when nothing could be freed.
    fn free_a_segment(&self, inner: &mut Inner) -> bool {
        if inner.segments.len() == 1 && inner.segments.get(&inner.head).is_some_and(|s| s.len > 0) {
            if let Err(err) = self.roll(inner) {
                tracing::warn!(%err, "disk full: cannot start a new segment");
                return false;
            }
        }
        // The old head's background fsync holds the file open; a deleted
        // file's space only returns when its last descriptor closes.
        if let Some(prev) = inner.pending_sync.take() {
            finish_sync(prev);
        }
        match inner.segments.keys().next().copied() {
            Some(oldest) if oldest != inner.head => match self.evict(inner, oldest) {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(%err, "disk full: cannot evict a segment");
                    false
                }
            },
            _ => false,
        }
    }

    fn try_append(
        &self,
        inner: &mut Inner,
        header: &[u8],
        payload: &[u8],
    ) -> Result<(u32, u32), Error> {
        let n = (header.len() + payload.len()) as u64;
        if inner.head_dirty {
            self.roll(inner)?;
            inner.head_dirty = false;
        }
        self.make_room(inner, n)?;
        let head = inner.head;
        let path = self.seg_path(head);
        let seg = inner
            .segments
            .get_mut(&head)
            .ok_or_else(|| Error::io(&path, io::Error::other("head segment missing")))?;
        let off = seg.len;
        let written = seg
            .file
            .write_all_at(header, off)
            .and_then(|()| seg.file.write_all_at(payload, off + header.len() as u64));
        if let Err(err) = written {
            // Cut the partial record so the next append is not stranded
            // behind it. If even that fails, its bytes stay as dead space
            // (counted, so the budget holds) and the next append starts a
            // new head: nothing is ever chained after a torn record, so the
            // next open's scan stops at it.
            if let Err(cut) = seg.file.set_len(off) {
                tracing::warn!(%cut, "cannot cut a failed append");
                seg.len += n;
                inner.total_bytes += n;
                inner.head_dirty = true;
            }
            return Err(Error::io(&path, err));
        }
        seg.len += n;
        inner.total_bytes += n;
        Ok((head, off as u32))
    }

    /// Rolls the head and evicts old segments so `n` more bytes fit.
    fn make_room(&self, inner: &mut Inner, n: u64) -> Result<(), Error> {
        let head_len = inner.segments.get(&inner.head).map_or(0, |s| s.len);
        if head_len > 0 && head_len + n > self.segment_bytes {
            self.roll(inner)?;
        }
        while inner.total_bytes + n > self.max_bytes || inner.segments.len() > MAX_SEGMENTS {
            match inner.segments.keys().next().copied() {
                Some(oldest) if oldest != inner.head => self.evict(inner, oldest)?,
                // Only the head is left; it is at most segment_bytes <= max/4.
                _ => break,
            }
        }
        Ok(())
    }

    fn roll(&self, inner: &mut Inner) -> Result<(), Error> {
        let head = inner.head;
        // fsyncing a full segment takes ~100 ms; doing it under the lock would
        // stall every get and put, so a thread does it. At most one runs: if
        // the disk cannot keep up, the next roll waits for it (backpressure).
        if let Some(prev) = inner.pending_sync.take() {
            finish_sync(prev);
        }
        if let Some(s) = inner.segments.get(&head) {
            let file = s.file.clone();
            let path = self.seg_path(head);
            let spawned = thread::Builder::new()
                .name("strait-store-sync".into())
                .spawn(move || file.sync_data().map_err(|e| Error::io(&path, e)));
            match spawned {
                Ok(h) => inner.pending_sync = Some(h),
                Err(_) => s
                    .file
                    .sync_data()
                    .map_err(|e| Error::io(&self.seg_path(head), e))?,
            }
        }
        let next = head
            .checked_add(1)
            .ok_or(Error::SegmentIdsExhausted { last: head })?;
        self.create_segment(inner, next)?;
        self.recompute_cold(inner);
        Ok(())
    }

    fn create_segment(&self, inner: &mut Inner, n: u32) -> Result<(), Error> {
        let path = self.seg_path(n);
        let file = self.vfs.open(&seg_name(n), true)?;
        // A stray file may already sit at that name; it is ours now.
        file.set_len(0).map_err(|e| Error::io(&path, e))?;
        self.vfs.sync_dir()?;
        inner.segments.insert(
            n,
            Segment {
                file: Arc::new(file),
                len: 0,
            },
        );
        inner.head = n;
        Ok(())
    }

    fn evict(&self, inner: &mut Inner, victim: u32) -> Result<(), Error> {
        let Some(seg) = inner.segments.get(&victim) else {
            return Ok(());
        };
        let file = seg.file.clone();
        let len = seg.len;
        // Re-reading the victim's headers finds its entries without keeping a
        // per-segment id list in memory.
        let mut gone = Vec::new();
        let scanned = scan_segment(&file, len, |h, off| {
            if h.kind == RecordKind::Chunk {
                gone.push((h.id, off));
            }
        });
        if let Err(err) = &scanned {
            tracing::warn!(segment = victim, %err, "cannot read an evicted segment's headers");
        }
        self.vfs.remove(&seg_name(victim))?;
        let mut evicted = 0;
        if scanned.map_or(true, |end| end < len) {
            // The file was damaged after open (or cannot be read), so the scan
            // cannot reach every record the index points at: sweep the whole
            // index instead.
            let before = inner.index.len();
            let mut freed = 0;
            inner.index.retain(|_, e| {
                let keep = { e.seg } != victim;
                if !keep {
                    freed += e.record_len();
                }
                keep
            });
            inner.live_bytes -= freed;
            evicted = (before - inner.index.len()) as u64;
        } else {
            for (id, off) in gone {
                if let Some(e) = inner.index.get(&id).copied() {
                    if { e.seg } == victim && { e.off } == off {
                        inner.index.remove(&id);
                        inner.live_bytes -= e.record_len();
                        evicted += 1;
                    }
                }
            }
        }
        inner.segments.remove(&victim);
        inner.total_bytes -= len;
        self.evictions.fetch_add(evicted, Relaxed);
        self.segments_evicted.fetch_add(1, Relaxed);
        self.recompute_cold(inner);
        Ok(())
    }

    fn recompute_cold(&self, inner: &mut Inner) {
        let half = self.max_bytes / 2;
        let mut newer = 0u64;
        inner.cold_upto = 0;
        for (&n, s) in inner.segments.iter().rev() {
            if newer >= half {
                inner.cold_upto = n;
                break;
            }
            newer += s.len;
        }
    }
}
