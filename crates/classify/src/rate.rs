//! Byte rates and a pure token bucket. The caller supplies `now`, so tests drive it with a fake
//! clock and the data path decides how to wait.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The smallest default burst: one 64 KiB chunk must pass without waiting.
pub const DEFAULT_BURST_MIN: u64 = 64 * 1024;
const NANOS_PER_SEC: i128 = 1_000_000_000;

/// A rate in bytes per second, never zero (a zero cap would be a deny, which is an action).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteRate(NonZeroU64);

impl ByteRate {
    /// A rate of `bytes_per_sec`; `None` for zero.
    pub fn new(bytes_per_sec: u64) -> Option<Self> {
        NonZeroU64::new(bytes_per_sec).map(ByteRate)
    }

    /// Bytes per second.
    pub fn bytes_per_sec(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for ByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}B/s", self.0)
    }
}

impl FromStr for ByteRate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_byte_rate(s)
    }
}

impl<'de> serde::Deserialize<'de> for ByteRate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_byte_rate(&s).map_err(serde::de::Error::custom)
    }
}

/// Parse `"50MB/s"`, `"1.5 GiB/s"`, `"100Mbit/s"`, `"100Mbps"`, `"800kB/s"`.
///
/// Byte units need `/s`: `B`, `kB`/`KB`, `MB`, `GB`, `TB` (powers of 1000) and `KiB`, `MiB`,
/// `GiB`, `TiB` (powers of 1024). Bit units: `bit/s` or `bps` with the same decimal prefixes.
/// The result must be at least 1 byte per second.
pub fn parse_byte_rate(s: &str) -> Result<ByteRate, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim_start();
    let value: f64 = num
        .parse()
        .map_err(|_| format!("no number in rate {s:?}"))?;
    let (prefix, bits) = if let Some(p) = unit
        .strip_suffix("bit/s")
        .or_else(|| unit.strip_suffix("bps"))
    {
        (p, true)
    } else if let Some(p) = unit.strip_suffix("B/s") {
        (p, false)
    } else {
        return Err(
            "unit must be B/s, kB/s, MB/s, GB/s, KiB/s, MiB/s, GiB/s, bit/s, Mbit/s, Mbps, ..."
                .into(),
        );
    };
    let mult: f64 = match (prefix, bits) {
        ("", _) => 1.0,
        ("k" | "K", _) => 1e3,
        ("M", _) => 1e6,
        ("G", _) => 1e9,
        ("T", _) => 1e12,
        ("Ki", false) => 1024.0,
        ("Mi", false) => 1024.0 * 1024.0,
        ("Gi", false) => 1024.0 * 1024.0 * 1024.0,
        ("Ti", false) => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("unknown unit prefix {prefix:?}")),
    };
    let bytes = value * mult / if bits { 8.0 } else { 1.0 };
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err("rate is too large".into());
    }
    ByteRate::new(bytes.round() as u64)
        .ok_or_else(|| "rate must be at least 1 byte per second".into())
}

