//! The [`Strategy`] trait: what the server's round driver asks of a strategy.

use flower_core::{EvaluateIns, EvaluateRes, FitIns, FitRes, Metrics, Parameters};

use crate::StrategyError;

/// Identifies one connected client for the duration of its stream.
///
/// Ids are assigned in join order, so ordering by id is a fixed, reproducible
/// order (the server aggregates in this order, never in arrival order).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct ClientId(u64);

impl ClientId {
    /// The id with number `id`.
    pub const fn new(id: u64) -> Self {
        ClientId(id)
    }

    /// The number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for ClientId {
    fn from(id: u64) -> Self {
        ClientId(id)
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

/// The server's view of the connected clients while a strategy configures a round.
///
/// The server has already waited (bounded) for `min_available_clients`
/// before handing this out, so `sample` never blocks.
pub trait ClientSampler {
    /// Number of clients connected right now.
    fn num_available(&self) -> usize;
    /// Every connected client, in id order.
    fn all(&self) -> Vec<ClientId>;
    /// Uniform sample of `num_clients` without replacement, from a seedable RNG.
    /// Like Flower, returns no clients when fewer than `min_num_clients` or
    /// fewer than `num_clients` are available.
    fn sample(&mut self, num_clients: usize, min_num_clients: usize) -> Vec<ClientId>;
}

/// Why one client's exchange did not produce a usable result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFailure {
    /// The client, when known.
    pub client: Option<ClientId>,
    /// Human-readable reason (stream closed, timeout, non-OK status, bad tensors...).
    pub reason: String,
}

/// A server-side federated-learning strategy (Flower's `Strategy`).
///
/// Fit results are handed over one at a time ([`Strategy::accumulate_fit`]) so
/// that FedAvg-family strategies can fold each into an accumulator as it is
/// received: memory O(model), not O(clients × model). The server calls
/// `begin_fit` → `accumulate_fit`* → `aggregate_fit` once per round, with the
/// results in client-id order.
pub trait Strategy: Send {
    /// Name, for logs (`"FedAvg"`, ...).
    fn name(&self) -> &str;

    /// Initial global parameters, if the strategy has them. Flower clears them
    /// after the first call (a second call returns `None`), except FedAvgM.
    fn initialize_parameters(&mut self) -> Option<Parameters>;

    /// Number of connected clients needed before a round is configured.
    fn min_available_clients(&self) -> usize;

    /// Centralized evaluation of `parameters` after round `server_round`
    /// (0 = initial). `None` when the strategy has no evaluate function.
    fn evaluate(
        &mut self,
        server_round: u64,
        parameters: &Parameters,
    ) -> Result<Option<(f64, Metrics)>, StrategyError>;

    /// Picks clients and builds their fit instructions.
    fn configure_fit(
        &mut self,
        server_round: u64,
        parameters: &Parameters,
        clients: &mut dyn ClientSampler,
    ) -> Result<Vec<(ClientId, FitIns)>, StrategyError>;

    /// Starts collecting fit results for `server_round`; `global` is the model
    /// that was sent (results whose shapes or dtypes differ from it are refused).
    fn begin_fit(&mut self, server_round: u64, global: &Parameters) -> Result<(), StrategyError>;

    /// Takes one successful fit result. An error means this result is unusable
    /// (undecodable tensors, wrong shapes or dtypes...): the caller records it
    /// as a failure of that client and goes on.
    fn accumulate_fit(
        &mut self,
        server_round: u64,
        client: ClientId,
        result: FitRes,
    ) -> Result<(), StrategyError>;

    /// Aggregates what was accumulated. `Ok((None, _))` keeps the old model.
    fn aggregate_fit(
        &mut self,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError>;

    /// Picks clients and builds their evaluate instructions.
    fn configure_evaluate(
        &mut self,
        server_round: u64,
        parameters: &Parameters,
        clients: &mut dyn ClientSampler,
    ) -> Result<Vec<(ClientId, EvaluateIns)>, StrategyError>;

    /// Aggregates evaluation results (in client-id order).
    fn aggregate_evaluate(
        &mut self,
        server_round: u64,
        results: &[(ClientId, EvaluateRes)],
        failures: &[ClientFailure],
    ) -> Result<(Option<f64>, Metrics), StrategyError>;

    /// Strategy state to checkpoint (server-side momentum, optimizer moments,
    /// ...). `Null` when stateless.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Restores what [`Strategy::state`] returned.
    fn restore_state(&mut self, _state: serde_json::Value) -> Result<(), StrategyError> {
        Ok(())
    }
}

impl std::fmt::Debug for dyn Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Strategy({})", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_order_and_print_as_numbers() {
        let (a, b) = (ClientId::new(2), ClientId::from(10));
        assert!(a < b);
        assert_eq!(b.get(), 10);
        assert_eq!(format!("{a} {b:?}"), "2 ClientId(10)");
        assert_eq!(serde_json::to_string(&a).unwrap(), "2");
    }
}
