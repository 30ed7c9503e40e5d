//! Link parameters, their validation, and parsers for the human forms used on the command line
//! (`50ms`, `100mbit`, `1%`).

use std::time::Duration;

use crate::Error;

/// Largest accepted one-way delay (or jitter, or reorder delay): beyond it the delay line would
/// hold more than any benchmark needs.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// Default bottleneck queue: 100 ms of the link rate, the queue the reference measurements used.
pub const DEFAULT_QUEUE: QueueLimit = QueueLimit::Millis(100);

/// Size of the drop-tail queue in front of the rate limiter. Ignored when the link has no rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLimit {
    /// At most this many bytes (IP packet bytes) wait for the link.
    Bytes(u64),
    /// At most this many milliseconds of the link rate wait for the link.
    Millis(u64),
}

/// Gilbert–Elliott bursty loss in its simple two-state form: the Bad state loses every packet, the
/// Good state none. Parameterised by what users know: the long-run loss rate and the mean burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// Long-run fraction of packets lost, in `[0, 1)`.
    pub mean_loss: f64,
    /// Mean number of consecutive losses in a burst, `>= 1`.
    pub mean_burst: f64,
}

impl GilbertElliott {
    /// Transition probabilities `(p, r)`: `p` is Good→Bad, `r` is Bad→Good per packet.
    /// Mean burst = 1/r; stationary loss = p/(p+r).
    pub fn transitions(&self) -> (f64, f64) {
        let r = 1.0 / self.mean_burst;
        let p = self.mean_loss * r / (1.0 - self.mean_loss);
        (p, r)
    }
}

/// What one direction of the emulated link does to packets.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkParams {
    /// One-way propagation delay added to every packet.
    pub delay: Duration,
    /// Each packet's delay varies uniformly in `delay ± jitter`; packets still leave in order
    /// (a packet never leaves before the one ahead of it) unless `reorder` selects it.
    pub jitter: Duration,
    /// Bottleneck rate in bits per second of IP packet bytes; `None` = unlimited.
    pub rate_bps: Option<u64>,
    /// Drop-tail queue in front of the rate limiter.
    pub queue: QueueLimit,
    /// Independent random loss probability per packet, `[0, 1]`.
    pub loss: f64,
    /// Bursty loss, applied in addition to `loss`.
    pub burst: Option<GilbertElliott>,
    /// Probability that a packet is held back by `reorder_delay` so later packets overtake it.
    pub reorder: f64,
    /// Extra delay of a reordered packet.
    pub reorder_delay: Duration,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
}

impl Default for LinkParams {
    fn default() -> Self {
        LinkParams {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            rate_bps: None,
            queue: DEFAULT_QUEUE,
            loss: 0.0,
            burst: None,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(10),
            duplicate: 0.0,
        }
    }
}

impl LinkParams {
    /// A link with only a one-way delay.
    pub fn with_delay(delay: Duration) -> Self {
        LinkParams {
            delay,
            ..LinkParams::default()
        }
    }

    /// Rejects values the model cannot honour; `dir` names the direction in the message.
    pub fn validate(&self, dir: &str) -> Result<(), Error> {
        let prob = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::InvalidParam {
                    field: format!("{dir}.{name}"),
                    value: v.to_string(),
                    reason: "must be a probability in [0, 1]".into(),
                })
            }
        };
        prob("loss", self.loss)?;
        prob("reorder", self.reorder)?;
        prob("duplicate", self.duplicate)?;
        for (name, d) in [
            ("delay", self.delay),
            ("jitter", self.jitter),
            ("reorder_delay", self.reorder_delay),
        ] {
            if d > MAX_DELAY {
                return Err(Error::InvalidParam {
                    field: format!("{dir}.{name}"),
                    value: format!("{d:?}"),
                    reason: format!("exceeds limit {MAX_DELAY:?}"),
                });
            }
        }
        if self.rate_bps == Some(0) {
            return Err(Error::InvalidParam {
                field: format!("{dir}.rate_bps"),
                value: "0".into(),
                reason: "a rate must be positive (use None for unlimited)".into(),
            });
        }
        match self.queue {
            QueueLimit::Bytes(0) | QueueLimit::Millis(0) => {
                return Err(Error::InvalidParam {
                    field: format!("{dir}.queue"),
                    value: format!("{:?}", self.queue),
                    reason: "a queue must hold something".into(),
                })
            }
            _ => {}
        }
        if let Some(ge) = self.burst {
            if !(0.0..1.0).contains(&ge.mean_loss) {
                return Err(Error::InvalidParam {
                    field: format!("{dir}.burst.mean_loss"),
                    value: ge.mean_loss.to_string(),
                    reason: "must be in [0, 1)".into(),
                });
            }
            if !(ge.mean_burst >= 1.0 && ge.mean_burst.is_finite()) {
                return Err(Error::InvalidParam {
                    field: format!("{dir}.burst.mean_burst"),
                    value: ge.mean_burst.to_string(),
                    reason: "must be a finite number >= 1".into(),
                });
            }
        }
        Ok(())
    }
}

