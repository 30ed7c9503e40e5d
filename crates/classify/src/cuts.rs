//! Format-aligned chunk cuts: offsets in a byte stream where a content-defined chunker should
//! also cut, because a record of the format starts there (a tensor in safetensors, a member in
//! a tar archive). Aligning chunks with records keeps an unchanged tensor or file in chunks of
//! its own, so it deduplicates across versions even when its neighbours changed.
//!
//! Streaming and bounded: [`FormatCuts::observe`] sees the stream's bytes in order and keeps at
//! most [`MAX_CUT_PREFIX`] of them (for a safetensors header) plus one tar header block.

use crate::safetensors::{parse_safetensors_header, safetensors_header_end};
use crate::tar::TarWalker;
use crate::{sniff, Error, Format};
use std::collections::VecDeque;

/// Most stream bytes buffered to read a safetensors header; larger headers get no aligned cuts.
pub const MAX_CUT_PREFIX: usize = 16 << 20;
/// Bytes looked at before giving up on recognising a format.
const SNIFF_LEN: usize = 4096;
/// Most pending cut offsets kept (a safetensors file with more tensors is cut at the first ones).
pub const MAX_PENDING_CUTS: usize = 1 << 20;

/// Whether the stream starts with an HTTP message head.
enum Head {
    Undecided,
    Decided,
}

/// Longest HTTP head looked for.
pub const MAX_HTTP_HEAD: usize = 64 * 1024;

