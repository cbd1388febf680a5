//! [`FedAvg`] and [`FedAvgOptions`], the constructor arguments most of the
//! catalog shares.

use std::fmt;

use flower_core::{FitRes, Metrics, Parameters};

use crate::callbacks::{ConfigFn, EvaluateFn, MetricsAggregationFn, Shown};
use crate::common::{current_round, forward_to_base, Base, RoundState};
use crate::layers::encode_all;
use crate::mean::{MeanMode, MeanRound};
use crate::strategy::{ClientFailure, ClientId, Strategy};
use crate::StrategyError;

/// Flower's `FedAvg` constructor arguments, with Flower's defaults
/// ([`FedAvgOptions::default`]); shared by every FedAvg-derived strategy.
///
/// Setters take and return `self`:
///
/// ```
/// use flower_strategy::{FedAvg, FedAvgOptions};
/// let strategy = FedAvg::new(FedAvgOptions::default().min_fit_clients(5).fraction_evaluate(0.5))?;
/// # Ok::<(), flower_strategy::StrategyError>(())
/// ```
pub struct FedAvgOptions {
    /// Fraction of available clients sampled for fit (default 1.0).
    pub fraction_fit: f64,
    /// Fraction of available clients sampled for evaluate (default 1.0; 0
    /// disables federated evaluation).
    pub fraction_evaluate: f64,
    /// Minimum number of clients sampled for fit (default 2).
    pub min_fit_clients: usize,
    /// Minimum number of clients sampled for evaluate (default 2).
    pub min_evaluate_clients: usize,
    /// Clients that must be connected before a round starts (default 2).
    pub min_available_clients: usize,
    /// Centralized evaluation (default none).
    pub evaluate_fn: Option<EvaluateFn>,
    /// Per-round fit config (default: empty config).
    pub on_fit_config_fn: Option<ConfigFn>,
    /// Per-round evaluate config (default: empty config).
    pub on_evaluate_config_fn: Option<ConfigFn>,
    /// Aggregate rounds that had failures (default true).
    pub accept_failures: bool,
    /// Initial global model (default none: the server asks a client).
    pub initial_parameters: Option<Parameters>,
    /// Reduces fit metrics (default none: metrics are `{}`).
    pub fit_metrics_aggregation_fn: Option<MetricsAggregationFn>,
    /// Reduces evaluate metrics (default none: metrics are `{}`).
    pub evaluate_metrics_aggregation_fn: Option<MetricsAggregationFn>,
    /// In-place weighted mean (default true); false is Flower's `aggregate`.
    pub inplace: bool,
}

impl Default for FedAvgOptions {
    fn default() -> Self {
        FedAvgOptions {
            fraction_fit: 1.0,
            fraction_evaluate: 1.0,
            min_fit_clients: 2,
            min_evaluate_clients: 2,
            min_available_clients: 2,
            evaluate_fn: None,
            on_fit_config_fn: None,
            on_evaluate_config_fn: None,
            accept_failures: true,
            initial_parameters: None,
            fit_metrics_aggregation_fn: None,
            evaluate_metrics_aggregation_fn: None,
            inplace: true,
        }
    }
}

impl fmt::Debug for FedAvgOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FedAvgOptions")
            .field("fraction_fit", &self.fraction_fit)
            .field("fraction_evaluate", &self.fraction_evaluate)
            .field("min_fit_clients", &self.min_fit_clients)
            .field("min_evaluate_clients", &self.min_evaluate_clients)
            .field("min_available_clients", &self.min_available_clients)
            .field("evaluate_fn", &Shown(&self.evaluate_fn))
            .field("on_fit_config_fn", &Shown(&self.on_fit_config_fn))
            .field("on_evaluate_config_fn", &Shown(&self.on_evaluate_config_fn))
            .field("accept_failures", &self.accept_failures)
            .field(
                "initial_parameters",
                &self.initial_parameters.as_ref().map(|p| p.tensors.len()),
            )
            .field(
                "fit_metrics_aggregation_fn",
                &Shown(&self.fit_metrics_aggregation_fn),
            )
            .field(
                "evaluate_metrics_aggregation_fn",
                &Shown(&self.evaluate_metrics_aggregation_fn),
            )
            .field("inplace", &self.inplace)
            .finish()
    }
}

macro_rules! setter {
    ($(#[$doc:meta] $name:ident: $t:ty),* $(,)?) => {$(
        #[$doc]
        #[must_use]
        pub fn $name(mut self, value: $t) -> Self {
            self.$name = value;
            self
        }
    )*};
}

macro_rules! boxed_setter {
    ($(#[$doc:meta] $name:ident: $t:ty),* $(,)?) => {$(
        #[$doc]
        #[must_use]
        pub fn $name(mut self, value: $t) -> Self {
            self.$name = Some(value);
            self
        }
    )*};
}

