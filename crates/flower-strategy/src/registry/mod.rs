//! Building strategies by name from configuration (a TOML `[strategy]`
//! table or CLI flags): the name table ([`ENTRIES`]), the option reader
//! ([`options`]) and the help text ([`help`]).
//!
//! ```
//! use flower_strategy::{build_strategy, CommonOptions, StrategySpec};
//! let spec: StrategySpec = serde_json::from_value(serde_json::json!({
//!     "name": "fedadam",
//!     "options": { "eta": 0.05, "min_fit_clients": 3, "fit_config": { "local_epochs": 2 } }
//! }))?;
//! let strategy = build_strategy(&spec, CommonOptions::default())?;
//! assert_eq!(strategy.name(), "FedAdam");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod help;
mod msg;
mod options;
mod table;

use std::collections::BTreeMap;
use std::fmt;

use flower_core::Parameters;
use serde_json::Value;

use crate::aggregate::DynComposed;
use crate::callbacks::{ConfigFn, EvaluateFn, MetricsAggregationFn, Shown, XgbEvaluateFn};
use crate::{FedAvgOptions, Strategy, StrategyError};
use help::{Opt, COMMON};
use options::Ctx;
use table::ENTRIES;

pub use help::catalog_help;
pub use msg::{build_msg_strategy, msg_catalog_help, msg_strategy_names, MsgBuild};

/// A strategy by name with its options (Flower's constructor keyword
/// arguments, plus the CLI-level callbacks `fit_config`, `evaluate_config`,
/// `fit_metrics`, `evaluate_metrics`). Deserializes from a TOML table:
///
/// ```toml
/// [strategy]
/// name = "fedavg"
/// [strategy.options]
/// fraction_fit = 0.5
/// fit_config = { local_epochs = 2 }
/// fit_metrics = ["accuracy"]
/// ```
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategySpec {
    /// Registry name (`fedavg`, `fedadam`, `dp-server-fixed`, ...; see
    /// [`catalog_help`]).
    pub name: String,
    /// Options by name.
    #[serde(default)]
    pub options: BTreeMap<String, Value>,
}

impl StrategySpec {
    /// A spec with no options.
    pub fn new(name: impl Into<String>) -> Self {
        StrategySpec {
            name: name.into(),
            options: BTreeMap::new(),
        }
    }

    /// Adds an option.
    #[must_use]
    pub fn option(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.options.insert(key.into(), value.into());
        self
    }
}

/// Rust callbacks for strategies built by name. They are given to the
/// innermost strategy (a DP wrapper's `strategy`). A callback given here
/// and the corresponding option (`fit_config`, ...) together are an error.
#[derive(Default)]
pub struct Callbacks {
    /// Centralized evaluation (`evaluate_fn`).
    pub evaluate_fn: Option<EvaluateFn>,
    /// `on_fit_config_fn`.
    pub on_fit_config_fn: Option<ConfigFn>,
    /// `on_evaluate_config_fn`.
    pub on_evaluate_config_fn: Option<ConfigFn>,
    /// `fit_metrics_aggregation_fn`.
    pub fit_metrics_aggregation_fn: Option<MetricsAggregationFn>,
    /// `evaluate_metrics_aggregation_fn`.
    pub evaluate_metrics_aggregation_fn: Option<MetricsAggregationFn>,
    /// FedXgbBagging's `evaluate_function` (receives the raw model).
    pub xgb_evaluate_fn: Option<XgbEvaluateFn>,
}

impl fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Callbacks")
            .field("evaluate_fn", &Shown(&self.evaluate_fn))
            .field("on_fit_config_fn", &Shown(&self.on_fit_config_fn))
            .field("on_evaluate_config_fn", &Shown(&self.on_evaluate_config_fn))
            .field(
                "fit_metrics_aggregation_fn",
                &Shown(&self.fit_metrics_aggregation_fn),
            )
            .field(
                "evaluate_metrics_aggregation_fn",
                &Shown(&self.evaluate_metrics_aggregation_fn),
            )
            .field("xgb_evaluate_fn", &Shown(&self.xgb_evaluate_fn))
            .finish()
    }
}

/// What [`build_strategy`] takes besides the spec.
#[derive(Debug, Default)]
pub struct CommonOptions {
    /// Seed of the DP wrappers' noise (`None`: from the OS).
    pub seed: Option<u64>,
    /// Initial global model (`initial_parameters`); required by nothing
    /// (the FedOpt family falls back to the first global model).
    pub initial_parameters: Option<Parameters>,
    /// Rust callbacks.
    pub callbacks: Callbacks,
}