/// The whole emulated WAN: both directions, the seed, and the namespaces' TCP settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WanConfig {
    /// Site A → site B.
    pub a_to_b: LinkParams,
    /// Site B → site A.
    pub b_to_a: LinkParams,
    /// Seeds every random decision, so the fate of the n-th packet of a direction is repeatable.
    pub seed: u64,
    /// TCP congestion control set in both namespaces (`cubic`, `bbr`, `reno`); `None` keeps the
    /// namespace default.
    pub congestion_control: Option<String>,
    /// Socket buffer ceiling written to `net.core.{r,w}mem_max` and the max of
    /// `net.ipv4.tcp_{r,w}mem` in both namespaces, so long fat paths can be filled.
    pub socket_buffer_max: u64,
}

/// Default socket buffer ceiling: 32 MiB covers 1 Gbit/s × 200 ms.
pub const DEFAULT_SOCKET_BUFFER_MAX: u64 = 32 << 20;

impl Default for WanConfig {
    fn default() -> Self {
        WanConfig {
            a_to_b: LinkParams::default(),
            b_to_a: LinkParams::default(),
            seed: 1,
            congestion_control: None,
            socket_buffer_max: DEFAULT_SOCKET_BUFFER_MAX,
        }
    }
}

impl WanConfig {
    /// The same link in both directions.
    pub fn symmetric(link: LinkParams) -> Self {
        WanConfig {
            a_to_b: link.clone(),
            b_to_a: link,
            ..WanConfig::default()
        }
    }
}

fn bad(what: &str, s: &str, reason: &str) -> Error {
    Error::Parse {
        what: what.to_string(),
        value: s.to_string(),
        reason: reason.to_string(),
    }
}

fn split_number(s: &str) -> (&str, &str) {
    let idx = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..idx], s[idx..].trim())
}

/// Parses `50ms`, `1.5s`, `200us`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, Error> {
    let t = s.trim();
    let (num, unit) = split_number(t);
    let v: f64 = num
        .parse()
        .map_err(|_| bad("duration", s, "expected a number with a unit, e.g. 50ms"))?;
    let secs = match unit.to_ascii_lowercase().as_str() {
        "" if v == 0.0 => 0.0,
        "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        _ => return Err(bad("duration", s, "unit must be one of s, ms, us, ns")),
    };
    let d = Duration::try_from_secs_f64(secs).map_err(|_| bad("duration", s, "out of range"))?;
    if d > MAX_DELAY {
        return Err(bad("duration", s, "exceeds the 10 s limit"));
    }
    Ok(d)
}

