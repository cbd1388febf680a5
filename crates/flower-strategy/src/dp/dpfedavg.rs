//! Flower's deprecated `DPFedAvgFixed` and `DPFedAvgAdaptive`: one step
//! type, [`DpFedAvg`], whose clip norm adapts when `ADAPTIVE`.

use flower_core::{Config, FitRes, Metrics, Parameters, Scalar};

use super::noise::NormUpdate;
use super::{config_err, non_negative, norm_bit, positive, validate_common, Wrap};
use crate::aggregate::{Aggregate, Composed};
use crate::bookkeeping::Bookkeeping;
use crate::layers::{decode_all, encode_all, Data};
use crate::strategy::{ClientFailure, ClientId};
use crate::StrategyError;

/// Arguments of [`DpFedAvgFixed`]; [`DpFedAvgFixedOptions::new`] sets the
/// required ones and Flower's defaults for the others.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpFedAvgFixedOptions {
    /// Clients sampled per round, n_s (Flower's `num_sampled_clients`,
    /// required), > 0.
    pub num_sampled_clients: usize,
    /// Clipping norm C (Flower's `clip_norm`, required), > 0.
    pub clip_norm: f64,
    /// Noise multiplier z (Flower's `noise_multiplier`, default 1.0), ≥ 0.
    pub noise_multiplier: f64,
    /// Whether the server adds the noise (Flower's `server_side_noising`,
    /// default true); false tells clients `dpfedavg_noise_stddev`.
    pub server_side_noising: bool,
}

impl DpFedAvgFixedOptions {
    /// The required arguments, with Flower's defaults for the others.
    pub fn new(num_sampled_clients: usize, clip_norm: f64) -> Self {
        DpFedAvgFixedOptions {
            num_sampled_clients,
            clip_norm,
            noise_multiplier: 1.0,
            server_side_noising: true,
        }
    }
}

/// Arguments of [`DpFedAvgAdaptive`]; [`DpFedAvgAdaptiveOptions::new`] sets
/// the required one and Flower's defaults for the others.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpFedAvgAdaptiveOptions {
    /// Clients sampled per round, n_s (Flower's `num_sampled_clients`,
    /// required), > 0.
    pub num_sampled_clients: usize,
    /// Initial clipping norm (Flower's `init_clip_norm`, default 0.1).
    pub init_clip_norm: f64,
    /// Noise multiplier z (Flower's `noise_multiplier`, default 1.0).
    pub noise_multiplier: f64,
    /// Whether the server adds the noise (Flower's `server_side_noising`,
    /// default true).
    pub server_side_noising: bool,
    /// Learning rate of the norm update (Flower's `clip_norm_lr`, default 0.2).
    pub clip_norm_lr: f64,
    /// Target quantile of unclipped updates (Flower's
    /// `clip_norm_target_quantile`, default 0.5).
    pub clip_norm_target_quantile: f64,
    /// Stddev of the count noise (Flower's `clip_count_stddev`; default
    /// `None`: `n_s/20` when z > 0, else 0).
    pub clip_count_stddev: Option<f64>,
}

impl DpFedAvgAdaptiveOptions {
    /// The required argument, with Flower's defaults for the others.
    pub fn new(num_sampled_clients: usize) -> Self {
        DpFedAvgAdaptiveOptions {
            num_sampled_clients,
            init_clip_norm: 0.1,
            noise_multiplier: 1.0,
            server_side_noising: true,
            clip_norm_lr: 0.2,
            clip_norm_target_quantile: 0.5,
            clip_count_stddev: None,
        }
    }
}

/// The aggregation step of DPFedAvgFixed (`ADAPTIVE = false`) and
/// DPFedAvgAdaptive.
#[derive(Debug)]
pub struct DpFedAvg<const ADAPTIVE: bool> {
    w: Wrap,
    clip_norm: f64,
    noise_multiplier: f64,
    server_side_noising: bool,
    /// The clip-norm update (adaptive only).
    update: Option<NormUpdate>,
}

/// Flower's deprecated `DPFedAvgFixed`: the fit config gains
/// `dpfedavg_clip_norm` (and `dpfedavg_noise_stddev` when
/// `server_side_noising` is false); every result gets `num_examples := 1`
/// and f64 noise `N(0, (z·C/√n_s)²)` (even when `server_side_noising` is
/// false, as in Flower), which makes the arrays f64; then the inner strategy
/// aggregates (an unweighted mean with FedAvg).
pub type DpFedAvgFixed = Composed<DpFedAvg<false>>;

