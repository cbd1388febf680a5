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
    #[serde(with = "losses")]
    pub losses_distributed: Vec<(u64, f64)>,
    /// Centralized evaluation loss per round (round 0 = initial model).
    #[serde(with = "losses")]
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
        Scalar::Double(d) => serde_json::Number::from_f64(*d)
            .map_or_else(|| Value::String(non_finite_name(*d).into()), Value::Number),
        Scalar::Sint64(i) => Value::from(*i),
        Scalar::Uint64(u) => Value::from(*u),
        Scalar::String(s) => Value::String(s.clone()),
    }
}

/// JSON has no NaN or infinities: they are written as the strings
/// `"NaN"`, `"Infinity"`, `"-Infinity"` (the names Python's `json` uses).
fn non_finite_name(v: f64) -> &'static str {
    if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

/// `(round, loss)` lists whose losses may be non-finite (a client may
/// report NaN): numbers when finite, [`non_finite_name`] strings otherwise,
/// so `history.json` and `checkpoint.json` always read back.
mod losses {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub(super) fn serialize<S: Serializer>(v: &[(u64, f64)], s: S) -> Result<S::Ok, S::Error> {
        let as_json: Vec<(u64, Value)> = v
            .iter()
            .map(|&(round, loss)| {
                let value = serde_json::Number::from_f64(loss).map_or_else(
                    || Value::String(super::non_finite_name(loss).into()),
                    Value::Number,
                );
                (round, value)
            })
            .collect();
        as_json.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(u64, f64)>, D::Error> {
        let raw: Vec<(u64, Value)> = Vec::deserialize(d)?;
        raw.into_iter()
            .map(|(round, value)| {
                let loss = match &value {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => match s.as_str() {
                        "NaN" => Some(f64::NAN),
                        "Infinity" => Some(f64::INFINITY),
                        "-Infinity" => Some(f64::NEG_INFINITY),
                        _ => None,
                    },
                    // What earlier versions wrote for a non-finite loss.
                    Value::Null => Some(f64::NAN),
                    _ => None,
                };
                loss.map(|l| (round, l)).ok_or_else(|| {
                    D::Error::custom(format!("round {round}: loss {value} is not a number"))
                })
            })
            .collect()
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
    /// SHA-256 (hex) of the model file this checkpoint belongs to, as
    /// checkpoints before `model_fingerprint` recorded it; still checked on
    /// resume when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// The model file's fingerprint ([`crate::npz_fingerprint`]: its
    /// entries' names, sizes and CRC-32s), set by the store; resume refuses
    /// a model file that does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_fingerprint: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_losses_and_metrics_round_trip() {
        let mut h = History::default();
        h.add_loss_distributed(1, f64::NAN);
        h.add_loss_distributed(2, f64::INFINITY);
        h.add_loss_centralized(0, f64::NEG_INFINITY);
        h.add_loss_centralized(1, 0.25);
        let mut m = Metrics::new();
        m.insert("acc".into(), Scalar::Double(f64::NAN));
        h.add_metrics_distributed(1, &m);
        let text = serde_json::to_string(&h).unwrap();
        assert!(
            text.contains("\"NaN\"") && text.contains("\"-Infinity\""),
            "{text}"
        );
        let back: History = serde_json::from_str(&text).unwrap();
        assert!(back.losses_distributed[0].1.is_nan());
        assert_eq!(back.losses_distributed[1].1, f64::INFINITY);
        assert_eq!(
            back.losses_centralized,
            vec![(0, f64::NEG_INFINITY), (1, 0.25)]
        );
        assert_eq!(back.metrics_distributed["acc"][0].1, "NaN");
        // Files written before this fix held `null`: they read back as NaN.
        let old: History =
            serde_json::from_str(r#"{"losses_distributed":[[1,null]],"losses_centralized":[],"metrics_distributed_fit":{},"metrics_distributed":{},"metrics_centralized":{},"rounds":[]}"#)
                .unwrap();
        assert!(old.losses_distributed[0].1.is_nan());
    }
}