impl FedAvgOptions {
    setter! {
        /// Sets `fraction_fit`.
        fraction_fit: f64,
        /// Sets `fraction_evaluate`.
        fraction_evaluate: f64,
        /// Sets `min_fit_clients`.
        min_fit_clients: usize,
        /// Sets `min_evaluate_clients`.
        min_evaluate_clients: usize,
        /// Sets `min_available_clients`.
        min_available_clients: usize,
        /// Sets `accept_failures`.
        accept_failures: bool,
        /// Sets `inplace`.
        inplace: bool,
    }

    boxed_setter! {
        /// Sets `evaluate_fn`.
        evaluate_fn: EvaluateFn,
        /// Sets `on_fit_config_fn`.
        on_fit_config_fn: ConfigFn,
        /// Sets `on_evaluate_config_fn`.
        on_evaluate_config_fn: ConfigFn,
        /// Sets `initial_parameters`.
        initial_parameters: Parameters,
        /// Sets `fit_metrics_aggregation_fn`.
        fit_metrics_aggregation_fn: MetricsAggregationFn,
        /// Sets `evaluate_metrics_aggregation_fn`.
        evaluate_metrics_aggregation_fn: MetricsAggregationFn,
    }

    /// Flower's FedAvg defaults with other minimum client counts (QFedAvg and
    /// FaultTolerantFedAvg default them to 1).
    pub fn with_min_clients(min: usize) -> Self {
        FedAvgOptions {
            min_fit_clients: min,
            min_evaluate_clients: min,
            min_available_clients: min,
            ..Default::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), StrategyError> {
        for (name, v) in [
            ("fraction_fit", self.fraction_fit),
            ("fraction_evaluate", self.fraction_evaluate),
        ] {
            if !v.is_finite() {
                return Err(StrategyError::Config(format!(
                    "{name} must be a finite number, got {v}"
                )));
            }
        }
        Ok(())
    }
}

/// Federated Averaging (Flower's `FedAvg`): the `num_examples`-weighted mean
/// of the clients' arrays.
///
/// `inplace = true` (default) is Flower's `aggregate_inplace`,
/// `inplace = false` its `aggregate` (bit-equal for f32). Both stream: each
/// result is folded as it arrives.
pub struct FedAvg {
    base: Base,
    round: Option<MeanRound>,
}

impl fmt::Debug for FedAvg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FedAvg")
            .field("options", &self.base.opts)
            .finish_non_exhaustive()
    }
}

impl FedAvg {
    /// Builds FedAvg from its options.
    pub fn new(options: FedAvgOptions) -> Result<Self, StrategyError> {
        Ok(FedAvg {
            base: Base::new(options)?,
            round: None,
        })
    }

    /// The options.
    pub fn options(&self) -> &FedAvgOptions {
        &self.base.opts
    }

    fn mode(&self) -> MeanMode {
        if self.base.opts.inplace {
            MeanMode::InPlace
        } else {
            MeanMode::Plain
        }
    }
}

/// The FedAvg round protocol over a [`MeanRound`], shared by the strategies
/// whose fit aggregation is "gate, then weighted mean".
pub(crate) fn mean_begin(
    slot: &mut Option<MeanRound>,
    server_round: u64,
    global: &Parameters,
    mode: MeanMode,
) -> Result<(), StrategyError> {
    *slot = None;
    *slot = Some(MeanRound::begin(server_round, global, mode)?);
    Ok(())
}

pub(crate) fn mean_accumulate(
    slot: &mut Option<MeanRound>,
    server_round: u64,
    result: FitRes,
) -> Result<(), StrategyError> {
    current_round(slot, server_round)?.accumulate(result)
}

impl RoundState for MeanRound {
    fn server_round(&self) -> u64 {
        self.server_round
    }

    fn num_results(&self) -> usize {
        MeanRound::num_results(self)
    }
}

impl Strategy for FedAvg {
    fn name(&self) -> &str {
        "FedAvg"
    }

    forward_to_base!(base => all);

    fn begin_fit(&mut self, server_round: u64, global: &Parameters) -> Result<(), StrategyError> {
        let mode = self.mode();
        mean_begin(&mut self.round, server_round, global, mode)
    }

    fn accumulate_fit(
        &mut self,
        server_round: u64,
        _client: ClientId,
        result: FitRes,
    ) -> Result<(), StrategyError> {
        mean_accumulate(&mut self.round, server_round, result)
    }

    fn aggregate_fit(
        &mut self,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        let Some(round) = self
            .base
            .take_gated(&mut self.round, server_round, failures)
        else {
            return Ok((None, Metrics::new()));
        };
        let layers = round.mean.finish_layers()?;
        let metrics = self.base.fit_metrics(&round.metrics);
        Ok((Some(encode_all(&layers)), metrics))
    }
}
