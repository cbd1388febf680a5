//! [`FedProx`]: FedAvg that tells clients the proximal term's weight.

use flower_core::{Config, Scalar};

use crate::aggregate::Composed;
use crate::bookkeeping::{Bookkeeping, Policy};
use crate::fedavg::{FedAvgOptions, MeanRule, MeanStep};
use crate::mean::MeanMode;
use crate::StrategyError;

/// Flower's `FedProx`: aggregation is FedAvg's (in-place by default); every
/// fit config gains `"proximal_mu": proximal_mu`, overriding a
/// `proximal_mu` the config function may have set.
pub type FedProx = Composed<MeanStep<FedProxRule>>;

/// [`FedProx`]'s rule: FedAvg's mean, plus `proximal_mu` in the fit config.
#[derive(Debug, Clone, Copy)]
pub struct FedProxRule {
    proximal_mu: f64,
}

impl FedProx {
    /// Builds FedProx; `proximal_mu` has no default in Flower.
    pub fn new(options: FedAvgOptions, proximal_mu: f64) -> Result<Self, StrategyError> {
        MeanStep::compose(options, Policy::default(), FedProxRule { proximal_mu })
    }

    /// The proximal term weight sent to clients.
    pub fn proximal_mu(&self) -> f64 {
        self.step.rule().proximal_mu
    }
}

impl MeanRule for FedProxRule {
    fn name(&self) -> &str {
        "FedProx"
    }

    fn mode(&self, book: &Bookkeeping) -> MeanMode {
        MeanMode::of(book.opts.inplace)
    }

    fn extend_fit_config(&self, config: &mut Config) {
        config.insert("proximal_mu".to_owned(), Scalar::Double(self.proximal_mu));
    }
}
