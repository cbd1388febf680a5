//! Flower's server-side strategies for flower-rs.
//!
//! [`Strategy`] is what the round driver calls; every strategy of Flower
//! 1.42's legacy catalog (`flwr.server.strategy`) implements it with Flower's
//! numbers, checked against golden vectors produced by Python Flower
//! (`tests/golden.rs`).
//!
//! | Flower class | Rust type (`Composed<…>`) | own options | registry name |
//! |---|---|---|---|
//! | `FedAvg` | [`FedAvg`] | — | `fedavg` |
//! | `FedAvgM` | [`FedAvgM`] | [`FedAvgMOptions`] | `fedavgm` |
//! | `FedProx` | [`FedProx`] | `proximal_mu` | `fedprox` |
//! | `FedOpt` / `FedAdagrad` / `FedAdam` / `FedYogi` | [`FedOpt`] ([`FedOptKind`]) | [`FedOptOptions`] | `fedopt`, `fedadagrad`, `fedadam`, `fedyogi` |
//! | `QFedAvg` | [`QFedAvg`] | [`QFedAvgOptions`] | `qfedavg` |
//! | `FedMedian` | [`FedMedian`] | — | `fedmedian` |
//! | `FedTrimmedAvg` | [`FedTrimmedAvg`] | [`FedTrimmedAvgOptions`] | `fedtrimmedavg` |
//! | `Krum` (MultiKrum with `num_clients_to_keep > 0`) | [`Krum`] | [`KrumOptions`] | `krum` |
//! | `Bulyan` | [`Bulyan`] | [`BulyanOptions`] | `bulyan` |
//! | `FaultTolerantFedAvg` | [`FaultTolerantFedAvg`] | [`FaultTolerantOptions`] | `fault-tolerant-fedavg` |
//! | `FedAvgAndroid` | [`FedAvgAndroid`] | — | `fedavg-android` |
//! | `FedXgbBagging` | [`FedXgbBagging`] | `evaluate_function` | `fedxgb-bagging` |
//! | `FedXgbCyclic` | [`FedXgbCyclic`] | — | `fedxgb-cyclic` |
//! | `DifferentialPrivacyServerSideFixedClipping` | [`DpServerSideFixedClipping`] | [`FixedClippingOptions`] | `dp-server-fixed` |
//! | `DifferentialPrivacyServerSideAdaptiveClipping` | [`DpServerSideAdaptiveClipping`] | [`AdaptiveClippingOptions`] | `dp-server-adaptive` |
//! | `DifferentialPrivacyClientSideFixedClipping` | [`DpClientSideFixedClipping`] | [`FixedClippingOptions`] | `dp-client-fixed` |
//! | `DifferentialPrivacyClientSideAdaptiveClipping` | [`DpClientSideAdaptiveClipping`] | [`AdaptiveClippingOptions`] | `dp-client-adaptive` |
//! | `DPFedAvgFixed` | [`DpFedAvgFixed`] | [`DpFedAvgFixedOptions`] | `dpfedavg-fixed` |
//! | `DPFedAvgAdaptive` | [`DpFedAvgAdaptive`] | [`DpFedAvgAdaptiveOptions`] | `dpfedavg-adaptive` |
//!
//! # Structure
//!
//! Every strategy is a [`Composed<A>`](Composed): the round bookkeeping
//! every strategy shares with Flower's `FedAvg` ([`Bookkeeping`]: sampling,
//! configs, result gating, evaluate aggregation, centralized evaluation)
//! plus an aggregation step `A` implementing the small [`Aggregate`] trait
//! (`begin` → `accumulate`* → `aggregate`; the steps are in [`steps`]).
//! `Composed` implements [`Strategy`] once. A DP wrapper is a step around
//! the wrapped strategy's step: it takes over that strategy's bookkeeping
//! and intercepts only the fit results, so a wrapper forwards nothing.
//!
//! Every strategy is built from [`FedAvgOptions`] (Flower's common
//! constructor arguments, with Flower's defaults) plus its own option struct
//! (a DP wrapper: the strategy it wraps plus its option struct), or by name
//! through [`build_strategy`] from a [`StrategySpec`] (a TOML `[strategy]`
//! table); [`catalog_help`] lists every name and option with the defaults of
//! those structs. A wrapper built by name passes the common options given at
//! its top level on to the strategy it wraps.
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
//!   bit-equal arrays, which holds for 46 cases: FedAvg's plain mean, FedAvgM,
//!   `qfedavg_custom`, FedMedian, FedTrimmedAvg, Krum, Bulyan,
//!   FaultTolerantFedAvg, the XGBoost and Android strategies and every edge
//!   case but `edge_large_num_examples_inplace`).
//! * `cargo test -p flower-strategy --test golden_msg` replays the 87
//!   message-API cases ([`msg`]) from `<workspace>/../shared/golden/strategies-msg`
//!   (`FLWR_GOLDEN_MSG_DIR` overrides it) through [`msg::start`].
//! * `cargo test -p flower-strategy --test strategy`: one binary with a module
//!   per concern: `sampling` (client counts against Flower's
//!   `sampling_table.json`), `checkpoint` (`state`/`restore_state` resume
//!   identically), `robustness` (malformed client results are refused, never
//!   panic) and `wrappers` (DP wrappers compose with the wrapped strategy and
//!   pass the common options on).
//! * Unit tests next to the code (sampling arithmetic, gating, the float
//!   helpers, clipping and noise, the option reader and the help text).

