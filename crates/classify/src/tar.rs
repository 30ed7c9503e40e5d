//! Tar member boundaries, from the 512-byte header blocks alone. The data path cuts chunks where a
//! member begins, so adding one member to a WebDataset shard leaves the chunks of the others intact.
//!
//! [`TarWalker`] is sans-IO: it says which offset holds the next header, the caller hands it that
//! block when the bytes pass by, and it returns the member. [`tar_members`] runs it over a buffer.

use crate::Error;

/// Tar block size; headers and member data are aligned to it.
pub const TAR_BLOCK: usize = 512;
/// Most members [`tar_members`] indexes in one call (memory bound for a hostile archive).
pub const MAX_TAR_MEMBERS: usize = 1 << 20;
/// Largest member size accepted (1 TiB); base-256 size fields could otherwise claim 2^88 bytes.
const MAX_TAR_MEMBER_SIZE: u64 = 1 << 40;
/// Largest GNU long-name payload that [`tar_members`] applies to the following member.
const MAX_LONG_NAME: u64 = 64 * 1024;

/// What a member is, from its type flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TarMemberKind {
    /// Regular file (`0`, NUL or `7`).
    File,
    /// Directory (`5`).
    Dir,
    /// Hard or symbolic link (`1`, `2`).
    Link,
    /// GNU long name or long link target (`L`, `K`): the data is the next member's name.
    LongName,
    /// PAX extended header (`x`, `g`).
    Pax,
    /// Any other type flag (devices, FIFOs, vendor extensions).
    Other(u8),
}

/// One member's place in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarMember {
    /// Offset of the header block.
    pub header_offset: u64,
    /// Offset of the first data byte (header offset + 512).
    pub data_offset: u64,
    /// Data length in bytes (before padding to 512).
    pub size: u64,
    /// Member type.
    pub kind: TarMemberKind,
    /// Path as stored in the header (ustar prefix joined); non-UTF-8 bytes replaced.
    pub name: String,
}

impl TarMember {
    /// Offset of the block after this member's padded data, where the next header is.
    pub fn next_header_offset(&self) -> u64 {
        // Checked when parsed; saturates for a member built by hand.
        self.data_offset.saturating_add(padded(self.size))
    }
}

fn padded(size: u64) -> u64 {
    // Rounds up to a whole block; saturates (only a hand-built member's size can get there:
    // parsed sizes are at most MAX_TAR_MEMBER_SIZE).
    size.div_ceil(TAR_BLOCK as u64)
        .saturating_mul(TAR_BLOCK as u64)
}

/// Walks tar headers as the archive streams past.
#[derive(Debug, Clone, Default)]
pub struct TarWalker {
    next: u64,
    done: bool,
}

impl TarWalker {
    /// A walker at the start of an archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offset of the block the walker needs next; `None` after the end-of-archive marker.
    pub fn next_header_offset(&self) -> Option<u64> {
        (!self.done).then_some(self.next)
    }

    /// Whether the end-of-archive marker (a zero block) has been seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Feed the 512-byte block at [`next_header_offset`](Self::next_header_offset). Returns the
    /// member it describes, or `None` at the end-of-archive marker.
    pub fn feed(&mut self, block: &[u8]) -> Result<Option<TarMember>, Error> {
        if self.done {
            return Ok(None);
        }
        let member = parse_header(block, self.next)?;
        match &member {
            None => self.done = true,
            Some(m) => self.next = m.next_header_offset(),
        }
        Ok(member)
    }
}

/// The members whose headers lie inside `buf` (an archive's first bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarIndex {
    /// Members in archive order.
    pub members: Vec<TarMember>,
    /// Offset of the end-of-archive marker, if it is inside `buf`.
    pub end: Option<u64>,
    /// Offset of the first header not inside `buf` (where a streaming caller resumes).
    pub next_header: u64,
}

/// Index the members whose header blocks are inside `buf`. GNU long names are applied to the
/// following member when their data is inside `buf`. Fails on the first malformed header.
pub fn tar_members(buf: &[u8]) -> Result<TarIndex, Error> {
    let mut walker = TarWalker::new();
    let mut members: Vec<TarMember> = Vec::new();
    let mut long_name: Option<String> = None;
    loop {
        let Some(off) = walker.next_header_offset() else {
            let end = members.last().map_or(0, TarMember::next_header_offset);
            return Ok(TarIndex {
                members,
                end: Some(end),
                next_header: end,
            });
        };
        let block = usize::try_from(off)
            .ok()
            .and_then(|o| Some(o..o.checked_add(TAR_BLOCK)?))
            .and_then(|r| buf.get(r));
        let Some(block) = block else {
            return Ok(TarIndex {
                members,
                end: None,
                next_header: off,
            });
        };
        let Some(mut m) = walker.feed(block)? else {
            continue;
        };
        if members.len() == MAX_TAR_MEMBERS {
            return Err(Error::TooLarge {
                what: "tar member count",
                len: MAX_TAR_MEMBERS as u64 + 1,
                max: MAX_TAR_MEMBERS as u64,
            });
        }
        if m.kind == TarMemberKind::LongName {
            long_name = long_name_data(buf, &m);
        } else if let Some(name) = long_name.take() {
            m.name = name;
        }
        members.push(m);
    }
}

