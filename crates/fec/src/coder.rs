//! Erasure coders behind one small trait, so implementations can be measured against each other.

use std::collections::HashMap;

use crate::FecError;

/// Systematic erasure code over equal-length shards: `k` source shards give `m` repair shards, and
/// any `k` of the `k + m` rebuild the sources.
pub trait ErasureCoder: Send {
    /// Short name for errors and benchmarks.
    fn name(&self) -> &'static str;
    /// Id carried in repair headers so the receiver uses the same code.
    fn id(&self) -> u8;
    /// Computes `repair.len()` repair shards from `sources` (all the same even length); every
    /// repair shard is resized to that length.
    fn encode(&mut self, sources: &[&[u8]], repair: &mut [Vec<u8>]) -> Result<(), FecError>;
    /// `shards` holds `k` source slots followed by `m` repair slots, `None` where lost; fills every
    /// missing source slot. Needs at least `k` present shards of one even length.
    fn reconstruct(&mut self, k: usize, shards: &mut [Option<Vec<u8>>]) -> Result<(), FecError>;
}

/// Coder ids on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CoderKind {
    /// `reed-solomon-erasure` 6 (GF(2^8), `simd-accel`).
    #[default]
    ReedSolomonErasure,
    /// `reed-solomon-simd` 3 (Leopard-style FFT over GF(2^16)).
    ReedSolomonSimd,
}

impl CoderKind {
    /// Wire id.
    pub fn id(self) -> u8 {
        match self {
            CoderKind::ReedSolomonErasure => 0,
            CoderKind::ReedSolomonSimd => 1,
        }
    }
    /// Kind for a wire id.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            0 => Some(CoderKind::ReedSolomonErasure),
            1 => Some(CoderKind::ReedSolomonSimd),
            _ => None,
        }
    }
    /// A fresh coder of this kind.
    pub fn build(self) -> Box<dyn ErasureCoder> {
        match self {
            CoderKind::ReedSolomonErasure => Box::new(RseCoder::default()),
            CoderKind::ReedSolomonSimd => Box::new(SimdCoder::default()),
        }
    }
}

/// Matrices built per (k, m) are cached; this bounds the cache.
pub const MAX_CACHED_CODECS: usize = 64;

/// `reed-solomon-erasure` with its SIMD backend.
#[derive(Default)]
pub struct RseCoder {
    cache: HashMap<(usize, usize), reed_solomon_erasure::galois_8::ReedSolomon>,
}

impl RseCoder {
    fn codec(
        &mut self,
        k: usize,
        m: usize,
    ) -> Result<&reed_solomon_erasure::galois_8::ReedSolomon, FecError> {
        if !self.cache.contains_key(&(k, m)) {
            if self.cache.len() >= MAX_CACHED_CODECS {
                self.cache.clear();
            }
            let rs = reed_solomon_erasure::galois_8::ReedSolomon::new(k, m).map_err(|e| {
                FecError::Coder {
                    coder: "reed-solomon-erasure",
                    reason: format!("k={k} m={m}: {e}"),
                }
            })?;
            self.cache.insert((k, m), rs);
        }
        self.cache.get(&(k, m)).ok_or(FecError::Coder {
            coder: "reed-solomon-erasure",
            reason: String::from("codec cache miss"),
        })
    }
}

fn rse_err(e: reed_solomon_erasure::Error) -> FecError {
    FecError::Coder {
        coder: "reed-solomon-erasure",
        reason: e.to_string(),
    }
}

impl ErasureCoder for RseCoder {
    fn name(&self) -> &'static str {
        "reed-solomon-erasure"
    }
    fn id(&self) -> u8 {
        CoderKind::ReedSolomonErasure.id()
    }
    fn encode(&mut self, sources: &[&[u8]], repair: &mut [Vec<u8>]) -> Result<(), FecError> {
        let len = sources.first().map_or(0, |s| s.len());
        for r in repair.iter_mut() {
            r.clear();
            r.resize(len, 0);
        }
        let rs = self.codec(sources.len(), repair.len())?;
        rs.encode_sep(sources, repair).map_err(rse_err)
    }
    fn reconstruct(&mut self, k: usize, shards: &mut [Option<Vec<u8>>]) -> Result<(), FecError> {
        let m = shards.len().saturating_sub(k);
        let rs = self.codec(k, m)?;
        rs.reconstruct_data(shards).map_err(rse_err)
    }
}

