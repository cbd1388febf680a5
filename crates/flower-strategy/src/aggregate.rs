//! [`Aggregate`], the per-strategy step (what a strategy does with fit
//! results), and [`Composed`], which implements [`Strategy`] once for every
//! step on top of the shared [`Bookkeeping`].
//!
//! A wrapper (the DP strategies) is a step holding another step: it takes
//! over the wrapped strategy's bookkeeping and only intercepts the fit
//! results, so nothing is forwarded method by method.

use std::fmt;

use flower_core::{Config, EvaluateIns, EvaluateRes, FitIns, FitRes, Metrics, Parameters};

use crate::bookkeeping::Bookkeeping;
use crate::strategy::{ClientFailure, ClientId, ClientSampler, Strategy};
use crate::StrategyError;

/// The aggregation step of a strategy: `begin` → `accumulate`* →
/// `aggregate` once per round, results in client-id order.
///
/// Everything else a [`Strategy`] does (sampling, configs, gating,
/// evaluation) is the [`Bookkeeping`] that [`Composed`] holds next to the step.
pub trait Aggregate: Send + fmt::Debug {
    /// Flower's class name (`"FedAvg"`, ...).
    fn name(&self) -> &str;

    /// Starts collecting fit results for `server_round`; `global` is the
    /// model that was sent (results that do not match it are refused).
    fn begin(
        &mut self,
        book: &Bookkeeping,
        server_round: u64,
        global: &Parameters,
    ) -> Result<(), StrategyError>;

    /// Takes one successful fit result; an error means this result is
    /// unusable (the server counts the client as failed).
    fn accumulate(
        &mut self,
        server_round: u64,
        client: ClientId,
        result: FitRes,
    ) -> Result<(), StrategyError>;

    /// Aggregates what was accumulated. `Ok((None, _))` keeps the old model.
    fn aggregate(
        &mut self,
        book: &mut Bookkeeping,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError>;

    /// Adds this step's entries to the fit config (after the config
    /// callback's; FedProx's `proximal_mu`, the DP clipping norm...).
    fn extend_fit_config(&self, _config: &mut Config) {}

    /// State to checkpoint (`Null` when stateless).
    fn state(&self, _book: &Bookkeeping) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Restores what [`Aggregate::state`] returned.
    fn restore_state(
        &mut self,
        _book: &mut Bookkeeping,
        _state: serde_json::Value,
    ) -> Result<(), StrategyError> {
        Ok(())
    }
}

impl Aggregate for Box<dyn Aggregate> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn begin(
        &mut self,
        book: &Bookkeeping,
        server_round: u64,
        global: &Parameters,
    ) -> Result<(), StrategyError> {
        (**self).begin(book, server_round, global)
    }

    fn accumulate(
        &mut self,
        server_round: u64,
        client: ClientId,
        result: FitRes,
    ) -> Result<(), StrategyError> {
        (**self).accumulate(server_round, client, result)
    }

    fn aggregate(
        &mut self,
        book: &mut Bookkeeping,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        (**self).aggregate(book, server_round, failures)
    }

    fn extend_fit_config(&self, config: &mut Config) {
        (**self).extend_fit_config(config)
    }

    fn state(&self, book: &Bookkeeping) -> serde_json::Value {
        (**self).state(book)
    }

    fn restore_state(
        &mut self,
        book: &mut Bookkeeping,
        state: serde_json::Value,
    ) -> Result<(), StrategyError> {
        (**self).restore_state(book, state)
    }
}

/// A strategy: the shared [`Bookkeeping`] plus an aggregation step `A`.
/// Every strategy of the catalog is one (`FedAvg` is
/// `Composed<MeanStep<FedAvgRule>>`, ...).
pub struct Composed<A> {
    pub(crate) book: Bookkeeping,
    pub(crate) step: A,
}

/// A strategy whose step is chosen at run time (what
/// [`build_strategy`](crate::build_strategy) builds, and what a DP wrapper
/// wraps).
pub type DynComposed = Composed<Box<dyn Aggregate>>;

impl<A: Aggregate> fmt::Debug for Composed<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(self.step.name())
            .field("step", &self.step)
            .field("bookkeeping", &self.book)
            .finish()
    }
}

impl<A> Composed<A> {
    /// The FedAvg constructor arguments.
    pub fn options(&self) -> &crate::FedAvgOptions {
        &self.book.opts
    }

    /// The aggregation step.
    pub fn step(&self) -> &A {
        &self.step
    }
}

impl<A: Aggregate + 'static> Composed<A> {
    /// The same strategy with its step boxed (to be wrapped, or stored
    /// next to strategies of other types).
    pub fn boxed(self) -> DynComposed {
        Composed {
            book: self.book,
            step: Box::new(self.step),
        }
    }
}

impl<A: Aggregate> Strategy for Composed<A> {
    fn name(&self) -> &str {
        self.step.name()
    }

    fn initialize_parameters(&mut self) -> Option<Parameters> {
        self.book.initial_parameters()
    }

    fn min_available_clients(&self) -> usize {
        self.book.opts.min_available_clients
    }

    fn evaluate(
        &mut self,
        server_round: u64,
        parameters: &Parameters,
    ) -> Result<Option<(f64, Metrics)>, StrategyError> {
        self.book.evaluate(server_round, parameters)
    }

    fn configure_fit(
        &mut self,
        server_round: u64,
        parameters: &Parameters,
        clients: &mut dyn ClientSampler,
    ) -> Result<Vec<(ClientId, FitIns)>, StrategyError> {
        let step = &self.step;
        Ok(self
            .book
            .configure_fit(server_round, parameters, clients, |c| {
                step.extend_fit_config(c)
            }))
    }

    fn begin_fit(&mut self, server_round: u64, global: &Parameters) -> Result<(), StrategyError> {
        self.step.begin(&self.book, server_round, global)
    }

    fn accumulate_fit(
        &mut self,
        server_round: u64,
        client: ClientId,
        result: FitRes,
    ) -> Result<(), StrategyError> {
        self.step.accumulate(server_round, client, result)
    }

    fn aggregate_fit(
        &mut self,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        self.step.aggregate(&mut self.book, server_round, failures)
    }

    fn configure_evaluate(
        &mut self,
        server_round: u64,
        parameters: &Parameters,
        clients: &mut dyn ClientSampler,
    ) -> Result<Vec<(ClientId, EvaluateIns)>, StrategyError> {
        Ok(self
            .book
            .configure_evaluate(server_round, parameters, clients))
    }

    fn aggregate_evaluate(
        &mut self,
        _server_round: u64,
        results: &[(ClientId, EvaluateRes)],
        failures: &[ClientFailure],
    ) -> Result<(Option<f64>, Metrics), StrategyError> {
        self.book.aggregate_evaluate(results, failures)
    }

    fn state(&self) -> serde_json::Value {
        self.step.state(&self.book)
    }

    fn restore_state(&mut self, state: serde_json::Value) -> Result<(), StrategyError> {
        self.step.restore_state(&mut self.book, state)
    }
}