/// Parses a rate in bits per second: `100mbit`, `1gbit`, `500kbit`, `1.5Gbps`, `64000bit`.
pub fn parse_rate(s: &str) -> Result<u64, Error> {
    let t = s.trim();
    let (num, unit) = split_number(t);
    let v: f64 = num
        .parse()
        .map_err(|_| bad("rate", s, "expected a number with a unit, e.g. 100mbit"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "bit" | "bps" | "b/s" => 1.0,
        "kbit" | "kbps" | "k" => 1e3,
        "mbit" | "mbps" | "m" => 1e6,
        "gbit" | "gbps" | "g" => 1e9,
        _ => return Err(bad("rate", s, "unit must be one of bit, kbit, mbit, gbit")),
    };
    let bps = v * mult;
    if !(1.0..=1e12).contains(&bps) {
        return Err(bad("rate", s, "must be between 1 bit/s and 1 Tbit/s"));
    }
    Ok(bps.round() as u64)
}

/// Parses a probability: `1%`, `0.5%`, or a fraction `0.01`.
pub fn parse_probability(s: &str) -> Result<f64, Error> {
    let t = s.trim();
    let (body, pct) = match t.strip_suffix('%') {
        Some(b) => (b.trim(), true),
        None => (t, false),
    };
    let v: f64 = body
        .parse()
        .map_err(|_| bad("probability", s, "expected e.g. 1% or 0.01"))?;
    let p = if pct { v / 100.0 } else { v };
    if !(0.0..=1.0).contains(&p) {
        return Err(bad("probability", s, "must be within 0%..100%"));
    }
    Ok(p)
}

/// Parses a queue limit: `100ms` (of the rate), `64kb`/`1mb`/`1500b`/`1500` (bytes).
pub fn parse_queue(s: &str) -> Result<QueueLimit, Error> {
    let t = s.trim();
    let (num, unit) = split_number(t);
    let v: u64 = num.parse().map_err(|_| {
        bad(
            "queue",
            s,
            "expected an integer with a unit, e.g. 100ms or 256kb",
        )
    })?;
    let q = match unit.to_ascii_lowercase().as_str() {
        "ms" => QueueLimit::Millis(v),
        "" | "b" => QueueLimit::Bytes(v),
        "kb" | "kib" => QueueLimit::Bytes(v.saturating_mul(1024)),
        "mb" | "mib" => QueueLimit::Bytes(v.saturating_mul(1 << 20)),
        _ => return Err(bad("queue", s, "unit must be one of ms, b, kb, mb")),
    };
    if matches!(q, QueueLimit::Bytes(0) | QueueLimit::Millis(0)) {
        return Err(bad("queue", s, "must be positive"));
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn human_forms_parse_to_base_units() {
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_rate("100mbit").unwrap(), 100_000_000);
        assert_eq!(parse_rate("1.5Gbit").unwrap(), 1_500_000_000);
        assert_eq!(parse_probability("1%").unwrap(), 0.01);
        assert_eq!(parse_probability("0.25").unwrap(), 0.25);
        assert_eq!(parse_queue("100ms").unwrap(), QueueLimit::Millis(100));
        assert_eq!(parse_queue("64kb").unwrap(), QueueLimit::Bytes(65536));
    }

    #[test]
    fn malformed_values_are_rejected_with_the_value_named() {
        for (r, v) in [
            (parse_duration("50").err(), "50"),
            (parse_duration("fast").err(), "fast"),
            (parse_rate("100").err(), "100"),
            (parse_rate("0mbit").err(), "0mbit"),
            (parse_probability("150%").err(), "150%"),
            (parse_queue("0ms").err(), "0ms"),
        ] {
            let msg = r.unwrap().to_string();
            assert!(msg.contains(v), "{msg}");
        }
    }

    #[test]
    fn gilbert_elliott_transitions_give_the_mean_loss() {
        let ge = GilbertElliott {
            mean_loss: 0.01,
            mean_burst: 4.0,
        };
        let (p, r) = ge.transitions();
        assert!((r - 0.25).abs() < 1e-12);
        assert!((p / (p + r) - 0.01).abs() < 1e-12);
    }

    #[test]
    fn invalid_link_params_name_the_field() {
        let l = LinkParams {
            loss: 1.5,
            ..LinkParams::default()
        };
        let msg = l.validate("a_to_b").unwrap_err().to_string();
        assert!(msg.contains("a_to_b.loss") && msg.contains("1.5"), "{msg}");
    }
}
