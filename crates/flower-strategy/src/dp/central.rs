//! Flower's `DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping`:
//! one step type, [`CentralDp`], which differs only in who clips and how the
//! clipping norm is chosen.

use flower_core::{Config, FitRes, Metrics, Parameters, Scalar};

use super::noise::{adaptive_noise_params, NormUpdate};
use super::{
    config_err, non_negative, norm_bit, positive, validate_common, warn_count, Wrap, WrapRound,
};
use crate::aggregate::{Aggregate, Composed};
use crate::bookkeeping::Bookkeeping;
use crate::strategy::{ClientFailure, ClientId};
use crate::StrategyError;

/// Config key carrying the clipping norm to clients (Flower's `KEY_CLIPPING_NORM`).
const KEY_CLIPPING_NORM: &str = "clipping_norm";
/// Metric with which clients report "my update was clipped" (`KEY_NORM_BIT`).
const KEY_NORM_BIT: &str = "norm_bit";

/// Arguments of the fixed-clipping wrappers (all required in Flower).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedClippingOptions {
    /// Noise multiplier z (Flower's `noise_multiplier`), ≥ 0.
    pub noise_multiplier: f64,
    /// Clipping norm C (Flower's `clipping_norm`), > 0.
    pub clipping_norm: f64,
    /// Clients sampled per round, n_s (Flower's `num_sampled_clients`), > 0.
    pub num_sampled_clients: usize,
}

/// Arguments of the adaptive-clipping wrappers; [`AdaptiveClippingOptions::new`]
/// sets the required ones and Flower's defaults for the others.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveClippingOptions {
    /// Noise multiplier z (Flower's `noise_multiplier`, required), ≥ 0.
    pub noise_multiplier: f64,
    /// Clients sampled per round, n_s (Flower's `num_sampled_clients`,
    /// required), > 0.
    pub num_sampled_clients: usize,
    /// Initial clipping norm C0 (Flower's `initial_clipping_norm`, default 0.1).
    pub initial_clipping_norm: f64,
    /// Target fraction γ of clipped updates (Flower's
    /// `target_clipped_quantile`, default 0.5).
    pub target_clipped_quantile: f64,
    /// Learning rate η_C of the norm update (Flower's `clip_norm_lr`,
    /// default 0.2).
    pub clip_norm_lr: f64,
    /// Stddev σ_b of the clipped-count noise (Flower's
    /// `clipped_count_stddev`; default `None`: `n_s/20` when the noise
    /// multiplier is positive, else 0).
    pub clipped_count_stddev: Option<f64>,
}

impl AdaptiveClippingOptions {
    /// The required arguments, with Flower's defaults for the others.
    pub fn new(noise_multiplier: f64, num_sampled_clients: usize) -> Self {
        AdaptiveClippingOptions {
            noise_multiplier,
            num_sampled_clients,
            initial_clipping_norm: 0.1,
            target_clipped_quantile: 0.5,
            clip_norm_lr: 0.2,
            clipped_count_stddev: None,
        }
    }
}

/// How a central-DP wrapper chooses its clipping norm.
#[derive(Debug)]
enum Clip {
    Fixed {
        noise_multiplier: f64,
        clipping_norm: f64,
    },
    Adaptive {
        clipping_norm: f64,
        /// The effective noise multiplier z_Δ.
        noise_multiplier: f64,
        update: NormUpdate,
    },
}

impl Clip {
    fn fixed(o: FixedClippingOptions, server_side: bool) -> Result<Self, StrategyError> {
        validate_common(o.noise_multiplier, o.num_sampled_clients)?;
        if !positive(o.clipping_norm) {
            return Err(config_err(if server_side {
                "The clipping norm should be a positive value."
            } else {
                "The clipping threshold should be a positive value."
            }));
        }
        Ok(Clip::Fixed {
            noise_multiplier: o.noise_multiplier,
            clipping_norm: o.clipping_norm,
        })
    }

