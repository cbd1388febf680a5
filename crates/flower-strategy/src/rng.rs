//! The seedable Gaussian noise source of the DP wrappers (ChaCha20,
//! Box–Muller).
//!
//! The seed never goes into the strategy state (a checkpoint on disk must
//! not let anyone re-derive and subtract the noise). With the OS-drawn seed
//! (the default), a resumed run draws fresh noise and says so; with an
//! explicit test seed only the stream position is saved, so a resumed test
//! run draws the same noise as an uninterrupted one.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::StrategyError;

/// Gaussian noise from a seeded ChaCha20 stream.
#[derive(Debug, Clone)]
pub(crate) struct NoiseRng {
    /// True when the seed was given (a test seed), false when from the OS.
    explicit: bool,
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
            explicit: seed.is_some(),
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

    /// The stream position, never the seed.
    pub(crate) fn state(&self) -> serde_json::Value {
        serde_json::json!({
            "seed_source": if self.explicit { "explicit" } else { "os" },
            "word_pos": self.rng.get_word_pos().to_string(),
        })
    }

    /// Continues at the saved position when this stream has the same
    /// explicit seed; an OS-seeded stream keeps its fresh seed (the old one
    /// was never saved) and the run draws fresh noise.
    pub(crate) fn restore(&mut self, state: &serde_json::Value) -> Result<(), StrategyError> {
        let bad = |m: &str| StrategyError::State(format!("rng: {m}"));
        let pos: u128 = state
            .get("word_pos")
            .and_then(|p| p.as_str())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad("no word_pos"))?;
        let saved_explicit = state.get("seed_source").and_then(|s| s.as_str()) == Some("explicit");
        if self.explicit && saved_explicit {
            self.rng.set_word_pos(pos);
        } else {
            tracing::warn!(
                "DP noise: the resumed run draws fresh noise from the OS (noise seeds are never saved)"
            );
        }
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
        // The same explicit (test) seed continues where the state says.
        let mut c = NoiseRng::new(Some(7));
        c.restore(&saved).unwrap();
        assert_eq!(c.normal(0.0, 1.0), next);
        assert_eq!(a.normal(3.0, 0.0), 3.0);
    }

    #[test]
    fn the_seed_is_never_in_the_state_and_os_noise_is_fresh_after_restore() {
        let mut a = NoiseRng::new(None);
        let _ = a.normal(0.0, 1.0);
        let saved = a.state();
        assert!(saved.get("seed").is_none(), "{saved}");
        assert_eq!(saved["seed_source"], "os");
        let next = a.normal(0.0, 1.0);
        let mut b = NoiseRng::new(None);
        b.restore(&saved).unwrap();
        assert_ne!(b.normal(0.0, 1.0), next);
        // Two OS-seeded streams differ: unseeded runs get different noise.
        assert_ne!(
            NoiseRng::new(None).normal(0.0, 1.0),
            NoiseRng::new(None).normal(0.0, 1.0)
        );
        let explicit = NoiseRng::new(Some(9)).state();
        assert!(explicit.get("seed").is_none(), "{explicit}");
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
