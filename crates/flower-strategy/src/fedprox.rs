//! [`FedProx`]: FedAvg that tells clients the proximal term's weight.

use std::fmt;

use flower_core::{EvaluateIns, EvaluateRes, FitIns, FitRes, Metrics, Parameters, Scalar};

use crate::fedavg::{FedAvg, FedAvgOptions};
use crate::strategy::{ClientFailure, ClientId, ClientSampler, Strategy};
use crate::StrategyError;

/// Flower's `FedProx`: aggregation is FedAvg's (in-place by default); every
/// fit config gains `"proximal_mu": proximal_mu`, overriding a
/// `proximal_mu` the config function may have set.
pub struct FedProx {
    inner: FedAvg,
    proximal_mu: f64,
}

impl fmt::Debug for FedProx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FedProx")
            .field("proximal_mu", &self.proximal_mu)
            .field("options", self.inner.options())
            .finish()
    }
}

impl FedProx {
    /// Builds FedProx; `proximal_mu` has no default in Flower.
    pub fn new(options: FedAvgOptions, proximal_mu: f64) -> Result<Self, StrategyError> {
        Ok(FedProx {
            inner: FedAvg::new(options)?,
            proximal_mu,
        })
    }

    /// The proximal term weight sent to clients.
    pub fn proximal_mu(&self) -> f64 {
        self.proximal_mu
    }
}

impl Strategy for FedProx {
    fn name(&self) -> &str {
        "FedProx"
    }

    fn initialize_parameters(&mut self) -> Option<Parameters> {
        self.inner.initialize_parameters()
    }

    fn min_available_clients(&self) -> usize {
        self.inner.min_available_clients()
    }

    fn evaluate(
        &mut self,
        server_round: u64,
        parameters: &Parameters,
    ) -> Result<Option<(f64, Metrics)>, StrategyError> {
        self.inner.evaluate(server_round, parameters)
    }

    fn configure_fit(
        &mut self,
        server_round: u64,
        parameters: &Parameters,
        clients: &mut dyn ClientSampler,
    ) -> Result<Vec<(ClientId, FitIns)>, StrategyError> {
        let mut instructions = self
            .inner
            .configure_fit(server_round, parameters, clients)?;
        for (_, ins) in &mut instructions {
            ins.config
                .insert("proximal_mu".to_owned(), Scalar::Double(self.proximal_mu));
        }
        Ok(instructions)
    }

    fn begin_fit(&mut self, server_round: u64, global: &Parameters) -> Result<(), StrategyError> {
        self.inner.begin_fit(server_round, global)
    }

    fn accumulate_fit(
        &mut self,
        server_round: u64,
        client: ClientId,
        result: FitRes,
    ) -> Result<(), StrategyError> {
        self.inner.accumulate_fit(server_round, client, result)
    }

    fn aggregate_fit(
        &mut self,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        self.inner.aggregate_fit(server_round, failures)
    }

    fn configure_evaluate(
        &mut self,
        server_round: u64,
        parameters: &Parameters,
        clients: &mut dyn ClientSampler,
    ) -> Result<Vec<(ClientId, EvaluateIns)>, StrategyError> {
        self.inner
            .configure_evaluate(server_round, parameters, clients)
    }

    fn aggregate_evaluate(
        &mut self,
        server_round: u64,
        results: &[(ClientId, EvaluateRes)],
        failures: &[ClientFailure],
    ) -> Result<(Option<f64>, Metrics), StrategyError> {
        self.inner
            .aggregate_evaluate(server_round, results, failures)
    }
}
