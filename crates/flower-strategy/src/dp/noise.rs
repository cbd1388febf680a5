//! The arithmetic of the DP wrappers: update norms, clipping, Gaussian
//! noise and the adaptive clipping-norm update, as Flower computes them.

use flower_core::Parameters;

use crate::layers::{self, decode_all, encode_all, l2_norm, Data, Layer};
use crate::rng::NoiseRng;
use crate::StrategyError;

/// Flower's `get_norm`: per-layer L2 norms (f32 for f32 layers), squared
/// and summed (in f32 when every layer is f32), square root, as f64.
pub(super) fn update_norm(update: &[Data]) -> f64 {
    if update.iter().all(|d| !d.is_f64()) {
        let mut sum = 0.0f32;
        for d in update {
            let n = l2_norm(d) as f32;
            sum += n * n;
        }
        f64::from(sum.sqrt())
    } else {
        let mut sum = 0.0f64;
        for d in update {
            let n = l2_norm(d);
            sum += n * n;
        }
        sum.sqrt()
    }
}

/// Clips `x − g` to L2 norm `clipping_norm` and returns `(g + u, clipped)`.
/// A zero-norm update is [`StrategyError::ZeroNorm`] (Flower:
/// ZeroDivisionError).
pub(crate) fn clip_model(
    x: &[Layer],
    g: &[Layer],
    clipping_norm: f64,
) -> Result<(Vec<Layer>, bool), StrategyError> {
    let update: Vec<Data> = x
        .iter()
        .zip(g)
        .map(|(x, g)| layers::sub(&x.data, &g.data))
        .collect();
    let norm = update_norm(&update);
    if norm == 0.0 {
        return Err(StrategyError::ZeroNorm);
    }
    let ratio = clipping_norm / norm;
    // Python's min(1, ratio): 1 unless ratio < 1 (a NaN ratio keeps 1).
    let clipped = ratio < 1.0;
    let out = x
        .iter()
        .zip(g)
        .zip(update)
        .map(|((x, g), u)| {
            let u = if clipped {
                layers::scale_weak(&u, ratio)
            } else {
                u
            };
            x.with_data(layers::add(&g.data, &u))
        })
        .collect();
    Ok((out, clipped))
}

/// Adds `N(0, σ²)` to every element (cast to the layer's dtype). σ = 0
/// leaves the parameters untouched.
pub(super) fn add_noise(
    params: Parameters,
    std: f64,
    rng: &mut NoiseRng,
) -> Result<Parameters, StrategyError> {
    if std == 0.0 {
        return Ok(params);
    }
    let mut layers = decode_all(&params)?;
    for layer in &mut layers {
        match &mut layer.data {
            Data::F32(v) => v.iter_mut().for_each(|x| *x += rng.normal(0.0, std) as f32),
            Data::F64(v) => v.iter_mut().for_each(|x| *x += rng.normal(0.0, std)),
        }
    }
    Ok(encode_all(&layers))
}

/// What the adaptive clipping-norm update needs besides the round's counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NormUpdate {
    /// Stddev σ_b of the noise on the count.
    pub(crate) count_stddev: f64,
    /// Learning rate η_C.
    pub(crate) lr: f64,
    /// Target fraction γ.
    pub(crate) target: f64,
}

impl NormUpdate {
    /// `C ← C·exp(−η_C·((b + N(0, σ_b²))/R − γ))` for `bits` of `results`.
    pub(crate) fn apply(&self, c: f64, bits: usize, results: usize, rng: &mut NoiseRng) -> f64 {
        let noised = rng.normal(bits as f64, self.count_stddev);
        c * (-self.lr * (noised / results as f64 - self.target)).exp()
    }
}

/// Flower's `compute_adaptive_noise_params`: `(clipped_count_stddev,
/// effective noise multiplier)`.
pub(crate) fn adaptive_noise_params(
    z: f64,
    num_sampled_clients: usize,
    stddev: Option<f64>,
) -> Result<(f64, f64), StrategyError> {
    if z > 0.0 {
        let sb = stddev.unwrap_or(num_sampled_clients as f64 / 20.0);
        if z >= 2.0 * sb {
            return Err(StrategyError::Config(format!(
                "clipped_count_stddev ({sb}) is too low for the noise multiplier ({z}): it must exceed \
                 noise_multiplier / 2 (by default it is num_sampled_clients / 20)"
            )));
        }
        let zd = (z.powi(-2) - (2.0 * sb).powi(-2)).powf(-0.5);
        if zd / z >= 2.0 {
            tracing::warn!(
                factor = zd / z,
                "adaptive clipping adds a lot of noise; consider increasing clipped_count_stddev"
            );
        }
        Ok((sb, zd))
    } else {
        Ok((stddev.unwrap_or(0.0), 0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_scales_the_update() {
        let g = vec![Layer {
            shape: vec![2],
            data: Data::F32(vec![1.0, 1.0]),
            half: false,
        }];
        let x = vec![Layer {
            shape: vec![2],
            data: Data::F32(vec![4.0, 5.0]),
            half: false,
        }];
        let (c, clipped) = clip_model(&x, &g, 2.5).unwrap();
        assert!(clipped);
        assert_eq!(c[0].data, Data::F32(vec![2.5, 3.0]));
        let (c, clipped) = clip_model(&x, &g, 10.0).unwrap();
        assert!(!clipped);
        assert_eq!(c[0].data, x[0].data);
        assert!(matches!(
            clip_model(&g, &g, 1.0),
            Err(StrategyError::ZeroNorm)
        ));
    }

    #[test]
    fn noise_has_the_requested_stddev_and_is_seeded() {
        let zeros = encode_all(&[Layer {
            shape: vec![20_000],
            data: Data::F32(vec![0.0; 20_000]),
            half: false,
        }]);
        let noisy = |seed| {
            let mut rng = NoiseRng::new(Some(seed));
            let p = add_noise(zeros.clone(), 0.5, &mut rng).unwrap();
            decode_all(&p).unwrap().remove(0).data.to_f64()
        };
        let a = noisy(9);
        assert_eq!(a, noisy(9));
        assert_ne!(a, noisy(10));
        let n = a.len() as f64;
        let mean = a.iter().sum::<f64>() / n;
        let std = (a.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
        assert!(
            mean.abs() < 0.02 && (std - 0.5).abs() < 0.02,
            "mean {mean}, std {std}"
        );
        // σ = 0 leaves the parameters untouched.
        let mut rng = NoiseRng::new(Some(1));
        assert_eq!(add_noise(zeros.clone(), 0.0, &mut rng).unwrap(), zeros);
    }

    #[test]
    fn adaptive_noise_parameters() {
        assert_eq!(adaptive_noise_params(0.0, 10, None).unwrap(), (0.0, 0.0));
        assert!(adaptive_noise_params(1.0, 10, None).is_err());
        let (sb, z) = adaptive_noise_params(1.0, 100, None).unwrap();
        assert_eq!(sb, 5.0);
        assert!((z - (1.0f64 - 0.01).powf(-0.5)).abs() < 1e-15);
    }

    #[test]
    fn norm_update_moves_towards_the_target() {
        let u = NormUpdate {
            count_stddev: 0.0,
            lr: 0.2,
            target: 0.5,
        };
        let mut rng = NoiseRng::new(Some(1));
        // More bits than the target fraction shrink the norm, fewer grow it.
        assert!(u.apply(1.0, 4, 4, &mut rng) < 1.0);
        assert!(u.apply(1.0, 0, 4, &mut rng) > 1.0);
        assert_eq!(u.apply(1.0, 2, 4, &mut rng), 1.0);
    }
}
