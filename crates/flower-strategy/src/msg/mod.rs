//! The strategies of Flower's message API (`flwr.serverapp.strategy`,
//! 1.42), numerically equal to Python Flower (`tests/golden_msg.rs`).
//!
//! A [`MsgStrategy`] configures train/evaluate [`Message`]s for the nodes it
//! samples from a [`Grid`] and aggregates their [`Reply`]s (content as
//! [`RecordDict`]s: arrays as `.npy` bytes keyed by name, metrics, configs).
//! [`start`] is Flower's `Strategy.start` loop.
//!
//! | Flower class | Rust type | own options |
//! |---|---|---|
//! | `FedAvg` | [`FedAvg`] | [`FedAvgOptions`] (shared by all) |
//! | `FedProx` | [`FedProx`] | `proximal_mu` |
//! | `FedAvgM` | [`FedAvgM`] | `server_learning_rate`, `server_momentum` |
//! | `FedAdagrad` / `FedAdam` / `FedYogi` / (`FedOpt`) | [`FedOpt`] | [`FedOptOptions`] |
//! | `QFedAvg` | [`QFedAvg`] | [`QFedAvgOptions`] |
//! | `FedMedian` / `FedTrimmedAvg` | [`FedMedian`] ([`FedMedian::trimmed`]) | `beta` |
//! | `Krum` / `MultiKrum` | [`MultiKrum`] ([`MultiKrum::krum`]) | `num_malicious_nodes`, `num_nodes_to_select` |
//! | `Bulyan` | [`Bulyan`] | `num_malicious_nodes` |
//! | `FedXgbBagging` / `FedXgbCyclic` | [`FedXgbBagging`] / [`FedXgbCyclic`] | — |
//! | the four `DifferentialPrivacy*Clipping` wrappers | [`DpWrapper`] ([`DpWrapper::fixed`], [`DpWrapper::adaptive`]) | [`FixedClippingOptions`](crate::FixedClippingOptions), [`AdaptiveClippingOptions`](crate::AdaptiveClippingOptions) |
//!
//! The arithmetic is the legacy catalog's (`layers`, `mean`); what
//! differs is Flower's message-API options, sampling, reply validation and
//! metric aggregation (see `docs/strategies.md`, section 9). Where Flower
//! blocks forever the grid's wait is bounded
//! ([`crate::deviations`], `msg-bounded-wait`).

mod dp;
mod fedavg;
mod fedopt;
mod records;
mod robust;
mod stream;
mod xgb;

use std::collections::BTreeMap;
use std::fmt;

pub use dp::DpWrapper;
pub(crate) use fedavg::aggregate_metricrecords;
pub use fedavg::{FedAvg, FedAvgOptions, MetricsAggrFn};
pub use fedopt::{
    FedAvgM, FedOpt, FedOptKind, FedOptOptions, FedProx, Moments, QFedAvg, QFedAvgOptions,
};
pub use records::{
    Array, ArrayRecord, ConfigRecord, ConfigValue, Message, MessageType, MetricRecord, MetricValue,
    Ordered, Record, RecordDict, Reply, ReplyError,
};
pub use robust::{Bulyan, FedMedian, MultiKrum};
pub use stream::StreamingMean;
pub use xgb::{FedXgbBagging, FedXgbCyclic};

use crate::StrategyError;

/// What a message-API strategy needs of the SuperLink: the connected
/// nodes, a bounded wait for more, sampling, and one round trip.
pub trait Grid {
    /// The ids of the connected nodes (Flower's `get_node_ids()`).
    fn node_ids(&mut self) -> Vec<u64>;

    /// Waits for more nodes to connect (Flower sleeps one second and asks
    /// again, forever). Returns `false` when the wait bound is exhausted:
    /// the strategy then fails with [`StrategyError::TooFewNodes`].
    fn wait_for_nodes(&mut self) -> bool;

