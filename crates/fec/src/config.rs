//! FEC configuration: `fec = "off" | "adaptive" | { data = k, repair = m }`.

use std::{fmt, time::Duration};

use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::{coder::CoderKind, FecError};

/// Largest source packets per block the config accepts.
pub const MAX_K: usize = 128;
/// Largest repair packets per block the config accepts.
pub const MAX_M: usize = 64;
/// Deepest interleaving the adaptive controller uses.
pub const MAX_INTERLEAVE: usize = 8;
/// Default residual block-failure target for adaptive mode. What a failed block costs is one
/// loss QUIC sees: a retransmission and, for a loss-based congestion controller, a window cut.
/// At 1e-4 a block of 64 fails once in 640,000 packets; Cubic's response function
/// (W ≈ 1.05 · RTT^0.75 / p^0.75 packets, RFC 9438) then allows about 4,000 packets at 100 ms,
/// five times the window that fills 100 Mbit/s, so residual loss does not limit it. 1e-5 bought
/// nothing more and cost a repair packet per full block at 1 % loss (7 of 64 instead of 6;
/// Cubic's goodput on the FEC benchmark's 100 Mbit/s, 100 ms, 1 % link: 79.2–80.5 Mbit/s
/// against 80.8–81.4 at 1e-4).
pub const DEFAULT_TARGET: f64 = 1e-4;
/// Default cap on repair/source for adaptive mode.
pub const DEFAULT_MAX_RATIO: f64 = 0.5;
/// Default source packets per block in adaptive mode. 64 needs less repair than 32 for the same
/// residual (1% loss: 6/64 vs 5/32), and a full block of 64 spans ~8 ms at 100 Mbit/s; small
/// messages close their own smaller blocks on the idle flush anyway.
pub const DEFAULT_ADAPTIVE_K: u8 = 64;

/// What FEC does on a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum FecMode {
    /// No FEC: the socket is not wrapped.
    #[default]
    Off,
    /// Repair follows the loss the receiver measures; none at zero loss.
    Adaptive {
        /// Residual probability that a block cannot be rebuilt.
        target: f64,
        /// Cap on repair packets / source packets.
        max_ratio: f64,
    },
    /// Always `m` repair packets per `k` source packets.
    Fixed {
        /// Source packets per block.
        k: u8,
        /// Repair packets per block.
        m: u8,
    },
}

impl FecMode {
    /// Adaptive with the default target and cap.
    pub fn adaptive() -> Self {
        FecMode::Adaptive {
            target: DEFAULT_TARGET,
            max_ratio: DEFAULT_MAX_RATIO,
        }
    }

    /// Checks ranges; errors name the field and value.
    pub fn validate(&self) -> Result<(), FecError> {
        match *self {
            FecMode::Off => Ok(()),
            FecMode::Adaptive { target, max_ratio } => {
                if !(target > 0.0 && target < 1.0) {
                    return Err(FecError::InvalidConfig {
                        field: "target",
                        value: target.to_string(),
                        reason: "must be in (0, 1)",
                    });
                }
                if !(0.0..=1.0).contains(&max_ratio) {
                    return Err(FecError::InvalidConfig {
                        field: "max_ratio",
                        value: max_ratio.to_string(),
                        reason: "must be in [0, 1]",
                    });
                }
                Ok(())
            }
            FecMode::Fixed { k, m } => {
                if k == 0 || k as usize > MAX_K {
                    return Err(FecError::InvalidConfig {
                        field: "data",
                        value: k.to_string(),
                        reason: "must be in 1..=128",
                    });
                }
                if m as usize > MAX_M {
                    return Err(FecError::InvalidConfig {
                        field: "repair",
                        value: m.to_string(),
                        reason: "must be in 0..=64",
                    });
                }
                Ok(())
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for FecMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FecMode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "\"off\", \"adaptive\", { data = k, repair = m } or { target = p, max_ratio = r }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FecMode, E> {
                match v {
                    "off" => Ok(FecMode::Off),
                    "adaptive" => Ok(FecMode::adaptive()),
                    other => Err(E::custom(format!(
                        "fec = \"{other}\": expected \"off\", \"adaptive\" or {{ data = k, repair = m }}"
                    ))),
                }
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<FecMode, E> {
                Err(E::custom(format!(
                    "fec = {v}: expected \"off\", \"adaptive\" or {{ data = k, repair = m }}"
                )))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FecMode, A::Error> {
                let (mut data, mut repair, mut target, mut ratio) = (None, None, None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "data" => data = Some(map.next_value::<u64>()?),
                        "repair" => repair = Some(map.next_value::<u64>()?),
                        "target" => target = Some(map.next_value::<f64>()?),
                        "max_ratio" => ratio = Some(map.next_value::<f64>()?),
                        other => {
                            return Err(de::Error::custom(format!(
                            "fec.{other}: unknown key (expected data, repair, target, max_ratio)"
                        )))
                        }
                    }
                }
                let mode = match (data, repair, target, ratio) {
                    (Some(k), Some(m), None, None) => {
                        let k = u8::try_from(k).map_err(|_| {
                            de::Error::custom(format!("fec.data = {k}: must be in 1..=128"))
                        })?;
                        let m = u8::try_from(m).map_err(|_| {
                            de::Error::custom(format!("fec.repair = {m}: must be in 0..=64"))
                        })?;
                        FecMode::Fixed { k, m }
                    }
                    (None, None, t, r) => FecMode::Adaptive {
                        target: t.unwrap_or(DEFAULT_TARGET),
                        max_ratio: r.unwrap_or(DEFAULT_MAX_RATIO),
                    },
                    _ => {
                        return Err(de::Error::custom(
                            "fec: give both data and repair (fixed) or only target/max_ratio (adaptive)",
                        ))
                    }
                };
                mode.validate().map_err(de::Error::custom)?;
                Ok(mode)
            }
        }
        d.deserialize_any(V)
    }
}

/// Everything the FEC layer needs; `FecConfig::new(mode)` gives defaults for the rest.
#[derive(Debug, Clone)]
pub struct FecConfig {
    /// What FEC does.
    pub mode: FecMode,
    /// Source packets per full block in adaptive mode.
    pub adaptive_k: u8,
    /// A partial block is closed and its repair sent when the sender has been idle this long.
    pub idle_flush: Duration,
    /// A block is closed at the latest this long after its first packet, so a slow steady sender
    /// still gets timely repair.
    pub max_block_delay: Duration,
    /// How often a receiver reports loss to the sender.
    pub report_interval: Duration,
    /// A loss revealed at a queueing delay at least this large, and near the recent peak, is
    /// congestion: it does not raise repair (RFC 9265: do not hide congestion).
    pub congestion_delay: Duration,
    /// Which erasure code the sender uses (the receiver decodes both).
    pub coder: CoderKind,
    /// Adaptive mode: protect a connection's first packets for an assumed loss until the peer
    /// has measured the path (see [`crate::controller::STARTUP_LOSS`]).
    pub startup_prior: bool,
    /// Test-only: probability that the socket wrapper drops an outgoing datagram.
    #[doc(hidden)]
    pub test_drop_rate: f64,
    /// Test-only: seed of the drop hook.
    #[doc(hidden)]
    pub test_seed: u64,
}

impl Default for FecConfig {
    fn default() -> Self {
        FecConfig::new(FecMode::Off)
    }
}

impl FecConfig {
    /// Defaults for everything but the mode.
    pub fn new(mode: FecMode) -> Self {
        FecConfig {
            mode,
            adaptive_k: DEFAULT_ADAPTIVE_K,
            idle_flush: Duration::from_millis(2),
            max_block_delay: Duration::from_millis(10),
            report_interval: Duration::from_millis(100),
            congestion_delay: Duration::from_millis(10),
            coder: CoderKind::default(),
            startup_prior: true,
            test_drop_rate: 0.0,
            test_seed: 0,
        }
    }

