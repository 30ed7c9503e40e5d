//! What several fuzz targets share.

/// A byte-coded program: each call takes the next input bytes (0 once they run out).
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }

    /// The next eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        (0..8).fold(0, |a, i| a | u64::from(self.u8()) << (8 * i))
    }
}
