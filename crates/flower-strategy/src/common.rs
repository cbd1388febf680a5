//! What most strategies share with Flower's `FedAvg`: client sampling,
//! per-round configs, centralized evaluation, result gating, the weighted
//! evaluation loss and the metrics callbacks.

use flower_core::{Config, EvaluateIns, EvaluateRes, FitIns, Metrics, Parameters, Scalar};

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
        self.configure_fit_picking(server_round, parameters, clients, |ids| ids)
    }

    /// `configure_fit` for the clients `pick` keeps of the sample.
    pub(crate) fn configure_fit_picking(
        &self,
        server_round: u64,
        parameters: &Parameters,
        clients: &mut dyn ClientSampler,
        pick: impl FnOnce(Vec<ClientId>) -> Vec<ClientId>,
    ) -> Vec<(ClientId, FitIns)> {
        let config = self.fit_config(server_round);
        let ids = pick(self.sample_fit(clients));
        instructions(ids, parameters, &config, |parameters, config| FitIns {
            parameters,
            config,
        })
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
        self.configure_evaluate_picking(server_round, parameters, clients, |ids| ids)
    }

    /// `configure_evaluate` for the clients `pick` keeps of the sample.
    pub(crate) fn configure_evaluate_picking(
        &self,
        server_round: u64,
        parameters: &Parameters,
        clients: &mut dyn ClientSampler,
        pick: impl FnOnce(Vec<ClientId>) -> Vec<ClientId>,
    ) -> Vec<(ClientId, EvaluateIns)> {
        if self.opts.fraction_evaluate == 0.0 {
            return Vec::new();
        }
        let config = self.evaluate_config(server_round);
        let ids = pick(self.sample_evaluate(clients));
        instructions(ids, parameters, &config, |parameters, config| EvaluateIns {
            parameters,
            config,
        })
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
        self.evaluate_summary(results)
    }

    /// `aggregate_evaluate` past the gate: the weighted loss and the
    /// aggregated metrics.
    pub(crate) fn evaluate_summary(
        &self,
        results: &[(ClientId, EvaluateRes)],
    ) -> Result<(Option<f64>, Metrics), StrategyError> {
        let loss = eval_loss(results)?;
        Ok((Some(loss), self.evaluate_metrics(&eval_metrics(results))))
    }
}

