//! The seedable Gaussian noise source of the DP wrappers (ChaCha20,
//! Box–Muller). Its position is part of the strategy state, so a run
//! resumed from a checkpoint draws the same noise as an uninterrupted one.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::StrategyError;

/// Gaussian noise from a seeded ChaCha20 stream.
#[derive(Debug, Clone)]
pub(crate) struct NoiseRng {
    seed: [u8; 32],
    rng: ChaCha20Rng,
}

impl NoiseRng {
    /// Seeded from `seed`, or from the OS when `None`.
    pub(crate) fn new(seed: Option<u64>) -> Self {
        let seed_bytes = match seed {
            Some(s) => {
                let mut bytes = [0u8; 32];
                ChaCha20Rng::seed_from_u64(s).fill_bytes(&mut bytes);
                bytes
            }
            None => {
                let mut bytes = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut bytes);
                bytes
            }
        };
        NoiseRng {
            seed: seed_bytes,
            rng: ChaCha20Rng::from_seed(seed_bytes),
        }
    }

    /// One draw of `N(mean, std²)`. `std == 0` returns `mean` exactly (as
    /// NumPy does) without consuming randomness.
    pub(crate) fn normal(&mut self, mean: f64, std: f64) -> f64 {
        if std == 0.0 {
            return mean;
        }
        // u1 in (0, 1], u2 in [0, 1).
        let u1: f64 = 1.0 - self.rng.gen::<f64>();
        let u2: f64 = self.rng.gen::<f64>();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        mean + std * z
    }

    pub(crate) fn state(&self) -> serde_json::Value {
        let seed: String = self.seed.iter().map(|b| format!("{b:02x}")).collect();
        serde_json::json!({ "seed": seed, "word_pos": self.rng.get_word_pos().to_string() })
    }

    pub(crate) fn restore(&mut self, state: &serde_json::Value) -> Result<(), StrategyError> {
        let bad = |m: &str| StrategyError::State(format!("rng: {m}"));
        let hex = state
            .get("seed")
            .and_then(|s| s.as_str())
            .ok_or_else(|| bad("no seed"))?;
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad("seed must be 64 hex digits"));
        }
        let mut seed = [0u8; 32];
        for (i, byte) in seed.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| bad("seed is not hex"))?;
        }
        let pos: u128 = state
            .get("word_pos")
            .and_then(|p| p.as_str())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad("no word_pos"))?;
        self.seed = seed;
        self.rng = ChaCha20Rng::from_seed(seed);
        self.rng.set_word_pos(pos);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_resumable() {
        let mut a = NoiseRng::new(Some(7));
        let mut b = NoiseRng::new(Some(7));
        assert_eq!(a.normal(0.0, 1.0), b.normal(0.0, 1.0));
        let saved = a.state();
        let next = a.normal(0.0, 1.0);
        let mut c = NoiseRng::new(Some(1));
        c.restore(&saved).unwrap();
        assert_eq!(c.normal(0.0, 1.0), next);
        assert_eq!(a.normal(3.0, 0.0), 3.0);
    }

    #[test]
    fn roughly_standard_normal() {
        let mut r = NoiseRng::new(Some(1));
        let n = 20_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal(0.0, 2.0)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.05, "{mean}");
        assert!((var - 4.0).abs() < 0.2, "{var}");
    }
}
