//! Interim strategy selection for the CLI (FedAvg only) until the strategy
//! crate's registry lands.

use std::collections::BTreeMap;

use flower_core::Parameters;
use flower_strategy::{FedAvg, FedAvgOptions, MetricSelection, Strategy, StrategyError};

/// A strategy name plus options.
#[derive(Debug, Clone, Default)]
pub(crate) struct StrategySpec {
    pub(crate) name: String,
    pub(crate) options: BTreeMap<String, serde_json::Value>,
}

/// Options every strategy gets from the server.
#[derive(Debug, Clone, Default)]
pub(crate) struct CommonOptions {
    pub(crate) seed: u64,
    pub(crate) initial_parameters: Option<Parameters>,
}

pub(crate) fn catalog_help() -> String {
    "  fedavg: fraction_fit, fraction_evaluate, min_fit_clients, min_evaluate_clients, min_available_clients, accept_failures, inplace, evaluate_metrics_aggregation=weighted_average, fit_metrics_aggregation=weighted_average".into()
}

pub(crate) fn build_strategy(
    spec: &StrategySpec,
    common: CommonOptions,
) -> Result<Box<dyn Strategy>, StrategyError> {
    if spec.name != "fedavg" {
        return Err(StrategyError::Config(format!(
            "unknown strategy {:?}",
            spec.name
        )));
    }
    let _ = common.seed;
    let mut o = FedAvgOptions::default();
    let num = |v: &serde_json::Value, k: &str| {
        v.as_f64()
            .ok_or_else(|| StrategyError::Config(format!("{k} must be a number")))
    };
    for (k, v) in &spec.options {
        match k.as_str() {
            "fraction_fit" => o.fraction_fit = num(v, k)?,
            "fraction_evaluate" => o.fraction_evaluate = num(v, k)?,
            "min_fit_clients" => o.min_fit_clients = num(v, k)? as usize,
            "min_evaluate_clients" => o.min_evaluate_clients = num(v, k)? as usize,
            "min_available_clients" => o.min_available_clients = num(v, k)? as usize,
            "accept_failures" => o.accept_failures = v.as_bool().unwrap_or(true),
            "inplace" => o.inplace = v.as_bool().unwrap_or(true),
            "evaluate_metrics_aggregation" => {
                o.evaluate_metrics_aggregation_fn =
                    Some(flower_strategy::weighted_average(MetricSelection::All))
            }
            "fit_metrics_aggregation" => {
                o.fit_metrics_aggregation_fn =
                    Some(flower_strategy::weighted_average(MetricSelection::All))
            }
            other => return Err(StrategyError::Config(format!("unknown option {other:?}"))),
        }
    }
    o.initial_parameters = common.initial_parameters;
    Ok(Box::new(FedAvg::new(o)?))
}
