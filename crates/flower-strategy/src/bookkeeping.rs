//! The round bookkeeping every strategy shares with Flower's `FedAvg`:
//! client sampling, per-round configs, centralized evaluation, result
//! gating, the weighted evaluation loss and the metrics callbacks.
//!
//! What differs between strategies here is data ([`Policy`]), not code:
//! FedAvgM keeps handing out its weights, FedAvgAndroid and FedXgbBagging
//! evaluate other payloads, FedXgbCyclic picks one client, FaultTolerantFedAvg
//! gates on completion rates. A DP wrapper takes over the bookkeeping of the
//! strategy it wraps unchanged.

use std::fmt;

use flower_core::{Config, EvaluateIns, EvaluateRes, FitIns, Metrics, NdArray, Parameters};

use crate::callbacks::{weighted_loss_avg, XgbEvaluateFn};
use crate::fedavg::FedAvgOptions;
use crate::layers::{decode_ndarrays, f32s_from_le};
use crate::strategy::{ClientFailure, ClientId, ClientSampler};
use crate::StrategyError;

/// `int(available * fraction)` as Python computes it, then `max(.., min)`.
pub(crate) fn sample_size(available: usize, fraction: f64, min_clients: usize) -> usize {
    // `as usize` truncates towards zero and saturates negatives at 0, like
    // `int()` followed by the `max` with a non-negative minimum.
    let n = (available as f64 * fraction) as usize;
    n.max(min_clients)
}

/// How [`Bookkeeping::evaluate`] runs centralized evaluation.
#[derive(Default)]
pub(crate) enum Evaluator {
    /// `evaluate_fn` on the `.npy`-decoded arrays.
    #[default]
    Arrays,
    /// `evaluate_fn` on raw little-endian float32 tensors (FedAvgAndroid).
    RawF32,
    /// A callback on the raw parameters (FedXgbBagging's `evaluate_function`).
    Model(Option<XgbEvaluateFn>),
}

/// What `aggregate_evaluate` returns past the gate.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Summary {
    /// Weighted loss and the evaluate-metrics callback's output.
    #[default]
    WeightedLoss,
    /// Weighted loss, metrics `{}` (FedAvgAndroid).
    LossOnly,
    /// Loss 0 and the callback's metrics (the XGBoost strategies).
    ZeroLoss,
}

/// FaultTolerantFedAvg's gate: aggregate only when `R/(R+F)` reaches the rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Completion {
    pub(crate) fit: f64,
    pub(crate) evaluate: f64,
}

/// The ways strategies differ in their bookkeeping (Flower's defaults for FedAvg
/// by [`Default`]).
#[derive(Default)]
pub(crate) struct Policy {
    /// `initialize_parameters` keeps handing out the stored parameters (FedAvgM)
    /// instead of handing them out once.
    pub(crate) keep_initial: bool,
    pub(crate) evaluator: Evaluator,
    /// Fit and evaluate go to `sampled[(t−1) mod len]` only (FedXgbCyclic).
    pub(crate) cyclic: bool,
    /// Gate on completion rates instead of `accept_failures`.
    pub(crate) completion: Option<Completion>,
    pub(crate) summary: Summary,
}

/// The round bookkeeping of a [`Composed`](crate::Composed) strategy: Flower's
/// `FedAvg` constructor arguments ([`FedAvgOptions`]) and what the strategy does
/// with them, except the aggregation of fit results.
pub struct Bookkeeping {
    pub(crate) opts: FedAvgOptions,
    pub(crate) policy: Policy,
}

impl fmt::Debug for Bookkeeping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let evaluator = match &self.policy.evaluator {
            Evaluator::Arrays => "arrays",
            Evaluator::RawF32 => "raw float32",
            Evaluator::Model(None) => "none",
            Evaluator::Model(Some(_)) => "model callback",
        };
        f.debug_struct("Bookkeeping")
            .field("options", &self.opts)
            .field("keep_initial", &self.policy.keep_initial)
            .field("evaluator", &evaluator)
            .field("cyclic", &self.policy.cyclic)
            .field("completion", &self.policy.completion)
            .field("summary", &self.policy.summary)
            .finish()
    }
}

impl Bookkeeping {
    /// Validates `opts` (warning about inconsistent client minimums).
    pub(crate) fn new(opts: FedAvgOptions, policy: Policy) -> Result<Self, StrategyError> {
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
        Ok(Bookkeeping { opts, policy })
    }

    /// The FedAvg constructor arguments.
    pub fn options(&self) -> &FedAvgOptions {
        &self.opts
    }

    /// Flower's `initialize_parameters`: hands out the initial parameters
    /// once (FedAvgM: every time).
    pub(crate) fn initial_parameters(&mut self) -> Option<Parameters> {
        if self.policy.keep_initial {
            self.opts.initial_parameters.clone()
        } else {
            self.opts.initial_parameters.take()
        }
    }

