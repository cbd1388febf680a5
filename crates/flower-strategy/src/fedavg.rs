//! [`FedAvg`] and [`FedAvgOptions`], the constructor arguments every
//! strategy shares, and [`MeanStep`], the aggregation step of the strategies
//! whose fit aggregation is "gate, weighted mean, then a rule's update".

use std::fmt;

use flower_core::{Config, FitRes, Metrics, Parameters};

use crate::aggregate::{Aggregate, Composed};
use crate::bookkeeping::{current_round, Bookkeeping, Policy, RoundState};
use crate::callbacks::{ConfigFn, EvaluateFn, MetricsAggregationFn, Shown};
use crate::layers::{encode_owned, Layer};
use crate::mean::{MeanMode, MeanRound};
use crate::strategy::{ClientFailure, ClientId};
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
pub type FedAvg = Composed<MeanStep<FedAvgRule>>;

impl FedAvg {
    /// Builds FedAvg from its options.
    pub fn new(options: FedAvgOptions) -> Result<Self, StrategyError> {
        MeanStep::compose(options, Policy::default(), FedAvgRule)
    }
}

/// What a [`MeanStep`] does besides the weighted mean: the mean's mode and
/// the update applied to it (a server optimizer...).
pub(crate) trait MeanRule: Send + fmt::Debug {
    /// Flower's class name.
    fn name(&self) -> &str;

    /// In-place or plain mean.
    fn mode(&self, book: &Bookkeeping) -> MeanMode;

    /// Called when a round begins, after the mean is set up.
    fn begin(&mut self, _global: &Parameters) -> Result<(), StrategyError> {
        Ok(())
    }

    /// The model returned for the round's mean `avg`.
    fn finish(
        &mut self,
        _book: &mut Bookkeeping,
        _server_round: u64,
        avg: Vec<Layer>,
    ) -> Result<Vec<Layer>, StrategyError> {
        Ok(avg)
    }

    /// Entries added to the fit config.
    fn extend_fit_config(&self, _config: &mut Config) {}

    /// State to checkpoint.
    fn state(&self, _book: &Bookkeeping) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Restores what [`MeanRule::state`] returned.
    fn restore_state(
        &mut self,
        _book: &mut Bookkeeping,
        _state: serde_json::Value,
    ) -> Result<(), StrategyError> {
        Ok(())
    }
}

/// The aggregation step of the mean-based strategies: results are folded
/// into a weighted mean as they arrive (memory for one model), then the
/// rule `R` turns the mean into the new model.
#[derive(Debug)]
pub struct MeanStep<R> {
    rule: R,
    round: Option<MeanRound>,
}

impl<R> MeanStep<R> {
    /// A strategy with this step.
    pub(crate) fn compose(
        options: FedAvgOptions,
        policy: Policy,
        rule: R,
    ) -> Result<Composed<Self>, StrategyError> {
        Ok(Composed {
            book: Bookkeeping::new(options, policy)?,
            step: MeanStep { rule, round: None },
        })
    }

    /// The rule.
    pub(crate) fn rule(&self) -> &R {
        &self.rule
    }
}

impl RoundState for MeanRound {
    fn server_round(&self) -> u64 {
        self.server_round
    }

    fn num_results(&self) -> usize {
        MeanRound::num_results(self)
    }
}

impl<R: MeanRule> Aggregate for MeanStep<R> {
    fn name(&self) -> &str {
        self.rule.name()
    }

    fn begin(
        &mut self,
        book: &Bookkeeping,
        server_round: u64,
        global: &Parameters,
    ) -> Result<(), StrategyError> {
        self.round = None;
        self.round = Some(MeanRound::begin(
            server_round,
            global,
            self.rule.mode(book),
        )?);
        self.rule.begin(global)
    }

    fn accumulate(
        &mut self,
        server_round: u64,
        _client: ClientId,
        result: FitRes,
    ) -> Result<(), StrategyError> {
        current_round(&mut self.round, server_round)?.accumulate(result)
    }

    fn aggregate(
        &mut self,
        book: &mut Bookkeeping,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        let Some(round) = book.take_gated(&mut self.round, server_round, failures) else {
            return Ok((None, Metrics::new()));
        };
        let avg = round.mean.finish_layers()?;
        let metrics = book.fit_metrics(&round.metrics);
        let layers = self.rule.finish(book, server_round, avg)?;
        Ok((Some(encode_owned(layers)), metrics))
    }

    fn extend_fit_config(&self, config: &mut Config) {
        self.rule.extend_fit_config(config)
    }

    fn state(&self, book: &Bookkeeping) -> serde_json::Value {
        self.rule.state(book)
    }

    fn restore_state(
        &mut self,
        book: &mut Bookkeeping,
        state: serde_json::Value,
    ) -> Result<(), StrategyError> {
        self.rule.restore_state(book, state)
    }
}

/// [`FedAvg`]'s rule: the mean as it is (`inplace` chooses the mean).
#[derive(Debug, Clone, Copy, Default)]
pub struct FedAvgRule;

impl MeanRule for FedAvgRule {
    fn name(&self) -> &str {
        "FedAvg"
    }

    fn mode(&self, book: &Bookkeeping) -> MeanMode {
        MeanMode::of(book.opts.inplace)
    }
}
