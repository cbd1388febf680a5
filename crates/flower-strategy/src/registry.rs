//! Building strategies by name from configuration (a TOML `[strategy]`
//! table or CLI flags), and the help text listing them.
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

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use flower_core::{Config, Parameters, Scalar};
use serde_json::Value;

use crate::callbacks::{
    fixed_config, weighted_average, ConfigFn, EvaluateFn, MetricSelection, MetricsAggregationFn,
    Shown, XgbEvaluateFn,
};
use crate::dp::{
    AdaptiveClippingOptions, DpClientSideAdaptiveClipping, DpClientSideFixedClipping,
    DpFedAvgAdaptive, DpFedAvgAdaptiveOptions, DpFedAvgFixed, DpServerSideAdaptiveClipping,
    DpServerSideFixedClipping,
};
use crate::fedopt::{FedOpt, FedOptKind, FedOptOptions};
use crate::{
    Bulyan, FaultTolerantFedAvg, FedAvg, FedAvgAndroid, FedAvgM, FedAvgOptions, FedMedian, FedProx,
    FedTrimmedAvg, FedXgbBagging, FedXgbCyclic, Krum, QFedAvg, Strategy, StrategyError,
};

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

/// One documented option.
struct Opt {
    name: &'static str,
    default: &'static str,
    help: &'static str,
}

const fn opt(name: &'static str, default: &'static str, help: &'static str) -> Opt {
    Opt {
        name,
        default,
        help,
    }
}

/// FedAvg's constructor arguments (min-client defaults are per entry).
const COMMON: &[Opt] = &[
    opt(
        "fraction_fit",
        "1.0",
        "fraction of available clients sampled for fit",
    ),
    opt(
        "fraction_evaluate",
        "1.0",
        "fraction of available clients sampled for evaluate (0 disables it)",
    ),
    opt(
        "min_fit_clients",
        "{min}",
        "minimum number of clients sampled for fit",
    ),
    opt(
        "min_evaluate_clients",
        "{min}",
        "minimum number of clients sampled for evaluate",
    ),
    opt(
        "min_available_clients",
        "{min}",
        "clients that must be connected before a round starts",
    ),
    opt(
        "accept_failures",
        "true",
        "aggregate rounds that had failures",
    ),
    opt(
        "fit_config",
        "{}",
        "table sent as fit config every round, plus server_round",
    ),
    opt(
        "evaluate_config",
        "{}",
        "table sent as evaluate config every round, plus server_round",
    ),
    opt(
        "fit_metrics",
        "none",
        "\"all\" or a list of fit metrics to average (weighted by num_examples)",
    ),
    opt(
        "evaluate_metrics",
        "none",
        "\"all\" or a list of evaluate metrics to average (weighted by num_examples)",
    ),
];

const INPLACE: Opt = opt(
    "inplace",
    "true",
    "in-place weighted mean (false: Flower's plain `aggregate`)",
);
const INNER: Opt = opt(
    "strategy",
    "{ name = \"fedavg\" }",
    "wrapped strategy: { name, options } or a name",
);

const NUM_SAMPLED_CLIENTS: Opt = opt(
    "num_sampled_clients",
    "required",
    "clients sampled per round (n_s)",
);
const NOISE_MULTIPLIER: Opt = opt("noise_multiplier", "required", "noise multiplier z");
const DPFEDAVG_NOISE_MULTIPLIER: Opt = opt("noise_multiplier", "1.0", "noise multiplier");
const SERVER_SIDE_NOISING: Opt = opt(
    "server_side_noising",
    "true",
    "false: clients are told dpfedavg_noise_stddev",
);
const CLIP_NORM_LR: Opt = opt("clip_norm_lr", "0.2", "learning rate of the clipping norm");
const NUM_MALICIOUS_CLIENTS: Opt = opt(
    "num_malicious_clients",
    "0",
    "assumed number of malicious clients f",
);

