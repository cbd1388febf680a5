//! Python Flower's recorded data (`<workspace>/../shared/golden/strategies`,
//! or `$FLWR_GOLDEN_DIR`) and a fake client manager to replay it; included
//! by the `golden` and `strategy` test binaries (`#[path]`), which both use
//! all of it.

use std::path::{Path, PathBuf};

use flower_strategy::{ClientId, ClientSampler, StrategySpec};
use serde_json::Value;

/// `$FLWR_GOLDEN_DIR`, else `<workspace root>/../shared/golden/strategies`.
pub(crate) fn golden_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLWR_GOLDEN_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden/strategies")
}

pub(crate) fn read_json(path: &Path) -> Value {
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
pub(crate) struct FakeSampler {
    pub(crate) available: usize,
}

impl ClientSampler for FakeSampler {
    fn num_available(&self) -> usize {
        self.available
    }

    fn all(&self) -> Vec<ClientId> {
        (0..self.available as u64).map(ClientId::new).collect()
    }

    fn sample(&mut self, num_clients: usize, min_num_clients: usize) -> Vec<ClientId> {
        if self.available < min_num_clients || num_clients > self.available {
            return Vec::new();
        }
        (0..num_clients as u64).map(ClientId::new).collect()
    }
}

/// Registry name of a Flower class.
pub(crate) fn registry_name(class: &str) -> &'static str {
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
pub(crate) fn spec_for(class: &str, kwargs: &Value, inner: Option<&Value>) -> StrategySpec {
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
