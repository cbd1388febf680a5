//! What most strategies share with Flower's `FedAvg`: client sampling,
//! per-round configs, centralized evaluation, result gating, the weighted
//! evaluation loss and the metrics callbacks.

use flower_core::{Config, EvaluateIns, EvaluateRes, FitIns, Metrics, Parameters};

use crate::callbacks::weighted_loss_avg;
use crate::fedavg::FedAvgOptions;
use crate::layers::decode_ndarrays;
use crate::strategy::{ClientFailure, ClientId, ClientSampler};
use crate::StrategyError;

/// `int(available * fraction)` as Python computes it, then `max(.., min)`.
pub(crate) fn sample_size(available: usize, fraction: f64, min_clients: usize) -> usize {
    // `as usize` truncates towards zero and saturates negatives at 0, like
    // `int()` followed by the `max` with a non-negative minimum.
    let n = (available as f64 * fraction) as usize;
    n.max(min_clients)
}

/// The common part of a FedAvg-derived strategy.
pub(crate) struct Base {
    pub(crate) opts: FedAvgOptions,
}

impl Base {
    pub(crate) fn new(opts: FedAvgOptions) -> Result<Self, StrategyError> {
        opts.validate()?;
        if opts.min_fit_clients > opts.min_available_clients
            || opts.min_evaluate_clients > opts.min_available_clients
        {
            tracing::warn!(
                min_fit_clients = opts.min_fit_clients,
                min_evaluate_clients = opts.min_evaluate_clients,
                min_available_clients = opts.min_available_clients,
                "min_fit_clients or min_evaluate_clients exceeds min_available_clients; \
                 the strategy may wait for clients that are not needed"
            );
        }
        Ok(Base { opts })
    }

    /// `(sample_size, min_available)` for fit.
    pub(crate) fn num_fit_clients(&self, available: usize) -> (usize, usize) {
        (
            sample_size(available, self.opts.fraction_fit, self.opts.min_fit_clients),
            self.opts.min_available_clients,
        )
    }

    /// `(sample_size, min_available)` for evaluate.
    pub(crate) fn num_evaluation_clients(&self, available: usize) -> (usize, usize) {
        (
            sample_size(
                available,
                self.opts.fraction_evaluate,
                self.opts.min_evaluate_clients,
            ),
            self.opts.min_available_clients,
        )
    }

    pub(crate) fn fit_config(&self, server_round: u64) -> Config {
        self.opts
            .on_fit_config_fn
            .as_ref()
            .map(|f| f(server_round))
            .unwrap_or_default()
    }

    pub(crate) fn evaluate_config(&self, server_round: u64) -> Config {
        self.opts
            .on_evaluate_config_fn
            .as_ref()
            .map(|f| f(server_round))
            .unwrap_or_default()
    }

    /// Samples clients for fit (without building instructions).
    pub(crate) fn sample_fit(&self, clients: &mut dyn ClientSampler) -> Vec<ClientId> {
        let (size, min) = self.num_fit_clients(clients.num_available());
        clients.sample(size, min)
    }

    /// Flower's `configure_fit`: every sampled client gets the same `FitIns`.
    pub(crate) fn configure_fit(
        &self,
        server_round: u64,
        parameters: &Parameters,
        clients: &mut dyn ClientSampler,
    ) -> Vec<(ClientId, FitIns)> {
        let config = self.fit_config(server_round);
        self.sample_fit(clients)
            .into_iter()
            .map(|id| {
                (
                    id,
                    FitIns {
                        parameters: parameters.clone(),
                        config: config.clone(),
                    },
                )
            })
            .collect()
    }

    /// Samples clients for evaluation; none when `fraction_evaluate == 0`.
    pub(crate) fn sample_evaluate(&self, clients: &mut dyn ClientSampler) -> Vec<ClientId> {
        if self.opts.fraction_evaluate == 0.0 {
            return Vec::new();
        }
        let (size, min) = self.num_evaluation_clients(clients.num_available());
        clients.sample(size, min)
    }

