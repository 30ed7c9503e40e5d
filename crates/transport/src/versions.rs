//! Previous versions of HTTP objects as delta bases: when an object is fetched (or uploaded)
//! again under the same URL or S3 key, the chunks its previous version crossed as are handed to
//! the encoder as candidate bases ([`strait_dedup::FlowEncoder::add_base_hints`]). This finds
//! bases the shared sketch index has evicted or never held (it is bounded and in memory), and
//! costs nothing on the wire: bases are still named and verified as usual, and a hint the peer
//! does not hold is dropped by the encoder (peer isolation).
//!
//! Which object a byte belongs to is read from the HTTP/1.1 stream itself, without parsing
//! bodies: a client sends its next request only after the previous response began (hyper's client
//! and every S3 SDK do not pipeline), so the first bytes of the request direction after response
//! bytes are a request head. A head that does not parse (a `100-continue` body, a pipelining
//! client, not HTTP at all) simply gives no key: nothing is hinted or recorded.
//!
//! The core records and hints what it sends (response bodies, keyed by the request that asked
//! for them); the edge does the same for request bodies it uploads (`PUT`/`POST`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use strait_chunk::ChunkId;

/// Objects whose last version is remembered.
pub const MAX_VERSION_OBJECTS: usize = 4096;
/// Chunk ids remembered over all objects (32 bytes each: 8 MiB).
pub const MAX_VERSION_IDS: usize = 1 << 18;
/// Chunk ids remembered per object (the encoder holds at most this many hints).
pub const MAX_IDS_PER_OBJECT: usize = strait_dedup::delta::MAX_BASE_HINTS;
/// Longest request head sniffed for a key.
pub const MAX_HEAD: usize = 8 * 1024;

/// The last version of each recently seen object: its key and the ids of its chunks.
#[derive(Debug, Default)]
pub struct Versions {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, (u64, Arc<[ChunkId]>)>,
    ids: usize,
    clock: u64,
}

impl Versions {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The chunk ids of `key`'s last version.
    pub fn get(&self, key: &str) -> Option<Arc<[ChunkId]>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.clock += 1;
        let now = g.clock;
        let e = g.map.get_mut(key)?;
        e.0 = now;
        Some(e.1.clone())
    }

    /// Remembers `ids` as `key`'s last version, evicting the least recently used objects to stay
    /// within [`MAX_VERSION_OBJECTS`] and [`MAX_VERSION_IDS`].
    pub fn put(&self, key: String, mut ids: Vec<ChunkId>) {
        if ids.is_empty() {
            return;
        }
        ids.truncate(MAX_IDS_PER_OBJECT);
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.clock += 1;
        let now = g.clock;
        if let Some((_, old)) = g.map.remove(&key) {
            g.ids -= old.len();
        }
        g.ids += ids.len();
        g.map.insert(key, (now, ids.into()));
        while g.map.len() > MAX_VERSION_OBJECTS || g.ids > MAX_VERSION_IDS {
            let Some(oldest) = g
                .map
                .iter()
                .min_by_key(|(_, v)| v.0)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((_, old)) = g.map.remove(&oldest) {
                g.ids -= old.len();
            }
        }
    }

    /// Objects and chunk ids held.
    pub fn len(&self) -> (usize, usize) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (g.map.len(), g.ids)
    }

    /// Whether no object is remembered.
    pub fn is_empty(&self) -> bool {
        self.len().0 == 0
    }
}

/// Which side of the HTTP exchange this side's encoder carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sends {
    /// Request bodies (the edge): record after the head of a `PUT`/`POST`.
    Requests,
    /// Responses (the core): record everything sent after a request head.
    Responses,
}

/// What the flow must do after new bytes were seen.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing.
    None,
    /// A new object begins in what this side sends: hint its previous version's chunks.
    Begin(Option<Arc<[ChunkId]>>),
}