    /// Centralized evaluation (`None` without an evaluation callback).
    pub fn evaluate(
        &self,
        server_round: u64,
        parameters: &Parameters,
    ) -> Result<Option<(f64, Metrics)>, StrategyError> {
        if let Evaluator::Model(f) = &self.policy.evaluator {
            return Ok(f
                .as_ref()
                .and_then(|f| f(server_round, parameters, &Config::new())));
        }
        let Some(f) = &self.opts.evaluate_fn else {
            return Ok(None);
        };
        let arrays = match self.policy.evaluator {
            Evaluator::RawF32 => raw_f32_arrays(parameters)?,
            _ => decode_ndarrays(parameters)?,
        };
        Ok(f(server_round, &arrays, &Config::new()))
    }

    fn fit_config(&self, server_round: u64) -> Config {
        self.opts
            .on_fit_config_fn
            .as_ref()
            .map(|f| f(server_round))
            .unwrap_or_default()
    }

    fn evaluate_config(&self, server_round: u64) -> Config {
        self.opts
            .on_evaluate_config_fn
            .as_ref()
            .map(|f| f(server_round))
            .unwrap_or_default()
    }

    /// The sampled clients the policy keeps.
    fn pick(&self, server_round: u64, sampled: Vec<ClientId>) -> Vec<ClientId> {
        if self.policy.cyclic {
            pick_cyclic(server_round, sampled).into_iter().collect()
        } else {
            sampled
        }
    }

    /// Flower's `configure_fit`: every kept client gets the same `FitIns`,
    /// whose config `extend` completes after the config callback.
    pub(crate) fn configure_fit(
        &self,
        server_round: u64,
        parameters: &Parameters,
        clients: &mut dyn ClientSampler,
        extend: impl FnOnce(&mut Config),
    ) -> Vec<(ClientId, FitIns)> {
        let mut config = self.fit_config(server_round);
        extend(&mut config);
        let size = sample_size(
            clients.num_available(),
            self.opts.fraction_fit,
            self.opts.min_fit_clients,
        );
        let ids = self.pick(
            server_round,
            clients.sample(size, self.opts.min_available_clients),
        );
        instructions(ids, parameters, &config, |parameters, config| FitIns {
            parameters,
            config,
        })
    }

    /// Flower's `configure_evaluate`: none when `fraction_evaluate == 0`.
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
        let size = sample_size(
            clients.num_available(),
            self.opts.fraction_evaluate,
            self.opts.min_evaluate_clients,
        );
        let ids = self.pick(
            server_round,
            clients.sample(size, self.opts.min_available_clients),
        );
        instructions(ids, parameters, &config, |parameters, config| EvaluateIns {
            parameters,
            config,
        })
    }

    /// Whether a round with `num_results` fit results and `failures` is
    /// aggregated (false: `aggregate_fit` returns `(None, {})`).
    pub fn fit_gate(&self, num_results: usize, failures: &[ClientFailure]) -> bool {
        match self.policy.completion {
            Some(c) => complete(num_results, failures, c.fit),
            None => self.gate(num_results, failures),
        }
    }

    /// `accept_failures` gating: results, and failures only if accepted.
    fn gate(&self, num_results: usize, failures: &[ClientFailure]) -> bool {
        num_results > 0 && (self.opts.accept_failures || failures.is_empty())
    }

    /// `fit_metrics_aggregation_fn` of the results' `(num_examples, metrics)`
    /// (`{}` without it).
    pub fn fit_metrics(&self, metrics: &[(i64, Metrics)]) -> Metrics {
        self.opts
            .fit_metrics_aggregation_fn
            .as_ref()
            .map(|f| f(metrics))
            .unwrap_or_default()
    }

    fn evaluate_metrics(&self, results: &[(ClientId, EvaluateRes)]) -> Metrics {
        let metrics: Vec<(i64, Metrics)> = results
            .iter()
            .map(|(_, r)| (r.num_examples, r.metrics.clone()))
            .collect();
        self.opts
            .evaluate_metrics_aggregation_fn
            .as_ref()
            .map(|f| f(&metrics))
            .unwrap_or_default()
    }

    /// Flower's `aggregate_evaluate`: the gate, then the policy's summary.
    pub(crate) fn aggregate_evaluate(
        &self,
        results: &[(ClientId, EvaluateRes)],
        failures: &[ClientFailure],
    ) -> Result<(Option<f64>, Metrics), StrategyError> {
        let pass = match self.policy.completion {
            Some(c) => complete(results.len(), failures, c.evaluate),
            None => self.gate(results.len(), failures),
        };
        if !pass {
            return Ok((None, Metrics::new()));
        }
        Ok(match self.policy.summary {
            Summary::WeightedLoss => (Some(eval_loss(results)?), self.evaluate_metrics(results)),
            Summary::LossOnly => (Some(eval_loss(results)?), Metrics::new()),
            Summary::ZeroLoss => (Some(0.0), self.evaluate_metrics(results)),
        })
    }
}

/// FaultTolerantFedAvg's test: results, and `R/(R+F) ≥ min_rate`.
fn complete(results: usize, failures: &[ClientFailure], min_rate: f64) -> bool {
    results > 0 && (results as f64 / (results + failures.len()) as f64) >= min_rate
}