fn long_name_data(buf: &[u8], m: &TarMember) -> Option<String> {
    if m.size > MAX_LONG_NAME {
        return None;
    }
    let start = usize::try_from(m.data_offset).ok()?;
    let data = buf.get(start..start.checked_add(m.size as usize)?)?;
    let data = data.split(|&b| b == 0).next().unwrap_or(data);
    Some(String::from_utf8_lossy(data).into_owned())
}

/// Parse one header block at `offset`; `Ok(None)` for the all-zero end-of-archive block.
fn parse_header(block: &[u8], offset: u64) -> Result<Option<TarMember>, Error> {
    let err = |reason: String| Error::Tar { offset, reason };
    if block.len() != TAR_BLOCK {
        return Err(err(format!(
            "header block is {} bytes, not {TAR_BLOCK}",
            block.len()
        )));
    }
    if block.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let stored = parse_octal(&block[148..156]).ok_or_else(|| {
        err(format!(
            "checksum field {:?} is not octal",
            field_text(&block[148..156])
        ))
    })?;
    let unsigned: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u64
            }
        })
        .sum();
    // Some historic writers summed signed chars; tar readers accept either.
    let signed: i64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as i8 as i64
            }
        })
        .sum();
    if stored != unsigned && stored as i64 != signed {
        return Err(err(format!(
            "checksum {stored} does not match computed {unsigned}"
        )));
    }
    let size = parse_size(&block[124..136]).ok_or_else(|| {
        err(format!(
            "size field {:?} is not a number",
            field_text(&block[124..136])
        ))
    })?;
    if size > MAX_TAR_MEMBER_SIZE {
        return Err(Error::TooLarge {
            what: "tar member",
            len: size,
            max: MAX_TAR_MEMBER_SIZE,
        });
    }
    let kind = match block[156] {
        b'0' | 0 | b'7' => TarMemberKind::File,
        b'5' => TarMemberKind::Dir,
        b'1' | b'2' => TarMemberKind::Link,
        b'L' | b'K' => TarMemberKind::LongName,
        b'x' | b'g' => TarMemberKind::Pax,
        other => TarMemberKind::Other(other),
    };
    let name = cstr(&block[0..100]);
    // POSIX ustar splits long paths into prefix/name; GNU tar uses those bytes for other fields.
    let name = if &block[257..263] == b"ustar\0" && block[345] != 0 {
        format!(
            "{}/{}",
            String::from_utf8_lossy(cstr(&block[345..500])),
            String::from_utf8_lossy(name)
        )
    } else {
        String::from_utf8_lossy(name).into_owned()
    };
    // The walker's next offset is this member's end: it must fit a u64.
    let data_offset = offset
        .checked_add(TAR_BLOCK as u64)
        .filter(|d| d.checked_add(padded(size)).is_some())
        .ok_or_else(|| {
            err(format!(
                "member of {size} bytes ends past the largest offset"
            ))
        })?;
    Ok(Some(TarMember {
        header_offset: offset,
        data_offset,
        size,
        kind,
        name,
    }))
}

fn cstr(field: &[u8]) -> &[u8] {
    field.split(|&b| b == 0).next().unwrap_or(field)
}

fn field_text(field: &[u8]) -> String {
    String::from_utf8_lossy(field).into_owned()
}

/// Octal number, optionally space-padded in front and NUL/space-terminated; at least one digit.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let mut i = 0;
    while i < field.len() && field[i] == b' ' {
        i += 1;
    }
    let mut value: u64 = 0;
    let mut digits = 0;
    while i < field.len() && (b'0'..=b'7').contains(&field[i]) {
        value = value
            .checked_mul(8)?
            .checked_add((field[i] - b'0') as u64)?;
        digits += 1;
        i += 1;
    }
    if digits == 0 || !field[i..].iter().all(|&b| b == 0 || b == b' ') {
        return None;
    }
    Some(value)
}

/// Size field: octal, or GNU base-256 (high bit of the first byte set) for sizes over 8 GiB.
fn parse_size(field: &[u8]) -> Option<u64> {
    match field.first() {
        Some(&b) if b & 0x80 != 0 => {
            if b != 0x80 {
                return None; // negative, or more than 88 bits
            }
            field[1..]
                .iter()
                .try_fold(0u64, |acc, &d| acc.checked_mul(256)?.checked_add(d as u64))
        }
        _ => parse_octal(field),
    }
}

#[cfg(test)]
pub(crate) mod tests;