/// One flow's view of the HTTP exchanges crossing it (sans-IO).
#[derive(Debug)]
pub struct Tracker {
    sends: Sends,
    scope: String,
    versions: Arc<Versions>,
    /// The next request-direction bytes start a request head.
    expect_head: bool,
    head: Vec<u8>,
    /// Key of the object this side is sending now, with its ids so far.
    current: Option<(String, Vec<ChunkId>)>,
    /// Key of a request whose response has not started yet (core side).
    asked: Option<String>,
}

impl Tracker {
    /// A tracker for one flow; `scope` (the service or route) is part of every key.
    pub fn new(sends: Sends, scope: &str, versions: Arc<Versions>) -> Self {
        Tracker {
            sends,
            scope: scope.to_string(),
            versions,
            expect_head: true,
            head: Vec::new(),
            current: None,
            asked: None,
        }
    }

    /// Which side of the exchange this tracker's flow sends.
    pub fn sends(&self) -> Sends {
        self.sends
    }

    /// Bytes of the request direction (the edge: what it sends; the core: what it delivers).
    pub fn on_request_bytes(&mut self, data: &[u8]) -> Event {
        if !self.expect_head {
            return Event::None;
        }
        // A request line starts with an upper-case method: anything else (TLS, a binary
        // protocol) is given up on at its first byte, so non-HTTP flows cost nothing here.
        if self.head.is_empty() && !data.first().is_some_and(|b| b.is_ascii_uppercase()) {
            self.expect_head = data.is_empty();
            return Event::None;
        }
        let room = MAX_HEAD.saturating_sub(self.head.len());
        self.head.extend_from_slice(&data[..data.len().min(room)]);
        let Some(end) = find(&self.head, b"\r\n\r\n") else {
            if self.head.len() >= MAX_HEAD {
                // No head within the bound: not something to key on.
                self.expect_head = false;
                self.head.clear();
            }
            return Event::None;
        };
        let parsed = parse_head(&self.head[..end + 4]);
        self.expect_head = false;
        self.head.clear();
        let Some((method, key)) = parsed else {
            return Event::None;
        };
        let key = format!("{} {key}", self.scope);
        match self.sends {
            Sends::Responses => {
                self.asked = Some(key);
                Event::None
            }
            Sends::Requests => {
                self.finish_object();
                if method == "PUT" || method == "POST" {
                    let hints = self.versions.get(&key);
                    self.current = Some((key, Vec::new()));
                    Event::Begin(hints)
                } else {
                    Event::None
                }
            }
        }
    }

    /// Bytes of the response direction are about to be sent (core) or were delivered (edge).
    pub fn on_response_bytes(&mut self) -> Event {
        self.expect_head = true;
        if self.sends != Sends::Responses {
            return Event::None;
        }
        match self.asked.take() {
            Some(key) => {
                self.finish_object();
                let hints = self.versions.get(&key);
                self.current = Some((key, Vec::new()));
                Event::Begin(hints)
            }
            None => Event::None,
        }
    }

    /// Chunk ids the encoder sent for the current object.
    pub fn on_sent_ids(&mut self, ids: &[ChunkId]) {
        if let Some((_, v)) = self.current.as_mut() {
            let room = MAX_IDS_PER_OBJECT.saturating_sub(v.len());
            v.extend_from_slice(&ids[..ids.len().min(room)]);
        }
    }

    /// Whether ids are being recorded (so the flow only collects them when needed).
    pub fn recording(&self) -> bool {
        self.current.is_some()
    }