    fn adaptive(o: AdaptiveClippingOptions) -> Result<Self, StrategyError> {
        validate_common(o.noise_multiplier, o.num_sampled_clients)?;
        if !positive(o.initial_clipping_norm) {
            return Err(config_err(
                "The initial clipping norm should be a positive value.",
            ));
        }
        if !(0.0..=1.0).contains(&o.target_clipped_quantile) {
            return Err(config_err(
                "The target clipped quantile must be between 0 and 1 (inclusive).",
            ));
        }
        if !positive(o.clip_norm_lr) {
            return Err(config_err("The learning rate must be positive."));
        }
        if let Some(s) = o.clipped_count_stddev {
            if !non_negative(s) {
                return Err(config_err(
                    "The `clipped_count_stddev` must be non-negative.",
                ));
            }
        }
        let (count_stddev, noise_multiplier) = adaptive_noise_params(
            o.noise_multiplier,
            o.num_sampled_clients,
            o.clipped_count_stddev,
        )?;
        Ok(Clip::Adaptive {
            clipping_norm: o.initial_clipping_norm,
            noise_multiplier,
            update: NormUpdate {
                count_stddev,
                lr: o.clip_norm_lr,
                target: o.target_clipped_quantile,
            },
        })
    }

    /// The current clipping norm.
    fn norm(&self) -> f64 {
        match self {
            Clip::Fixed { clipping_norm, .. } | Clip::Adaptive { clipping_norm, .. } => {
                *clipping_norm
            }
        }
    }

    /// The (effective) noise multiplier.
    fn noise_multiplier(&self) -> f64 {
        match self {
            Clip::Fixed {
                noise_multiplier, ..
            }
            | Clip::Adaptive {
                noise_multiplier, ..
            } => *noise_multiplier,
        }
    }
}

/// The aggregation step of the four central-DP wrappers: `SERVER_SIDE`
/// says who clips, `ADAPTIVE` whether the clipping norm adapts.
#[derive(Debug)]
pub struct CentralDp<const SERVER_SIDE: bool, const ADAPTIVE: bool> {
    w: Wrap,
    clip: Clip,
}

/// Flower's `DifferentialPrivacyServerSideFixedClipping`: every update
/// `x − g` is clipped to `clipping_norm` on the server, the inner strategy
/// aggregates, and `N(0, (z·C/n_s)²)` noise is added to its result.
pub type DpServerSideFixedClipping = Composed<CentralDp<true, false>>;

/// Flower's `DifferentialPrivacyServerSideAdaptiveClipping`: clips every
/// update with the current norm C, counts the clipped ones (b), updates
/// `C ← C·exp(−η_C·((b + N(0,σ_b²))/R − γ))`, lets the inner strategy
/// aggregate, then adds `N(0, (z_Δ·C/n_s)²)` with the new C.
pub type DpServerSideAdaptiveClipping = Composed<CentralDp<true, true>>;

/// Flower's `DifferentialPrivacyClientSideFixedClipping`: clients clip (the
/// fit config gains `"clipping_norm": C`), the inner strategy aggregates,
/// and `N(0, (z·C/n_s)²)` noise is added.
pub type DpClientSideFixedClipping = Composed<CentralDp<false, false>>;

/// Flower's `DifferentialPrivacyClientSideAdaptiveClipping`: the fit config
/// gains `"clipping_norm": C`; clients clip and report `norm_bit` ("was
/// clipped"); after the inner aggregation C is updated from the count of set
/// bits, then noise `N(0, (z_Δ·C/n_s)²)` is added with the new C. A result
/// without `norm_bit` is refused with [`StrategyError::MissingMetric`].
pub type DpClientSideAdaptiveClipping = Composed<CentralDp<false, true>>;

impl<const S: bool> Composed<CentralDp<S, false>> {
    /// Wraps `inner` (any strategy of the catalog; it keeps its sampling,
    /// configs and evaluation). `seed` seeds the noise (`None`: from the OS).
    pub fn new<A: Aggregate + 'static>(
        inner: Composed<A>,
        options: FixedClippingOptions,
        seed: Option<u64>,
    ) -> Result<Self, StrategyError> {
        let clip = Clip::fixed(options, S)?;
        let (book, w) = Wrap::new(inner, options.num_sampled_clients, seed);
        Ok(Composed {
            book,
            step: CentralDp { w, clip },
        })
    }
}

impl<const S: bool> Composed<CentralDp<S, true>> {
    /// Wraps `inner` (any strategy of the catalog; it keeps its sampling,
    /// configs and evaluation). `seed` seeds the noise (`None`: from the OS).
    pub fn new<A: Aggregate + 'static>(
        inner: Composed<A>,
        options: AdaptiveClippingOptions,
        seed: Option<u64>,
    ) -> Result<Self, StrategyError> {
        let clip = Clip::adaptive(options)?;
        let (book, w) = Wrap::new(inner, options.num_sampled_clients, seed);
        Ok(Composed {
            book,
            step: CentralDp { w, clip },
        })
    }

    /// The current clipping norm.
    pub fn clipping_norm(&self) -> f64 {
        self.step.clip.norm()
    }
}

