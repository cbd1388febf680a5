//! [`FedProx`]: FedAvg that tells clients the proximal term's weight.

use std::fmt;

use flower_core::{FitIns, Parameters, Scalar};

use crate::common::{add_fit_config, forward_to_inner};

use crate::fedavg::{FedAvg, FedAvgOptions};
use crate::strategy::{ClientId, ClientSampler, Strategy};
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

    forward_to_inner!(inner =>
        initialize_parameters,
        min_available_clients,
        evaluate,
        begin_fit,
        accumulate_fit,
        aggregate_fit,
        configure_evaluate,
        aggregate_evaluate,
    );

    fn configure_fit(
        &mut self,
        server_round: u64,
        parameters: &Parameters,
        clients: &mut dyn ClientSampler,
    ) -> Result<Vec<(ClientId, FitIns)>, StrategyError> {
        let mut instructions = self
            .inner
            .configure_fit(server_round, parameters, clients)?;
        add_fit_config(
            &mut instructions,
            &[("proximal_mu", Scalar::Double(self.proximal_mu))],
        );
        Ok(instructions)
    }
}