/// Flower's deprecated `DPFedAvgAdaptive`: [`DpFedAvgFixed`] whose clip norm
/// adapts after each aggregation from the clients' `dpfedavg_norm_bit`
/// (set when the update was **not** clipped):
/// `C ← C·exp(−lr·((b + N(0,σ_b²))/R − γ))`; the config also carries
/// `dpfedavg_adaptive_clip_enabled: true`. A result without the bit is
/// refused with [`StrategyError::MissingMetric`].
///
/// With `z > 0`, Flower computes `z ← (z⁻² − (2σ_b)⁻²)^(−1/2)` unguarded,
/// which is complex for `z ≥ 2σ_b`; that is a [`StrategyError::Config`] here.
pub type DpFedAvgAdaptive = Composed<DpFedAvg<true>>;

impl<const ADAPTIVE: bool> DpFedAvg<ADAPTIVE> {
    fn fixed<A: Aggregate + 'static>(
        inner: Composed<A>,
        o: DpFedAvgFixedOptions,
        seed: Option<u64>,
    ) -> Result<Composed<Self>, StrategyError> {
        if !positive(o.clip_norm) {
            return Err(config_err(
                "The clipping threshold should be a positive value.",
            ));
        }
        validate_common(o.noise_multiplier, o.num_sampled_clients)?;
        let (book, w) = Wrap::new(inner, o.num_sampled_clients, seed);
        Ok(Composed {
            book,
            step: DpFedAvg {
                w,
                clip_norm: o.clip_norm,
                noise_multiplier: o.noise_multiplier,
                server_side_noising: o.server_side_noising,
                update: None,
            },
        })
    }

    fn client_noise_stddev(&self) -> f64 {
        self.noise_multiplier * self.clip_norm / (self.w.num_sampled_clients as f64).sqrt()
    }
}

impl<const ADAPTIVE: bool> Composed<DpFedAvg<ADAPTIVE>> {
    /// The current clipping norm.
    pub fn clip_norm(&self) -> f64 {
        self.step.clip_norm
    }
}

impl DpFedAvgFixed {
    /// Wraps `inner` (any strategy of the catalog; it keeps its sampling,
    /// configs and evaluation). `seed` seeds the noise (`None`: from the OS).
    pub fn new<A: Aggregate + 'static>(
        inner: Composed<A>,
        options: DpFedAvgFixedOptions,
        seed: Option<u64>,
    ) -> Result<Self, StrategyError> {
        DpFedAvg::fixed(inner, options, seed)
    }
}

impl DpFedAvgAdaptive {
    /// Wraps `inner` (any strategy of the catalog; it keeps its sampling,
    /// configs and evaluation). `seed` seeds the noise (`None`: from the OS).
    pub fn new<A: Aggregate + 'static>(
        inner: Composed<A>,
        options: DpFedAvgAdaptiveOptions,
        seed: Option<u64>,
    ) -> Result<Self, StrategyError> {
        let fixed = DpFedAvgFixedOptions {
            num_sampled_clients: options.num_sampled_clients,
            clip_norm: options.init_clip_norm,
            noise_multiplier: options.noise_multiplier,
            server_side_noising: options.server_side_noising,
        };
        let mut s = DpFedAvg::fixed(inner, fixed, seed)?;
        let z = options.noise_multiplier;
        let stddev = match options.clip_count_stddev {
            Some(s) if !non_negative(s) => {
                return Err(config_err("clip_count_stddev must be non-negative"))
            }
            Some(s) => s,
            None if z > 0.0 => options.num_sampled_clients as f64 / 20.0,
            None => 0.0,
        };
        if z != 0.0 {
            if !positive(2.0 * stddev - z) {
                return Err(StrategyError::Config(format!(
                    "noise_multiplier {z} needs clip_count_stddev > {}: Flower's (z^-2 - (2*clip_count_stddev)^-2)^-0.5 \
                     is complex (or divides by zero) otherwise (clip_count_stddev is {stddev})",
                    z / 2.0
                )));
            }
            s.step.noise_multiplier = (z.powi(-2) - (2.0 * stddev).powi(-2)).powf(-0.5);
        }
        s.step.update = Some(NormUpdate {
            count_stddev: stddev,
            lr: options.clip_norm_lr,
            target: options.clip_norm_target_quantile,
        });
        Ok(s)
    }
}