/// The strategy a wrapper wraps when its `strategy` option is not set.
const DEFAULT_INNER: &str = "fedavg";

/// Which FedAvg defaults an entry starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// Flower's FedAvg defaults.
    FedAvg,
    /// FedAvg's defaults with the minimum client counts at 1 (Flower's
    /// QFedAvg and FaultTolerantFedAvg).
    FewClients,
    /// A wrapper: the common options go to the wrapped strategy.
    Wrapper,
}

impl Family {
    fn defaults(self) -> FedAvgOptions {
        match self {
            Family::FewClients => FedAvgOptions::with_min_clients(1),
            Family::FedAvg | Family::Wrapper => FedAvgOptions::default(),
        }
    }
}

type Builder = fn(&mut Ctx<'_>) -> Result<DynComposed, StrategyError>;

/// One registry name.
struct Entry {
    name: &'static str,
    class: &'static str,
    summary: &'static str,
    family: Family,
    /// The strategy's own options (besides [`COMMON`]).
    options: &'static [Opt],
    build: Builder,
}

/// The options `entry` takes: the common ones and its own.
fn valid_options(entry: &Entry) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = COMMON.iter().map(|o| o.name).collect();
    names.extend(entry.options.iter().map(|o| o.name));
    names
}

/// Registry names, in catalog order.
pub fn strategy_names() -> Vec<&'static str> {
    ENTRIES.iter().map(|e| e.name).collect()
}

/// Builds the strategy `spec` names with its options.
///
/// Every strategy takes the common FedAvg options (`min_fit_clients`,
/// `fraction_fit`, `accept_failures`, `fit_config`, ...). A wrapper (`dp-*`,
/// `dpfedavg-*`) passes those given at its top level on to the strategy it
/// wraps; the same option set to different values at the top level and in
/// the wrapped strategy's options is an error.
///
/// Unknown names or options, options of the wrong type and invalid values
/// are [`StrategyError::Config`] errors naming the valid choices.
pub fn build_strategy(
    spec: &StrategySpec,
    common: CommonOptions,
) -> Result<Box<dyn Strategy>, StrategyError> {
    Ok(Box::new(build_composed(spec, common)?))
}