impl<const SERVER_SIDE: bool, const ADAPTIVE: bool> CentralDp<SERVER_SIDE, ADAPTIVE> {
    /// Adapts the clipping norm to the round's clipped count (adaptive only).
    fn adapt(&mut self, round: &WrapRound) {
        if let Clip::Adaptive {
            clipping_norm,
            update,
            ..
        } = &mut self.clip
        {
            // Flower divides by zero here; with no results there is nothing to adapt to.
            if round.results > 0 {
                *clipping_norm =
                    update.apply(*clipping_norm, round.bits, round.results, &mut self.w.rng);
            }
        }
    }
}

impl<const SERVER_SIDE: bool, const ADAPTIVE: bool> Aggregate for CentralDp<SERVER_SIDE, ADAPTIVE> {
    fn name(&self) -> &str {
        match (SERVER_SIDE, ADAPTIVE) {
            (true, false) => "DifferentialPrivacyServerSideFixedClipping",
            (true, true) => "DifferentialPrivacyServerSideAdaptiveClipping",
            (false, false) => "DifferentialPrivacyClientSideFixedClipping",
            (false, true) => "DifferentialPrivacyClientSideAdaptiveClipping",
        }
    }

    /// Client-side clipping tells clients the norm (`"clipping_norm": C`).
    fn extend_fit_config(&self, config: &mut Config) {
        self.w.inner.extend_fit_config(config);
        if !SERVER_SIDE {
            config.insert(
                KEY_CLIPPING_NORM.to_owned(),
                Scalar::Double(self.clip.norm()),
            );
        }
    }

    fn begin(
        &mut self,
        book: &Bookkeeping,
        server_round: u64,
        global: &Parameters,
    ) -> Result<(), StrategyError> {
        self.w.begin(book, server_round, global, SERVER_SIDE)
    }

    /// Server side: clip with the current norm. Client side: count the
    /// clients' `norm_bit` (adaptive; a result without it is refused).
    fn accumulate(
        &mut self,
        server_round: u64,
        client: ClientId,
        result: FitRes,
    ) -> Result<(), StrategyError> {
        if SERVER_SIDE {
            let c = self.clip.norm();
            return self.w.accumulate_clipped(server_round, client, result, c);
        }
        self.w.check(server_round)?;
        let bit = ADAPTIVE && norm_bit(&result, KEY_NORM_BIT)?;
        self.w.accumulate_counted(server_round, client, result, bit)
    }

    /// The inner aggregate plus noise `N(0, (z·C/n_s)²)`; an adaptive norm
    /// is updated before the noise (on the server side before the inner
    /// aggregation, on the client side after it, as in Flower).
    fn aggregate(
        &mut self,
        book: &mut Bookkeeping,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        let Some(round) = self.w.take(server_round, failures) else {
            return Ok((None, Metrics::new()));
        };
        warn_count(round.results, self.w.num_sampled_clients);
        if SERVER_SIDE {
            self.adapt(&round);
        }
        let out = self.w.inner.aggregate(book, server_round, failures)?;
        if !SERVER_SIDE {
            self.adapt(&round);
        }
        let std = self
            .w
            .noise_std(self.clip.noise_multiplier(), self.clip.norm());
        self.w.noised(out, std)
    }

    fn state(&self, book: &Bookkeeping) -> serde_json::Value {
        match &self.clip {
            Clip::Fixed { .. } => self.w.state(book, None),
            Clip::Adaptive { clipping_norm, .. } => {
                self.w.state(book, Some(("clipping_norm", *clipping_norm)))
            }
        }
    }

    fn restore_state(
        &mut self,
        book: &mut Bookkeeping,
        state: serde_json::Value,
    ) -> Result<(), StrategyError> {
        match &mut self.clip {
            Clip::Fixed { .. } => self.w.restore(book, state, None),
            // The adaptive wrappers hand even a null state on to the inner strategy.
            Clip::Adaptive { .. } if state.is_null() => self.w.inner.restore_state(book, state),
            Clip::Adaptive { clipping_norm, .. } => {
                self.w
                    .restore(book, state, Some(("clipping_norm", clipping_norm)))
            }
        }
    }
}