/// Token bucket in "debt" form: [`take`](Self::take) always accounts the bytes and returns how
/// long the caller must wait before sending them so the average stays at the rate. Sends larger
/// than the burst therefore work (they just wait longer), and concurrent flows sharing one bucket
/// queue up behind each other's debt.
///
/// Levels are kept in byte-nanoseconds (i128), so refills are exact integer arithmetic with no
/// drift, whatever the call pattern.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Available bytes × 10^9; negative while in debt.
    level: i128,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` and holding at most `burst` bytes (at least 1).
    pub fn new(rate: ByteRate, burst: u64) -> Self {
        let burst = burst.max(1);
        TokenBucket {
            rate: rate.bytes_per_sec(),
            burst,
            level: burst as i128 * NANOS_PER_SEC,
            last: None,
        }
    }

    /// A bucket whose burst is 100 ms of traffic, at least [`DEFAULT_BURST_MIN`].
    pub fn with_default_burst(rate: ByteRate) -> Self {
        Self::new(rate, (rate.bytes_per_sec() / 10).max(DEFAULT_BURST_MIN))
    }

    /// The configured rate.
    pub fn rate(&self) -> ByteRate {
        // Built from a ByteRate, so never zero.
        ByteRate::new(self.rate).unwrap_or(ByteRate(NonZeroU64::MIN))
    }

    /// The configured burst in bytes.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Account `bytes` sent at `now`. `None`: send now. `Some(wait)`: send after `wait`.
    /// A `now` earlier than a previous call counts as no time passing.
    pub fn take(&mut self, bytes: u64, now: Instant) -> Option<Duration> {
        self.refill(now);
        self.level -= bytes as i128 * NANOS_PER_SEC;
        if self.level >= 0 {
            return None;
        }
        let rate = self.rate as i128;
        let wait_ns = (-self.level + rate - 1) / rate;
        Some(Duration::from_nanos(
            u64::try_from(wait_ns).unwrap_or(u64::MAX),
        ))
    }

    /// Whole bytes available at `now` (negative while in debt).
    pub fn available(&mut self, now: Instant) -> i64 {
        self.refill(now);
        let bytes = self.level.div_euclid(NANOS_PER_SEC);
        i64::try_from(bytes).unwrap_or(if bytes < 0 { i64::MIN } else { i64::MAX })
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            if now <= last {
                return;
            }
            let elapsed = now.duration_since(last).as_nanos() as i128;
            let cap = self.burst as i128 * NANOS_PER_SEC;
            self.level = self
                .level
                .saturating_add(elapsed.saturating_mul(self.rate as i128))
                .min(cap);
        }
        self.last = Some(match self.last {
            Some(last) if last > now => last,
            _ => now,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(n: u64) -> ByteRate {
        ByteRate::new(n).unwrap_or(ByteRate(NonZeroU64::MIN))
    }

    #[test]
    fn parses_byte_and_bit_units() {
        let cases = [
            ("50MB/s", 50_000_000),
            ("1.5 GiB/s", 1_610_612_736),
            ("100Mbit/s", 12_500_000),
            ("100Mbps", 12_500_000),
            ("800kB/s", 800_000),
            ("800KB/s", 800_000),
            ("64KiB/s", 65_536),
            ("1B/s", 1),
            ("8bps", 1),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse_byte_rate(text).map(ByteRate::bytes_per_sec),
                Ok(want),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_rates_without_unit_zero_or_garbage() {
        for bad in [
            "50",
            "50MB",
            "0MB/s",
            "MB/s",
            "50XB/s",
            "50Mib/s",
            "-5MB/s",
            "1e400GB/s",
            "",
            "1bit/s",
        ] {
            assert!(parse_byte_rate(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn full_bucket_passes_burst_then_waits_exactly_for_the_deficit() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(1000), 500);
        assert_eq!(b.take(500, t0), None);
        // 250 bytes of debt at 1000 B/s = 250 ms.
        assert_eq!(b.take(250, t0), Some(Duration::from_millis(250)));
        // After those 250 ms the debt is repaid; another 100 bytes waits 100 ms.
        assert_eq!(
            b.take(100, t0 + Duration::from_millis(250)),
            Some(Duration::from_millis(100))
        );
    }

    #[test]
    fn refill_is_capped_at_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(1000), 500);
        assert_eq!(b.take(500, t0), None);
        // An hour idle refills only up to the burst.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.available(later), 500);
        assert_eq!(b.take(600, later), Some(Duration::from_millis(100)));
    }

    #[test]
    fn long_run_average_equals_rate() {
        // Send 1 MB in 10 kB pieces, sleeping whatever the bucket says, on a fake clock.
        let t0 = Instant::now();
        let mut now = t0;
        let mut b = TokenBucket::new(rate(100_000), 10_000);
        for _ in 0..100 {
            if let Some(w) = b.take(10_000, now) {
                now += w;
            }
        }
        // 1 MB at 100 kB/s with the first 10 kB free from the burst: 9.9 s.
        assert_eq!(now - t0, Duration::from_millis(9_900));
    }

    #[test]
    fn clock_going_backwards_adds_no_tokens() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(rate(1000), 1000);
        assert_eq!(b.take(1000, t0), None);
        assert_eq!(
            b.take(1000, t0 - Duration::from_secs(5)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(b.available(t0), -1000);
    }

    #[test]
    fn default_burst_is_a_tenth_of_a_second_but_at_least_one_chunk() {
        assert_eq!(
            TokenBucket::with_default_burst(rate(50_000_000)).burst(),
            5_000_000
        );
        assert_eq!(
            TokenBucket::with_default_burst(rate(1000)).burst(),
            DEFAULT_BURST_MIN
        );
    }

    #[test]
    fn sub_nanosecond_deficits_round_up() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(3), 1);
        assert_eq!(b.take(1, t0), None);
        // 1 byte at 3 B/s = 333333333.3 ns, rounded up so the caller never sends early.
        assert_eq!(b.take(1, t0), Some(Duration::from_nanos(333_333_334)));
    }
}