type Builder = fn(&mut Ctx<'_>) -> Result<Box<dyn Strategy>, StrategyError>;

struct Entry {
    name: &'static str,
    class: &'static str,
    summary: &'static str,
    /// `Some(min clients default)` for FedAvg-derived strategies (which take
    /// [`COMMON`]); `None` for wrappers.
    common: Option<usize>,
    options: &'static [Opt],
    build: Builder,
}

const DP_ADAPTIVE: &[Opt] = &[
    NOISE_MULTIPLIER,
    NUM_SAMPLED_CLIENTS,
    opt("initial_clipping_norm", "0.1", "initial clipping norm"),
    opt(
        "target_clipped_quantile",
        "0.5",
        "target fraction of clipped updates",
    ),
    CLIP_NORM_LR,
    opt(
        "clipped_count_stddev",
        "n_s/20 if z > 0 else 0",
        "stddev of the clipped-count noise",
    ),
    INNER,
];

const DP_FIXED: &[Opt] = &[
    NOISE_MULTIPLIER,
    opt("clipping_norm", "required", "clipping norm C"),
    NUM_SAMPLED_CLIENTS,
    INNER,
];

const ENTRIES: &[Entry] = &[
    Entry {
        name: "fedavg",
        class: "FedAvg",
        summary: "weighted average of the clients' models",
        common: Some(2),
        options: &[INPLACE],
        build: |c| Ok(Box::new(FedAvg::new(c.fedavg_options(true)?)?)),
    },
    Entry {
        name: "fedavgm",
        class: "FedAvgM",
        summary: "FedAvg with server learning rate and momentum",
        common: Some(2),
        options: &[
            opt("server_learning_rate", "1.0", "server learning rate"),
            opt("server_momentum", "0.0", "server momentum"),
        ],
        build: |c| {
            let o = c.fedavg_options(false)?;
            Ok(Box::new(FedAvgM::new(
                o,
                c.f64_or("server_learning_rate", 1.0)?,
                c.f64_or("server_momentum", 0.0)?,
            )?))
        },
    },
    Entry {
        name: "fedprox",
        class: "FedProx",
        summary: "FedAvg sending proximal_mu to clients",
        common: Some(2),
        options: &[opt(
            "proximal_mu",
            "required",
            "weight of the proximal term",
        )],
        build: |c| {
            let o = c.fedavg_options(false)?;
            Ok(Box::new(FedProx::new(o, c.f64_required("proximal_mu")?)?))
        },
    },
    Entry {
        name: "fedopt",
        class: "FedOpt",
        summary: "FedOpt base class (in-place FedAvg keeping server weights)",
        common: Some(2),
        options: FEDOPT_OPTIONS,
        build: |c| c.fedopt(FedOptKind::Base),
    },
    Entry {
        name: "fedadagrad",
        class: "FedAdagrad",
        summary: "adaptive server optimizer: Adagrad",
        common: Some(2),
        options: FEDADAGRAD_OPTIONS,
        build: |c| c.fedopt(FedOptKind::Adagrad),
    },
    Entry {
        name: "fedadam",
        class: "FedAdam",
        summary: "adaptive server optimizer: Adam (returns f64 models)",
        common: Some(2),
        options: FEDADAM_OPTIONS,
        build: |c| c.fedopt(FedOptKind::Adam),
    },
    Entry {
        name: "fedyogi",
        class: "FedYogi",
        summary: "adaptive server optimizer: Yogi",
        common: Some(2),
        options: FEDYOGI_OPTIONS,
        build: |c| c.fedopt(FedOptKind::Yogi),
    },
    Entry {
        name: "qfedavg",
        class: "QFedAvg",
        summary: "q-fair FedAvg (needs a server-side evaluate_fn)",
        common: Some(1),
        options: &[
            opt("q_param", "0.2", "fairness parameter q"),
            opt("qffl_learning_rate", "0.1", "q-FFL learning rate"),
        ],
        build: |c| {
            let o = c.fedavg_options(false)?;
            Ok(Box::new(QFedAvg::new(
                o,
                c.f64_or("q_param", 0.2)?,
                c.f64_or("qffl_learning_rate", 0.1)?,
            )?))
        },
    },
    Entry {
        name: "fedmedian",
        class: "FedMedian",
        summary: "coordinate-wise median",
        common: Some(2),
        options: &[],
        build: |c| Ok(Box::new(FedMedian::new(c.fedavg_options(false)?)?)),
    },
    Entry {
        name: "fedtrimmedavg",
        class: "FedTrimmedAvg",
        summary: "coordinate-wise trimmed mean",
        common: Some(2),
        options: &[opt("beta", "0.2", "fraction cut at each end, in [0, 0.5)")],
        build: |c| {
            let o = c.fedavg_options(false)?;
            Ok(Box::new(FedTrimmedAvg::new(o, c.f64_or("beta", 0.2)?)?))
        },
    },
    Entry {
        name: "krum",
        class: "Krum",
        summary: "Krum; MultiKrum with num_clients_to_keep > 0",
        common: Some(2),
        options: &[
            NUM_MALICIOUS_CLIENTS,
            opt(
                "num_clients_to_keep",
                "0",
                "MultiKrum: number of best clients averaged (0: Krum)",
            ),
        ],
        build: |c| {
            let o = c.fedavg_options(false)?;
            Ok(Box::new(Krum::new(
                o,
                c.usize_or("num_malicious_clients", 0)?,
                c.usize_or("num_clients_to_keep", 0)?,
            )?))
        },
    },
    Entry {
        name: "bulyan",
        class: "Bulyan",
        summary: "Bulyan over Krum (needs 4f+3 results)",
        common: Some(2),
        options: &[
            NUM_MALICIOUS_CLIENTS,
            opt(
                "to_keep",
                "required (0)",
                "Krum keyword; Flower requires to_keep = 0",
            ),
            opt(
                "first_aggregation_rule",
                "\"krum\"",
                "first rule (only krum exists)",
            ),
        ],
        build: |c| {
            if let Some(rule) = c.get("first_aggregation_rule") {
                if rule.as_str() != Some("krum") {
                    return Err(StrategyError::Config(format!(
                        "bulyan: first_aggregation_rule must be \"krum\", got {rule}"
                    )));
                }
            }
            let o = c.fedavg_options(false)?;
            Ok(Box::new(Bulyan::new(
                o,
                c.usize_or("num_malicious_clients", 0)?,
                c.usize_opt("to_keep")?,
            )?))
        },
    },
    Entry {
        name: "fault-tolerant-fedavg",
        class: "FaultTolerantFedAvg",
        summary: "FedAvg aggregating only when enough clients answered",
        common: Some(1),
        options: &[
            opt(
                "min_completion_rate_fit",
                "0.5",
                "minimum fraction of fit results",
            ),
            opt(
                "min_completion_rate_evaluate",
                "0.5",
                "minimum fraction of evaluate results",
            ),
        ],
        build: |c| {
            let o = c.fedavg_options(false)?;
            Ok(Box::new(FaultTolerantFedAvg::new(
                o,
                c.f64_or("min_completion_rate_fit", 0.5)?,
                c.f64_or("min_completion_rate_evaluate", 0.5)?,
            )?))
        },
    },
    Entry {
        name: "fedavg-android",
        class: "FedAvgAndroid",
        summary: "FedAvg over raw float32 tensors (Android clients)",
        common: Some(2),
        options: &[],
        build: |c| Ok(Box::new(FedAvgAndroid::new(c.fedavg_options(false)?)?)),
    },
    Entry {
        name: "fedxgb-bagging",
        class: "FedXgbBagging",
        summary: "XGBoost tree bagging",
        common: Some(2),
        options: &[],
        build: |c| {
            let o = c.fedavg_options(false)?;
            let eval = c.common.callbacks.xgb_evaluate_fn.take();
            Ok(Box::new(FedXgbBagging::new(o, eval)?))
        },
    },
    Entry {
        name: "fedxgb-cyclic",
        class: "FedXgbCyclic",
        summary: "XGBoost cyclic training (one client per round)",
        common: Some(2),
        options: &[],
        build: |c| Ok(Box::new(FedXgbCyclic::new(c.fedavg_options(false)?)?)),
    },
    Entry {
        name: "dp-server-fixed",
        class: "DifferentialPrivacyServerSideFixedClipping",
        summary: "central DP, server-side fixed clipping",
        common: None,
        options: DP_FIXED,
        build: |c| c.dp_fixed(DpServerSideFixedClipping::new),
    },
    Entry {
        name: "dp-client-fixed",
        class: "DifferentialPrivacyClientSideFixedClipping",
        summary: "central DP, client-side fixed clipping",
        common: None,
        options: DP_FIXED,
        build: |c| c.dp_fixed(DpClientSideFixedClipping::new),
    },
    Entry {
        name: "dp-server-adaptive",
        class: "DifferentialPrivacyServerSideAdaptiveClipping",
        summary: "central DP, server-side adaptive clipping",
        common: None,
        options: DP_ADAPTIVE,
        build: |c| c.dp_adaptive(DpServerSideAdaptiveClipping::new),
    },
    Entry {
        name: "dp-client-adaptive",
        class: "DifferentialPrivacyClientSideAdaptiveClipping",
        summary: "central DP, client-side adaptive clipping",
        common: None,
        options: DP_ADAPTIVE,
        build: |c| c.dp_adaptive(DpClientSideAdaptiveClipping::new),
    },
    Entry {
        name: "dpfedavg-fixed",
        class: "DPFedAvgFixed",
        summary: "deprecated DP-FedAvg, fixed clipping",
        common: None,
        options: &[
            NUM_SAMPLED_CLIENTS,
            opt("clip_norm", "required", "clipping norm"),
            DPFEDAVG_NOISE_MULTIPLIER,
            SERVER_SIDE_NOISING,
            INNER,
        ],
        build: |c| {
            let inner = c.inner()?;
            let seed = c.common.seed;
            Ok(Box::new(DpFedAvgFixed::new(
                inner,
                c.usize_required("num_sampled_clients")?,
                c.f64_required("clip_norm")?,
                c.f64_or("noise_multiplier", 1.0)?,
                c.bool_or("server_side_noising", true)?,
                seed,
            )?))
        },
    },
    Entry {
        name: "dpfedavg-adaptive",
        class: "DPFedAvgAdaptive",
        summary: "deprecated DP-FedAvg, adaptive clipping",
        common: None,
        options: &[
            NUM_SAMPLED_CLIENTS,
            opt("init_clip_norm", "0.1", "initial clipping norm"),
            DPFEDAVG_NOISE_MULTIPLIER,
            SERVER_SIDE_NOISING,
            CLIP_NORM_LR,
            opt(
                "clip_norm_target_quantile",
                "0.5",
                "target quantile of unclipped updates",
            ),
            opt(
                "clip_count_stddev",
                "n_s/20 if z > 0 else 0",
                "stddev of the count noise",
            ),
            INNER,
        ],
        build: |c| {
            let inner = c.inner()?;
            let seed = c.common.seed;
            let o = DpFedAvgAdaptiveOptions {
                init_clip_norm: c.f64_or("init_clip_norm", 0.1)?,
                noise_multiplier: c.f64_or("noise_multiplier", 1.0)?,
                server_side_noising: c.bool_or("server_side_noising", true)?,
                clip_norm_lr: c.f64_or("clip_norm_lr", 0.2)?,
                clip_norm_target_quantile: c.f64_or("clip_norm_target_quantile", 0.5)?,
                clip_count_stddev: c.f64_opt("clip_count_stddev")?,
            };
            Ok(Box::new(DpFedAvgAdaptive::new(
                inner,
                c.usize_required("num_sampled_clients")?,
                o,
                seed,
            )?))
        },
    },
];

/// The FedOpt family's options, with each strategy's defaults.
const fn eta(default: &'static str) -> Opt {
    opt("eta", default, "server learning rate")
}
const fn eta_l(default: &'static str) -> Opt {
    opt("eta_l", default, "client learning rate (stored, unused)")
}
const fn beta_1(default: &'static str) -> Opt {
    opt("beta_1", default, "first-moment decay")
}
const fn beta_2(default: &'static str) -> Opt {
    opt("beta_2", default, "second-moment decay")
}
const fn tau(default: &'static str) -> Opt {
    opt("tau", default, "adaptivity")
}

const FEDOPT_OPTIONS: &[Opt] = &[
    eta("0.1"),
    eta_l("0.1"),
    beta_1("0.0"),
    beta_2("0.0"),
    tau("1e-9"),
];
const FEDADAGRAD_OPTIONS: &[Opt] = &[eta("0.1"), eta_l("0.1"), tau("1e-9")];
const FEDADAM_OPTIONS: &[Opt] = &[
    eta("0.1"),
    eta_l("0.1"),
    beta_1("0.9"),
    beta_2("0.99"),
    tau("1e-9"),
];
const FEDYOGI_OPTIONS: &[Opt] = &[
    eta("0.01"),
    eta_l("0.0316"),
    beta_1("0.9"),
    beta_2("0.99"),
    tau("0.001"),
];

/// `new` of a fixed-clipping DP wrapper: `(inner, noise_multiplier,
/// clipping_norm, num_sampled_clients, seed)`.
type DpFixedNew<S> =
    fn(Box<dyn Strategy>, f64, f64, usize, Option<u64>) -> Result<S, StrategyError>;
/// `new` of an adaptive-clipping DP wrapper: `(inner, noise_multiplier,
/// num_sampled_clients, options, seed)`.
type DpAdaptiveNew<S> = fn(
    Box<dyn Strategy>,
    f64,
    usize,
    AdaptiveClippingOptions,
    Option<u64>,
) -> Result<S, StrategyError>;

/// Build context: the options being read and the caller's common options.
struct Ctx<'a> {
    entry: &'static Entry,
    options: &'a BTreeMap<String, Value>,
    common: CommonOptions,
}