    /// The flow ended (or a new object began): the current object's ids become its last version.
    pub fn finish_object(&mut self) {
        if let Some((key, ids)) = self.current.take() {
            self.versions.put(key, ids);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `(method, "host target")` of an HTTP/1.x request head, or `None`.
fn parse_head(head: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || !version.starts_with("HTTP/1.")
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || target.is_empty()
    {
        return None;
    }
    let host = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    Some((method.to_string(), format!("{host} {target}")))
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.finish_object();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn core_hints_a_refetched_url_with_its_previous_response_chunks() {
        let v = Arc::new(Versions::new());
        let mut t = Tracker::new(Sends::Responses, "s3", v.clone());
        let get = b"GET /bucket/data.jsonl HTTP/1.1\r\nHost: minio:9000\r\n\r\n";
        assert_eq!(t.on_request_bytes(get), Event::None);
        assert_eq!(t.on_response_bytes(), Event::Begin(None));
        t.on_sent_ids(&[id(1), id(2)]);
        // Same connection, next request for another object, then the first one again.
        t.on_request_bytes(b"GET /bucket/other HTTP/1.1\r\nHost: minio:9000\r\n\r\n");
        assert_eq!(t.on_response_bytes(), Event::Begin(None));
        t.on_sent_ids(&[id(3)]);
        t.finish_object();
        let mut t2 = Tracker::new(Sends::Responses, "s3", v.clone());
        // A head split over two reads still parses.
        t2.on_request_bytes(b"GET /bucket/data.jsonl HTTP/1.1\r\nHo");
        t2.on_request_bytes(b"st: MINIO:9000\r\n\r\n");
        match t2.on_response_bytes() {
            Event::Begin(Some(h)) => assert_eq!(&h[..], &[id(1), id(2)]),
            e => panic!("{e:?}"),
        }
        assert_eq!(v.len(), (2, 3));
    }

    #[test]
    fn edge_records_put_bodies_not_gets() {
        let v = Arc::new(Versions::new());
        let mut t = Tracker::new(Sends::Requests, "r", v.clone());
        assert_eq!(
            t.on_request_bytes(b"GET /k HTTP/1.1\r\nHost: h\r\n\r\n"),
            Event::None
        );
        assert!(!t.recording());
        t.on_response_bytes();
        assert_eq!(
            t.on_request_bytes(b"PUT /k HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nbody"),
            Event::Begin(None)
        );
        // Body bytes of the same request are not a head.
        assert_eq!(t.on_request_bytes(b"PUT /x HTTP/1.1\r\n\r\n"), Event::None);
        t.on_sent_ids(&[id(7)]);
        t.on_response_bytes();
        match t.on_request_bytes(b"PUT /k HTTP/1.1\r\nHost: h\r\n\r\n") {
            Event::Begin(Some(h)) => assert_eq!(&h[..], &[id(7)]),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn what_is_not_a_request_head_gives_no_key() {
        let v = Arc::new(Versions::new());
        let mut t = Tracker::new(Sends::Responses, "s", v.clone());
        t.on_request_bytes(b"\x16\x03\x01 TLS hello\r\n\r\n");
        assert_eq!(t.on_response_bytes(), Event::None);
        t.on_request_bytes(b"get /lower HTTP/1.1\r\n\r\n");
        assert_eq!(t.on_response_bytes(), Event::None);
        // A head larger than the bound is given up on, not buffered further.
        t.on_request_bytes(&vec![b'A'; MAX_HEAD + 10]);
        assert!(t.head.is_empty());
        assert_eq!(t.on_response_bytes(), Event::None);
        assert!(v.is_empty());
    }

    #[test]
    fn table_stays_within_its_bounds_evicting_least_recently_used() {
        let v = Versions::new();
        let big: Vec<ChunkId> = (0..MAX_IDS_PER_OBJECT + 5).map(|i| id(i as u8)).collect();
        v.put("a".into(), big);
        assert_eq!(v.len(), (1, MAX_IDS_PER_OBJECT));
        for i in 0..MAX_VERSION_OBJECTS + 10 {
            v.put(format!("k{i}"), vec![id(1)]);
            if i == 0 {
                v.get("a");
            }
        }
        let (objects, ids) = v.len();
        assert!(objects <= MAX_VERSION_OBJECTS && ids <= MAX_VERSION_IDS);
        assert!(v.get("k0").is_none(), "least recently used evicted first");
        assert!(v.get(&format!("k{}", MAX_VERSION_OBJECTS + 9)).is_some());
    }
}
