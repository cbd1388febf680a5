//! [`FaultTolerantFedAvg`]: FedAvg that aggregates only when enough of the
//! sampled clients answered.

use std::fmt;

use flower_core::{EvaluateIns, EvaluateRes, FitIns, FitRes, Metrics, Parameters};

use crate::callbacks::weighted_loss_avg;
use crate::common::{eval_metrics, Base};
use crate::fedavg::{mean_accumulate, mean_begin, take_round, FedAvgOptions};
use crate::layers::encode_all;
use crate::mean::{MeanMode, MeanRound};
use crate::strategy::{ClientFailure, ClientId, ClientSampler, Strategy};
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

fn completion_rate(results: usize, failures: usize) -> f64 {
    results as f64 / (results + failures) as f64
}

impl Strategy for FaultTolerantFedAvg {
    fn name(&self) -> &str {
        "FaultTolerantFedAvg"
    }

    fn initialize_parameters(&mut self) -> Option<Parameters> {
        self.base.take_initial()
    }

    fn min_available_clients(&self) -> usize {
        self.base.opts.min_available_clients
    }

    fn evaluate(
        &mut self,
        server_round: u64,
        parameters: &Parameters,
    ) -> Result<Option<(f64, Metrics)>, StrategyError> {
        self.base.evaluate(server_round, parameters)
    }

    fn configure_fit(
        &mut self,
        server_round: u64,
        parameters: &Parameters,
        clients: &mut dyn ClientSampler,
    ) -> Result<Vec<(ClientId, FitIns)>, StrategyError> {
        Ok(self.base.configure_fit(server_round, parameters, clients))
    }

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
        let r = round.num_results();
        if r == 0 || completion_rate(r, failures.len()) < self.min_completion_rate_fit {
            return Ok((None, Metrics::new()));
        }
        let layers = round.mean.finish_layers()?;
        Ok((
            Some(encode_all(&layers)),
            self.base.fit_metrics(&round.metrics),
        ))
    }

    fn configure_evaluate(
        &mut self,
        server_round: u64,
        parameters: &Parameters,
        clients: &mut dyn ClientSampler,
    ) -> Result<Vec<(ClientId, EvaluateIns)>, StrategyError> {
        Ok(self
            .base
            .configure_evaluate(server_round, parameters, clients))
    }

    fn aggregate_evaluate(
        &mut self,
        _server_round: u64,
        results: &[(ClientId, EvaluateRes)],
        failures: &[ClientFailure],
    ) -> Result<(Option<f64>, Metrics), StrategyError> {
        let r = results.len();
        if r == 0 || completion_rate(r, failures.len()) < self.min_completion_rate_evaluate {
            return Ok((None, Metrics::new()));
        }
        let losses: Vec<(i64, f64)> = results
            .iter()
            .map(|(_, e)| (e.num_examples, f64::from(e.loss)))
            .collect();
        let loss = weighted_loss_avg(&losses)?;
        Ok((
            Some(loss),
            self.base.evaluate_metrics(&eval_metrics(results)),
        ))
    }
}