fn looks_like_http(b: &[u8]) -> Option<bool> {
    const STARTS: [&[u8]; 9] = [
        b"HTTP/1.",
        b"GET ",
        b"PUT ",
        b"POST ",
        b"HEAD ",
        b"PATCH ",
        b"DELETE ",
        b"OPTIONS ",
        b"CONNECT ",
    ];
    let mut undecided = false;
    for s in STARTS {
        let n = s.len().min(b.len());
        if b[..n] == s[..n] {
            if n == s.len() {
                return Some(true);
            }
            undecided = true;
        }
    }
    if undecided {
        None
    } else {
        Some(false)
    }
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

enum State {
    Sniffing,
    SafetensorsHeader { need: u64 },
    Tar { walker: TarWalker, block: Vec<u8> },
    Done,
}

/// Finds format record boundaries in a stream.
pub struct FormatCuts {
    state: State,
    prefix: Vec<u8>,
    head: Head,
    head_buf: Vec<u8>,
    /// Absolute offset where the format's bytes start (after an HTTP head, if any).
    base: u64,
    pos: u64,
    cuts: VecDeque<u64>,
    format: Option<Format>,
}

impl Default for FormatCuts {
    fn default() -> Self {
        FormatCuts::new()
    }
}

impl FormatCuts {
    /// A finder at the start of a stream.
    pub fn new() -> Self {
        FormatCuts {
            state: State::Sniffing,
            prefix: Vec::new(),
            head: Head::Undecided,
            head_buf: Vec::new(),
            base: 0,
            pos: 0,
            cuts: VecDeque::new(),
            format: None,
        }
    }

    /// The format recognised, if any.
    pub fn format(&self) -> Option<Format> {
        self.format
    }

    /// Feeds the next bytes of the stream.
    pub fn observe(&mut self, data: &[u8]) {
        let start = self.pos;
        self.pos += data.len() as u64;
        match self.head {
            Head::Decided => {
                let rel = start - self.base;
                self.observe_rel(rel, data);
            }
            Head::Undecided => {
                let room = MAX_HTTP_HEAD.saturating_sub(self.head_buf.len());
                self.head_buf
                    .extend_from_slice(&data[..room.min(data.len())]);
                let buf = std::mem::take(&mut self.head_buf);
                let decided = match looks_like_http(&buf) {
                    None => None,
                    Some(false) => Some(0),
                    // An HTTP message: cut after its head (headers such as Date change on every
                    // fetch, the body does not) and look at the body's format.
                    Some(true) => match find_head_end(&buf) {
                        Some(end) => {
                            self.cuts.push_back(end as u64);
                            Some(end)
                        }
                        None if buf.len() >= MAX_HTTP_HEAD => {
                            self.state = State::Done;
                            Some(buf.len())
                        }
                        None => None,
                    },
                };
                match decided {
                    None => self.head_buf = buf,
                    Some(body) => {
                        self.head = Head::Decided;
                        self.base = body as u64;
                        self.observe_rel(0, &buf[body..]);
                        // Bytes of this call that did not fit the head buffer.
                        let copied = room.min(data.len());
                        if copied < data.len() {
                            let rel = start + copied as u64 - self.base;
                            self.observe_rel(rel, &data[copied..]);
                        }
                    }
                }
            }
        }
    }

    /// Feeds bytes at offset `start` relative to the format's first byte.
    fn observe_rel(&mut self, start: u64, data: &[u8]) {
        let base = self.base;
        loop {
            match &mut self.state {
                State::Done => return,
                State::Sniffing => {
                    let take = SNIFF_LEN.saturating_sub(self.prefix.len()).min(data.len());
                    self.prefix.extend_from_slice(&data[..take]);
                    let fmt = sniff(&self.prefix);
                    match fmt {
                        Some(Format::Safetensors) => {
                            self.format = fmt;
                            match safetensors_header_end(&self.prefix) {
                                Ok(Some(end)) if end as usize <= MAX_CUT_PREFIX => {
                                    // Copy the rest of this call's bytes that belong to the header.
                                    let have = self.prefix.len() as u64;
                                    let more =
                                        (end.saturating_sub(have) as usize).min(data.len() - take);
                                    self.prefix.extend_from_slice(&data[take..take + more]);
                                    self.state = State::SafetensorsHeader { need: end };
                                    if self.prefix.len() as u64 >= end {
                                        self.finish_safetensors();
                                    }
                                    return;
                                }
                                _ => self.state = State::Done,
                            }
                        }
                        Some(Format::Tar | Format::WebDatasetTar) => {
                            self.format = fmt;
                            let mut walker = TarWalker::new();
                            // Replay the archive's first bytes (held in the prefix) block by block.
                            let prefix = std::mem::take(&mut self.prefix);
                            let mut block = Vec::new();
                            feed_tar(&mut walker, &mut block, &mut self.cuts, base, 0, &prefix);
                            // And the bytes of this call beyond the prefix.
                            let rest_start = start + take as u64;
                            feed_tar(
                                &mut walker,
                                &mut block,
                                &mut self.cuts,
                                base,
                                rest_start,
                                &data[take..],
                            );
                            self.state = if walker.is_done() {
                                State::Done
                            } else {
                                State::Tar { walker, block }
                            };
                            return;
                        }
                        Some(_) => {
                            self.format = fmt;
                            self.state = State::Done;
                        }
                        None if self.prefix.len() >= SNIFF_LEN => self.state = State::Done,
                        None => return,
                    }
                }
                State::SafetensorsHeader { need } => {
                    let more =
                        (need.saturating_sub(self.prefix.len() as u64) as usize).min(data.len());
                    self.prefix.extend_from_slice(&data[..more]);
                    if self.prefix.len() as u64 >= *need {
                        self.finish_safetensors();
                    }
                    return;
                }
                State::Tar { walker, block } => {
                    feed_tar(walker, block, &mut self.cuts, base, start, data);
                    if walker.is_done() {
                        self.state = State::Done;
                    }
                    return;
                }
            }
        }
    }

    fn finish_safetensors(&mut self) {
        if let Ok(h) = parse_safetensors_header(&self.prefix) {
            for b in h.tensor_boundaries().take(MAX_PENDING_CUTS) {
                self.cuts.push_back(self.base + b);
            }
        }
        self.prefix = Vec::new();
        self.state = State::Done;
    }

    /// The next cut strictly after `pos` (absolute stream offset), dropping older ones.
    pub fn next_cut_after(&mut self, pos: u64) -> Option<u64> {
        while let Some(&c) = self.cuts.front() {
            if c > pos {
                return Some(c);
            }
            self.cuts.pop_front();
        }
        None
    }
}

/// Feeds `data` (starting at absolute offset `at`) to a tar walker, recording each member's
/// header offset and data offset as cuts.
fn feed_tar(
    walker: &mut TarWalker,
    block: &mut Vec<u8>,
    cuts: &mut VecDeque<u64>,
    base: u64,
    at: u64,
    data: &[u8],
) {
    let mut off = 0usize;
    while off < data.len() {
        let Some(next) = walker.next_header_offset() else {
            return;
        };
        let abs = at + off as u64;
        if block.is_empty() {
            if next > abs {
                let skip = (next - abs).min((data.len() - off) as u64) as usize;
                off += skip;
                continue;
            }
            if next < abs {
                // The header was not seen (a gap): stop aligning rather than guess.
                *walker = TarWalker::new();
                return;
            }
        }
        let take = (512 - block.len()).min(data.len() - off);
        block.extend_from_slice(&data[off..off + take]);
        off += take;
        if block.len() == 512 {
            let r: Result<_, Error> = walker.feed(block);
            block.clear();
            match r {
                Ok(Some(m)) => {
                    if cuts.len() < MAX_PENDING_CUTS {
                        cuts.push_back(base + m.header_offset);
                    }
                }
                Ok(None) | Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn safetensors(sizes: &[usize]) -> Vec<u8> {
        let mut header = String::from("{");
        let mut off = 0;
        for (i, s) in sizes.iter().enumerate() {
            if i > 0 {
                header.push(',');
            }
            header.push_str(&format!(
                "\"t{i}\":{{\"dtype\":\"U8\",\"shape\":[{s}],\"data_offsets\":[{off},{}]}}",
                off + s
            ));
            off += s;
        }
        header.push('}');
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(header.as_bytes());
        f.extend(std::iter::repeat_n(7u8, off));
        f
    }

    fn cuts_of(data: &[u8], piece: usize) -> Vec<u64> {
        let mut c = FormatCuts::new();
        for p in data.chunks(piece) {
            c.observe(p);
        }
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(x) = c.next_cut_after(pos) {
            out.push(x);
            pos = x;
        }
        out
    }

    #[test]
    fn safetensors_tensor_starts_are_cuts_whatever_the_read_size() {
        let f = safetensors(&[1000, 5000, 300]);
        let hl = u64::from_le_bytes(f[..8].try_into().unwrap());
        let want = vec![8 + hl, 8 + hl + 1000, 8 + hl + 6000];
        for piece in [1, 7, 100, 4096, f.len()] {
            assert_eq!(cuts_of(&f, piece), want, "piece {piece}");
        }
    }

    #[test]
    fn http_head_is_cut_off_and_the_body_format_still_found() {
        let f = safetensors(&[1000, 5000]);
        let hl = u64::from_le_bytes(f[..8].try_into().unwrap());
        let head = format!(
            "HTTP/1.1 200 OK\r\nDate: Sat, 21 Nov 2026 06:00:00 GMT\r\nContent-Length: {}\r\n\r\n",
            f.len()
        );
        let mut msg = head.clone().into_bytes();
        msg.extend_from_slice(&f);
        let h = head.len() as u64;
        let want = vec![h, h + 8 + hl, h + 8 + hl + 1000];
        for piece in [1, 3, 50, 4096, msg.len()] {
            assert_eq!(cuts_of(&msg, piece), want, "piece {piece}");
        }
    }

    #[test]
    fn unknown_data_has_no_cuts() {
        let data: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2654435761u32) >> 13) as u8)
            .collect();
        assert!(cuts_of(&data, 1000).is_empty());
    }

    #[test]
    fn truncated_or_hostile_header_yields_no_cuts_and_no_panic() {
        let mut f = safetensors(&[10, 20]);
        // Break the JSON: the header no longer parses, so nothing is cut.
        let n = f.len();
        f[8] = b'[';
        assert_eq!(f.len(), n);
        assert!(cuts_of(&f, 3).is_empty());
        let mut g = (u64::MAX).to_le_bytes().to_vec();
        g.extend_from_slice(b"{}");
        assert!(cuts_of(&g, 5).is_empty());
    }
}
