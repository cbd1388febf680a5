//! The round driver: Flower's `Server.fit` loop, independent of sockets.
//!
//! It talks to connected clients only through [`ClientManager`] and the
//! [`ClientHandle`] trait (implemented by the grpc-bidi transport and by
//! in-process clients), persists through an injected [`RunStore`], and takes
//! its time from tokio (so tests can pause it). The pure pieces are
//! [`fold`] (in which order results reach the strategy) and [`reply`] (is a
//! reply a result or a failure).

pub(crate) mod fold;
pub(crate) mod reply;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flower_core::{
    ClientMessage, EvaluateIns, EvaluateRes, FitIns, FitRes, GetParametersIns, GetParametersRes,
    Parameters, ReconnectIns, ServerMessage,
};
use flower_strategy::{ClientFailure, ClientId, Strategy};
use futures::stream::{FuturesUnordered, StreamExt};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::client_manager::ClientManager;
use crate::history::{Checkpoint, History, RoundRecord};
use crate::metrics::{Phase, RunEvent, RunObserver};
use crate::node::{ClientHandle, ExchangeError, OutgoingMessage};
use crate::store::RunStore;
use crate::ServerError;
use fold::{AggregationOrder, FoldBuffer};
use reply::{classify, expect_kind};

/// Settings of the round driver. Defaults mirror Flower where it has one;
/// these `Default` values are the only copy (the binary's flags, its TOML
/// file and its `--help` read them).
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Number of rounds (default 1, as Flower's `ServerConfig`).
    pub num_rounds: u64,
    /// Per-reply timeout (Flower's `round_timeout`); `None` waits forever.
    pub round_timeout: Option<Duration>,
    /// How long to wait for enough clients before the first round
    /// (Flower waits 24 h; default 300 s).
    pub client_wait_timeout: Duration,
    /// How long to wait, once the run is under way, for enough clients to be
    /// connected again after some left (default 60 s). Then the run ends,
    /// with the last completed round saved.
    pub rejoin_wait_timeout: Duration,
    /// Seed of the client-sampling RNG (default 0).
    pub seed: u64,
    /// Continue from the run store's last checkpoint.
    pub resume: bool,
    /// After the final `ReconnectIns`, how long to wait for streams to close
    /// (default 5 s).
    pub shutdown_grace: Duration,
    /// Order in which fit results are folded into the aggregate (default:
    /// join order).
    pub aggregation_order: AggregationOrder,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            num_rounds: 1,
            round_timeout: None,
            client_wait_timeout: Duration::from_secs(300),
            rejoin_wait_timeout: Duration::from_secs(60),
            seed: 0,
            resume: false,
            shutdown_grace: Duration::from_secs(5),
            aggregation_order: AggregationOrder::JoinOrder,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Final global parameters.
    pub parameters: Parameters,
    /// History of the run (including rounds before a resume).
    pub history: History,
    /// Rounds completed.
    pub completed_rounds: u64,
}

/// Drives rounds of federated learning with one strategy.
pub struct RoundDriver {
    manager: ClientManager,
    strategy: Box<dyn Strategy>,
    config: DriverConfig,
    store: Option<Arc<dyn RunStore>>,
    history: History,
    /// Set once the first round has started: later waits use the rejoin bound.
    under_way: bool,
    /// The round being run (0 before the first).
    round: u64,
    /// Told about every phase (metrics, progress lines).
    observers: Vec<Arc<dyn RunObserver>>,
}

impl std::fmt::Debug for RoundDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundDriver")
            .field("strategy", &self.strategy.name())
            .field("config", &self.config)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Runs CPU-heavy strategy work without stalling the async workers' other
/// tasks (stream I/O) when the runtime allows it.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn failure(client: ClientId, reason: impl ToString) -> ClientFailure {
    ClientFailure {
        client: Some(client),
        reason: reason.to_string(),
    }
}

