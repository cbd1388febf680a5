//! [`FaultTolerantFedAvg`]: FedAvg that aggregates only when enough of the
//! sampled clients answered.

use std::fmt;

use flower_core::{EvaluateRes, FitRes, Metrics, Parameters};

use crate::common::{forward_to_base, take_round, Base};
use crate::fedavg::{mean_accumulate, mean_begin, FedAvgOptions};
use crate::layers::encode_all;
use crate::mean::{MeanMode, MeanRound};
use crate::strategy::{ClientFailure, ClientId, Strategy};
use crate::StrategyError;

/// Flower's `FaultTolerantFedAvg` (min clients default to 1, see
/// [`FedAvgOptions::with_min_clients`]; `accept_failures` is always true).
///
/// Fit: `None` unless `R/(R+F) ≥ min_completion_rate_fit` (R results, F
/// failures), else the plain weighted mean. Evaluate: the same gate with
/// `min_completion_rate_evaluate`, then the weighted loss.
pub struct FaultTolerantFedAvg {
    base: Base,
    min_completion_rate_fit: f64,
    min_completion_rate_evaluate: f64,
    round: Option<MeanRound>,
}

impl fmt::Debug for FaultTolerantFedAvg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultTolerantFedAvg")
            .field("min_completion_rate_fit", &self.min_completion_rate_fit)
            .field(
                "min_completion_rate_evaluate",
                &self.min_completion_rate_evaluate,
            )
            .field("options", &self.base.opts)
            .finish_non_exhaustive()
    }
}

impl FaultTolerantFedAvg {
    /// Builds FaultTolerantFedAvg (Flower's defaults: both rates 0.5).
    pub fn new(
        mut options: FedAvgOptions,
        min_completion_rate_fit: f64,
        min_completion_rate_evaluate: f64,
    ) -> Result<Self, StrategyError> {
        options.accept_failures = true;
        Ok(FaultTolerantFedAvg {
            base: Base::new(options)?,
            min_completion_rate_fit,
            min_completion_rate_evaluate,
            round: None,
        })
    }
}

/// The gate: true (aggregate nothing) without results or when
/// `R/(R+F) < min_rate`.
fn incomplete(results: usize, failures: &[ClientFailure], min_rate: f64) -> bool {
    results == 0 || (results as f64 / (results + failures.len()) as f64) < min_rate
}

impl Strategy for FaultTolerantFedAvg {
    fn name(&self) -> &str {
        "FaultTolerantFedAvg"
    }

    forward_to_base!(base =>
        initialize_parameters,
        min_available_clients,
        evaluate,
        configure_fit,
        configure_evaluate,
    );

    fn begin_fit(&mut self, server_round: u64, global: &Parameters) -> Result<(), StrategyError> {
        mean_begin(&mut self.round, server_round, global, MeanMode::Plain)
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
        let Some(round) = take_round(&mut self.round, server_round) else {
            return Ok((None, Metrics::new()));
        };
        if incomplete(round.num_results(), failures, self.min_completion_rate_fit) {
            return Ok((None, Metrics::new()));
        }
        let layers = round.mean.finish_layers()?;
        Ok((
            Some(encode_all(&layers)),
            self.base.fit_metrics(&round.metrics),
        ))
    }

    fn aggregate_evaluate(
        &mut self,
        _server_round: u64,
        results: &[(ClientId, EvaluateRes)],
        failures: &[ClientFailure],
    ) -> Result<(Option<f64>, Metrics), StrategyError> {
        if incomplete(results.len(), failures, self.min_completion_rate_evaluate) {
            return Ok((None, Metrics::new()));
        }
        self.base.evaluate_summary(results)
    }
}
