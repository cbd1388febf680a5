//! Flower's server-side strategies for flower-rs.
//!
//! [`Strategy`] is what the round driver calls; every strategy of Flower
//! 1.42's legacy catalog (`flwr.server.strategy`) implements it with Flower's
//! numbers, checked against golden vectors produced by Python Flower
//! (`tests/golden.rs`).
//!
//! | Flower class | Rust type | registry name |
//! |---|---|---|
//! | `FedAvg` | [`FedAvg`] | `fedavg` |
//! | `FedAvgM` | [`FedAvgM`] | `fedavgm` |
//! | `FedProx` | [`FedProx`] | `fedprox` |
//! | `FedOpt` / `FedAdagrad` / `FedAdam` / `FedYogi` | [`FedOpt`] ([`FedOptKind`]) | `fedopt`, `fedadagrad`, `fedadam`, `fedyogi` |
//! | `QFedAvg` | [`QFedAvg`] | `qfedavg` |
//! | `FedMedian` | [`FedMedian`] | `fedmedian` |
//! | `FedTrimmedAvg` | [`FedTrimmedAvg`] | `fedtrimmedavg` |
//! | `Krum` (MultiKrum with `num_clients_to_keep > 0`) | [`Krum`] | `krum` |
//! | `Bulyan` | [`Bulyan`] | `bulyan` |
//! | `FaultTolerantFedAvg` | [`FaultTolerantFedAvg`] | `fault-tolerant-fedavg` |
//! | `FedAvgAndroid` | [`FedAvgAndroid`] | `fedavg-android` |
//! | `FedXgbBagging` | [`FedXgbBagging`] | `fedxgb-bagging` |
//! | `FedXgbCyclic` | [`FedXgbCyclic`] | `fedxgb-cyclic` |
//! | `DifferentialPrivacyServerSideFixedClipping` | [`DpServerSideFixedClipping`] | `dp-server-fixed` |
//! | `DifferentialPrivacyServerSideAdaptiveClipping` | [`DpServerSideAdaptiveClipping`] | `dp-server-adaptive` |
//! | `DifferentialPrivacyClientSideFixedClipping` | [`DpClientSideFixedClipping`] | `dp-client-fixed` |
//! | `DifferentialPrivacyClientSideAdaptiveClipping` | [`DpClientSideAdaptiveClipping`] | `dp-client-adaptive` |
//! | `DPFedAvgFixed` | [`DpFedAvgFixed`] | `dpfedavg-fixed` |
//! | `DPFedAvgAdaptive` | [`DpFedAvgAdaptive`] | `dpfedavg-adaptive` |
//!
//! Every strategy is built from [`FedAvgOptions`] (Flower's common
//! constructor arguments, with Flower's defaults) plus its own options, or by
//! name through [`build_strategy`] from a [`StrategySpec`] (a TOML
//! `[strategy]` table); [`catalog_help`] lists every name and option.
//!
//! # Streaming aggregation
//!
//! The server hands fit results over one at a time
//! ([`Strategy::accumulate_fit`]). Mean-based strategies (FedAvg, FedProx,
//! the FedOpt family, FedAvgM, FaultTolerantFedAvg, FedAvgAndroid, QFedAvg)
//! fold each result into an accumulator straight from its `.npy` bytes, so a
//! round needs memory for one model, not one per client. Robust aggregators
//! (median, trimmed mean, Krum, Bulyan) need every update at once and keep
//! them decoded until [`Strategy::aggregate_fit`].
//!
//! A result whose layer count or shapes differ from the global model handed
//! to [`Strategy::begin_fit`], or whose dtype is incompatible with it, is
//! refused with [`StrategyError::Mismatch`]; the server counts that client as
//! failed.
//!
//! # Numbers
//!
//! dtypes follow Flower/NumPy: f32 layers are averaged in f32 by the plain
//! mean (`inplace=false`), which is bit-equal to Flower; FedAdam, QFedAvg and
//! the DPFedAvg wrappers return f64 models as Flower does. In-place FedAvg
//! (the default) cannot be bit-equal while streaming: Flower scales each
//! client by `n_k / N`, and `N` is only known after the last result. It folds
//! `f32(x·n_k)` in f32 instead (the same roundings, before the scaling rather
//! than after) and divides by `N` once; results agree with Flower to about an
//! ulp, within the golden tolerance, and a single client's model comes back
//! unchanged as in Flower.
//!
//! # Deviations from Flower
//!
//! Where Flower does something accidental (integer layers zeroed by
//! in-place FedAvg, NaN models on a zero total, silent NumPy broadcasting of
//! mismatched shapes, a complex noise multiplier, ...) these strategies
//! return a typed [`StrategyError`] instead. The complete list, with the
//! reason for each, is [`deviations::DEVIATIONS`] (documented in the
//! [`deviations`] module); the golden test checks every listed case.