/// True when two instructions carry the same tensor buffers (not merely equal
/// bytes: comparing 40 MB per client would cost more than it saves) and the
/// same config.
fn same_instruction(a: &ServerMessage, b: &ServerMessage) -> bool {
    fn same_tensors(a: &Parameters, b: &Parameters) -> bool {
        a.tensor_type == b.tensor_type
            && a.tensors.len() == b.tensors.len()
            && a.tensors
                .iter()
                .zip(&b.tensors)
                .all(|(x, y)| x.as_ptr() == y.as_ptr() && x.len() == y.len())
    }
    match (a, b) {
        (ServerMessage::Fit(a), ServerMessage::Fit(b)) => {
            a.config == b.config && same_tensors(&a.parameters, &b.parameters)
        }
        (ServerMessage::Evaluate(a), ServerMessage::Evaluate(b)) => {
            a.config == b.config && same_tensors(&a.parameters, &b.parameters)
        }
        _ => false,
    }
}

/// The clients whose fit results are still to be folded, announced to the
/// upload gate; whatever is left when the round ends (an error, an early
/// return) is released.
struct FoldTurns {
    gate: crate::UploadGate,
    clients: Vec<ClientId>,
}

impl FoldTurns {
    fn new(gate: &crate::UploadGate, clients: &[ClientId]) -> Self {
        gate.expect(clients);
        FoldTurns {
            gate: gate.clone(),
            clients: clients.to_vec(),
        }
    }
}

impl Drop for FoldTurns {
    fn drop(&mut self) {
        for client in &self.clients {
            self.gate.done(*client);
        }
    }
}

/// A sampler that notes whether the strategy asked it for clients.
struct ProbeSampler {
    inner: crate::SnapshotSampler,
    asked: std::cell::Cell<bool>,
}

impl flower_strategy::ClientSampler for ProbeSampler {
    fn num_available(&self) -> usize {
        self.inner.num_available()
    }

    fn all(&self) -> Vec<ClientId> {
        self.asked.set(true);
        self.inner.all()
    }

    fn sample(&mut self, num_clients: usize, min_num_clients: usize) -> Vec<ClientId> {
        self.asked.set(true);
        self.inner.sample(num_clients, min_num_clients)
    }
}

type Exchanges = FuturesUnordered<
    futures::future::BoxFuture<'static, (ClientId, Result<ClientMessage, ExchangeError>)>,
>;

impl RoundDriver {
    /// A driver over the clients of `manager`, persisting nothing.
    pub fn new(manager: ClientManager, strategy: Box<dyn Strategy>, config: DriverConfig) -> Self {
        RoundDriver {
            manager,
            strategy,
            config,
            store: None,
            history: History::default(),
            under_way: false,
            round: 0,
            observers: Vec::new(),
        }
    }

