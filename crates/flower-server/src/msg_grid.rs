//! Message-API strategies ([`MsgStrategy`], Flower's
//! `flwr.serverapp.strategy`) over the server's connected nodes.
//!
//! [`ServerGrid`] is the strategies' [`Grid`] over a [`ClientManager`]: node
//! ids are [`ClientId`]s, sampling is seeded ([`DriverConfig::seed`]), the
//! wait for nodes is bounded (the client-wait bound before the first round,
//! the rejoin bound after), and `send_and_receive` hands every message to
//! its node's [`ClientHandle::exchange_content`] at once, shares one
//! [`OutgoingContent`] between the messages of one content, and returns the
//! replies that came back within the timeout (a node that failed to answer
//! is left out, as in Flower; an error message is an error reply).
//!
//! The run ([`ServerBuilder::msg_strategy`](crate::ServerBuilder::msg_strategy))
//! calls [`flower_strategy::msg::start`] on a blocking thread
//! and persists like the round driver: after round 0 and every round the
//! [`RunStore`] gets the model (the last aggregated `ArrayRecord`, arrays in
//! its key order) and the history (per-round reply counts, the aggregated
//! train metrics in `metrics_distributed_fit` and evaluate metrics in
//! `metrics_distributed`: the message API has no loss concept). Resuming is
//! not supported (the strategies keep no restorable state) and is refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flower_core::{Parameters, NUMPY_TENSOR_TYPE};
use flower_strategy::msg::{
    self, ArrayRecord, ConfigRecord, Grid, Message, MetricRecord, MetricValue, MsgStrategy, Reply,
    RunConfig, StreamingMean,
};
use flower_strategy::{ClientId, StrategyError};
use futures::stream::{FuturesUnordered, StreamExt};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::history::{Checkpoint, History, RoundRecord};
use crate::metrics::{Phase, RunEvent, RunObserver};
use crate::node::{ClientHandle, ExchangeError, OutgoingContent, OutgoingMessage};
use crate::store::RunStore;
use crate::{AggregationOrder, ClientManager, DriverConfig, RunOutcome, ServerError};

/// Flower's `Strategy.start` default reply timeout, used when the driver
/// sets no round timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// How often a node wait re-checks (Flower sleeps one second between polls).
const NODE_POLL: Duration = Duration::from_secs(1);

/// A message-API strategy with what Flower's `Strategy.start` takes
/// besides the grid.
#[derive(Debug)]
pub struct MsgSetup {
    /// The strategy.
    pub strategy: Box<dyn MsgStrategy>,
    /// The initial global model (message-API ClientApps cannot provide one).
    pub initial_arrays: ArrayRecord,
    /// `train_config` (`None`: empty).
    pub train_config: Option<ConfigRecord>,
    /// `evaluate_config` (`None`: empty).
    pub evaluate_config: Option<ConfigRecord>,
}

/// What the run's strategy wrapper and the grid tell each other about the
/// current phase.
#[derive(Debug, Default)]
struct PhaseShared {
    /// Fold the next train replies as they arrive, by this weight key.
    stream_key: Option<String>,
    /// Replies with content received by the last `send_and_receive`.
    received: usize,
    /// Why each other sampled node gave no content, in that call (metrics
    /// labels, as the legacy driver's: `status`, `timeout`, `closed`, ...).
    failures: Vec<&'static str>,
}

/// The metrics label of an exchange that ended without a reply.
fn exchange_reason(error: &ExchangeError) -> &'static str {
    match error {
        ExchangeError::Closed(_) => "closed",
        ExchangeError::Timeout(_) => "timeout",
        ExchangeError::Protocol(_) => "protocol",
        ExchangeError::Unsupported(_) => "unsupported",
    }
}

/// The [`Grid`] of a message-API run over the connected nodes. Its methods
/// block: it lives on a blocking thread, and drives the exchanges on the
/// runtime `handle`.
#[derive(Debug)]
pub struct ServerGrid {
    manager: ClientManager,
    handle: tokio::runtime::Handle,
    rng: ChaCha8Rng,
    config: DriverConfig,
    round: Arc<AtomicU64>,
    phase: Arc<Mutex<PhaseShared>>,
    stop: watch::Receiver<bool>,
    /// End of the current node wait (set by its first poll).
    wait_deadline: Option<Instant>,
    /// Set by the first exchange: later waits use the rejoin bound.
    under_way: bool,
}

