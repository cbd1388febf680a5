//! [`FaultTolerantFedAvg`]: FedAvg that aggregates only when enough of the
//! sampled clients answered.

use crate::aggregate::Composed;
use crate::bookkeeping::{Bookkeeping, Completion, Policy};
use crate::fedavg::{FedAvgOptions, MeanRule, MeanStep};
use crate::mean::MeanMode;
use crate::StrategyError;

/// Flower's `FaultTolerantFedAvg` (min clients default to 1, see
/// [`FedAvgOptions::with_min_clients`]; `accept_failures` is always true).
///
/// Fit: `None` unless `R/(R+F) ≥ min_completion_rate_fit` (R results, F
/// failures), else the plain weighted mean. Evaluate: the same gate with
/// `min_completion_rate_evaluate`, then the weighted loss.
pub type FaultTolerantFedAvg = Composed<MeanStep<FaultTolerantRule>>;

/// [`FaultTolerantFedAvg`]'s rule: the plain mean (the completion gate is
/// bookkeeping).
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultTolerantRule;

/// FaultTolerantFedAvg's own arguments (Flower's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultTolerantOptions {
    /// Minimum fraction of fit results, `R/(R+F)` (Flower's
    /// `min_completion_rate_fit`, default 0.5).
    pub min_completion_rate_fit: f64,
    /// Minimum fraction of evaluate results (Flower's
    /// `min_completion_rate_evaluate`, default 0.5).
    pub min_completion_rate_evaluate: f64,
}

impl Default for FaultTolerantOptions {
    fn default() -> Self {
        FaultTolerantOptions {
            min_completion_rate_fit: 0.5,
            min_completion_rate_evaluate: 0.5,
        }
    }
}

impl FaultTolerantFedAvg {
    /// Builds FaultTolerantFedAvg.
    pub fn new(
        mut options: FedAvgOptions,
        rates: FaultTolerantOptions,
    ) -> Result<Self, StrategyError> {
        options.accept_failures = true;
        let policy = Policy {
            completion: Some(Completion {
                fit: rates.min_completion_rate_fit,
                evaluate: rates.min_completion_rate_evaluate,
            }),
            ..Policy::default()
        };
        MeanStep::compose(options, policy, FaultTolerantRule)
    }
}

impl MeanRule for FaultTolerantRule {
    fn name(&self) -> &str {
        "FaultTolerantFedAvg"
    }

    fn mode(&self, _book: &Bookkeeping) -> MeanMode {
        MeanMode::Plain
    }
}