fn scalar_from_json(key: &str, v: &Value) -> Result<Scalar, StrategyError> {
    Ok(match v {
        Value::Bool(b) => Scalar::Bool(*b),
        Value::String(s) => Scalar::String(s.clone()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Scalar::Sint64(i)
            } else if let Some(u) = n.as_u64() {
                Scalar::Uint64(u)
            } else {
                Scalar::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        _ => {
            return Err(StrategyError::Config(format!(
                "config value {key:?} must be a bool, number or string, got {v}"
            )))
        }
    })
}

fn config_from_json(name: &str, v: &Value) -> Result<Config, StrategyError> {
    let obj = v
        .as_object()
        .ok_or_else(|| StrategyError::Config(format!("{name} must be a table, got {v}")))?;
    obj.iter()
        .map(|(k, v)| Ok((k.clone(), scalar_from_json(k, v)?)))
        .collect()
}

fn metric_selection(name: &str, v: &Value) -> Result<Option<MetricSelection>, StrategyError> {
    match v {
        Value::String(s) if s == "all" => Ok(Some(MetricSelection::All)),
        Value::String(s) if s == "none" => Ok(None),
        Value::Bool(false) | Value::Null => Ok(None),
        Value::Bool(true) => Ok(Some(MetricSelection::All)),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(|keys| Some(MetricSelection::Named(keys)))
            .ok_or_else(|| {
                StrategyError::Config(format!("{name} must list metric names, got {v}"))
            }),
        _ => Err(StrategyError::Config(format!(
            "{name} must be \"all\", \"none\" or a list of metric names, got {v}"
        ))),
    }
}

impl Ctx<'_> {
    fn err(&self, m: String) -> StrategyError {
        StrategyError::Config(format!("{}: {m}", self.entry.name))
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.options.get(key)
    }

    fn f64_opt(&self, key: &str) -> Result<Option<f64>, StrategyError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("{key} must be a number, got {v}"))),
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64, StrategyError> {
        Ok(self.f64_opt(key)?.unwrap_or(default))
    }

    fn f64_required(&self, key: &str) -> Result<f64, StrategyError> {
        self.f64_opt(key)?
            .ok_or_else(|| self.err(format!("option {key} is required")))
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>, StrategyError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|u| usize::try_from(u).ok())
                .map(Some)
                .ok_or_else(|| self.err(format!("{key} must be a non-negative integer, got {v}"))),
        }
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize, StrategyError> {
        Ok(self.usize_opt(key)?.unwrap_or(default))
    }

    fn usize_required(&self, key: &str) -> Result<usize, StrategyError> {
        self.usize_opt(key)?
            .ok_or_else(|| self.err(format!("option {key} is required")))
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, StrategyError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(format!("{key} must be true or false, got {v}"))),
        }
    }

    /// FedAvgOptions from the common options, callbacks and initial parameters.
    fn fedavg_options(&mut self, takes_inplace: bool) -> Result<FedAvgOptions, StrategyError> {
        let min = self.entry.common.unwrap_or(2);
        let mut o = FedAvgOptions::with_min_clients(min);
        o.fraction_fit = self.f64_or("fraction_fit", 1.0)?;
        o.fraction_evaluate = self.f64_or("fraction_evaluate", 1.0)?;
        o.min_fit_clients = self.usize_or("min_fit_clients", min)?;
        o.min_evaluate_clients = self.usize_or("min_evaluate_clients", min)?;
        o.min_available_clients = self.usize_or("min_available_clients", min)?;
        o.accept_failures = self.bool_or("accept_failures", true)?;
        if takes_inplace {
            o.inplace = self.bool_or("inplace", true)?;
        }
        o.initial_parameters = self.common.initial_parameters.take();
        let cb = &mut self.common.callbacks;
        o.evaluate_fn = cb.evaluate_fn.take();
        o.on_fit_config_fn = cb.on_fit_config_fn.take();
        o.on_evaluate_config_fn = cb.on_evaluate_config_fn.take();
        o.fit_metrics_aggregation_fn = cb.fit_metrics_aggregation_fn.take();
        o.evaluate_metrics_aggregation_fn = cb.evaluate_metrics_aggregation_fn.take();
        let both = |name: &str| {
            self.err(format!(
                "both the option {name} and a callback for it were given"
            ))
        };
        if let Some(v) = self.get("fit_config") {
            if o.on_fit_config_fn.is_some() {
                return Err(both("fit_config"));
            }
            o.on_fit_config_fn = Some(fixed_config(config_from_json("fit_config", v)?));
        }
        if let Some(v) = self.get("evaluate_config") {
            if o.on_evaluate_config_fn.is_some() {
                return Err(both("evaluate_config"));
            }
            o.on_evaluate_config_fn = Some(fixed_config(config_from_json("evaluate_config", v)?));
        }
        if let Some(v) = self.get("fit_metrics") {
            if o.fit_metrics_aggregation_fn.is_some() {
                return Err(both("fit_metrics"));
            }
            o.fit_metrics_aggregation_fn =
                metric_selection("fit_metrics", v)?.map(weighted_average);
        }
        if let Some(v) = self.get("evaluate_metrics") {
            if o.evaluate_metrics_aggregation_fn.is_some() {
                return Err(both("evaluate_metrics"));
            }
            o.evaluate_metrics_aggregation_fn =
                metric_selection("evaluate_metrics", v)?.map(weighted_average);
        }
        Ok(o)
    }

    fn fedopt(&mut self, kind: FedOptKind) -> Result<Box<dyn Strategy>, StrategyError> {
        let o = self.fedavg_options(false)?;
        let d = FedOptOptions::defaults(kind);
        let hp = FedOptOptions {
            eta: self.f64_or("eta", d.eta)?,
            eta_l: self.f64_or("eta_l", d.eta_l)?,
            beta_1: self.f64_or("beta_1", d.beta_1)?,
            beta_2: self.f64_or("beta_2", d.beta_2)?,
            tau: self.f64_or("tau", d.tau)?,
        };
        Ok(Box::new(FedOpt::new(kind, o, hp)?))
    }

    /// Builds `dp-server-fixed` / `dp-client-fixed` with `new`.
    fn dp_fixed<S: Strategy + 'static>(
        &mut self,
        new: DpFixedNew<S>,
    ) -> Result<Box<dyn Strategy>, StrategyError> {
        let inner = self.inner()?;
        let seed = self.common.seed;
        Ok(Box::new(new(
            inner,
            self.f64_required("noise_multiplier")?,
            self.f64_required("clipping_norm")?,
            self.usize_required("num_sampled_clients")?,
            seed,
        )?))
    }

    /// Builds `dp-server-adaptive` / `dp-client-adaptive` with `new`.
    fn dp_adaptive<S: Strategy + 'static>(
        &mut self,
        new: DpAdaptiveNew<S>,
    ) -> Result<Box<dyn Strategy>, StrategyError> {
        let inner = self.inner()?;
        let seed = self.common.seed;
        let o = self.adaptive_options()?;
        Ok(Box::new(new(
            inner,
            self.f64_required("noise_multiplier")?,
            self.usize_required("num_sampled_clients")?,
            o,
            seed,
        )?))
    }

    fn adaptive_options(&self) -> Result<AdaptiveClippingOptions, StrategyError> {
        let d = AdaptiveClippingOptions::default();
        Ok(AdaptiveClippingOptions {
            initial_clipping_norm: self.f64_or("initial_clipping_norm", d.initial_clipping_norm)?,
            target_clipped_quantile: self
                .f64_or("target_clipped_quantile", d.target_clipped_quantile)?,
            clip_norm_lr: self.f64_or("clip_norm_lr", d.clip_norm_lr)?,
            clipped_count_stddev: self.f64_opt("clipped_count_stddev")?,
        })
    }

    /// Builds the wrapped strategy (`strategy` option, default FedAvg); it
    /// receives the callbacks and initial parameters.
    fn inner(&mut self) -> Result<Box<dyn Strategy>, StrategyError> {
        let spec = match self.get("strategy") {
            None | Some(Value::Null) => StrategySpec::new("fedavg"),
            Some(Value::String(name)) => StrategySpec::new(name.clone()),
            Some(v) => serde_json::from_value::<StrategySpec>(v.clone())
                .map_err(|e| self.err(format!("strategy must be {{ name, options }}: {e}")))?,
        };
        let common = CommonOptions {
            seed: self.common.seed.map(|s| s.wrapping_add(1)),
            initial_parameters: self.common.initial_parameters.take(),
            callbacks: std::mem::take(&mut self.common.callbacks),
        };
        build_strategy(&spec, common)
    }
}