    /// Picks `sample_size` distinct ids of `nodes` uniformly at random, in
    /// random order (Python's `random.sample`); `sample_size <= nodes.len()`.
    fn sample(&mut self, nodes: &[u64], sample_size: usize) -> Vec<u64> {
        use rand::seq::SliceRandom;
        nodes
            .choose_multiple(&mut rand::thread_rng(), sample_size)
            .copied()
            .collect()
    }

    /// Sends `messages` and returns the replies that arrived within
    /// `timeout` seconds.
    fn send_and_receive(&mut self, messages: Vec<Message>, timeout: f64) -> Vec<Reply>;
}

/// A strategy of Flower's message API.
pub trait MsgStrategy: Send + fmt::Debug {
    /// Flower's class name.
    fn name(&self) -> &str;

    /// The train messages of `server_round` for `arrays`. `config` is the
    /// user's train config, updated in place as in Flower (`server-round`...).
    fn configure_train(
        &mut self,
        server_round: u64,
        arrays: &ArrayRecord,
        config: &mut ConfigRecord,
        grid: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError>;

    /// Aggregates the train replies: `(None, _)` keeps the previous model.
    fn aggregate_train(
        &mut self,
        server_round: u64,
        replies: Vec<Reply>,
    ) -> Result<(Option<ArrayRecord>, Option<MetricRecord>), StrategyError>;

    /// The evaluate messages of `server_round`.
    fn configure_evaluate(
        &mut self,
        server_round: u64,
        arrays: &ArrayRecord,
        config: &mut ConfigRecord,
        grid: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError>;

    /// Aggregates the evaluate replies.
    fn aggregate_evaluate(
        &mut self,
        server_round: u64,
        replies: Vec<Reply>,
    ) -> Result<Option<MetricRecord>, StrategyError>;

    /// The weight key when `aggregate_train` depends on the train replies
    /// only through their weighted mean (the mean family without a custom
    /// `train_metrics_aggr_fn`): a grid may then fold them as they arrive
    /// ([`StreamingMean`]). `None` (the default): it needs every reply.
    fn streaming_key(&self) -> Option<&str> {
        None
    }
}

impl<S: MsgStrategy + ?Sized> MsgStrategy for Box<S> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn configure_train(
        &mut self,
        r: u64,
        a: &ArrayRecord,
        c: &mut ConfigRecord,
        g: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError> {
        (**self).configure_train(r, a, c, g)
    }
    fn aggregate_train(
        &mut self,
        r: u64,
        replies: Vec<Reply>,
    ) -> Result<(Option<ArrayRecord>, Option<MetricRecord>), StrategyError> {
        (**self).aggregate_train(r, replies)
    }
    fn configure_evaluate(
        &mut self,
        r: u64,
        a: &ArrayRecord,
        c: &mut ConfigRecord,
        g: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError> {
        (**self).configure_evaluate(r, a, c, g)
    }
    fn aggregate_evaluate(
        &mut self,
        r: u64,
        replies: Vec<Reply>,
    ) -> Result<Option<MetricRecord>, StrategyError> {
        (**self).aggregate_evaluate(r, replies)
    }
    fn streaming_key(&self) -> Option<&str> {
        (**self).streaming_key()
    }
}

/// The phase of [`start`] an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `configure_train` (sampling included).
    ConfigureTrain,
    /// `aggregate_train`.
    AggregateTrain,
    /// `configure_evaluate`.
    ConfigureEvaluate,
    /// `aggregate_evaluate`.
    AggregateEvaluate,
    /// The server-side `evaluate_fn`.
    EvaluateFn,
}

impl Phase {
    /// Flower's method name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::ConfigureTrain => "configure_train",
            Phase::AggregateTrain => "aggregate_train",
            Phase::ConfigureEvaluate => "configure_evaluate",
            Phase::AggregateEvaluate => "aggregate_evaluate",
            Phase::EvaluateFn => "evaluate_fn",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The server-side evaluation callback (Flower's `evaluate_fn`): metrics
/// of the global model of a round (0 = the initial model), or `None`.
pub type EvaluateFn<'a> =
    dyn FnMut(u64, &ArrayRecord) -> Result<Option<MetricRecord>, StrategyError> + 'a;

/// The arguments of [`start`] besides the strategy and the grid.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Number of rounds (Flower's default: 3).
    pub num_rounds: u64,
    /// Seconds `send_and_receive` waits for replies (Flower's default: 3600).
    pub timeout: f64,
    /// The train config (`None`: empty).
    pub train_config: Option<ConfigRecord>,
    /// The evaluate config (`None`: empty).
    pub evaluate_config: Option<ConfigRecord>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            num_rounds: 3,
            timeout: 3600.0,
            train_config: None,
            evaluate_config: None,
        }
    }
}

/// What [`start`] returns (Flower's `Result`).
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// The last aggregated arrays (empty when no round produced any).
    pub arrays: ArrayRecord,
    /// Aggregated train metrics by round.
    pub train_metrics_clientapp: BTreeMap<u64, MetricRecord>,
    /// Aggregated evaluate metrics by round.
    pub evaluate_metrics_clientapp: BTreeMap<u64, MetricRecord>,
    /// `evaluate_fn` results by round (0 = the initial model).
    pub evaluate_metrics_serverapp: BTreeMap<u64, MetricRecord>,
}

