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

/// End of the head (after its blank line) in `b`, looking only at bytes from `from` on (earlier
/// ones were searched before), so a head trickled in byte by byte costs linear time.
fn find_head_end(b: &[u8], from: usize) -> Option<usize> {
    let from = from.saturating_sub(3).min(b.len());
    b[from..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
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
    /// Bytes of `head_buf` already searched for the end of the head.
    head_scanned: usize,
    /// Absolute offset where the format's bytes start (after an HTTP head, if any).
    base: u64,
    pos: u64,
    cuts: VecDeque<u64>,
    format: Option<Format>,
    /// The format's first bytes, kept after it was recognised from fewer than [`SNIFF_LEN`]:
    /// the name is read again from up to [`SNIFF_LEN`] bytes (a tar is told from a WebDataset
    /// shard by its member names), so it does not depend on how the stream was split.
    label: Option<Vec<u8>>,
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
            head_scanned: 0,
            base: 0,
            pos: 0,
            cuts: VecDeque::new(),
            format: None,
            label: None,
        }
    }

    /// The format recognised, if any.
    pub fn format(&self) -> Option<Format> {
        match &self.label {
            Some(label) => sniff(label),
            None => self.format,
        }
    }

    /// Feeds the next bytes of the stream.
    pub fn observe(&mut self, data: &[u8]) {
        let start = self.pos;
        self.pos = self.pos.saturating_add(data.len() as u64);
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
                    Some(true) => match find_head_end(&buf, self.head_scanned) {
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
                    None => {
                        self.head_scanned = buf.len();
                        self.head_buf = buf;
                    }
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
        if let Some(label) = self.label.as_mut() {
            let take = SNIFF_LEN.saturating_sub(label.len()).min(data.len());
            label.extend_from_slice(&data[..take]);
            if label.len() >= SNIFF_LEN {
                self.format = sniff(label);
                self.label = None;
            }
        }
        loop {
            match &mut self.state {
                State::Done => return,
                State::Sniffing => {
                    let take = SNIFF_LEN.saturating_sub(self.prefix.len()).min(data.len());
                    self.prefix.extend_from_slice(&data[..take]);
                    let fmt = sniff(&self.prefix);
                    if fmt.is_some() && self.prefix.len() < SNIFF_LEN {
                        self.label = Some(self.prefix.clone());
                    }
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
            // Offsets come from the header: a sum that does not fit ends the cuts.
            let base = self.base;
            let cuts = h.tensor_boundaries().map_while(|b| base.checked_add(b));
            self.cuts.extend(cuts.take(MAX_PENDING_CUTS));
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

/// Feeds `data` (starting at offset `at`, relative to the format's first byte) to a tar walker.
/// Each member's end (where the next header is due) becomes a cut as soon as its header is
/// parsed, before the stream reaches it: a cut recorded only once the next header block were
/// complete could lie behind a consumer that had already moved past it, making the cuts depend
/// on how the stream was split into reads.
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
        let Some(abs) = at.checked_add(off as u64) else {
            return;
        };
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
                    let end = base.checked_add(m.next_header_offset());
                    if let (Some(end), true) = (end, cuts.len() < MAX_PENDING_CUTS) {
                        cuts.push_back(end);
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

    /// The cuts a consumer sees that, like the dedup encoder, feeds each read and then takes
    /// the cuts inside it (strictly after where it stands, at most at the read's end).
    fn cuts_seen_per_read(data: &[u8], piece: usize) -> Vec<u64> {
        let mut c = FormatCuts::new();
        let (mut out, mut pos) = (Vec::new(), 0u64);
        for p in data.chunks(piece) {
            c.observe(p);
            let end = pos + p.len() as u64;
            while let Some(x) = c.next_cut_after(pos).filter(|&x| x <= end) {
                out.push(x);
                pos = x;
            }
            pos = end;
        }
        out
    }

    /// A header whose (unvalidated-dtype) tensors tile `0..last_end` in two pieces.
    fn header_with_offsets(split: u64, last_end: u64) -> Vec<u8> {
        let json = format!(
            "{{\"a\":{{\"dtype\":\"X\",\"shape\":[],\"data_offsets\":[0,{split}]}},\
             \"b\":{{\"dtype\":\"X\",\"shape\":[],\"data_offsets\":[{split},{last_end}]}}}}"
        );
        let mut f = (json.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(json.as_bytes());
        f
    }

    #[test]
    fn safetensors_offsets_near_u64_max_give_no_cuts_and_no_overflow() {
        // Data offsets whose file offsets (8 + header + offset) pass u64::MAX.
        for (split, end) in [
            (u64::MAX - 4, u64::MAX),
            (1, u64::MAX),
            (u64::MAX, u64::MAX),
        ] {
            let f = header_with_offsets(split, end);
            let err = crate::parse_safetensors_header(&f).unwrap_err();
            assert!(
                err.to_string().contains("past the largest file offset"),
                "{err}"
            );
            for piece in [1, 9, f.len()] {
                assert!(cuts_of(&f, piece).is_empty(), "piece {piece}");
            }
        }
    }

    #[test]
    fn safetensors_offsets_that_fit_alone_but_not_after_an_http_head_stop_the_cuts() {
        // The last tensor starts where 8 + header + start is exactly u64::MAX: valid on its own,
        // but an HTTP head in front of it pushes that cut past u64::MAX.
        // Number lengths change the header length: iterate to the fixed point.
        let mut f = header_with_offsets(0, 0);
        for _ in 0..3 {
            let h = f.len() as u64;
            f = header_with_offsets(u64::MAX - h, u64::MAX - h);
        }
        let h = f.len() as u64;
        let parsed = crate::parse_safetensors_header(&f).unwrap();
        assert_eq!(parsed.file_len(), Some(u64::MAX));
        assert_eq!(
            parsed.tensor_boundaries().collect::<Vec<_>>(),
            vec![h, u64::MAX]
        );
        assert_eq!(cuts_of(&f, 5), vec![h, u64::MAX]);
        let head = b"HTTP/1.1 200 OK\r\n\r\n";
        let mut msg = head.to_vec();
        msg.extend_from_slice(&f);
        let n = head.len() as u64;
        for piece in [1, 7, msg.len()] {
            assert_eq!(cuts_of(&msg, piece), vec![n, n + h], "piece {piece}");
        }
    }

    #[test]
    fn tar_member_ends_are_cuts_whatever_the_read_size() {
        let sizes = [0usize, 1, 511, 512, 513, 3000, 10];
        let files: Vec<(String, usize)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| (format!("m{i}.bin"), s))
            .collect();
        let refs: Vec<(&str, usize)> = files.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        let archive = crate::tar::tests::build_tar(&refs, 3);
        let index = crate::tar_members(&archive).unwrap();
        let want: Vec<u64> = index
            .members
            .iter()
            .map(|m| m.next_header_offset())
            .collect();
        assert_eq!(want.len(), sizes.len());
        for piece in [1, 100, 511, 512, 700, 4096, archive.len()] {
            assert_eq!(cuts_seen_per_read(&archive, piece), want, "piece {piece}");
            assert_eq!(cuts_of(&archive, piece), want, "piece {piece}");
        }
    }

    #[test]
    fn format_named_does_not_depend_on_the_read_size() {
        // A WebDataset shard: told from a plain tar by a second member of the same key, which
        // lies beyond the first bytes that already say "tar".
        let shard =
            crate::tar::tests::build_tar(&[("s/000001.cls", 600), ("s/000001.json", 10)], 4);
        let plain = crate::tar::tests::build_tar(&[("a.cls", 600), ("b.json", 10)], 4);
        for (data, want) in [(shard, Format::WebDatasetTar), (plain, Format::Tar)] {
            for piece in [1, 300, 512, 1024, data.len()] {
                let mut c = FormatCuts::new();
                for p in data.chunks(piece) {
                    c.observe(p);
                }
                assert_eq!(c.format(), Some(want), "piece {piece}");
            }
        }
    }

    #[test]
    fn cuts_seen_read_by_read_do_not_depend_on_the_read_size() {
        let st = safetensors(&[1000, 5000, 300]);
        let mut http = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n".to_vec();
        http.extend_from_slice(&st);
        for data in [st, http] {
            let whole = cuts_seen_per_read(&data, data.len());
            assert!(!whole.is_empty());
            for piece in [1, 3, 8, 9, 64, 1000] {
                assert_eq!(cuts_seen_per_read(&data, piece), whole, "piece {piece}");
            }
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