/// Adds (or overrides) `entries` in the config of every fit instruction.
pub(crate) fn add_fit_config(instructions: &mut [(ClientId, FitIns)], entries: &[(&str, Scalar)]) {
    for (_, ins) in instructions {
        for (k, v) in entries {
            ins.config.insert((*k).to_owned(), v.clone());
        }
    }
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

/// `[(num_examples, metrics)]` of evaluation results.
pub(crate) fn eval_metrics(results: &[(ClientId, EvaluateRes)]) -> Vec<(i64, Metrics)> {
    results
        .iter()
        .map(|(_, r)| (r.num_examples, r.metrics.clone()))
        .collect()
}

/// The per-round state a strategy keeps between `begin_fit` and
/// `aggregate_fit`.
pub(crate) trait RoundState {
    /// The round this state was begun for.
    fn server_round(&self) -> u64;
    /// Results taken so far (what [`Base::gate`] counts).
    fn num_results(&self) -> usize;
}

/// The round in progress, for a result of `server_round` (errors as
/// [`check_round`] does).
pub(crate) fn current_round<R: RoundState>(
    slot: &mut Option<R>,
    server_round: u64,
) -> Result<&mut R, StrategyError> {
    check_round(slot.as_ref().map(R::server_round), server_round)?;
    slot.as_mut()
        .ok_or_else(|| StrategyError::Other("no round in progress".into()))
}

/// Takes the round if it belongs to `server_round` (the slot is emptied
/// either way).
pub(crate) fn take_round<R: RoundState>(slot: &mut Option<R>, server_round: u64) -> Option<R> {
    match slot.take() {
        Some(r) if r.server_round() == server_round => Some(r),
        _ => None,
    }
}

impl Base {
    /// [`take_round`], then [`Base::gate`]: `None` means "return `(None, {})`".
    pub(crate) fn take_gated<R: RoundState>(
        &self,
        slot: &mut Option<R>,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Option<R> {
        take_round(slot, server_round).filter(|r| self.gate(r.num_results(), failures))
    }
}

/// The `num_examples`-weighted mean of the evaluation losses.
pub(crate) fn eval_loss(results: &[(ClientId, EvaluateRes)]) -> Result<f64, StrategyError> {
    let losses: Vec<(i64, f64)> = results
        .iter()
        .map(|(_, r)| (r.num_examples, f64::from(r.loss)))
        .collect();
    weighted_loss_avg(&losses)
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

/// Writes [`Strategy`](crate::Strategy) methods of a strategy built on a
/// [`Base`] as plain forwards to it. The first argument is the path of the
/// `Base` field (`base`, `core.base`); then come the methods to write, any
/// of:
///
/// | method | forwards to |
/// |---|---|
/// | `initialize_parameters` | `Base::take_initial` |
/// | `min_available_clients` | `opts.min_available_clients` |
/// | `evaluate` | `Base::evaluate` |
/// | `configure_fit` | `Base::configure_fit` |
/// | `configure_evaluate` | `Base::configure_evaluate` |
/// | `aggregate_evaluate` | `Base::aggregate_evaluate` |
///
/// `all` stands for all six. The strategy writes the other methods by hand
/// in the same `impl` block.
///
/// ```text
/// impl Strategy for FedAvg {
///     fn name(&self) -> &str { "FedAvg" }
///     forward_to_base!(base => initialize_parameters, min_available_clients, evaluate);
///     // begin_fit, accumulate_fit, ... by hand
/// }
/// ```
macro_rules! forward_to_base {
    ($($field:ident).+ => all) => {
        $crate::common::forward_to_base!(@each [$($field).+]
            initialize_parameters min_available_clients evaluate
            configure_fit configure_evaluate aggregate_evaluate);
    };
    ($($field:ident).+ => $($method:ident),+ $(,)?) => {
        $crate::common::forward_to_base!(@each [$($field).+] $($method)+);
    };
    (@each $path:tt $($method:ident)+) => {
        $( $crate::common::forward_to_base!(@method $path $method); )+
    };
    (@method [$($f:ident).+] initialize_parameters) => {
        fn initialize_parameters(&mut self) -> Option<flower_core::Parameters> {
            self.$($f).+.take_initial()
        }
    };
    (@method [$($f:ident).+] min_available_clients) => {
        fn min_available_clients(&self) -> usize {
            self.$($f).+.opts.min_available_clients
        }
    };
    (@method [$($f:ident).+] evaluate) => {
        fn evaluate(
            &mut self,
            server_round: u64,
            parameters: &flower_core::Parameters,
        ) -> Result<Option<(f64, flower_core::Metrics)>, $crate::StrategyError> {
            self.$($f).+.evaluate(server_round, parameters)
        }
    };
    (@method [$($f:ident).+] configure_fit) => {
        fn configure_fit(
            &mut self,
            server_round: u64,
            parameters: &flower_core::Parameters,
            clients: &mut dyn $crate::ClientSampler,
        ) -> Result<Vec<($crate::ClientId, flower_core::FitIns)>, $crate::StrategyError> {
            Ok(self.$($f).+.configure_fit(server_round, parameters, clients))
        }
    };
    (@method [$($f:ident).+] configure_evaluate) => {
        fn configure_evaluate(
            &mut self,
            server_round: u64,
            parameters: &flower_core::Parameters,
            clients: &mut dyn $crate::ClientSampler,
        ) -> Result<Vec<($crate::ClientId, flower_core::EvaluateIns)>, $crate::StrategyError> {
            Ok(self.$($f).+.configure_evaluate(server_round, parameters, clients))
        }
    };
    (@method [$($f:ident).+] aggregate_evaluate) => {
        fn aggregate_evaluate(
            &mut self,
            _server_round: u64,
            results: &[($crate::ClientId, flower_core::EvaluateRes)],
            failures: &[$crate::ClientFailure],
        ) -> Result<(Option<f64>, flower_core::Metrics), $crate::StrategyError> {
            self.$($f).+.aggregate_evaluate(results, failures)
        }
    };
}
pub(crate) use forward_to_base;

/// Writes [`Strategy`](crate::Strategy) methods of a wrapper as plain
/// forwards to the wrapped strategy. The first argument is the path of the
/// field holding it (`inner`, `w.inner`, or `0` for a newtype); then come
/// the methods to write, any of the trait's methods by name (`0 => all`
/// writes all twelve, for a newtype that changes nothing). The wrapper
/// writes the others by hand in the same `impl` block.
///
/// ```text
/// impl Strategy for FedProx {
///     fn name(&self) -> &str { "FedProx" }
///     forward_to_inner!(inner => initialize_parameters, min_available_clients, evaluate);
///     // configure_fit, ... by hand
/// }
/// ```
macro_rules! forward_to_inner {
    (@each $path:tt $($method:ident)+) => {
        $( $crate::common::forward_to_inner!(@method $path $method); )+
    };
    (@method [$($f:tt)+] name) => {
        fn name(&self) -> &str {
            self.$($f)+.name()
        }
    };
    (@method [$($f:tt)+] initialize_parameters) => {
        fn initialize_parameters(&mut self) -> Option<flower_core::Parameters> {
            self.$($f)+.initialize_parameters()
        }
    };
    (@method [$($f:tt)+] min_available_clients) => {
        fn min_available_clients(&self) -> usize {
            self.$($f)+.min_available_clients()
        }
    };
    (@method [$($f:tt)+] evaluate) => {
        fn evaluate(
            &mut self,
            server_round: u64,
            parameters: &flower_core::Parameters,
        ) -> Result<Option<(f64, flower_core::Metrics)>, $crate::StrategyError> {
            self.$($f)+.evaluate(server_round, parameters)
        }
    };
    (@method [$($f:tt)+] configure_fit) => {
        fn configure_fit(
            &mut self,
            server_round: u64,
            parameters: &flower_core::Parameters,
            clients: &mut dyn $crate::ClientSampler,
        ) -> Result<Vec<($crate::ClientId, flower_core::FitIns)>, $crate::StrategyError> {
            self.$($f)+.configure_fit(server_round, parameters, clients)
        }
    };
    (@method [$($f:tt)+] begin_fit) => {
        fn begin_fit(
            &mut self,
            server_round: u64,
            global: &flower_core::Parameters,
        ) -> Result<(), $crate::StrategyError> {
            self.$($f)+.begin_fit(server_round, global)
        }
    };
    (@method [$($f:tt)+] accumulate_fit) => {
        fn accumulate_fit(
            &mut self,
            server_round: u64,
            client: $crate::ClientId,
            result: flower_core::FitRes,
        ) -> Result<(), $crate::StrategyError> {
            self.$($f)+.accumulate_fit(server_round, client, result)
        }
    };
    (@method [$($f:tt)+] aggregate_fit) => {
        fn aggregate_fit(
            &mut self,
            server_round: u64,
            failures: &[$crate::ClientFailure],
        ) -> Result<(Option<flower_core::Parameters>, flower_core::Metrics), $crate::StrategyError>
        {
            self.$($f)+.aggregate_fit(server_round, failures)
        }
    };
    (@method [$($f:tt)+] configure_evaluate) => {
        fn configure_evaluate(
            &mut self,
            server_round: u64,
            parameters: &flower_core::Parameters,
            clients: &mut dyn $crate::ClientSampler,
        ) -> Result<Vec<($crate::ClientId, flower_core::EvaluateIns)>, $crate::StrategyError> {
            self.$($f)+.configure_evaluate(server_round, parameters, clients)
        }
    };
    (@method [$($f:tt)+] aggregate_evaluate) => {
        fn aggregate_evaluate(
            &mut self,
            server_round: u64,
            results: &[($crate::ClientId, flower_core::EvaluateRes)],
            failures: &[$crate::ClientFailure],
        ) -> Result<(Option<f64>, flower_core::Metrics), $crate::StrategyError> {
            self.$($f)+.aggregate_evaluate(server_round, results, failures)
        }
    };
    (@method [$($f:tt)+] state) => {
        fn state(&self) -> serde_json::Value {
            self.$($f)+.state()
        }
    };
    (@method [$($f:tt)+] restore_state) => {
        fn restore_state(&mut self, state: serde_json::Value) -> Result<(), $crate::StrategyError> {
            self.$($f)+.restore_state(state)
        }
    };
    (0 => all) => {
        $crate::common::forward_to_inner!(@each [0]
            name initialize_parameters min_available_clients evaluate
            configure_fit begin_fit accumulate_fit aggregate_fit
            configure_evaluate aggregate_evaluate state restore_state);
    };
    (0 => $($method:ident),+ $(,)?) => {
        $crate::common::forward_to_inner!(@each [0] $($method)+);
    };
    ($($field:ident).+ => $($method:ident),+ $(,)?) => {
        $crate::common::forward_to_inner!(@each [$($field).+] $($method)+);
    };
}
pub(crate) use forward_to_inner;

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