impl<const ADAPTIVE: bool> Aggregate for DpFedAvg<ADAPTIVE> {
    fn name(&self) -> &str {
        if ADAPTIVE {
            "DPFedAvgAdaptive"
        } else {
            "DPFedAvgFixed"
        }
    }

    fn extend_fit_config(&self, config: &mut Config) {
        self.w.inner.extend_fit_config(config);
        let mut entries = vec![("dpfedavg_clip_norm", Scalar::Double(self.clip_norm))];
        if !self.server_side_noising {
            entries.push((
                "dpfedavg_noise_stddev",
                Scalar::Double(self.client_noise_stddev()),
            ));
        }
        if ADAPTIVE {
            entries.push(("dpfedavg_adaptive_clip_enabled", Scalar::Bool(true)));
        }
        for (k, v) in entries {
            config.insert(k.to_owned(), v);
        }
    }

    fn begin(
        &mut self,
        book: &Bookkeeping,
        server_round: u64,
        global: &Parameters,
    ) -> Result<(), StrategyError> {
        self.w.begin(book, server_round, global, false)
    }

    fn accumulate(
        &mut self,
        server_round: u64,
        client: ClientId,
        mut result: FitRes,
    ) -> Result<(), StrategyError> {
        self.w.check(server_round)?;
        let bit = ADAPTIVE && norm_bit(&result, "dpfedavg_norm_bit")?;
        let std = self.client_noise_stddev();
        let mut layers = decode_all(&result.parameters)?;
        for layer in &mut layers {
            // layer + np.random.normal(...): always float64.
            let mut v = layer.data.to_f64();
            v.iter_mut().for_each(|x| *x += self.w.rng.normal(0.0, std));
            layer.data = Data::F64(v);
            layer.half = false;
        }
        result.parameters = encode_all(&layers);
        result.num_examples = 1;
        self.w.accumulate_counted(server_round, client, result, bit)
    }

    fn aggregate(
        &mut self,
        book: &mut Bookkeeping,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        let Some(round) = self.w.take(server_round, failures) else {
            return Ok((None, Metrics::new()));
        };
        let out = self.w.inner.aggregate(book, server_round, failures)?;
        if let Some(update) = &self.update {
            if round.results > 0 {
                self.clip_norm =
                    update.apply(self.clip_norm, round.bits, round.results, &mut self.w.rng);
            }
        }
        Ok(out)
    }

    fn state(&self, book: &Bookkeeping) -> serde_json::Value {
        self.w.state(book, Some(("clip_norm", self.clip_norm)))
    }

    fn restore_state(
        &mut self,
        book: &mut Bookkeeping,
        state: serde_json::Value,
    ) -> Result<(), StrategyError> {
        self.w
            .restore(book, state, Some(("clip_norm", &mut self.clip_norm)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FedAvg, FedAvgOptions};

    fn inner() -> FedAvg {
        FedAvg::new(FedAvgOptions::default()).unwrap()
    }

    #[test]
    fn adaptive_rejects_complex_noise_multiplier() {
        // n_s = 10 → σ_b = 0.5 → z = 1 ≥ 2σ_b: complex in Flower.
        assert!(matches!(
            DpFedAvgAdaptive::new(inner(), DpFedAvgAdaptiveOptions::new(10), None),
            Err(StrategyError::Config(_))
        ));
        let o = DpFedAvgAdaptiveOptions {
            clip_count_stddev: Some(0.0),
            ..DpFedAvgAdaptiveOptions::new(100)
        };
        assert!(matches!(
            DpFedAvgAdaptive::new(inner(), o, None),
            Err(StrategyError::Config(_))
        ));
        assert!(DpFedAvgAdaptive::new(inner(), DpFedAvgAdaptiveOptions::new(100), None).is_ok());
    }

    #[test]
    fn config_carries_the_clip_norm() {
        let o = DpFedAvgFixedOptions {
            server_side_noising: false,
            ..DpFedAvgFixedOptions::new(4, 2.0)
        };
        let s = DpFedAvgFixed::new(inner(), o, Some(1)).unwrap();
        let mut config = Config::new();
        s.step().extend_fit_config(&mut config);
        assert_eq!(config["dpfedavg_clip_norm"], Scalar::Double(2.0));
        // z·C/√n_s = 1·2/2.
        assert_eq!(config["dpfedavg_noise_stddev"], Scalar::Double(1.0));
        assert!(!config.contains_key("dpfedavg_adaptive_clip_enabled"));
    }
}
