//! The format cut finder (safetensors tensors, tar members, an HTTP head in front) on a hostile
//! stream split into reads at fuzzer-chosen points. A consumer that, like the dedup encoder,
//! feeds each read and then takes the cuts inside it must see cuts that are strictly
//! increasing, inside the bytes seen so far, and the same whatever the split points; the cuts
//! still pending at the end and the format named must not depend on the splits either.
//!
//! Input: `[n][n piece lengths][stream]`; piece lengths are used in turn (0 means 1).
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_classify::{cuts::FormatCuts, Format};

struct Seen {
    per_read: Vec<u64>,
    pending: Vec<u64>,
    format: Option<Format>,
}

fn run(stream: &[u8], mut piece: impl FnMut() -> usize) -> Seen {
    let mut c = FormatCuts::new();
    let (mut per_read, mut pos, mut off) = (Vec::new(), 0u64, 0usize);
    while off < stream.len() {
        let n = piece().clamp(1, stream.len() - off);
        c.observe(&stream[off..off + n]);
        off += n;
        let end = off as u64;
        while let Some(x) = c.next_cut_after(pos).filter(|&x| x <= end) {
            assert!(x > pos, "cut {x} not after {pos}");
            assert!(
                per_read.last().is_none_or(|&l| x > l),
                "cut {x} repeats or goes back"
            );
            per_read.push(x);
            pos = x;
        }
        pos = end;
    }
    let mut pending = Vec::new();
    while let Some(x) = c.next_cut_after(pos) {
        assert!(x > pos);
        pending.push(x);
        pos = x;
    }
    Seen {
        per_read,
        pending,
        format: c.format(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize).min(rest.len());
    let (lens, stream) = rest.split_at(n);
    let mut i = 0;
    let split = run(stream, || {
        let l = lens.get(i % lens.len().max(1)).copied().unwrap_or(0);
        i += 1;
        l as usize
    });
    let whole = run(stream, || stream.len());
    let bytes = run(stream, || 1);
    for other in [&split, &bytes] {
        assert_eq!(other.per_read, whole.per_read, "cuts seen read by read");
        assert_eq!(other.pending, whole.pending, "cuts pending at the end");
        assert_eq!(other.format, whole.format, "format named");
    }
});