//! # Tests
//!
//! * `cargo test -p flower-strategy --test golden` replays Python Flower's
//!   70 golden cases from `<workspace>/../shared/golden/strategies`
//!   (`FLWR_GOLDEN_DIR` overrides it; `FLWR_GOLDEN_EXACT=1` also demands
//!   bit-equal arrays, which holds for the plain mean, FedMedian,
//!   FedTrimmedAvg, Krum and Bulyan cases).
//! * `--test sampling`: client counts against Flower's `sampling_table.json`.
//! * `--test checkpoint`: `state`/`restore_state` resume identically.
//! * `--test robustness`: malformed client results are refused, never panic.

mod android;
pub mod callbacks;
mod common;
pub mod deviations;
mod dp;
mod fault_tolerant;
mod fedavg;
mod fedavgm;
mod fedopt;
mod fedprox;
mod layers;
mod mean;
mod pyjson;
mod qfedavg;
mod registry;
mod rng;
mod robust;
mod strategy;
mod xgb;

pub use android::FedAvgAndroid;
pub use callbacks::{
    fixed_config, weighted_average, weighted_loss_avg, ConfigFn, EvaluateFn, MetricSelection,
    MetricsAggregationFn, XgbEvaluateFn,
};
pub use dp::{
    AdaptiveClippingOptions, DpClientSideAdaptiveClipping, DpClientSideFixedClipping,
    DpFedAvgAdaptive, DpFedAvgAdaptiveOptions, DpFedAvgFixed, DpServerSideAdaptiveClipping,
    DpServerSideFixedClipping,
};
pub use fault_tolerant::FaultTolerantFedAvg;
pub use fedavg::{FedAvg, FedAvgOptions};
pub use fedavgm::FedAvgM;
pub use fedopt::{FedOpt, FedOptKind, FedOptOptions};
pub use fedprox::FedProx;
pub use qfedavg::QFedAvg;
pub use registry::{
    build_strategy, catalog_help, strategy_names, Callbacks, CommonOptions, StrategySpec,
};
pub use robust::{Bulyan, FedMedian, FedTrimmedAvg, Krum};
pub use strategy::{ClientFailure, ClientId, ClientSampler, Strategy};
pub use xgb::{FedXgbBagging, FedXgbCyclic};

/// Errors of a strategy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StrategyError {
    /// A client's tensors could not be decoded.
    #[error("undecodable parameters: {0}")]
    Decode(String),
    /// A client's arrays do not match the global model (count, shape or dtype).
    #[error("parameters do not match the global model: {0}")]
    Mismatch(String),
    /// The total weight is zero (Python: ZeroDivisionError / NaN).
    #[error("total number of examples is zero")]
    ZeroExamples,
    /// Invalid strategy configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Any other failure.
    #[error("{0}")]
    Other(String),
    /// A layer whose dtype this strategy cannot aggregate meaningfully (for
    /// example an integer layer under in-place FedAvg, which Flower zeroes).
    #[error("unsupported layer: {0}")]
    UnsupportedLayer(String),
    /// Fewer results than the aggregation rule needs (Bulyan's `4f+3`,
    /// MultiKrum's `num_clients_to_keep`).
    #[error("not enough results: {rule} needs {needed}, got {got}")]
    NotEnoughResults {
        /// The rule that needs them.
        rule: &'static str,
        /// How many it needs.
        needed: usize,
        /// How many there are.
        got: usize,
    },
    /// A client reported a negative `num_examples`.
    #[error("negative num_examples {0}")]
    NegativeExamples(i64),
    /// An update with L2 norm zero cannot be clipped (Python: ZeroDivisionError).
    #[error("model update has L2 norm zero; the clipping factor is undefined")]
    ZeroNorm,
    /// A client result lacks a metric the strategy needs (Python: KeyError).
    #[error("client result lacks the metric {0:?}")]
    MissingMetric(String),
    /// A step that needs data the strategy does not have (Python:
    /// AssertionError / NameError / AttributeError), such as server-side
    /// momentum without initial parameters or QFedAvg without a loss.
    #[error("missing input: {0}")]
    Missing(String),
    /// Strategy state passed to [`Strategy::restore_state`] is malformed.
    #[error("invalid strategy state: {0}")]
    State(String),
}
