//! Byte planes: element byte `j` of every `width`-byte element goes to plane `j`.
//!
//! Float weights have a sign/exponent byte with a few bits of entropy next to mantissa bytes
//! that are close to random; interleaved, they hide each other's statistics from zstd.

/// Splits `src` into `width` planes of `src.len() / width` bytes each, written one after the
/// other into `dst` (cleared first). Trailing `src.len() % width` bytes are not included.
pub fn split_planes(width: usize, src: &[u8], dst: &mut Vec<u8>) {
    dst.clear();
    if width == 0 {
        return;
    }
    let n = src.len() / width;
    dst.resize(n * width, 0);
    match width {
        2 => {
            let (p0, p1) = dst.split_at_mut(n);
            for ((e, a), b) in src.chunks_exact(2).zip(p0.iter_mut()).zip(p1.iter_mut()) {
                *a = e[0];
                *b = e[1];
            }
        }
        4 => {
            let (p0, rest) = dst.split_at_mut(n);
            let (p1, rest) = rest.split_at_mut(n);
            let (p2, p3) = rest.split_at_mut(n);
            for (i, e) in src.chunks_exact(4).enumerate().take(n) {
                p0[i] = e[0];
                p1[i] = e[1];
                p2[i] = e[2];
                p3[i] = e[3];
            }
        }
        _ => {
            for (i, e) in src.chunks_exact(width).enumerate() {
                for (j, &b) in e.iter().enumerate() {
                    dst[j * n + i] = b;
                }
            }
        }
    }
}

/// Inverse of [`split_planes`]: `planes` holds `width` planes of equal length; the interleaved
/// elements are appended to `out`.
pub fn merge_planes(width: usize, planes: &[u8], out: &mut Vec<u8>) {
    if width == 0 {
        return;
    }
    let n = planes.len() / width;
    let start = out.len();
    out.resize(start + n * width, 0);
    let dst = &mut out[start..];
    match width {
        2 => {
            let (p0, p1) = planes.split_at(n);
            for ((e, &a), &b) in dst.chunks_exact_mut(2).zip(p0).zip(&p1[..n]) {
                e[0] = a;
                e[1] = b;
            }
        }
        4 => {
            let (p0, rest) = planes.split_at(n);
            let (p1, rest) = rest.split_at(n);
            let (p2, p3) = rest.split_at(n);
            let p3 = &p3[..n];
            for (i, e) in dst.chunks_exact_mut(4).enumerate() {
                e[0] = p0[i];
                e[1] = p1[i];
                e[2] = p2[i];
                e[3] = p3[i];
            }
        }
        _ => {
            for (i, e) in dst.chunks_exact_mut(width).enumerate() {
                for (j, b) in e.iter_mut().enumerate() {
                    *b = planes[j * n + i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_round_trip_for_all_widths_and_lengths() {
        let src: Vec<u8> = (0..103u8).collect();
        for width in 1..=5 {
            let mut planes = Vec::new();
            split_planes(width, &src, &mut planes);
            let n = src.len() / width;
            assert_eq!(planes.len(), n * width);
            if width == 2 {
                assert_eq!(&planes[..3], &[0, 2, 4]);
                assert_eq!(&planes[n..n + 3], &[1, 3, 5]);
            }
            let mut out = vec![9];
            merge_planes(width, &planes, &mut out);
            assert_eq!(&out[1..], &src[..n * width]);
            assert_eq!(out[0], 9);
        }
    }
}
