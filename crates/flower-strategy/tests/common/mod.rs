//! Helpers shared by the golden-vector tests.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use flower_core::{Metrics, Scalar};
use flower_strategy::{ClientId, ClientSampler, StrategySpec};
use serde_json::Value;

/// `$FLWR_GOLDEN_DIR`, else `<workspace root>/../shared/golden/strategies`.
pub fn golden_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLWR_GOLDEN_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden/strategies")
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); set FLWR_GOLDEN_DIR to the golden strategies directory",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A client manager with `available` clients (ids 0..available), sampling
/// like Flower's `SimpleClientManager` once enough clients are connected.
#[derive(Debug)]
pub struct FakeSampler {
    pub available: usize,
}

impl ClientSampler for FakeSampler {
    fn num_available(&self) -> usize {
        self.available
    }

    fn all(&self) -> Vec<ClientId> {
        (0..self.available as u64).collect()
    }

    fn sample(&mut self, num_clients: usize, min_num_clients: usize) -> Vec<ClientId> {
        if self.available < min_num_clients || num_clients > self.available {
            return Vec::new();
        }
        (0..num_clients as u64).collect()
    }
}

/// Registry name of a Flower class.
pub fn registry_name(class: &str) -> &'static str {
    match class {
        "FedAvg" => "fedavg",
        "FedAvgM" => "fedavgm",
        "FedProx" => "fedprox",
        "FedOpt" => "fedopt",
        "FedAdagrad" => "fedadagrad",
        "FedAdam" => "fedadam",
        "FedYogi" => "fedyogi",
        "QFedAvg" => "qfedavg",
        "FedMedian" => "fedmedian",
        "FedTrimmedAvg" => "fedtrimmedavg",
        "Krum" => "krum",
        "Bulyan" => "bulyan",
        "FaultTolerantFedAvg" => "fault-tolerant-fedavg",
        "FedAvgAndroid" => "fedavg-android",
        "FedXgbBagging" => "fedxgb-bagging",
        "FedXgbCyclic" => "fedxgb-cyclic",
        "DifferentialPrivacyServerSideFixedClipping" => "dp-server-fixed",
        "DifferentialPrivacyClientSideFixedClipping" => "dp-client-fixed",
        "DifferentialPrivacyServerSideAdaptiveClipping" => "dp-server-adaptive",
        "DifferentialPrivacyClientSideAdaptiveClipping" => "dp-client-adaptive",
        "DPFedAvgFixed" => "dpfedavg-fixed",
        "DPFedAvgAdaptive" => "dpfedavg-adaptive",
        other => panic!("no registry name for Flower class {other}"),
    }
}

/// The spec for a Flower class with its keyword arguments (and, for
/// wrappers, the inner strategy).
pub fn spec_for(class: &str, kwargs: &Value, inner: Option<&Value>) -> StrategySpec {
    let mut spec = StrategySpec::new(registry_name(class));
    if let Some(obj) = kwargs.as_object() {
        for (k, v) in obj {
            spec.options.insert(k.clone(), v.clone());
        }
    }
    if let Some(inner) = inner.filter(|i| !i.is_null()) {
        let inner_spec = spec_for(
            inner["class"].as_str().unwrap_or("FedAvg"),
            &inner["kwargs"],
            None,
        );
        spec.options.insert(
            "strategy".into(),
            serde_json::to_value(inner_spec).unwrap_or(Value::Null),
        );
    }
    spec
}

/// A JSON value as a Flower scalar (ints stay ints).
pub fn scalar(v: &Value) -> Scalar {
    match v {
        Value::Bool(b) => Scalar::Bool(*b),
        Value::String(s) => Scalar::String(s.clone()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Scalar::Sint64(i),
            None => Scalar::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        other => panic!("not a scalar: {other}"),
    }
}

pub fn metrics(v: &Value) -> Metrics {
    v.as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), scalar(v))).collect())
        .unwrap_or_default()
}

/// Compares a scalar map with its expected JSON (floats to relative `rel`).
pub fn compare_map(
    what: &str,
    got: &Metrics,
    expected: &Value,
    rel: f64,
    errors: &mut Vec<String>,
) {
    let Some(exp) = expected.as_object() else {
        errors.push(format!("{what}: expected is not an object: {expected}"));
        return;
    };
    let got_keys: Vec<&String> = got.keys().collect();
    let mut exp_keys: Vec<&String> = exp.keys().collect();
    exp_keys.sort();
    if got_keys != exp_keys {
        errors.push(format!("{what}: keys {got_keys:?}, expected {exp_keys:?}"));
        return;
    }
    for (k, e) in exp {
        let g = &got[k];
        let ok = match (g, e) {
            (Scalar::Bool(a), Value::Bool(b)) => a == b,
            (Scalar::String(a), Value::String(b)) => a == b,
            (Scalar::Sint64(a), Value::Number(b)) if b.is_i64() => Some(*a) == b.as_i64(),
            (Scalar::Uint64(a), Value::Number(b)) if b.is_u64() => Some(*a) == b.as_u64(),
            (Scalar::Double(a), Value::Number(b)) if b.is_f64() => {
                let b = b.as_f64().unwrap_or(f64::NAN);
                (a - b).abs() <= rel * b.abs() || (a.is_nan() && b.is_nan())
            }
            _ => false,
        };
        if !ok {
            errors.push(format!("{what}[{k}]: got {g:?}, expected {e}"));
        }
    }
}
