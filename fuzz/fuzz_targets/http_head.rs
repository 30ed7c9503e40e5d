//! HTTP/1.1 head parsing on hostile bytes: the versions tracker of `strait-transport` (which
//! request an object belongs to, read from the request direction) and the HTTP head cut of the
//! format cut finder. Each is fed the same exchange whole and split at fuzzer-chosen points: no
//! panic, the same events and the same remembered versions whatever the splits, and the
//! version table stays within its bounds.
//!
//! Input: `[seed][records]`, a record being `[kind][len][len bytes]`: request-direction bytes
//! (kind 0-1), response bytes starting (2), chunk ids sent (3, one id per byte), object finished
//! (4). The seed's low bit picks the side (edge or core), the rest seeds the split points.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use strait_chunk::ChunkId;
use strait_classify::cuts::{FormatCuts, MAX_HTTP_HEAD};
use strait_transport::versions::{
    Event, Sends, Tracker, Versions, MAX_VERSION_IDS, MAX_VERSION_OBJECTS,
};

enum Op<'a> {
    Request(&'a [u8]),
    Response,
    Ids(&'a [u8]),
    Finish,
}

fn ops(mut data: &[u8]) -> Vec<Op<'_>> {
    let mut out = Vec::new();
    while let [kind, len, rest @ ..] = data {
        let (bytes, tail) = rest.split_at((*len as usize).min(rest.len()));
        data = tail;
        out.push(match kind % 5 {
            0 | 1 => Op::Request(bytes),
            2 => Op::Response,
            3 => Op::Ids(bytes),
            _ => Op::Finish,
        });
    }
    out
}

/// Events per op (at most one `Begin` per op however it was split) and the table at the end.
fn run(sends: Sends, ops: &[Op<'_>], mut split: impl FnMut(usize) -> usize) -> Vec<String> {
    let versions = Arc::new(Versions::new());
    let mut t = Tracker::new(sends, "fuzz", versions.clone());
    let mut log = Vec::new();
    for op in ops {
        let ev = match op {
            Op::Request(bytes) => {
                let mut rest = *bytes;
                let mut ev = Event::None;
                loop {
                    let n = split(rest.len()).min(rest.len());
                    let (piece, tail) = rest.split_at(n);
                    rest = tail;
                    let e = t.on_request_bytes(piece);
                    if e != Event::None {
                        assert_eq!(ev, Event::None, "two events for one request record");
                        ev = e;
                    }
                    if rest.is_empty() {
                        break;
                    }
                }
                ev
            }
            Op::Response => t.on_response_bytes(),
            Op::Ids(bytes) => {
                let ids: Vec<ChunkId> = bytes.iter().map(|&b| ChunkId([b; 32])).collect();
                t.on_sent_ids(&ids);
                Event::None
            }
            Op::Finish => {
                t.finish_object();
                Event::None
            }
        };
        log.push(format!("{ev:?} {}", t.recording()));
        let (objects, ids) = versions.len();
        assert!(objects <= MAX_VERSION_OBJECTS && ids <= MAX_VERSION_IDS);
    }
    drop(t);
    log.push(format!("{:?}", versions.len()));
    log
}

/// The HTTP head cut: a stream that starts with a request or status line gets its first cut
/// right after the head's blank line, whatever the reads.
fn head_cut(stream: &[u8], mut split: impl FnMut(usize) -> usize) -> Option<u64> {
    let mut c = FormatCuts::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = split(rest.len()).clamp(1, rest.len());
        c.observe(&rest[..n]);
        rest = &rest[n..];
    }
    c.next_cut_after(0)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let sends = if seed & 1 == 0 {
        Sends::Requests
    } else {
        Sends::Responses
    };
    let ops = ops(rest);
    // xorshift over the seed: the split points.
    let mut x = u64::from(seed) | 0x100;
    let mut splitter = move |len: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % (len as u64 + 1)) as usize
    };
    let whole = run(sends, &ops, |len| len);
    assert_eq!(run(sends, &ops, &mut splitter), whole);

    // The request records as one stream, for the cut finder's head sniffing.
    let stream: Vec<u8> = ops
        .iter()
        .filter_map(|o| match o {
            Op::Request(b) => Some(*b),
            _ => None,
        })
        .flatten()
        .copied()
        .collect();
    let cut = head_cut(&stream, |len| len);
    assert_eq!(head_cut(&stream, &mut splitter), cut);
    let is_http = [&b"GET "[..], b"PUT ", b"POST ", b"HEAD ", b"HTTP/1."]
        .iter()
        .any(|m| stream.starts_with(m));
    let blank = stream
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p as u64 + 4)
        .filter(|&e| e <= MAX_HTTP_HEAD as u64);
    if is_http {
        if let Some(end) = blank {
            assert_eq!(cut, Some(end), "head cut");
        }
    }
});