    /// How many packets may arrive after a lost one before FEC delivers it rebuilt: a whole
    /// interleaving round of full blocks with their repair. QUIC must not declare a packet lost
    /// on reordering alone within this span (quinn: `TransportConfig::packet_threshold`), or
    /// every loss FEC repairs is still a spurious loss, a retransmission and a congestion event.
    pub fn reorder_span(&self) -> u32 {
        let (k, m, depth) = match self.mode {
            FecMode::Off => return 0,
            FecMode::Fixed { k, m } => (k as usize, m as usize, 1),
            FecMode::Adaptive { max_ratio, .. } => {
                let k = self.adaptive_k as usize;
                (
                    k,
                    crate::controller::repair_cap_for_burst(
                        k,
                        max_ratio,
                        crate::controller::MAX_SMALL_BLOCK_REPAIR as f64,
                    ),
                    MAX_INTERLEAVE,
                )
            }
        };
        ((k + m) * depth) as u32
    }

    /// Checks every field; errors name the field and value.
    pub fn validate(&self) -> Result<(), FecError> {
        self.mode.validate()?;
        if self.adaptive_k == 0 || self.adaptive_k as usize > MAX_K {
            return Err(FecError::InvalidConfig {
                field: "adaptive_k",
                value: self.adaptive_k.to_string(),
                reason: "must be in 1..=128",
            });
        }
        for (field, d) in [
            ("idle_flush", self.idle_flush),
            ("max_block_delay", self.max_block_delay),
            ("report_interval", self.report_interval),
        ] {
            if d.is_zero() || d > Duration::from_secs(10) {
                return Err(FecError::InvalidConfig {
                    field,
                    value: format!("{d:?}"),
                    reason: "must be in (0, 10s]",
                });
            }
        }
        if !(0.0..1.0).contains(&self.test_drop_rate) {
            return Err(FecError::InvalidConfig {
                field: "test_drop_rate",
                value: self.test_drop_rate.to_string(),
                reason: "must be in [0, 1)",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(serde::Deserialize)]
    struct T {
        fec: FecMode,
    }

    #[test]
    fn toml_forms_map_onto_modes() {
        let t: T = toml::from_str(r#"fec = "off""#).unwrap();
        assert_eq!(t.fec, FecMode::Off);
        let t: T = toml::from_str(r#"fec = "adaptive""#).unwrap();
        assert_eq!(t.fec, FecMode::adaptive());
        let t: T = toml::from_str("fec = { data = 16, repair = 4 }").unwrap();
        assert_eq!(t.fec, FecMode::Fixed { k: 16, m: 4 });
        let t: T = toml::from_str("fec = { target = 0.001, max_ratio = 0.25 }").unwrap();
        assert_eq!(
            t.fec,
            FecMode::Adaptive {
                target: 0.001,
                max_ratio: 0.25
            }
        );
    }

    #[test]
    fn bad_toml_forms_name_the_value() {
        let e = toml::from_str::<T>(r#"fec = "always""#)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("fec = \"always\""), "{e}");
        let e = toml::from_str::<T>("fec = { data = 0, repair = 4 }")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("fec.data = 0"), "{e}");
        let e = toml::from_str::<T>("fec = { data = 16 }")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("both data and repair"), "{e}");
        let e = toml::from_str::<T>("fec = { data = 16, repair = 4, x = 1 }")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("fec.x"), "{e}");
    }
}