/// `reed-solomon-simd`, encoder and decoder kept for their work buffers.
#[derive(Default)]
pub struct SimdCoder {
    enc: Option<reed_solomon_simd::ReedSolomonEncoder>,
    dec: Option<reed_solomon_simd::ReedSolomonDecoder>,
}

fn simd_err(e: reed_solomon_simd::Error) -> FecError {
    FecError::Coder {
        coder: "reed-solomon-simd",
        reason: e.to_string(),
    }
}

impl ErasureCoder for SimdCoder {
    fn name(&self) -> &'static str {
        "reed-solomon-simd"
    }
    fn id(&self) -> u8 {
        CoderKind::ReedSolomonSimd.id()
    }
    fn encode(&mut self, sources: &[&[u8]], repair: &mut [Vec<u8>]) -> Result<(), FecError> {
        let (k, m) = (sources.len(), repair.len());
        let len = sources.first().map_or(0, |s| s.len());
        let enc = match &mut self.enc {
            Some(e) => {
                e.reset(k, m, len).map_err(simd_err)?;
                e
            }
            slot @ None => slot
                .insert(reed_solomon_simd::ReedSolomonEncoder::new(k, m, len).map_err(simd_err)?),
        };
        for s in sources {
            enc.add_original_shard(s).map_err(simd_err)?;
        }
        let out = enc.encode().map_err(simd_err)?;
        for (dst, src) in repair.iter_mut().zip(out.recovery_iter()) {
            dst.clear();
            dst.extend_from_slice(src);
        }
        Ok(())
    }
    fn reconstruct(&mut self, k: usize, shards: &mut [Option<Vec<u8>>]) -> Result<(), FecError> {
        let m = shards.len().saturating_sub(k);
        let len = shards.iter().flatten().map(Vec::len).next().unwrap_or(0);
        if shards[..k.min(shards.len())].iter().all(Option::is_some) {
            return Ok(());
        }
        let dec = match &mut self.dec {
            Some(d) => {
                d.reset(k, m, len).map_err(simd_err)?;
                d
            }
            slot @ None => slot
                .insert(reed_solomon_simd::ReedSolomonDecoder::new(k, m, len).map_err(simd_err)?),
        };
        for (i, s) in shards.iter().enumerate() {
            if let Some(s) = s {
                if i < k {
                    dec.add_original_shard(i, s).map_err(simd_err)?;
                } else {
                    dec.add_recovery_shard(i - k, s).map_err(simd_err)?;
                }
            }
        }
        let out = dec.decode().map_err(simd_err)?;
        for (i, slot) in shards.iter_mut().enumerate().take(k) {
            if slot.is_none() {
                let restored = out.restored_original(i).ok_or(FecError::Coder {
                    coder: "reed-solomon-simd",
                    reason: format!("source shard {i} not restored"),
                })?;
                *slot = Some(restored.to_vec());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn check_any_k_of_n(
        kind: CoderKind,
        k: usize,
        m: usize,
        len: usize,
        seed: u64,
        keep: Vec<bool>,
    ) {
        let mut x = seed | 1;
        let sources: Vec<Vec<u8>> = (0..k)
            .map(|_| {
                (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect()
            })
            .collect();
        let refs: Vec<&[u8]> = sources.iter().map(Vec::as_slice).collect();
        let mut repair = vec![Vec::new(); m];
        let mut coder = kind.build();
        coder.encode(&refs, &mut repair).unwrap();
        // Keep exactly k shards chosen by `keep` order.
        let mut shards: Vec<Option<Vec<u8>>> = sources
            .iter()
            .cloned()
            .chain(repair.iter().cloned())
            .map(Some)
            .collect();
        let mut dropped = 0;
        for (i, &drop) in keep.iter().enumerate().take(k + m) {
            if drop && dropped < m {
                shards[i] = None;
                dropped += 1;
            }
        }
        let mut decoder = kind.build();
        decoder.reconstruct(k, &mut shards).unwrap();
        for i in 0..k {
            assert_eq!(
                shards[i].as_deref().unwrap(),
                sources[i].as_slice(),
                "shard {i}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn any_k_of_k_plus_m_rebuild_byte_exact(
            k in 1usize..40, m in 1usize..12, half_len in 1usize..300, seed: u64,
            drops in proptest::collection::vec(any::<bool>(), 52),
        ) {
            check_any_k_of_n(CoderKind::ReedSolomonErasure, k, m, half_len * 2, seed, drops.clone());
            check_any_k_of_n(CoderKind::ReedSolomonSimd, k, m, half_len * 2, seed, drops);
        }
    }
}