    /// Flower's `configure_evaluate`.
    pub(crate) fn configure_evaluate(
        &self,
        server_round: u64,
        parameters: &Parameters,
        clients: &mut dyn ClientSampler,
    ) -> Vec<(ClientId, EvaluateIns)> {
        if self.opts.fraction_evaluate == 0.0 {
            return Vec::new();
        }
        let config = self.evaluate_config(server_round);
        self.sample_evaluate(clients)
            .into_iter()
            .map(|id| {
                (
                    id,
                    EvaluateIns {
                        parameters: parameters.clone(),
                        config: config.clone(),
                    },
                )
            })
            .collect()
    }

    /// Flower's `initialize_parameters`: hands out the initial parameters once.
    pub(crate) fn take_initial(&mut self) -> Option<Parameters> {
        self.opts.initial_parameters.take()
    }

    /// Centralized evaluation with `evaluate_fn` on decoded arrays.
    pub(crate) fn evaluate(
        &self,
        server_round: u64,
        parameters: &Parameters,
    ) -> Result<Option<(f64, Metrics)>, StrategyError> {
        let Some(f) = &self.opts.evaluate_fn else {
            return Ok(None);
        };
        let arrays = decode_ndarrays(parameters)?;
        Ok(f(server_round, &arrays, &Config::new()))
    }

    /// Result gating of `aggregate_fit`/`aggregate_evaluate`: false means
    /// "return `(None, {})`".
    pub(crate) fn gate(&self, num_results: usize, failures: &[ClientFailure]) -> bool {
        num_results > 0 && (self.opts.accept_failures || failures.is_empty())
    }

    pub(crate) fn fit_metrics(&self, metrics: &[(i64, Metrics)]) -> Metrics {
        self.opts
            .fit_metrics_aggregation_fn
            .as_ref()
            .map(|f| f(metrics))
            .unwrap_or_default()
    }

    pub(crate) fn evaluate_metrics(&self, metrics: &[(i64, Metrics)]) -> Metrics {
        self.opts
            .evaluate_metrics_aggregation_fn
            .as_ref()
            .map(|f| f(metrics))
            .unwrap_or_default()
    }

    /// Flower's `aggregate_evaluate`: gating, weighted loss, metrics.
    pub(crate) fn aggregate_evaluate(
        &self,
        results: &[(ClientId, EvaluateRes)],
        failures: &[ClientFailure],
    ) -> Result<(Option<f64>, Metrics), StrategyError> {
        if !self.gate(results.len(), failures) {
            return Ok((None, Metrics::new()));
        }
        let losses: Vec<(i64, f64)> = results
            .iter()
            .map(|(_, r)| (r.num_examples, f64::from(r.loss)))
            .collect();
        let loss = weighted_loss_avg(&losses)?;
        Ok((Some(loss), self.evaluate_metrics(&eval_metrics(results))))
    }
}

/// `[(num_examples, metrics)]` of evaluation results.
pub(crate) fn eval_metrics(results: &[(ClientId, EvaluateRes)]) -> Vec<(i64, Metrics)> {
    results
        .iter()
        .map(|(_, r)| (r.num_examples, r.metrics.clone()))
        .collect()
}

/// Errors when a result arrives for another round than the one begun.
pub(crate) fn check_round(expected: Option<u64>, got: u64) -> Result<(), StrategyError> {
    match expected {
        Some(r) if r == got => Ok(()),
        Some(r) => Err(StrategyError::Other(format!(
            "fit result for round {got}, but round {r} is being aggregated"
        ))),
        None => Err(StrategyError::Other(format!(
            "fit result for round {got} before begin_fit"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_sizes() {
        assert_eq!(sample_size(33, 0.5, 2), 16);
        assert_eq!(sample_size(1, 1.0, 2), 2);
        assert_eq!(sample_size(10, 0.3, 1), 3);
        assert_eq!(sample_size(10, -1.0, 1), 1);
    }
}