/// [`build_strategy`], keeping the strategy's type open for a wrapper.
fn build_composed(
    spec: &StrategySpec,
    common: CommonOptions,
) -> Result<DynComposed, StrategyError> {
    let name = spec.name.trim().to_ascii_lowercase();
    let Some(entry) = ENTRIES.iter().find(|e| e.name == name) else {
        return Err(StrategyError::Config(format!(
            "unknown strategy {:?}; valid strategies: {}",
            spec.name,
            strategy_names().join(", ")
        )));
    };
    let valid = valid_options(entry);
    let unknown: Vec<&str> = spec
        .options
        .keys()
        .map(String::as_str)
        .filter(|k| !valid.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(StrategyError::Config(format!(
            "{}: unknown option(s) {}; valid options: {}",
            entry.name,
            unknown.join(", "),
            valid.join(", ")
        )));
    }
    let mut ctx = Ctx {
        name: entry.name,
        family: entry.family,
        options: &spec.options,
        common,
    };
    (entry.build)(&mut ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_builds_with_required_options() {
        for name in strategy_names() {
            let mut spec = StrategySpec::new(name);
            match name {
                "fedprox" => spec = spec.option("proximal_mu", 0.1),
                "bulyan" => spec = spec.option("to_keep", 0),
                "dp-server-fixed" | "dp-client-fixed" => {
                    spec = spec
                        .option("noise_multiplier", 0.0)
                        .option("clipping_norm", 1.0)
                        .option("num_sampled_clients", 2)
                }
                "dp-server-adaptive" | "dp-client-adaptive" => {
                    spec = spec
                        .option("noise_multiplier", 0.0)
                        .option("num_sampled_clients", 2)
                }
                "dpfedavg-fixed" => {
                    spec = spec
                        .option("num_sampled_clients", 2)
                        .option("clip_norm", 1.0)
                }
                "dpfedavg-adaptive" => spec = spec.option("num_sampled_clients", 100),
                _ => {}
            }
            let s = build_strategy(&spec, CommonOptions::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!s.name().is_empty());
        }
    }

    #[test]
    fn unknown_names_and_options_list_valid_ones() {
        let e = build_strategy(&StrategySpec::new("fedsomething"), CommonOptions::default())
            .unwrap_err();
        assert!(e.to_string().contains("fedavg, fedavgm"), "{e}");
        let e = build_strategy(
            &StrategySpec::new("fedavg").option("etaa", 1.0),
            CommonOptions::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("etaa") && e.to_string().contains("fraction_fit"),
            "{e}"
        );
        let e = build_strategy(
            &StrategySpec::new("fedavg").option("min_fit_clients", -1),
            CommonOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(e, StrategyError::Config(_)));
        let e =
            build_strategy(&StrategySpec::new("fedprox"), CommonOptions::default()).unwrap_err();
        assert!(e.to_string().contains("proximal_mu"), "{e}");
    }

    #[test]
    fn spec_from_toml_like_json() {
        let spec: StrategySpec = serde_json::from_value(serde_json::json!({
            "name": "dp-server-fixed",
            "options": {
                "noise_multiplier": 0.5, "clipping_norm": 1, "num_sampled_clients": 4,
                "strategy": { "name": "fedavgm", "options": { "server_momentum": 0.9 } }
            }
        }))
        .unwrap();
        let s = build_strategy(
            &spec,
            CommonOptions {
                seed: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.name(), "DifferentialPrivacyServerSideFixedClipping");
    }

    fn dp_spec(name: &str) -> StrategySpec {
        StrategySpec::new(name)
            .option("noise_multiplier", 0.0)
            .option("clipping_norm", 1.0)
            .option("num_sampled_clients", 2)
    }

    #[test]
    fn wrappers_pass_common_options_to_the_wrapped_strategy() {
        for name in ["dp-server-fixed", "dp-client-fixed"] {
            let spec = dp_spec(name)
                .option("min_fit_clients", 5)
                .option("min_available_clients", 7)
                .option("fraction_evaluate", 0.0);
            let s = build_composed(&spec, CommonOptions::default()).unwrap();
            assert_eq!(s.options().min_fit_clients, 5, "{name}");
            assert_eq!(s.min_available_clients(), 7, "{name}");
            assert_eq!(s.options().fraction_evaluate, 0.0, "{name}");
        }
        // Through two wrappers, and next to the wrapped strategy's own options.
        let inner = dp_spec("dp-client-fixed").option(
            "strategy",
            serde_json::json!({ "name": "fedavgm", "options": { "server_momentum": 0.5 } }),
        );
        let spec = dp_spec("dp-server-fixed")
            .option("min_fit_clients", 4)
            .option("strategy", serde_json::to_value(inner).unwrap());
        let s = build_composed(&spec, CommonOptions::default()).unwrap();
        assert_eq!(s.options().min_fit_clients, 4);
        let spec = StrategySpec::new("dpfedavg-adaptive")
            .option("num_sampled_clients", 100)
            .option("accept_failures", false);
        let s = build_composed(&spec, CommonOptions::default()).unwrap();
        assert!(!s.options().accept_failures);
    }

    #[test]
    fn nested_common_options_still_work_and_conflicts_are_errors() {
        let nested = serde_json::json!({ "name": "fedavg", "options": { "min_fit_clients": 3 } });
        let s = build_composed(
            &dp_spec("dp-client-fixed").option("strategy", nested.clone()),
            CommonOptions::default(),
        )
        .unwrap();
        assert_eq!(s.options().min_fit_clients, 3);
        // The same value twice is accepted.
        let s = build_composed(
            &dp_spec("dp-client-fixed")
                .option("strategy", nested.clone())
                .option("min_fit_clients", 3),
            CommonOptions::default(),
        )
        .unwrap();
        assert_eq!(s.options().min_fit_clients, 3);
        let e = build_composed(
            &dp_spec("dp-client-fixed")
                .option("strategy", nested)
                .option("min_fit_clients", 4),
            CommonOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(e, StrategyError::Config(ref m) if m.contains("min_fit_clients") && m.contains("dp-client-fixed")),
            "{e}"
        );
    }

    #[test]
    fn few_clients_defaults() {
        let s = build_composed(&StrategySpec::new("qfedavg"), CommonOptions::default()).unwrap();
        assert_eq!(s.min_available_clients(), 1);
        let s = build_composed(&StrategySpec::new("fedavg"), CommonOptions::default()).unwrap();
        assert_eq!(s.min_available_clients(), 2);
    }
}