/// `clients[(t−1) % len]`, or nothing for an empty sample (Flower:
/// ZeroDivisionError; see [`crate::deviations`]).
fn pick_cyclic(server_round: u64, sampled: Vec<ClientId>) -> Option<ClientId> {
    if sampled.is_empty() {
        return None;
    }
    let idx = (server_round.wrapping_sub(1) % sampled.len() as u64) as usize;
    sampled.get(idx).copied()
}

/// The same instruction (`FitIns` / `EvaluateIns`) for every client.
fn instructions<T>(
    ids: Vec<ClientId>,
    parameters: &Parameters,
    config: &Config,
    make: fn(Parameters, Config) -> T,
) -> Vec<(ClientId, T)> {
    ids.into_iter()
        .map(|id| (id, make(parameters.clone(), config.clone())))
        .collect()
}

/// The `num_examples`-weighted mean of the evaluation losses.
fn eval_loss(results: &[(ClientId, EvaluateRes)]) -> Result<f64, StrategyError> {
    let losses: Vec<(i64, f64)> = results
        .iter()
        .map(|(_, r)| (r.num_examples, f64::from(r.loss)))
        .collect();
    weighted_loss_avg(&losses)
}

/// Length in float32 values of raw tensor `i` (Android clients send
/// `ndarray.tobytes()`).
pub(crate) fn f32_len(i: usize, t: &[u8]) -> Result<usize, StrategyError> {
    if !t.len().is_multiple_of(4) {
        return Err(StrategyError::Malformed(format!(
            "tensor {i}: {} bytes is not a whole number of float32 values",
            t.len()
        )));
    }
    Ok(t.len() / 4)
}

/// Raw float32 tensors as 1-D arrays.
fn raw_f32_arrays(parameters: &Parameters) -> Result<Vec<NdArray>, StrategyError> {
    parameters
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let n = f32_len(i, t)?;
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[n]), f32s_from_le(t))
                .map(NdArray::F32)
                .map_err(|e| StrategyError::Malformed(format!("tensor {i}: {e}")))
        })
        .collect()
}

/// The per-round state a step keeps between `begin` and `aggregate`.
pub(crate) trait RoundState {
    /// The round this state was begun for.
    fn server_round(&self) -> u64;
    /// Results taken so far (what [`Bookkeeping::fit_gate`] counts).
    fn num_results(&self) -> usize;
}

/// The round in progress, for a result of `server_round` (errors as
/// [`check_round`] does).
pub(crate) fn current_round<R: RoundState>(
    slot: &mut Option<R>,
    server_round: u64,
) -> Result<&mut R, StrategyError> {
    check_round(slot.as_ref().map(R::server_round), server_round)?;
    slot.as_mut().ok_or(StrategyError::WrongRound {
        got: server_round,
        in_progress: None,
    })
}

/// Takes the round if it belongs to `server_round` (the slot is emptied
/// either way).
pub(crate) fn take_round<R: RoundState>(slot: &mut Option<R>, server_round: u64) -> Option<R> {
    match slot.take() {
        Some(r) if r.server_round() == server_round => Some(r),
        _ => None,
    }
}

impl Bookkeeping {
    /// [`take_round`], then [`Bookkeeping::fit_gate`]: `None` means "return
    /// `(None, {})`".
    pub(crate) fn take_gated<R: RoundState>(
        &self,
        slot: &mut Option<R>,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Option<R> {
        take_round(slot, server_round).filter(|r| self.fit_gate(r.num_results(), failures))
    }
}

/// Errors when a result arrives for another round than the one begun.
pub(crate) fn check_round(expected: Option<u64>, got: u64) -> Result<(), StrategyError> {
    match expected {
        Some(r) if r == got => Ok(()),
        in_progress => Err(StrategyError::WrongRound { got, in_progress }),
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

    #[test]
    fn cyclic_pick() {
        let ids = |v: &[u64]| v.iter().map(|&i| ClientId::new(i)).collect::<Vec<_>>();
        assert_eq!(pick_cyclic(1, ids(&[7, 8, 9])), Some(ClientId::new(7)));
        assert_eq!(pick_cyclic(5, ids(&[7, 8, 9])), Some(ClientId::new(8)));
        assert_eq!(pick_cyclic(1, vec![]), None);
    }

    #[test]
    fn completion_gate() {
        let failure = ClientFailure {
            client: None,
            reason: "x".into(),
        };
        assert!(!complete(0, &[], 0.0));
        assert!(complete(1, std::slice::from_ref(&failure), 0.5));
        assert!(!complete(1, &[failure.clone(), failure], 0.5));
    }

    #[test]
    fn wrong_rounds_are_refused() {
        assert!(check_round(Some(3), 3).is_ok());
        assert!(matches!(
            check_round(Some(3), 4),
            Err(StrategyError::WrongRound {
                got: 4,
                in_progress: Some(3)
            })
        ));
        assert!(matches!(
            check_round(None, 1),
            Err(StrategyError::WrongRound {
                in_progress: None,
                ..
            })
        ));
    }
}