mod aggregate;
mod android;
mod bookkeeping;
pub mod callbacks;
pub mod deviations;
pub(crate) mod dp;
mod fault_tolerant;
mod fedavg;
mod fedavgm;
mod fedopt;
mod fedprox;
mod float;
mod layers;
mod mean;
pub mod msg;
mod pyjson;
mod qfedavg;
mod registry;
pub(crate) mod rng;
mod robust;
mod strategy;
mod xgb;

pub use aggregate::{Aggregate, Composed, DynComposed};
pub use android::FedAvgAndroid;
pub use bookkeeping::Bookkeeping;
pub use callbacks::{
    fixed_config, weighted_average, weighted_loss_avg, ConfigFn, EvaluateFn, MetricSelection,
    MetricsAggregationFn, XgbEvaluateFn,
};
pub use dp::{
    AdaptiveClippingOptions, DpClientSideAdaptiveClipping, DpClientSideFixedClipping,
    DpFedAvgAdaptive, DpFedAvgAdaptiveOptions, DpFedAvgFixed, DpFedAvgFixedOptions,
    DpServerSideAdaptiveClipping, DpServerSideFixedClipping, FixedClippingOptions,
};
pub use fault_tolerant::{FaultTolerantFedAvg, FaultTolerantOptions};
pub use fedavg::{FedAvg, FedAvgOptions};
pub use fedavgm::{FedAvgM, FedAvgMOptions};
pub use fedopt::{FedOpt, FedOptKind, FedOptOptions};
pub use fedprox::FedProx;
pub use qfedavg::{QFedAvg, QFedAvgOptions};
pub use registry::{
    build_msg_strategy, build_strategy, catalog_help, msg_catalog_help, msg_strategy_names,
    strategy_names, Callbacks, CommonOptions, MsgBuild, StrategySpec,
};
pub use robust::{
    Bulyan, BulyanOptions, FedMedian, FedTrimmedAvg, FedTrimmedAvgOptions, Krum, KrumOptions,
};
pub use strategy::{ClientFailure, ClientId, ClientSampler, Strategy};
pub use xgb::{FedXgbBagging, FedXgbCyclic};

/// The aggregation steps of the catalog's strategies (the `A` of
/// [`Composed<A>`]); the strategy types are aliases of `Composed` over them.
pub mod steps {
    pub use crate::android::FedAvgAndroidStep;
    pub use crate::dp::{CentralDp, DpFedAvg};
    pub use crate::fault_tolerant::FaultTolerantRule;
    pub use crate::fedavg::{FedAvgRule, MeanStep};
    pub use crate::fedavgm::FedAvgMRule;
    pub use crate::fedopt::FedOptRule;
    pub use crate::fedprox::FedProxRule;
    pub use crate::qfedavg::QFedAvgStep;
    pub use crate::robust::{BulyanRule, FedMedianRule, FedTrimmedAvgRule, KrumRule, RobustStep};
    pub use crate::xgb::{FedXgbBaggingStep, FedXgbCyclicStep};
}

/// Errors of a strategy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StrategyError {
    /// A tensor could not be decoded as `.npy`.
    #[error("undecodable tensor {tensor}")]
    Decode {
        /// Index of the tensor in the parameters.
        tensor: usize,
        /// What the `.npy` codec found.
        #[source]
        source: flower_core::npy::CodecError,
    },
    /// A payload that is not `.npy` is malformed (raw float32 tensors of
    /// FedAvgAndroid, XGBoost JSON models).
    #[error("malformed parameters: {0}")]
    Malformed(String),
    /// A client's arrays do not match the global model (count, shape or dtype).
    #[error("parameters do not match the global model: {0}")]
    Mismatch(String),
    /// The total weight is zero (Python: ZeroDivisionError / NaN).
    #[error("total number of examples is zero")]
    ZeroExamples,
    /// Invalid strategy configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A fit result for another round than the one begun (`in_progress`
    /// is `None` before any `begin_fit`).
    #[error("fit result for round {got}, but the round in progress is {in_progress:?}")]
    WrongRound {
        /// The result's round.
        got: u64,
        /// The round being aggregated.
        in_progress: Option<u64>,
    },
    /// Something Flower treats as impossible happened (Flower raises a
    /// ValueError); a bug if it ever shows.
    #[error("internal error: {0}")]
    Invariant(&'static str),
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
    /// Message-API replies that cannot be aggregated together (Flower:
    /// `InconsistentMessageReplies`): not exactly one ArrayRecord or
    /// MetricRecord, differing keys, a missing or list-valued weight.
    #[error("inconsistent replies: {0}")]
    InconsistentReplies(String),
    /// A message-API aggregation step failed (Flower: `AggregationError`).
    #[error("aggregation failed: {0}")]
    Aggregation(String),
    /// Values whose shapes or lengths cannot be combined (Flower: NumPy's or
    /// `zip(strict=True)`'s ValueError).
    #[error("incompatible shapes: {0}")]
    Shape(String),
    /// Fewer nodes connected than a message-API strategy needs, after the
    /// grid's bounded wait (Flower waits forever).
    #[error("too few nodes: {required} required, {online} connected")]
    TooFewNodes {
        /// Nodes required (`max(min_available_nodes, sample_size)`).
        required: usize,
        /// Nodes connected when the wait gave up.
        online: usize,
    },
    /// A message-API strategy failed in one phase of [`msg::start`].
    #[error("{phase} of round {server_round} failed")]
    InPhase {
        /// The phase.
        phase: msg::Phase,
        /// The round (0 for the initial server-side evaluation).
        server_round: u64,
        /// The error.
        #[source]
        source: Box<StrategyError>,
    },
}