impl ServerGrid {
    /// A grid over `manager`'s nodes; exchanges run on `handle`, and end
    /// early (no replies) once `stop` turns true.
    pub fn new(
        manager: ClientManager,
        handle: tokio::runtime::Handle,
        config: DriverConfig,
        stop: watch::Receiver<bool>,
    ) -> Self {
        ServerGrid {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            manager,
            handle,
            config,
            round: Arc::new(AtomicU64::new(0)),
            phase: Arc::default(),
            stop,
            wait_deadline: None,
            under_way: false,
        }
    }

    /// The round the next messages belong to (their `group_id`).
    fn set_round(&self, round: u64) {
        self.round.store(round, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, PhaseShared> {
        lock(&self.phase)
    }
}

fn lock(phase: &Mutex<PhaseShared>) -> std::sync::MutexGuard<'_, PhaseShared> {
    // Plain data: a panic elsewhere cannot leave it inconsistent.
    phase.lock().unwrap_or_else(|e| e.into_inner())
}

impl Grid for ServerGrid {
    fn node_ids(&mut self) -> Vec<u64> {
        self.manager
            .all()
            .into_iter()
            .map(|(id, _)| id.get())
            .collect()
    }

    fn wait_for_nodes(&mut self) -> bool {
        if self.stopped() {
            return false;
        }
        let bound = if self.under_way {
            self.config.rejoin_wait_timeout
        } else {
            self.config.client_wait_timeout
        };
        let now = Instant::now();
        let deadline = *self.wait_deadline.get_or_insert_with(|| {
            info!(
                connected = self.manager.len(),
                bound_s = bound.as_secs_f64(),
                "waiting for more nodes"
            );
            now + bound
        });
        if now >= deadline {
            self.wait_deadline = None;
            return false;
        }
        let wait = NODE_POLL.min(deadline - now);
        let more = self.manager.len() + 1;
        let manager = self.manager.clone();
        let mut stop = self.stop.clone();
        self.handle.block_on(async move {
            tokio::select! {
                _ = manager.wait_for(more, wait) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
        !self.stopped()
    }

    fn sample(&mut self, nodes: &[u64], sample_size: usize) -> Vec<u64> {
        nodes
            .choose_multiple(&mut self.rng, sample_size)
            .copied()
            .collect()
    }

    fn send_and_receive(&mut self, messages: Vec<Message>, timeout: f64) -> Vec<Reply> {
        self.wait_deadline = None;
        let stream_key = self.phase().stream_key.take();
        self.phase().received = 0;
        self.phase().failures.clear();
        if messages.is_empty() {
            return Vec::new();
        }
        let mut failures: Vec<&'static str> = Vec::new();
        self.under_way = true;
        let timeout = Duration::try_from_secs_f64(timeout).unwrap_or(DEFAULT_TIMEOUT);
        let round = self.round.load(Ordering::Relaxed);
        let exchanges = FuturesUnordered::new();
        let mut previous: Option<Arc<OutgoingContent>> = None;
        for m in messages {
            // The messages of a phase share one content: one encoding.
            let outgoing = match previous.take() {
                Some(p)
                    if Arc::ptr_eq(p.content(), &m.content)
                        && p.message_type() == m.message_type =>
                {
                    p
                }
                _ => OutgoingContent::new(m.message_type, round, m.content.clone()),
            };
            previous = Some(outgoing.clone());
            let node = m.dst_node_id;
            match self.manager.get(ClientId::new(node)) {
                Some(handle) => {
                    let fut = handle.exchange_content(outgoing, Some(timeout));
                    exchanges.push(async move { (node, fut.await) });
                }
                None => {
                    warn!(node, "node left before its message was sent");
                    failures.push("left");
                }
            }
        }
        let pending = exchanges.len();
        let mut stop = self.stop.clone();
        // Arrival order and a mean-family strategy: each train reply is
        // folded as it arrives and dropped (memory O(model)).
        let mut fold = stream_key
            .filter(|_| self.config.aggregation_order == AggregationOrder::Arrival)
            .map(StreamingMean::new);
        let (mut replies, received, fold, ended) = self.handle.block_on(async move {
            let mut replies = Vec::new();
            let mut received = 0;
            let mut ended: Vec<&'static str> = Vec::new();
            let mut exchanges = exchanges;
            let collect = async {
                while let Some((node, outcome)) = exchanges.next().await {
                    match outcome {
                        Ok(content) => {
                            received += usize::from(content.is_ok());
                            if content.is_err() {
                                ended.push("status");
                            }
                            let reply = Reply {
                                src_node_id: node,
                                content,
                            };
                            // This future runs on the run's blocking
                            // thread: folding here stalls no async worker.
                            match fold.as_mut() {
                                Some(f) => f.add(reply),
                                None => replies.push(reply),
                            }
                        }
                        Err(e) => {
                            warn!(round, node, error = %e, "no reply");
                            ended.push(exchange_reason(&e));
                        }
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::timeout(timeout, collect) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            (replies, received, fold, ended)
        });
        // Exchanges still open when the wait ended had no reply in time.
        let unanswered = pending.saturating_sub(received + ended.len());
        failures.extend(ended);
        failures.extend(std::iter::repeat_n("timeout", unanswered));
        {
            let mut phase = self.phase();
            phase.received = received;
            phase.failures = failures;
        }
        if let Some(fold) = fold {
            return fold.finish();
        }
        if self.config.aggregation_order == AggregationOrder::JoinOrder {
            // Flower folds in arrival order; join order makes the same
            // inputs give the same bits.
            replies.sort_by_key(|r| r.src_node_id);
        }
        replies
    }
}

/// A metric value as `history.json` writes it.
fn metric_json(v: &MetricValue) -> Value {
    let float = |f: f64| crate::history::scalar_to_json(&flower_core::Scalar::Double(f));
    match v {
        MetricValue::Int(i) => Value::from(*i),
        MetricValue::Float(f) => float(*f),
        MetricValue::IntList(l) => Value::Array(l.iter().map(|i| Value::from(*i)).collect()),
        MetricValue::FloatList(l) => Value::Array(l.iter().map(|f| float(*f)).collect()),
    }
}

fn add_metrics(
    target: &mut std::collections::BTreeMap<String, Vec<(u64, Value)>>,
    round: u64,
    metrics: &MetricRecord,
) {
    for (k, v) in metrics.iter() {
        target
            .entry(k.to_owned())
            .or_default()
            .push((round, metric_json(v)));
    }
}

/// The arrays of `record` as `.npy` tensors, in key order.
pub fn arrays_to_parameters(record: &ArrayRecord) -> Parameters {
    Parameters {
        tensors: record.iter().map(|(_, a)| a.npy().clone()).collect(),
        tensor_type: NUMPY_TENSOR_TYPE.to_owned(),
    }
}

/// Observes `start` around the run's strategy: reply counts, metrics, the
/// current model, and a save after every round.
#[derive(Debug)]
struct Recorder {
    inner: Box<dyn MsgStrategy>,
    round: Arc<AtomicU64>,
    phase: Arc<Mutex<PhaseShared>>,
    store: Option<Arc<dyn RunStore>>,
    num_rounds: u64,
    history: History,
    current: ArrayRecord,
    record: Option<RoundRecord>,
    sent: usize,
    started: Option<Instant>,
    completed: u64,
    /// A failed save: it ends the run, and is what the run returns.
    save_error: Option<ServerError>,
    /// The run's stop signal: once set, no round is aggregated or saved
    /// (its replies may be partial).
    stop: watch::Receiver<bool>,
    /// Told of the run's phases (the metrics, the progress lines).
    observers: Vec<Arc<dyn RunObserver>>,
    /// When the current round's train phase started.
    round_started: Option<Instant>,
}

impl Recorder {
    fn emit(&self, event: RunEvent<'_>) {
        for observer in &self.observers {
            observer.on_event(&event);
        }
    }

    /// Reports the end of the phase that just ended.
    fn phase_ended(&self, round: u64, phase: Phase, loss: Option<f64>) {
        let shared = lock(&self.phase);
        self.emit(RunEvent::PhaseEnded {
            round,
            num_rounds: self.num_rounds,
            phase,
            sampled: self.sent,
            results: shared.received,
            failures: &shared.failures,
            loss,
            elapsed: self.started.map_or(Duration::ZERO, |s| s.elapsed()),
        });
    }

    fn save(&mut self) -> Result<(), ServerError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let parameters = arrays_to_parameters(&self.current);
        let checkpoint = Checkpoint {
            format_version: 1,
            completed_rounds: self.completed,
            num_rounds: self.num_rounds,
            tensor_type: parameters.tensor_type.clone(),
            strategy: format!("message-api:{}", self.inner.name()),
            strategy_state: Value::Null,
            history: self.history.clone(),
            model_sha256: None,
            model_fingerprint: None,
        };
        store.save(&checkpoint, &parameters)
    }

    fn check_stop(&self) -> Result<(), StrategyError> {
        if *self.stop.borrow() {
            return Err(StrategyError::Config("the run was interrupted".into()));
        }
        Ok(())
    }

    fn elapsed(&self) -> f64 {
        self.started.map_or(0.0, |s| s.elapsed().as_secs_f64())
    }
}

impl Recorder {
    /// `(results, failures)` of the phase that just ended.
    fn counts(&self) -> (usize, usize) {
        let ok = lock(&self.phase).received;
        (ok, self.sent.saturating_sub(ok))
    }
}

impl MsgStrategy for Recorder {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn configure_train(
        &mut self,
        server_round: u64,
        arrays: &ArrayRecord,
        config: &mut ConfigRecord,
        grid: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError> {
        self.round.store(server_round, Ordering::Relaxed);
        self.record = Some(RoundRecord {
            round: server_round,
            fit_results: 0,
            fit_failures: 0,
            evaluate_results: 0,
            evaluate_failures: 0,
            fit_seconds: 0.0,
            evaluate_seconds: 0.0,
        });
        let messages = self
            .inner
            .configure_train(server_round, arrays, config, grid)?;
        lock(&self.phase).stream_key = self.inner.streaming_key().map(str::to_owned);
        self.sent = messages.len();
        self.started = Some(Instant::now());
        self.round_started = self.started;
        info!(
            round = server_round,
            sampled = messages.len(),
            "configure_train"
        );
        self.emit(RunEvent::PhaseStarted {
            round: server_round,
            num_rounds: self.num_rounds,
            phase: Phase::Fit,
            sampled: messages.len(),
        });
        Ok(messages)
    }

    fn aggregate_train(
        &mut self,
        server_round: u64,
        replies: Vec<Reply>,
    ) -> Result<(Option<ArrayRecord>, Option<MetricRecord>), StrategyError> {
        self.check_stop()?;
        let (results, failures) = self.counts();
        let (arrays, metrics) = self.inner.aggregate_train(server_round, replies)?;
        let seconds = self.elapsed();
        if let Some(r) = self.record.as_mut() {
            r.fit_results = results;
            r.fit_failures = failures;
            r.fit_seconds = seconds;
        }
        if let Some(a) = &arrays {
            self.current = a.clone();
        }
        if let Some(m) = &metrics {
            add_metrics(&mut self.history.metrics_distributed_fit, server_round, m);
        }
        info!(round = server_round, results, failures, "aggregate_train");
        self.phase_ended(server_round, Phase::Fit, None);
        Ok((arrays, metrics))
    }

    fn configure_evaluate(
        &mut self,
        server_round: u64,
        arrays: &ArrayRecord,
        config: &mut ConfigRecord,
        grid: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError> {
        let messages = self
            .inner
            .configure_evaluate(server_round, arrays, config, grid)?;
        self.sent = messages.len();
        self.started = Some(Instant::now());
        self.emit(RunEvent::PhaseStarted {
            round: server_round,
            num_rounds: self.num_rounds,
            phase: Phase::Evaluate,
            sampled: messages.len(),
        });
        Ok(messages)
    }

    fn aggregate_evaluate(
        &mut self,
        server_round: u64,
        replies: Vec<Reply>,
    ) -> Result<Option<MetricRecord>, StrategyError> {
        self.check_stop()?;
        let (results, failures) = self.counts();
        let metrics = self.inner.aggregate_evaluate(server_round, replies)?;
        let seconds = self.elapsed();
        if let Some(m) = &metrics {
            add_metrics(&mut self.history.metrics_distributed, server_round, m);
        }
        self.phase_ended(server_round, Phase::Evaluate, None);
        self.emit(RunEvent::RoundEnded {
            round: server_round,
            num_rounds: self.num_rounds,
            loss: None,
            elapsed: self.round_started.map_or(Duration::ZERO, |s| s.elapsed()),
        });
        if let Some(mut r) = self.record.take() {
            r.evaluate_results = results;
            r.evaluate_failures = failures;
            r.evaluate_seconds = seconds;
            info!(
                round = server_round,
                fit_results = r.fit_results,
                fit_failures = r.fit_failures,
                evaluate_results = r.evaluate_results,
                evaluate_failures = r.evaluate_failures,
                "round complete"
            );
            self.history.rounds.push(r);
        }
        self.completed = server_round;
        // Evaluate is the last phase of a round: the round is complete.
        if let Err(e) = self.save() {
            let why = crate::error_chain(&e);
            self.save_error = Some(e);
            return Err(StrategyError::Config(format!(
                "saving the run failed: {why}"
            )));
        }
        Ok(metrics)
    }
}

/// Runs a message-API strategy over the connected nodes (see the module
/// documentation).
#[derive(Debug)]
pub(crate) struct MsgDriver {
    manager: ClientManager,
    setup: Option<MsgSetup>,
    config: DriverConfig,
    store: Option<Arc<dyn RunStore>>,
    observers: Vec<Arc<dyn RunObserver>>,
}

impl MsgDriver {
    pub(crate) fn new(manager: ClientManager, setup: MsgSetup, config: DriverConfig) -> Self {
        MsgDriver {
            manager,
            setup: Some(setup),
            config,
            store: None,
            observers: Vec::new(),
        }
    }

    /// Reports the run's phases to `observer`, as the legacy driver does.
    pub(crate) fn with_observer(mut self, observer: Arc<dyn RunObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    pub(crate) fn with_store(mut self, store: Arc<dyn RunStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Runs the rounds (once), then tells every node to disconnect.
    pub(crate) async fn run(
        &mut self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<RunOutcome, ServerError> {
        let result = self.run_rounds(shutdown).await;
        disconnect_all(&self.manager, self.config.shutdown_grace).await;
        result
    }

    async fn run_rounds(
        &mut self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<RunOutcome, ServerError> {
        if self.config.resume {
            return Err(ServerError::Config(
                "resuming is not supported for message-API strategies (they keep no \
                 restorable state): start a new run"
                    .into(),
            ));
        }
        let setup = self
            .setup
            .take()
            .ok_or_else(|| ServerError::Config("the message-API run already ran".into()))?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut grid = ServerGrid::new(
            self.manager.clone(),
            tokio::runtime::Handle::current(),
            self.config.clone(),
            stop_rx.clone(),
        );
        let mut recorder = Recorder {
            inner: setup.strategy,
            round: grid.round.clone(),
            phase: grid.phase.clone(),
            store: self.store.clone(),
            num_rounds: self.config.num_rounds,
            history: History::default(),
            current: setup.initial_arrays.clone(),
            record: None,
            sent: 0,
            started: None,
            completed: 0,
            save_error: None,
            stop: stop_rx,
            observers: self.observers.clone(),
            round_started: None,
        };
        let run_started = Instant::now();
        recorder.emit(RunEvent::RunStarted {
            num_rounds: self.config.num_rounds,
            completed: 0,
        });
        recorder.save()?;
        let run = RunConfig {
            num_rounds: self.config.num_rounds,
            timeout: self
                .config
                .round_timeout
                .unwrap_or(DEFAULT_TIMEOUT)
                .as_secs_f64(),
            train_config: setup.train_config,
            evaluate_config: setup.evaluate_config,
        };
        info!(
            strategy = recorder.name(),
            rounds = run.num_rounds,
            "message-API run starting"
        );
        let initial = setup.initial_arrays;
        let task = tokio::task::spawn_blocking(move || {
            grid.set_round(0);
            let result = msg::start(&mut recorder, &mut grid, initial, run, None);
            (recorder, result)
        });
        tokio::pin!(task);
        let (joined, interrupted) = tokio::select! {
            j = &mut task => (j, false),
            () = shutdown => {
                let _ = stop_tx.send(true);
                ((&mut task).await, true)
            }
        };
        let (mut recorder, result) = joined
            .map_err(|e| ServerError::Config(format!("the message-API run panicked: {e}")))?;
        recorder.emit(RunEvent::RunEnded {
            completed: recorder.completed,
            num_rounds: self.config.num_rounds,
            elapsed: run_started.elapsed(),
        });
        if interrupted {
            return Err(ServerError::Interrupted);
        }
        if let Some(e) = recorder.save_error.take() {
            return Err(e);
        }
        result?;
        info!(rounds = recorder.completed, "run finished");
        Ok(RunOutcome {
            parameters: arrays_to_parameters(&recorder.current),
            history: recorder.history,
            completed_rounds: recorder.completed,
        })
    }
}

/// Sends `ReconnectIns` to every connected node (the end of the run) and
/// waits, at most `grace`, for them to go.
async fn disconnect_all(manager: &ClientManager, grace: Duration) {
    let clients: Vec<(ClientId, Arc<dyn ClientHandle>)> = manager.all();
    if clients.is_empty() {
        return;
    }
    let reconnect = OutgoingMessage::new(flower_core::ServerMessage::Reconnect(
        flower_core::ReconnectIns { seconds: 0 },
    ));
    for (_, handle) in &clients {
        handle.send_only(reconnect.clone());
    }
    let ids = clients.iter().map(|(id, _)| *id).collect();
    manager.wait_until_gone(&ids, grace).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{ContentReply, ExchangeError};
    use flower_strategy::msg::{
        Array, FedAvg, FedAvgOptions, MessageType, Record, RecordDict, ReplyError,
    };
    use futures::future::BoxFuture;
    use futures::FutureExt;

    /// A node that trains by adding `delta` to every f64 and reports
    /// `examples`; `fail` makes it reply with an error.
    #[derive(Debug)]
    struct Node {
        delta: f64,
        examples: i64,
        fail: bool,
    }

    /// A node that never answers.
    #[derive(Debug)]
    struct Silent;

    impl ClientHandle for Silent {
        fn exchange(
            &self,
            _m: Arc<OutgoingMessage>,
            _t: Option<Duration>,
        ) -> BoxFuture<'static, Result<flower_core::ClientMessage, ExchangeError>> {
            futures::future::pending().boxed()
        }
        fn send_only(&self, _m: Arc<OutgoingMessage>) {}
        fn peer(&self) -> String {
            "silent".into()
        }
        fn exchange_content(
            &self,
            _m: Arc<OutgoingContent>,
            _t: Option<Duration>,
        ) -> BoxFuture<'static, Result<ContentReply, ExchangeError>> {
            futures::future::pending().boxed()
        }
    }

    fn npy(v: &[f64]) -> Array {
        let mut header = format!(
            "{{'descr': '<f8', 'fortran_order': False, 'shape': ({},), }}",
            v.len()
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((header.len() as u16).to_le_bytes());
        b.extend(header.as_bytes());
        for x in v {
            b.extend(x.to_le_bytes());
        }
        Array::from_npy(b.into()).expect("npy")
    }

    fn values(a: &Array) -> Vec<f64> {
        let view = a.view().expect("view");
        view.data
            .chunks(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    }

    impl ClientHandle for Node {
        fn exchange(
            &self,
            _m: Arc<OutgoingMessage>,
            _t: Option<Duration>,
        ) -> BoxFuture<'static, Result<flower_core::ClientMessage, ExchangeError>> {
            async { Err(ExchangeError::Closed("legacy".into())) }.boxed()
        }
        fn send_only(&self, _m: Arc<OutgoingMessage>) {}
        fn peer(&self) -> String {
            "node".into()
        }
        fn exchange_content(
            &self,
            m: Arc<OutgoingContent>,
            _t: Option<Duration>,
        ) -> BoxFuture<'static, Result<ContentReply, ExchangeError>> {
            let (delta, examples, fail) = (self.delta, self.examples, self.fail);
            async move {
                if fail {
                    return Ok(Err(ReplyError {
                        code: 0,
                        reason: "boom".into(),
                    }));
                }
                let Some(Record::Arrays(arrays)) = m.content().get("arrays") else {
                    return Err(ExchangeError::Protocol("no arrays".into()));
                };
                let mut metrics = MetricRecord::new();
                metrics.insert("num-examples", MetricValue::Int(examples));
                metrics.insert("round", MetricValue::Int(m.round() as i64));
                let mut out = RecordDict::new();
                if m.message_type() == MessageType::Train {
                    let trained: ArrayRecord = arrays
                        .iter()
                        .map(|(k, a)| {
                            let v: Vec<f64> = values(a).iter().map(|x| x + delta).collect();
                            (k, npy(&v))
                        })
                        .collect();
                    out.insert("arrays", Record::Arrays(trained));
                }
                out.insert("metrics", Record::Metrics(metrics));
                Ok(Ok(out))
            }
            .boxed()
        }
    }

    #[derive(Debug, Default)]
    struct MemStore {
        saves: std::sync::Mutex<Vec<(u64, Parameters)>>,
    }

    impl RunStore for MemStore {
        fn save(&self, c: &Checkpoint, p: &Parameters) -> Result<(), ServerError> {
            self.saves
                .lock()
                .expect("lock")
                .push((c.completed_rounds, p.clone()));
            Ok(())
        }
        fn load(&self) -> Result<Option<crate::SavedRun>, ServerError> {
            Ok(None)
        }
    }

    /// Every event as its progress line.
    #[derive(Default)]
    struct Events {
        lines: std::sync::Mutex<Vec<String>>,
    }

    impl RunObserver for Events {
        fn on_event(&self, event: &RunEvent<'_>) {
            let mut line = event.to_string();
            if let RunEvent::PhaseEnded { failures, .. } = event {
                line.push_str(&format!(" {failures:?}"));
            }
            self.lines.lock().expect("lock").push(line);
        }
    }

    fn setup(min: usize) -> MsgSetup {
        let opts = FedAvgOptions {
            min_train_nodes: min,
            min_evaluate_nodes: min,
            min_available_nodes: min,
            ..FedAvgOptions::default()
        };
        MsgSetup {
            strategy: Box::new(FedAvg::new(opts).expect("fedavg")),
            initial_arrays: [("w", npy(&[1.0, 2.0]))].into_iter().collect(),
            train_config: None,
            evaluate_config: None,
        }
    }

    fn config(rounds: u64) -> DriverConfig {
        DriverConfig {
            num_rounds: rounds,
            client_wait_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_millis(10),
            ..DriverConfig::default()
        }
    }

    /// FedAvg over two answering nodes and one failing one, for 2 rounds,
    /// in join order and (replies folded as they arrive) in arrival order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fedavg_over_nodes_saves_every_round_and_drops_error_replies() {
        for order in [AggregationOrder::JoinOrder, AggregationOrder::Arrival] {
            let manager = ClientManager::default();
            for (delta, examples, fail) in [(1.0, 10, false), (3.0, 30, false), (0.0, 5, true)] {
                manager.register(Arc::new(Node {
                    delta,
                    examples,
                    fail,
                }));
            }
            let store = Arc::new(MemStore::default());
            let mut c = config(2);
            c.aggregation_order = order;
            let events = Arc::new(Events::default());
            let mut driver = MsgDriver::new(manager, setup(2), c)
                .with_store(store.clone())
                .with_observer(events.clone());
            let outcome = driver.run(std::future::pending()).await.expect("run");
            // The run's phases are reported as the legacy driver's are; the
            // error reply is a `status` failure.
            let lines = events.lines.lock().expect("lock").clone();
            assert_eq!(lines.first().map(String::as_str), Some("run: 2 rounds"));
            assert!(
                lines.contains(&"round 2/2 fit: 3 sampled".to_string()),
                "{lines:#?}"
            );
            let ended: Vec<&String> = lines
                .iter()
                .filter(|l| l.starts_with("round 2/2 evaluate: 3 sampled, 2 results, 1 failure"))
                .collect();
            assert_eq!(ended.len(), 1, "{lines:#?}");
            assert!(ended[0].ends_with("[\"status\"]"), "{lines:#?}");
            assert!(
                lines.iter().any(|l| l.starts_with("round 2/2 done")),
                "{lines:#?}"
            );
            assert_eq!(
                lines.last().map(|l| l.starts_with("run ended: 2/2 rounds")),
                Some(true),
                "{lines:#?}"
            );
            // Each round moves the model by (10·1 + 30·3)/40 = 2.5.
            assert_eq!(outcome.completed_rounds, 2);
            let saves = store.saves.lock().expect("lock");
            assert_eq!(saves.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2]);
            let last = ArrayRecord::from_iter([(
                "w",
                Array::from_npy(outcome.parameters.tensors[0].clone()).expect("npy"),
            )]);
            assert_eq!(values(last.get("w").expect("w")), [6.0, 7.0], "{order:?}");
            let r = &outcome.history.rounds;
            assert_eq!((r[1].fit_results, r[1].fit_failures), (2, 1), "{order:?}");
            assert_eq!((r[1].evaluate_results, r[1].evaluate_failures), (2, 1));
            assert_eq!(outcome.history.metrics_distributed_fit["round"][1].1, 2.0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn too_few_nodes_end_after_the_bound_and_resume_is_refused() {
        let manager = ClientManager::default();
        manager.register(Arc::new(Node {
            delta: 1.0,
            examples: 1,
            fail: false,
        }));
        let started = std::time::Instant::now();
        let mut driver = MsgDriver::new(manager.clone(), setup(2), config(1));
        let e = driver.run(std::future::pending()).await.unwrap_err();
        assert!(
            matches!(&e, ServerError::Strategy(StrategyError::InPhase { source, .. })
                if matches!(**source, StrategyError::TooFewNodes { required: 2, online: 1 })),
            "{e:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let mut c = config(1);
        c.resume = true;
        let mut driver = MsgDriver::new(manager, setup(1), c);
        let e = driver.run(std::future::pending()).await.unwrap_err();
        assert!(
            crate::error_chain(&e).contains("resuming is not supported"),
            "{e}"
        );
    }

    /// An interrupted round is neither aggregated nor saved: the store
    /// keeps round 0, and the run ends promptly with `Interrupted`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interruption_mid_round_saves_nothing_more() {
        let manager = ClientManager::default();
        manager.register(Arc::new(Node {
            delta: 1.0,
            examples: 1,
            fail: false,
        }));
        manager.register(Arc::new(Silent));
        let store = Arc::new(MemStore::default());
        let mut driver = MsgDriver::new(manager, setup(2), config(3)).with_store(store.clone());
        let started = std::time::Instant::now();
        let shutdown = tokio::time::sleep(Duration::from_millis(300));
        let e = driver.run(shutdown).await.unwrap_err();
        assert!(matches!(e, ServerError::Interrupted), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let saves = store.saves.lock().expect("lock");
        assert_eq!(saves.iter().map(|s| s.0).collect::<Vec<_>>(), [0]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpc_style_handles_refuse_content() {
        let node = crate::FnClient::new(|_| Err(ExchangeError::Closed("x".into())));
        let out = OutgoingContent::new(MessageType::Train, 1, Arc::new(RecordDict::new()));
        let e = node.exchange_content(out, None).await.unwrap_err();
        assert!(matches!(e, ExchangeError::Unsupported(_)));
    }
}