    /// Reports the run's phases to `observer` (e.g. [`Metrics`](crate::Metrics),
    /// [`LogProgress`](crate::metrics::LogProgress)), in addition to any
    /// added before.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn RunObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    fn emit(&self, event: RunEvent<'_>) {
        for observer in &self.observers {
            observer.on_event(&event);
        }
    }

    /// Saves the run to `store` after every round (and resumes from it when
    /// [`DriverConfig::resume`] is set).
    #[must_use]
    pub fn with_store(mut self, store: Arc<dyn RunStore>) -> Self {
        self.store = Some(store);
        self
    }

    fn sampler_seed(&self, round: u64, phase: u64) -> u64 {
        // Per round and phase, so a resumed run samples like an uninterrupted one.
        self.config
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(round.wrapping_mul(2).wrapping_add(phase))
    }

    async fn wait_for_clients(&mut self, n: usize, what: &str) -> Result<(), ServerError> {
        if self.manager.len() >= n {
            return Ok(());
        }
        info!(
            required = n,
            connected = self.manager.len(),
            "waiting for clients ({what})"
        );
        let bound = if self.under_way {
            self.config.rejoin_wait_timeout
        } else {
            self.config.client_wait_timeout
        };
        self.emit(RunEvent::Waiting {
            round: self.round,
            required: n,
            connected: self.manager.len(),
            bound,
        });
        if self.manager.wait_for(n, bound).await {
            Ok(())
        } else {
            Err(ServerError::TooFewClients {
                required: n,
                connected: self.manager.len(),
                waited: bound,
            })
        }
    }

    /// Sends every instruction at once. Instructions equal to the previous
    /// one (same tensor buffers, same config: what strategies hand every
    /// client) share one encoding.
    fn dispatch(
        &self,
        round: u64,
        instructions: Vec<(ClientId, ServerMessage)>,
        failures: &mut Vec<ClientFailure>,
    ) -> (Vec<ClientId>, Exchanges) {
        let exchanges = FuturesUnordered::new();
        let mut ids = Vec::with_capacity(instructions.len());
        let mut previous: Option<Arc<OutgoingMessage>> = None;
        for (id, message) in instructions {
            let outgoing = match previous.take() {
                Some(prev) if same_instruction(prev.message(), &message) => prev,
                _ => OutgoingMessage::for_round(message, round),
            };
            previous = Some(outgoing.clone());
            match self.manager.get(id) {
                Some(handle) => {
                    let fut = handle.exchange(outgoing, self.config.round_timeout);
                    exchanges.push(Box::pin(async move { (id, fut.await) }) as _);
                    ids.push(id);
                }
                None => failures.push(failure(id, "client left before its instruction was sent")),
            }
        }
        (ids, exchanges)
    }

    /// Initial parameters: from the strategy, or one client.
    async fn initial_parameters(&mut self) -> Result<Parameters, ServerError> {
        if let Some(parameters) = self.strategy.initialize_parameters() {
            info!("using initial parameters provided by the strategy");
            return Ok(parameters);
        }
        info!("requesting initial parameters from one random client");
        self.wait_for_clients(1, "initial parameters").await?;
        let mut sampler = self
            .manager
            .sampler(ChaCha8Rng::seed_from_u64(self.sampler_seed(0, 0)));
        let id = flower_strategy::ClientSampler::sample(&mut sampler, 1, 1)
            .first()
            .copied()
            .ok_or(ServerError::TooFewClients {
                required: 1,
                connected: 0,
                waited: self.config.client_wait_timeout,
            })?;
        let reply = match self.manager.get(id) {
            Some(handle) => {
                let ins = ServerMessage::GetParameters(GetParametersIns::default());
                handle
                    .exchange(
                        OutgoingMessage::for_round(ins, 0),
                        self.config.round_timeout,
                    )
                    .await
            }
            None => Err(ExchangeError::Closed("client left".into())),
        };
        let res: GetParametersRes = expect_kind(reply)
            .map_err(|source| ServerError::InitialParameters { client: id, source })?;
        if !res.status.is_ok() {
            // Flower only warns and uses what came back.
            warn!(status = ?res.status, "get_parameters returned a non-OK status");
        }
        info!(client = %id, "received initial parameters from one random client");
        Ok(res.parameters)
    }

    fn load_checkpoint(&mut self) -> Result<Option<(u64, Parameters)>, ServerError> {
        let Some(store) = &self.store else {
            return Err(ServerError::Config(
                "resuming needs a run store (--output-dir)".into(),
            ));
        };
        let Some(saved) = store.load()? else {
            warn!("no checkpoint to resume from; starting a new run");
            return Ok(None);
        };
        let cp = saved.checkpoint;
        if cp.strategy != self.strategy.name() {
            return Err(ServerError::Config(format!(
                "checkpoint was written by strategy {}, not {}",
                cp.strategy,
                self.strategy.name()
            )));
        }
        self.strategy.restore_state(cp.strategy_state)?;
        self.history = cp.history;
        info!(
            completed_rounds = cp.completed_rounds,
            "resuming from checkpoint"
        );
        Ok(Some((cp.completed_rounds, saved.parameters)))
    }

    fn save(&self, completed_rounds: u64, parameters: &Parameters) -> Result<(), ServerError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let checkpoint = Checkpoint {
            format_version: 1,
            completed_rounds,
            num_rounds: self.config.num_rounds,
            tensor_type: parameters.tensor_type.clone(),
            strategy: self.strategy.name().to_string(),
            strategy_state: self.strategy.state(),
            history: self.history.clone(),
            model_sha256: None,
            model_fingerprint: None,
        };
        blocking(|| store.save(&checkpoint, parameters))
    }

    /// Runs the configured rounds, then tells every client to disconnect.
    ///
    /// `shutdown` completing ends the run early (after saving the last
    /// completed round) with [`ServerError::Interrupted`].
    pub async fn run(
        &mut self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<RunOutcome, ServerError> {
        let started = Instant::now();
        let result = tokio::select! {
            r = self.run_rounds() => r,
            () = shutdown => Err(ServerError::Interrupted),
        };
        self.emit(RunEvent::RunEnded {
            completed: self.history.rounds.last().map_or(0, |r| r.round),
            num_rounds: self.config.num_rounds,
            elapsed: started.elapsed(),
        });
        self.disconnect_all().await;
        result
    }

    async fn run_rounds(&mut self) -> Result<RunOutcome, ServerError> {
        let started = Instant::now();
        let resumed = match self.config.resume {
            true => self.load_checkpoint()?,
            false => None,
        };
        self.emit(RunEvent::RunStarted {
            num_rounds: self.config.num_rounds,
            completed: resumed.as_ref().map_or(0, |(c, _)| *c),
        });
        let (mut completed, mut parameters) = match resumed {
            Some(found) => found,
            None => (0, self.initial_parameters().await?),
        };
        if completed == 0 {
            self.centralized_evaluation(0, &parameters)?;
            self.save(0, &parameters)?;
        }

        for round in completed + 1..=self.config.num_rounds {
            self.round = round;
            let mut record = RoundRecord {
                round,
                fit_results: 0,
                fit_failures: 0,
                evaluate_results: 0,
                evaluate_failures: 0,
                fit_seconds: 0.0,
                evaluate_seconds: 0.0,
            };
            if let Some(new) = self.fit_round(round, &parameters, &mut record).await? {
                parameters = new;
            }
            self.centralized_evaluation(round, &parameters)?;
            self.evaluate_round(round, &parameters, &mut record).await?;
            info!(
                round,
                fit_results = record.fit_results,
                fit_failures = record.fit_failures,
                evaluate_results = record.evaluate_results,
                evaluate_failures = record.evaluate_failures,
                fit_s = format!("{:.3}", record.fit_seconds),
                evaluate_s = format!("{:.3}", record.evaluate_seconds),
                loss = self
                    .history
                    .losses_distributed
                    .last()
                    .filter(|(r, _)| *r == round)
                    .map(|(_, l)| *l),
                "round complete"
            );
            self.emit(RunEvent::RoundEnded {
                round,
                num_rounds: self.config.num_rounds,
                loss: self.round_loss(round),
                elapsed: Duration::from_secs_f64(record.fit_seconds + record.evaluate_seconds),
            });
            self.history.rounds.push(record);
            completed = round;
            self.save(completed, &parameters)?;
        }
        info!(
            rounds = completed,
            seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
            "run finished"
        );
        Ok(RunOutcome {
            parameters,
            history: self.history.clone(),
            completed_rounds: completed,
        })
    }

    /// The aggregated evaluate loss of `round`, if it has one.
    fn round_loss(&self, round: u64) -> Option<f64> {
        self.history
            .losses_distributed
            .last()
            .filter(|(r, _)| *r == round)
            .map(|(_, l)| *l)
    }

    /// The strategy's centralized evaluation (round 0 = the initial model).
    fn centralized_evaluation(
        &mut self,
        round: u64,
        parameters: &Parameters,
    ) -> Result<(), ServerError> {
        if let Some((loss, metrics)) = blocking(|| self.strategy.evaluate(round, parameters))? {
            if round == 0 {
                info!(loss, "initial centralized evaluation");
            } else {
                info!(round, loss, "centralized evaluation");
            }
            self.history.add_loss_centralized(round, loss);
            self.history.add_metrics_centralized(round, &metrics);
        }
        Ok(())
    }

    async fn fit_round(
        &mut self,
        round: u64,
        parameters: &Parameters,
        record: &mut RoundRecord,
    ) -> Result<Option<Parameters>, ServerError> {
        self.wait_for_clients(self.strategy.min_available_clients(), "fit")
            .await?;
        self.under_way = true;
        // Timed from here: waiting for clients to connect is not round work.
        let started = Instant::now();
        let mut sampler = self
            .manager
            .sampler(ChaCha8Rng::seed_from_u64(self.sampler_seed(round, 0)));
        let instructions = self
            .strategy
            .configure_fit(round, parameters, &mut sampler)?;
        if instructions.is_empty() {
            info!(round, "configure_fit: no clients selected, skipping fit");
            return Ok(None);
        }
        info!(
            round,
            sampled = instructions.len(),
            available = self.manager.len(),
            "configure_fit"
        );
        let sampled = instructions.len();
        self.emit(RunEvent::PhaseStarted {
            round,
            num_rounds: self.config.num_rounds,
            phase: Phase::Fit,
            sampled,
        });
        self.strategy.begin_fit(round, parameters)?;

        let mut failures = Vec::new();
        let messages = instructions
            .into_iter()
            .map(|(id, ins): (ClientId, FitIns)| (id, ServerMessage::Fit(ins)))
            .collect();
        let (sent, mut exchanges) = self.dispatch(round, messages, &mut failures);
        let mut reasons = vec!["left"; failures.len()];

        // Results reach the strategy in the buffer's order; the upload gate
        // admits large uploads in that same order so that few ever wait.
        let mut buffer = FoldBuffer::new(sent, self.config.aggregation_order);
        let join_order = self.config.aggregation_order == AggregationOrder::JoinOrder;
        let _turns = join_order.then(|| FoldTurns::new(self.manager.upload_gate(), buffer.order()));
        let mut results = 0;
        while let Some((id, reply)) = exchanges.next().await {
            for (client, outcome) in buffer.arrive(id, classify::<FitRes>(reply)) {
                let folded = outcome
                    .map_err(|e| (e.reason(), e.to_string()))
                    .and_then(|res| {
                        blocking(|| self.strategy.accumulate_fit(round, client, res)).map_err(|e| {
                            warn!(round, client = %client, error = %e, "fit result refused");
                            ("refused", e.to_string())
                        })
                    });
                self.manager.upload_gate().done(client);
                match folded {
                    Ok(()) => results += 1,
                    Err((label, reason)) => {
                        reasons.push(label);
                        failures.push(failure(client, reason));
                    }
                }
            }
        }
        for f in &failures {
            warn!(round, client = ?f.client, reason = %f.reason, "fit failure");
        }
        record.fit_results = results;
        record.fit_failures = failures.len();
        record.fit_seconds = started.elapsed().as_secs_f64();
        info!(round, results, failures = failures.len(), "aggregate_fit");
        self.emit(RunEvent::PhaseEnded {
            round,
            num_rounds: self.config.num_rounds,
            phase: Phase::Fit,
            sampled,
            results,
            failures: &reasons,
            loss: None,
            elapsed: started.elapsed(),
        });
        let (new, metrics) = blocking(|| self.strategy.aggregate_fit(round, &failures))?;
        self.history.add_metrics_distributed_fit(round, &metrics);
        Ok(new)
    }

    async fn evaluate_round(
        &mut self,
        round: u64,
        parameters: &Parameters,
        record: &mut RoundRecord,
    ) -> Result<(), ServerError> {
        let min_available = self.strategy.min_available_clients();
        if self.manager.len() < min_available && !self.evaluate_wants_clients(round, parameters)? {
            // As Flower: a strategy that evaluates nobody (fraction_evaluate
            // = 0) never waits for clients in this phase.
            info!(
                round,
                "configure_evaluate: no clients selected, skipping evaluate"
            );
            return Ok(());
        }
        self.wait_for_clients(min_available, "evaluate").await?;
        let started = Instant::now();
        let mut sampler = self
            .manager
            .sampler(ChaCha8Rng::seed_from_u64(self.sampler_seed(round, 1)));
        let instructions = self
            .strategy
            .configure_evaluate(round, parameters, &mut sampler)?;
        if instructions.is_empty() {
            info!(
                round,
                "configure_evaluate: no clients selected, skipping evaluate"
            );
            return Ok(());
        }
        let sampled = instructions.len();
        self.emit(RunEvent::PhaseStarted {
            round,
            num_rounds: self.config.num_rounds,
            phase: Phase::Evaluate,
            sampled,
        });
        let mut failures = Vec::new();
        let messages = instructions
            .into_iter()
            .map(|(id, ins): (ClientId, EvaluateIns)| (id, ServerMessage::Evaluate(ins)))
            .collect();
        let (_, mut exchanges) = self.dispatch(round, messages, &mut failures);
        let mut reasons = vec!["left"; failures.len()];
        let mut results: Vec<(ClientId, EvaluateRes)> = Vec::new();
        while let Some((id, reply)) = exchanges.next().await {
            match classify::<EvaluateRes>(reply) {
                Ok(res) => results.push((id, res)),
                Err(e) => {
                    reasons.push(e.reason());
                    failures.push(failure(id, e));
                }
            }
        }
        results.sort_by_key(|(id, _)| *id);
        for f in &failures {
            warn!(round, client = ?f.client, reason = %f.reason, "evaluate failure");
        }
        record.evaluate_results = results.len();
        record.evaluate_failures = failures.len();
        record.evaluate_seconds = started.elapsed().as_secs_f64();
        let (loss, metrics) = self
            .strategy
            .aggregate_evaluate(round, &results, &failures)?;
        if let Some(loss) = loss {
            self.history.add_loss_distributed(round, loss);
        }
        self.history.add_metrics_distributed(round, &metrics);
        self.emit(RunEvent::PhaseEnded {
            round,
            num_rounds: self.config.num_rounds,
            phase: Phase::Evaluate,
            sampled,
            results: results.len(),
            failures: &reasons,
            loss,
            elapsed: started.elapsed(),
        });
        Ok(())
    }

    /// Whether the strategy's `configure_evaluate` asks for clients at all
    /// (Flower waits for clients only inside `sample`, which FedAvg skips
    /// when `fraction_evaluate == 0`). A probe over the clients connected
    /// now; what it configures is discarded.
    fn evaluate_wants_clients(
        &mut self,
        round: u64,
        parameters: &Parameters,
    ) -> Result<bool, ServerError> {
        let mut probe = ProbeSampler {
            inner: self
                .manager
                .sampler(ChaCha8Rng::seed_from_u64(self.sampler_seed(round, 1))),
            asked: std::cell::Cell::new(false),
        };
        let instructions = self
            .strategy
            .configure_evaluate(round, parameters, &mut probe)?;
        Ok(probe.asked.get() || !instructions.is_empty())
    }

    /// Sends `ReconnectIns` to every connected client and waits (bounded)
    /// for their streams to close. Never waits for `DisconnectRes`.
    pub async fn disconnect_all(&mut self) {
        let clients: Vec<(ClientId, Arc<dyn ClientHandle>)> = self.manager.all();
        if clients.is_empty() {
            return;
        }
        let ids: BTreeSet<ClientId> = clients.iter().map(|(id, _)| *id).collect();
        let reconnect = OutgoingMessage::new(ServerMessage::Reconnect(ReconnectIns { seconds: 0 }));
        for (_, handle) in &clients {
            handle.send_only(reconnect.clone());
        }
        info!(clients = ids.len(), "sent ReconnectIns to every client");
        self.manager
            .wait_until_gone(&ids, self.config.shutdown_grace)
            .await;
    }
}