fn in_phase(phase: Phase, server_round: u64) -> impl FnOnce(StrategyError) -> StrategyError {
    move |e| StrategyError::InPhase {
        phase,
        server_round,
        source: Box::new(e),
    }
}

/// Flower's `Strategy.start`: `num_rounds` rounds of train, evaluate and
/// (with `evaluate_fn`) server-side evaluation. An error ends the run and
/// comes back as [`StrategyError::InPhase`].
pub fn start(
    strategy: &mut dyn MsgStrategy,
    grid: &mut dyn Grid,
    initial_arrays: ArrayRecord,
    config: RunConfig,
    mut evaluate_fn: Option<&mut EvaluateFn<'_>>,
) -> Result<RunResult, StrategyError> {
    let mut train_config = config.train_config.unwrap_or_default();
    let mut evaluate_config = config.evaluate_config.unwrap_or_default();
    let mut result = RunResult::default();
    if let Some(f) = evaluate_fn.as_mut() {
        if let Some(m) = f(0, &initial_arrays).map_err(in_phase(Phase::EvaluateFn, 0))? {
            result.evaluate_metrics_serverapp.insert(0, m);
        }
    }
    let mut arrays = initial_arrays;
    for r in 1..=config.num_rounds {
        let msgs = strategy
            .configure_train(r, &arrays, &mut train_config, grid)
            .map_err(in_phase(Phase::ConfigureTrain, r))?;
        let replies = grid.send_and_receive(msgs, config.timeout);
        let (agg, metrics) = strategy
            .aggregate_train(r, replies)
            .map_err(in_phase(Phase::AggregateTrain, r))?;
        if let Some(a) = agg {
            result.arrays = a.clone();
            arrays = a;
        }
        if let Some(m) = metrics {
            result.train_metrics_clientapp.insert(r, m);
        }
        let msgs = strategy
            .configure_evaluate(r, &arrays, &mut evaluate_config, grid)
            .map_err(in_phase(Phase::ConfigureEvaluate, r))?;
        let replies = grid.send_and_receive(msgs, config.timeout);
        if let Some(m) = strategy
            .aggregate_evaluate(r, replies)
            .map_err(in_phase(Phase::AggregateEvaluate, r))?
        {
            result.evaluate_metrics_clientapp.insert(r, m);
        }
        if let Some(f) = evaluate_fn.as_mut() {
            if let Some(m) = f(r, &arrays).map_err(in_phase(Phase::EvaluateFn, r))? {
                result.evaluate_metrics_serverapp.insert(r, m);
            }
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{Data, Layer};

    /// Two nodes online, a wait bound of `max_waits`, echoing replies.
    struct SmallGrid {
        waits: u32,
        max_waits: u32,
    }

    impl Grid for SmallGrid {
        fn node_ids(&mut self) -> Vec<u64> {
            vec![11, 22]
        }
        fn wait_for_nodes(&mut self) -> bool {
            self.waits += 1;
            self.waits <= self.max_waits
        }
        fn send_and_receive(&mut self, messages: Vec<Message>, _timeout: f64) -> Vec<Reply> {
            messages
                .into_iter()
                .map(|m| {
                    let mut content = (*m.content).clone();
                    let mut metrics = MetricRecord::new();
                    metrics.insert("num-examples", MetricValue::Int(1));
                    content.insert("metrics", Record::Metrics(metrics));
                    content.remove("config");
                    Reply {
                        src_node_id: m.dst_node_id,
                        content: Ok(content),
                    }
                })
                .collect()
        }
    }

    fn model(v: &[f32]) -> ArrayRecord {
        let layer = Layer {
            shape: vec![v.len()],
            data: Data::F32(v.to_vec()),
            half: false,
        };
        [("w", Array::of_layer(&layer))].into_iter().collect()
    }

    /// Deviation `msg-bounded-wait`: Flower would sleep forever here.
    #[test]
    fn too_few_nodes_fail_after_the_bounded_wait() {
        let opts = FedAvgOptions {
            min_available_nodes: 3,
            ..FedAvgOptions::default()
        };
        let mut s = FedAvg::new(opts).unwrap();
        let mut grid = SmallGrid {
            waits: 0,
            max_waits: 4,
        };
        let err = start(&mut s, &mut grid, model(&[1.0]), RunConfig::default(), None).unwrap_err();
        let StrategyError::InPhase {
            phase,
            server_round,
            source,
        } = err
        else {
            panic!("InPhase expected")
        };
        assert_eq!((phase, server_round), (Phase::ConfigureTrain, 1));
        assert!(matches!(
            *source,
            StrategyError::TooFewNodes {
                required: 3,
                online: 2
            }
        ));
        assert_eq!(grid.waits, 5);
        // Enough nodes: the same grid runs to the end.
        let mut s = FedAvg::new(FedAvgOptions::default()).unwrap();
        let r = start(&mut s, &mut grid, model(&[1.0]), RunConfig::default(), None).unwrap();
        assert_eq!(r.train_metrics_clientapp.len(), 3);
    }

    /// Deviation `msg-dp-noise-source`: noise is drawn per wrapper from an
    /// OS-seeded stream, so two wrappers add different noise; zero noise
    /// turns -0.0 into +0.0 as NumPy's `x += 0.0` does.
    #[test]
    fn dp_noise_is_os_seeded_and_zero_noise_clears_negative_zero() {
        let replies = |v: &[f32]| {
            let mut metrics = MetricRecord::new();
            metrics.insert("num-examples", MetricValue::Int(1));
            let mut c = RecordDict::new();
            c.insert("arrays", Record::Arrays(model(v)));
            c.insert("metrics", Record::Metrics(metrics));
            vec![Reply {
                src_node_id: 1,
                content: Ok(c),
            }]
        };
        let run = |nm: f64, v: &[f32]| {
            let inner = Box::new(FedAvg::new(FedAvgOptions::default()).unwrap());
            let o = crate::FixedClippingOptions {
                noise_multiplier: nm,
                clipping_norm: 1.0,
                num_sampled_clients: 1,
            };
            let mut dp = DpWrapper::fixed(inner, false, o).unwrap();
            let (a, _) = dp.aggregate_train(1, replies(v)).unwrap();
            let a = a.unwrap();
            a.get("w").unwrap().layer().unwrap().data
        };
        let Data::F32(z) = run(0.0, &[-0.0, 2.0]) else {
            panic!("f32 expected")
        };
        assert!(z[0] == 0.0 && z[0].is_sign_positive());
        assert_eq!(z[1], 2.0);
        assert_ne!(run(1.0, &[0.0; 8]), run(1.0, &[0.0; 8]));
    }
}