fn valid_options(entry: &Entry) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    if entry.common.is_some() {
        names.extend(COMMON.iter().map(|o| o.name));
    }
    names.extend(entry.options.iter().map(|o| o.name));
    names
}

/// Registry names, in catalog order.
pub fn strategy_names() -> Vec<&'static str> {
    ENTRIES.iter().map(|e| e.name).collect()
}

/// Builds the strategy `spec` names with its options.
///
/// Unknown names or options, options of the wrong type and invalid values
/// are [`StrategyError::Config`] errors naming the valid choices.
pub fn build_strategy(
    spec: &StrategySpec,
    common: CommonOptions,
) -> Result<Box<dyn Strategy>, StrategyError> {
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
        entry,
        options: &spec.options,
        common,
    };
    (entry.build)(&mut ctx)
}

fn help_line(out: &mut String, indent: &str, name: &str, default: &str, help: &str) {
    let head = format!("{indent}{name} = {default}");
    if head.chars().count() < 46 {
        let _ = writeln!(out, "{head:<46}{help}");
    } else {
        let _ = writeln!(out, "{head}\n{:<46}{help}", "");
    }
}

/// Every strategy with its options and defaults (for `--help`).
pub fn catalog_help() -> String {
    let mut out = String::from(
        "Strategies (Python Flower 1.42's legacy catalog). Select one by its registry name and set\n\
         options by their Flower keyword names (TOML: [strategy] name = \"...\" and a\n\
         [strategy.options] table). FedAvg-family strategies also take the common options.\n\n\
         Common options:\n",
    );
    for o in COMMON {
        let default = o
            .default
            .replace("{min}", "2 (1: qfedavg, fault-tolerant-fedavg)");
        help_line(&mut out, "    ", o.name, &default, o.help);
    }
    out.push_str("\nStrategies and their own options:\n");
    for e in ENTRIES {
        let _ = writeln!(out, "  {} ({}): {}", e.name, e.class, e.summary);
        for o in e.options {
            help_line(&mut out, "    ", o.name, o.default, o.help);
        }
    }
    out
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

    #[test]
    fn help_lists_everything() {
        let help = catalog_help();
        for e in ENTRIES {
            assert!(help.contains(e.name));
            for o in e.options {
                assert!(help.contains(o.name));
            }
        }
    }
}
