//! Run history (like Flower's `History`) and checkpoints.

use flower_core::{Metrics, Scalar};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// What happened in one round, besides losses and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round number (1-based).
    pub round: u64,
    /// Fit results aggregated.
    pub fit_results: usize,
    /// Fit failures.
    pub fit_failures: usize,
    /// Evaluate results aggregated.
    pub evaluate_results: usize,
    /// Evaluate failures.
    pub evaluate_failures: usize,
    /// Wall time of the fit phase, seconds.
    pub fit_seconds: f64,
    /// Wall time of the evaluate phase, seconds.
    pub evaluate_seconds: f64,
}

/// Losses and metrics per round, as Flower's `History` records them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Aggregated client evaluation loss per round.
    pub losses_distributed: Vec<(u64, f64)>,
    /// Centralized evaluation loss per round (round 0 = initial model).
    pub losses_centralized: Vec<(u64, f64)>,
    /// Aggregated fit metrics, by name, per round.
    pub metrics_distributed_fit: BTreeMap<String, Vec<(u64, Value)>>,
    /// Aggregated evaluate metrics, by name, per round.
    pub metrics_distributed: BTreeMap<String, Vec<(u64, Value)>>,
    /// Centralized metrics, by name, per round.
    pub metrics_centralized: BTreeMap<String, Vec<(u64, Value)>>,
    /// Counts and timings per round.
    pub rounds: Vec<RoundRecord>,
}

/// A metric value as JSON (bytes become `{"bytes_hex": ...}`).
pub fn scalar_to_json(s: &Scalar) -> Value {
    match s {
        Scalar::Bool(b) => Value::Bool(*b),
        Scalar::Bytes(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            serde_json::json!({ "bytes_hex": hex })
        }
        Scalar::Double(d) => serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number),
        Scalar::Sint64(i) => Value::from(*i),
        Scalar::Uint64(u) => Value::from(*u),
        Scalar::String(s) => Value::String(s.clone()),
    }
}

fn add_metrics(target: &mut BTreeMap<String, Vec<(u64, Value)>>, round: u64, metrics: &Metrics) {
    for (k, v) in metrics {
        target
            .entry(k.clone())
            .or_default()
            .push((round, scalar_to_json(v)));
    }
}

impl History {
    /// Records a distributed (client-side) evaluation loss.
    pub fn add_loss_distributed(&mut self, round: u64, loss: f64) {
        self.losses_distributed.push((round, loss));
    }
    /// Records a centralized evaluation loss.
    pub fn add_loss_centralized(&mut self, round: u64, loss: f64) {
        self.losses_centralized.push((round, loss));
    }
    /// Records aggregated fit metrics.
    pub fn add_metrics_distributed_fit(&mut self, round: u64, metrics: &Metrics) {
        add_metrics(&mut self.metrics_distributed_fit, round, metrics);
    }
    /// Records aggregated evaluate metrics.
    pub fn add_metrics_distributed(&mut self, round: u64, metrics: &Metrics) {
        add_metrics(&mut self.metrics_distributed, round, metrics);
    }
    /// Records centralized metrics.
    pub fn add_metrics_centralized(&mut self, round: u64, metrics: &Metrics) {
        add_metrics(&mut self.metrics_centralized, round, metrics);
    }
}

/// What `--resume` needs to continue a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version of this file.
    pub format_version: u32,
    /// Rounds completed (the model file holds the model after this round).
    pub completed_rounds: u64,
    /// Total rounds the run was started with.
    pub num_rounds: u64,
    /// `tensor_type` of the saved parameters.
    pub tensor_type: String,
    /// Strategy name, checked on resume.
    pub strategy: String,
    /// Strategy state (momentum, optimizer moments, ...).
    pub strategy_state: Value,
    /// History so far.
    pub history: History,
}
