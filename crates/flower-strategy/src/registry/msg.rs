//! The message-API catalog by name ([`crate::msg`], Flower's
//! `flwr.serverapp.strategy`): the same [`StrategySpec`], option reader
//! ([`Ctx`]) and help layout as the legacy table, with Flower's message-API
//! option names and defaults.
//!
//! Names shared with the legacy catalog (`fedavg`, `fedadam`, ...) select
//! the message-API class here; only the options differ (`fraction_train`,
//! not `fraction_fit`; `min_train_nodes`, not `min_fit_clients`; ...).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::Value;

use super::help::{help_line, num, opt, required, Opt};
use super::options::{metric_selection, pass_common_options, Ctx};
use super::table::{beta_1, beta_2, eta, eta_l, tau, DP_ADAPTIVE, DP_FIXED};
use super::{CommonOptions, Family, StrategySpec, DEFAULT_INNER};
use crate::callbacks::MetricSelection;
use crate::msg::{
    self, Bulyan, ConfigRecord, ConfigValue, DpWrapper, FedAvg, FedAvgM, FedMedian, FedOpt,
    FedOptKind, FedOptOptions, FedProx, FedXgbBagging, FedXgbCyclic, MetricRecord, MetricsAggrFn,
    MsgStrategy, MultiKrum, QFedAvg, QFedAvgOptions,
};
use crate::{AdaptiveClippingOptions, FixedClippingOptions, StrategyError};

/// A message-API strategy built by name, with the configs Flower's
/// `Strategy.start` takes (`train_config`, `evaluate_config`).
#[derive(Debug)]
pub struct MsgBuild {
    /// The strategy.
    pub strategy: Box<dyn MsgStrategy>,
    /// The `train_config` option (`None`: empty).
    pub train_config: Option<ConfigRecord>,
    /// The `evaluate_config` option (`None`: empty).
    pub evaluate_config: Option<ConfigRecord>,
}

type MsgBuilder = fn(&mut Ctx<'_>) -> Result<Box<dyn MsgStrategy>, StrategyError>;

/// One message-API registry name.
struct MsgEntry {
    name: &'static str,
    class: &'static str,
    summary: &'static str,
    /// The strategy's own options (besides [`MSG_COMMON`]).
    options: &'static [Opt],
    build: MsgBuilder,
}

fn fedavg() -> msg::FedAvgOptions {
    msg::FedAvgOptions::default()
}

/// Flower's constructor defaults that live in no option struct.
const FEDAVGM_SERVER_LEARNING_RATE: f64 = 1.0;
const FEDAVGM_SERVER_MOMENTUM: f64 = 0.0;
const FEDPROX_PROXIMAL_MU: f64 = 0.0;
const FEDTRIMMEDAVG_BETA: f64 = 0.2;
const NUM_MALICIOUS_NODES: usize = 0;
const NUM_NODES_TO_SELECT: usize = 1;

/// `FedAvg`'s constructor arguments (taken by every message-API strategy;
/// a DP wrapper passes them on) and `start`'s configs.
const MSG_COMMON: &[Opt] = &[
    opt(
        "fraction_train",
        || num(fedavg().fraction_train),
        "fraction of connected nodes sampled for train (0 disables training)",
    ),
    opt(
        "fraction_evaluate",
        || num(fedavg().fraction_evaluate),
        "fraction of connected nodes sampled for evaluate (0 disables it)",
    ),
    opt(
        "min_train_nodes",
        || fedavg().min_train_nodes.to_string(),
        "minimum number of nodes sampled for train",
    ),
    opt(
        "min_evaluate_nodes",
        || fedavg().min_evaluate_nodes.to_string(),
        "minimum number of nodes sampled for evaluate",
    ),
    opt(
        "min_available_nodes",
        || fedavg().min_available_nodes.to_string(),
        "nodes that must be connected before sampling",
    ),
    opt(
        "weighted_by_key",
        || format!("{:?}", fedavg().weighted_by_key),
        "reply metric that weights the means",
    ),
    opt(
        "arrayrecord_key",
        || format!("{:?}", fedavg().arrayrecord_key),
        "content key of the arrays sent",
    ),
    opt(
        "configrecord_key",
        || format!("{:?}", fedavg().configrecord_key),
        "content key of the config sent",
    ),
    // Flower's `train_metrics_aggr_fn` / `evaluate_metrics_aggr_fn`.
    opt(
        "train_metrics",
        || "\"all\"".into(),
        "\"all\" (weighted mean of every metric), \"none\", or a list of metrics to average",
    ),
    opt(
        "evaluate_metrics",
        || "\"all\"".into(),
        "\"all\" (weighted mean of every metric), \"none\", or a list of metrics to average",
    ),
    // `Strategy.start(train_config=..., evaluate_config=...)`.
    opt(
        "train_config",
        || "{}".into(),
        "table sent as the train config every round, plus server-round",
    ),
    opt(
        "evaluate_config",
        || "{}".into(),
        "table sent as the evaluate config every round, plus server-round",
    ),
];

/// The common options that configure the run, not the strategy.
const RUN_OPTIONS: [&str; 2] = ["train_config", "evaluate_config"];

const NUM_MALICIOUS: Opt = opt(
    "num_malicious_nodes",
    || NUM_MALICIOUS_NODES.to_string(),
    "assumed number of malicious nodes f",
);

fn hp(kind: FedOptKind) -> FedOptOptions {
    FedOptOptions::defaults(kind)
}

const FEDOPT_OPTIONS: &[Opt] = &[
    eta(|| num(hp(FedOptKind::FedOpt).eta)),
    eta_l(|| num(hp(FedOptKind::FedOpt).eta_l)),
    beta_1(|| num(hp(FedOptKind::FedOpt).beta_1)),
    beta_2(|| num(hp(FedOptKind::FedOpt).beta_2)),
    tau(|| num(hp(FedOptKind::FedOpt).tau)),
];
// β1 and β2 are fixed at 0 for Adagrad.
const FEDADAGRAD_OPTIONS: &[Opt] = &[
    eta(|| num(hp(FedOptKind::FedAdagrad).eta)),
    eta_l(|| num(hp(FedOptKind::FedAdagrad).eta_l)),
    tau(|| num(hp(FedOptKind::FedAdagrad).tau)),
];
const FEDADAM_OPTIONS: &[Opt] = &[
    eta(|| num(hp(FedOptKind::FedAdam).eta)),
    eta_l(|| num(hp(FedOptKind::FedAdam).eta_l)),
    beta_1(|| num(hp(FedOptKind::FedAdam).beta_1)),
    beta_2(|| num(hp(FedOptKind::FedAdam).beta_2)),
    tau(|| num(hp(FedOptKind::FedAdam).tau)),
];
const FEDYOGI_OPTIONS: &[Opt] = &[
    eta(|| num(hp(FedOptKind::FedYogi).eta)),
    eta_l(|| num(hp(FedOptKind::FedYogi).eta_l)),
    beta_1(|| num(hp(FedOptKind::FedYogi).beta_1)),
    beta_2(|| num(hp(FedOptKind::FedYogi).beta_2)),
    tau(|| num(hp(FedOptKind::FedYogi).tau)),
];

/// QFedAvg's defaults (the required learning rate is never read here).
fn qfedavg() -> QFedAvgOptions {
    QFedAvgOptions::new(f64::NAN)
}

/// The message-API name table, in Flower's export order.
const MSG_ENTRIES: &[MsgEntry] = &[
    MsgEntry {
        name: "fedavg",
        class: "FedAvg",
        summary: "weighted mean (factors w/Σw, computed in the array dtype)",
        options: &[],
        build: |c| Ok(Box::new(FedAvg::new(msg_options(c)?)?)),
    },
    MsgEntry {
        name: "fedavgm",
        class: "FedAvgM",
        summary: "FedAvg with server learning rate and momentum",
        options: &[
            opt(
                "server_learning_rate",
                || num(FEDAVGM_SERVER_LEARNING_RATE),
                "server learning rate",
            ),
            opt(
                "server_momentum",
                || num(FEDAVGM_SERVER_MOMENTUM),
                "server momentum",
            ),
        ],
        build: |c| {
            let o = msg_options(c)?;
            let lr = c.f64_or("server_learning_rate", FEDAVGM_SERVER_LEARNING_RATE)?;
            let momentum = c.f64_or("server_momentum", FEDAVGM_SERVER_MOMENTUM)?;
            Ok(Box::new(FedAvgM::new(o, lr, momentum)?))
        },
    },
    MsgEntry {
        name: "fedprox",
        class: "FedProx",
        summary: "FedAvg sending \"proximal-mu\" in the train config",
        options: &[opt(
            "proximal_mu",
            || num(FEDPROX_PROXIMAL_MU),
            "weight of the proximal term",
        )],
        build: |c| {
            let o = msg_options(c)?;
            let mu = c.f64_or("proximal_mu", FEDPROX_PROXIMAL_MU)?;
            Ok(Box::new(FedProx::new(o, mu)?))
        },
    },
    MsgEntry {
        name: "fedopt",
        class: "FedOpt",
        summary: "FedOpt base (not exported by Flower): FedAvg keeping server weights",
        options: FEDOPT_OPTIONS,
        build: |c| build_fedopt(c, FedOptKind::FedOpt),
    },
    MsgEntry {
        name: "fedadagrad",
        class: "FedAdagrad",
        summary: "adaptive server optimizer: Adagrad",
        options: FEDADAGRAD_OPTIONS,
        build: |c| build_fedopt(c, FedOptKind::FedAdagrad),
    },
    MsgEntry {
        name: "fedadam",
        class: "FedAdam",
        summary: "adaptive server optimizer: Adam",
        options: FEDADAM_OPTIONS,
        build: |c| build_fedopt(c, FedOptKind::FedAdam),
    },
    MsgEntry {
        name: "fedyogi",
        class: "FedYogi",
        summary: "adaptive server optimizer: Yogi",
        options: FEDYOGI_OPTIONS,
        build: |c| build_fedopt(c, FedOptKind::FedYogi),
    },
    MsgEntry {
        name: "qfedavg",
        class: "QFedAvg",
        summary: "q-fair FedAvg with each node's own train loss",
        options: &[
            opt(
                "client_learning_rate",
                required,
                "the nodes' learning rate (L = 1/client_learning_rate)",
            ),
            opt("q", || num(qfedavg().q), "fairness exponent q"),
            opt(
                "train_loss_key",
                || format!("{:?}", qfedavg().train_loss_key),
                "reply metric holding the node's train loss",
            ),
        ],
        build: |c| {
            let o = msg_options(c)?;
            let d = QFedAvgOptions::new(c.f64_required("client_learning_rate")?);
            let q = QFedAvgOptions {
                q: c.f64_or("q", d.q)?,
                train_loss_key: c.string_or("train_loss_key", &d.train_loss_key)?,
                ..d
            };
            Ok(Box::new(QFedAvg::new(o, q)?))
        },
    },
    MsgEntry {
        name: "fedmedian",
        class: "FedMedian",
        summary: "coordinate-wise median",
        options: &[],
        build: |c| Ok(Box::new(FedMedian::new(msg_options(c)?)?)),
    },
    MsgEntry {
        name: "fedtrimmedavg",
        class: "FedTrimmedAvg",
        summary: "coordinate-wise trimmed mean",
        options: &[opt(
            "beta",
            || num(FEDTRIMMEDAVG_BETA),
            "fraction cut at each end, in [0, 0.5)",
        )],
        build: |c| {
            let o = msg_options(c)?;
            let beta = c.f64_or("beta", FEDTRIMMEDAVG_BETA)?;
            Ok(Box::new(FedMedian::trimmed(o, beta)?))
        },
    },
    MsgEntry {
        name: "krum",
        class: "Krum",
        summary: "the reply with the lowest Krum score",
        options: &[NUM_MALICIOUS],
        build: |c| {
            let o = msg_options(c)?;
            let f = c.usize_or("num_malicious_nodes", NUM_MALICIOUS_NODES)?;
            Ok(Box::new(MultiKrum::krum(o, f)?))
        },
    },
    MsgEntry {
        name: "multikrum",
        class: "MultiKrum",
        summary: "weighted mean of the lowest-score replies",
        options: &[
            NUM_MALICIOUS,
            opt(
                "num_nodes_to_select",
                || NUM_NODES_TO_SELECT.to_string(),
                "number of lowest-score replies averaged",
            ),
        ],
        build: |c| {
            let o = msg_options(c)?;
            let f = c.usize_or("num_malicious_nodes", NUM_MALICIOUS_NODES)?;
            let keep = c.usize_or("num_nodes_to_select", NUM_NODES_TO_SELECT)?;
            Ok(Box::new(MultiKrum::new(o, f, keep)?))
        },
    },
    MsgEntry {
        name: "bulyan",
        class: "Bulyan",
        summary: "Bulyan over Krum (needs 4f+3 replies)",
        options: &[NUM_MALICIOUS],
        build: |c| {
            let o = msg_options(c)?;
            let f = c.usize_or("num_malicious_nodes", NUM_MALICIOUS_NODES)?;
            Ok(Box::new(Bulyan::new(o, f)?))
        },
    },
    MsgEntry {
        name: "fedxgb-bagging",
        class: "FedXgbBagging",
        summary: "XGBoost tree bagging",
        options: &[],
        build: |c| Ok(Box::new(FedXgbBagging::new(msg_options(c)?)?)),
    },
    MsgEntry {
        name: "fedxgb-cyclic",
        class: "FedXgbCyclic",
        summary: "XGBoost cyclic training (one node per round)",
        options: &[],
        build: |c| Ok(Box::new(FedXgbCyclic::new(msg_options(c)?)?)),
    },
    MsgEntry {
        name: "dp-server-fixed",
        class: "DifferentialPrivacyServerSideFixedClipping",
        summary: "central DP, server-side fixed clipping",
        options: DP_FIXED,
        build: |c| dp_fixed(c, true),
    },
    MsgEntry {
        name: "dp-client-fixed",
        class: "DifferentialPrivacyClientSideFixedClipping",
        summary: "central DP, client-side fixed clipping",
        options: DP_FIXED,
        build: |c| dp_fixed(c, false),
    },
    MsgEntry {
        name: "dp-server-adaptive",
        class: "DifferentialPrivacyServerSideAdaptiveClipping",
        summary: "central DP, server-side adaptive clipping",
        options: DP_ADAPTIVE,
        build: |c| dp_adaptive(c, true),
    },
    MsgEntry {
        name: "dp-client-adaptive",
        class: "DifferentialPrivacyClientSideAdaptiveClipping",
        summary: "central DP, client-side adaptive clipping",
        options: DP_ADAPTIVE,
        build: |c| dp_adaptive(c, false),
    },
];

/// Message-API registry names, in catalog order.
pub fn msg_strategy_names() -> Vec<&'static str> {
    MSG_ENTRIES.iter().map(|e| e.name).collect()
}

/// Builds the message-API strategy `spec` names (see [`msg_catalog_help`])
/// with its options, and the train/evaluate configs of `Strategy.start`.
///
/// Every strategy takes the common options (`fraction_train`,
/// `min_train_nodes`, `weighted_by_key`, `train_config`, ...); a DP wrapper
/// passes those given at its top level on to the strategy it wraps (its
/// `strategy` option, default `fedavg`), and the configs apply to the run.
/// Unknown names or options, values of the wrong type and invalid values
/// are [`StrategyError::Config`] errors naming the valid choices.
pub fn build_msg_strategy(spec: &StrategySpec) -> Result<MsgBuild, StrategyError> {
    let strategy = build_entry(spec)?;
    let ctx = ctx_for("run", &spec.options);
    Ok(MsgBuild {
        strategy,
        train_config: config_option(&ctx, "train_config")?,
        evaluate_config: config_option(&ctx, "evaluate_config")?,
    })
}

fn ctx_for<'a>(name: &'static str, options: &'a BTreeMap<String, Value>) -> Ctx<'a> {
    Ctx {
        name,
        // The legacy FedAvg defaults are never read for this catalog.
        family: Family::FedAvg,
        options,
        common: CommonOptions::default(),
    }
}

/// The strategy of `spec` (a wrapper's run configs are those of its top
/// level: [`build_msg_strategy`] reads them).
fn build_entry(spec: &StrategySpec) -> Result<Box<dyn MsgStrategy>, StrategyError> {
    let name = spec.name.trim().to_ascii_lowercase();
    let Some(entry) = MSG_ENTRIES.iter().find(|e| e.name == name) else {
        return Err(StrategyError::Config(format!(
            "unknown message-API strategy {:?}; valid strategies: {}",
            spec.name,
            msg_strategy_names().join(", ")
        )));
    };
    let mut valid: Vec<&'static str> = MSG_COMMON.iter().map(|o| o.name).collect();
    valid.extend(entry.options.iter().map(|o| o.name));
    let unknown: Vec<&str> = spec
        .options
        .keys()
        .map(String::as_str)
        .filter(|k| !valid.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(StrategyError::Config(format!(
            "{} (message API): unknown option(s) {}; valid options: {}",
            entry.name,
            unknown.join(", "),
            valid.join(", ")
        )));
    }
    let mut ctx = ctx_for(entry.name, &spec.options);
    (entry.build)(&mut ctx)
}

/// FedAvg's options from the common ones, over Flower's defaults.
fn msg_options(c: &Ctx<'_>) -> Result<msg::FedAvgOptions, StrategyError> {
    let d = fedavg();
    Ok(msg::FedAvgOptions {
        fraction_train: c.f64_or("fraction_train", d.fraction_train)?,
        fraction_evaluate: c.f64_or("fraction_evaluate", d.fraction_evaluate)?,
        min_train_nodes: c.usize_or("min_train_nodes", d.min_train_nodes)?,
        min_evaluate_nodes: c.usize_or("min_evaluate_nodes", d.min_evaluate_nodes)?,
        min_available_nodes: c.usize_or("min_available_nodes", d.min_available_nodes)?,
        weighted_by_key: c.string_or("weighted_by_key", &d.weighted_by_key)?,
        arrayrecord_key: c.string_or("arrayrecord_key", &d.arrayrecord_key)?,
        configrecord_key: c.string_or("configrecord_key", &d.configrecord_key)?,
        train_metrics_aggr_fn: metrics_fn(c, "train_metrics")?,
        evaluate_metrics_aggr_fn: metrics_fn(c, "evaluate_metrics")?,
    })
}

/// The built-in metric aggregations: `"all"` is Flower's default (no
/// callback), `"none"` aggregates nothing, a list keeps the weighted mean
/// of those metrics only.
fn metrics_fn(c: &Ctx<'_>, key: &str) -> Result<Option<MetricsAggrFn>, StrategyError> {
    let Some(v) = c.get(key) else {
        return Ok(None);
    };
    let selection = metric_selection(key, v).map_err(|e| c.err(e.to_string()))?;
    Ok(match selection {
        Some(MetricSelection::All) => None,
        None => Some(Arc::new(|_, _| Ok(MetricRecord::new()))),
        Some(MetricSelection::Named(keys)) => Some(Arc::new(move |records, weight| {
            let all = msg::aggregate_metricrecords(records, weight)?;
            Ok(all
                .iter()
                .filter(|(k, _)| keys.iter().any(|want| want == k))
                .map(|(k, v)| (k, v.clone()))
                .collect())
        })),
    })
}

fn config_value(key: &str, v: &Value) -> Result<ConfigValue, String> {
    let scalar = |v: &Value| match v {
        Value::Bool(b) => Some(ConfigValue::Bool(*b)),
        Value::String(s) => Some(ConfigValue::Str(s.clone())),
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => ConfigValue::Int(i),
            None => ConfigValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        }),
        _ => None,
    };
    if let Some(s) = scalar(v) {
        return Ok(s);
    }
    let bad = || {
        format!(
            "config value {key:?} must be a bool, number, string or a list of one of them, got {v}"
        )
    };
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let items: Vec<ConfigValue> = items
        .iter()
        .map(scalar)
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let all = |f: fn(&ConfigValue) -> bool| items.iter().all(f);
    Ok(if all(|x| matches!(x, ConfigValue::Int(_))) {
        ConfigValue::IntList(
            items
                .iter()
                .filter_map(|x| match x {
                    ConfigValue::Int(i) => Some(*i),
                    _ => None,
                })
                .collect(),
        )
    } else if all(|x| matches!(x, ConfigValue::Int(_) | ConfigValue::Float(_))) {
        ConfigValue::FloatList(
            items
                .iter()
                .filter_map(|x| match x {
                    ConfigValue::Int(i) => Some(*i as f64),
                    ConfigValue::Float(f) => Some(*f),
                    _ => None,
                })
                .collect(),
        )
    } else if all(|x| matches!(x, ConfigValue::Bool(_))) {
        ConfigValue::BoolList(
            items
                .iter()
                .filter_map(|x| match x {
                    ConfigValue::Bool(b) => Some(*b),
                    _ => None,
                })
                .collect(),
        )
    } else if all(|x| matches!(x, ConfigValue::Str(_))) {
        ConfigValue::StrList(
            items
                .iter()
                .filter_map(|x| match x {
                    ConfigValue::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        )
    } else {
        return Err(bad());
    })
}

/// A `train_config` / `evaluate_config` table as a ConfigRecord.
fn config_option(c: &Ctx<'_>, key: &str) -> Result<Option<ConfigRecord>, StrategyError> {
    let Some(v) = c.get(key) else {
        return Ok(None);
    };
    let obj = v
        .as_object()
        .ok_or_else(|| c.err(format!("{key} must be a table, got {v}")))?;
    obj.iter()
        .map(|(k, v)| Ok((k.clone(), config_value(k, v).map_err(|m| c.err(m))?)))
        .collect::<Result<ConfigRecord, StrategyError>>()
        .map(Some)
}

fn build_fedopt(c: &mut Ctx<'_>, kind: FedOptKind) -> Result<Box<dyn MsgStrategy>, StrategyError> {
    let o = msg_options(c)?;
    let d = FedOptOptions::defaults(kind);
    let hp = FedOptOptions {
        eta: c.f64_or("eta", d.eta)?,
        eta_l: c.f64_or("eta_l", d.eta_l)?,
        beta_1: c.f64_or("beta_1", d.beta_1)?,
        beta_2: c.f64_or("beta_2", d.beta_2)?,
        tau: c.f64_or("tau", d.tau)?,
    };
    Ok(Box::new(FedOpt::new(o, kind, hp)?))
}

/// The wrapped strategy (`strategy` option, default FedAvg) with the common
/// options given at the wrapper's top level.
fn inner(c: &Ctx<'_>) -> Result<Box<dyn MsgStrategy>, StrategyError> {
    let mut spec = match c.get("strategy") {
        None | Some(Value::Null) => StrategySpec::new(DEFAULT_INNER),
        Some(Value::String(name)) => StrategySpec::new(name.clone()),
        Some(v) => serde_json::from_value::<StrategySpec>(v.clone())
            .map_err(|e| c.err(format!("strategy must be {{ name, options }}: {e}")))?,
    };
    for run_option in RUN_OPTIONS {
        if spec.options.contains_key(run_option) {
            return Err(c.err(format!(
                "{run_option} configures the run: set it at the top level, not in the wrapped \
                 strategy's options"
            )));
        }
    }
    pass_common_options(c.options, &mut spec.options, MSG_COMMON).map_err(|m| c.err(m))?;
    build_entry(&spec)
}

fn dp_fixed(c: &mut Ctx<'_>, server_side: bool) -> Result<Box<dyn MsgStrategy>, StrategyError> {
    let o = FixedClippingOptions {
        noise_multiplier: c.f64_required("noise_multiplier")?,
        clipping_norm: c.f64_required("clipping_norm")?,
        num_sampled_clients: c.usize_required("num_sampled_clients")?,
    };
    Ok(Box::new(DpWrapper::fixed(inner(c)?, server_side, o)?))
}

fn dp_adaptive(c: &mut Ctx<'_>, server_side: bool) -> Result<Box<dyn MsgStrategy>, StrategyError> {
    let d = AdaptiveClippingOptions::new(
        c.f64_required("noise_multiplier")?,
        c.usize_required("num_sampled_clients")?,
    );
    let o = AdaptiveClippingOptions {
        initial_clipping_norm: c.f64_or("initial_clipping_norm", d.initial_clipping_norm)?,
        target_clipped_quantile: c.f64_or("target_clipped_quantile", d.target_clipped_quantile)?,
        clip_norm_lr: c.f64_or("clip_norm_lr", d.clip_norm_lr)?,
        clipped_count_stddev: c.f64_opt("clipped_count_stddev")?,
        ..d
    };
    Ok(Box::new(DpWrapper::adaptive(inner(c)?, server_side, o)?))
}

/// Every message-API strategy with its options and defaults (for `--help`).
pub fn msg_catalog_help() -> String {
    let mut out = String::from(
        "Message-API strategies (Python Flower 1.42's flwr.serverapp.strategy), for SuperNode\n\
         federations. Names shared with the legacy catalog select the message-API class here;\n\
         its options are Flower's message-API names (fraction_train, not fraction_fit;\n\
         min_train_nodes, not min_fit_clients; ...). Every strategy also takes the common\n\
         options; a wrapper (dp-*) passes them on to the strategy it wraps.\n\n\
         Common options:\n",
    );
    for o in MSG_COMMON {
        help_line(&mut out, "    ", o.name, &(o.default)(), o.help);
    }
    out.push_str("\nStrategies and their own options:\n");
    for e in MSG_ENTRIES {
        let _ = writeln!(out, "  {} ({}): {}", e.name, e.class, e.summary);
        for o in e.options {
            help_line(&mut out, "    ", o.name, &(o.default)(), o.help);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> StrategySpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn every_entry_builds_with_required_options() {
        for name in msg_strategy_names() {
            let mut s = StrategySpec::new(name);
            match name {
                "qfedavg" => s = s.option("client_learning_rate", 0.1),
                n if n.starts_with("dp-") => {
                    s = s
                        .option("noise_multiplier", 0.0)
                        .option("clipping_norm", 1.0)
                        .option("num_sampled_clients", 2)
                }
                _ => {}
            }
            if name.ends_with("adaptive") {
                s.options.remove("clipping_norm");
            }
            let b = build_msg_strategy(&s).unwrap_or_else(|e| panic!("{name}: {e}"));
            let class = MSG_ENTRIES.iter().find(|e| e.name == name).unwrap().class;
            assert_eq!(b.strategy.name(), class, "{name}");
        }
    }

    #[test]
    fn legacy_option_names_are_refused_with_the_valid_ones() {
        let e = build_msg_strategy(&StrategySpec::new("fedavg").option("fraction_fit", 0.5))
            .unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("fraction_fit") && m.contains("fraction_train"),
            "{m}"
        );
        let e = build_msg_strategy(&StrategySpec::new("fault-tolerant-fedavg")).unwrap_err();
        assert!(e.to_string().contains("multikrum"), "{e}");
        let e = build_msg_strategy(&StrategySpec::new("qfedavg")).unwrap_err();
        assert!(e.to_string().contains("client_learning_rate"), "{e}");
        let e = build_msg_strategy(&StrategySpec::new("fedavg").option("min_train_nodes", -1))
            .unwrap_err();
        assert!(matches!(e, StrategyError::Config(_)));
    }

    /// A Grid over three nodes that records what it was sent.
    struct Three {
        sent: Vec<msg::Message>,
    }

    impl msg::Grid for Three {
        fn node_ids(&mut self) -> Vec<u64> {
            vec![1, 2, 3]
        }
        fn wait_for_nodes(&mut self) -> bool {
            false
        }
        fn sample(&mut self, nodes: &[u64], n: usize) -> Vec<u64> {
            nodes[..n].to_vec()
        }
        fn send_and_receive(&mut self, m: Vec<msg::Message>, _t: f64) -> Vec<msg::Reply> {
            self.sent.extend(m);
            Vec::new()
        }
    }

    #[test]
    fn options_reach_the_strategy_and_the_configs() {
        let b = build_msg_strategy(&spec(json!({
            "name": "fedprox",
            "options": {
                "fraction_train": 0.5, "min_train_nodes": 1, "proximal_mu": 0.25,
                "configrecord_key": "cfg",
                "train_config": { "lr": 0.1, "epochs": 2, "tags": ["a", "b"] }
            }
        })))
        .unwrap();
        let mut s = b.strategy;
        let mut config = b.train_config.unwrap();
        assert_eq!(config.get("epochs"), Some(&ConfigValue::Int(2)));
        let mut grid = Three { sent: Vec::new() };
        let arrays = msg::ArrayRecord::new();
        let m = s
            .configure_train(1, &arrays, &mut config, &mut grid)
            .unwrap();
        // int(3 × 0.5) = 1 node.
        assert_eq!(m.len(), 1);
        let Some(msg::Record::Config(sent)) = m[0].content.get("cfg") else {
            panic!("no config under cfg")
        };
        assert_eq!(sent.get("proximal-mu"), Some(&ConfigValue::Float(0.25)));
        assert_eq!(sent.get("server-round"), Some(&ConfigValue::Int(1)));
        assert_eq!(
            sent.get("tags"),
            Some(&ConfigValue::StrList(vec!["a".into(), "b".into()]))
        );
    }

    #[test]
    fn wrappers_pass_common_options_on() {
        let b = build_msg_strategy(&spec(json!({
            "name": "dp-server-fixed",
            "options": {
                "noise_multiplier": 0.0, "clipping_norm": 1.0, "num_sampled_clients": 1,
                "fraction_evaluate": 0.0,
                "strategy": { "name": "fedmedian", "options": { "min_train_nodes": 3 } }
            }
        })))
        .unwrap();
        let mut s = b.strategy;
        let mut grid = Three { sent: Vec::new() };
        let arrays = msg::ArrayRecord::new();
        let mut c = ConfigRecord::new();
        // fraction_evaluate reached the wrapped FedMedian.
        assert!(s
            .configure_evaluate(1, &arrays, &mut c, &mut grid)
            .unwrap()
            .is_empty());
        assert_eq!(
            s.configure_train(1, &arrays, &mut c, &mut grid)
                .unwrap()
                .len(),
            3
        );
        let e = build_msg_strategy(&spec(json!({
            "name": "dp-client-fixed",
            "options": {
                "noise_multiplier": 0.0, "clipping_norm": 1.0, "num_sampled_clients": 1,
                "min_train_nodes": 2,
                "strategy": { "name": "fedavg", "options": { "min_train_nodes": 3 } }
            }
        })))
        .unwrap_err();
        assert!(e.to_string().contains("min_train_nodes"), "{e}");
        // Run configs only at the top level (a nested one would be ignored).
        let e = build_msg_strategy(&spec(json!({
            "name": "dp-client-fixed",
            "options": {
                "noise_multiplier": 0.0, "clipping_norm": 1.0, "num_sampled_clients": 1,
                "strategy": { "name": "fedavg", "options": { "train_config": { "lr": 1 } } }
            }
        })))
        .unwrap_err();
        assert!(e.to_string().contains("top level"), "{e}");
        let b = build_msg_strategy(&spec(json!({
            "name": "dp-client-fixed",
            "options": {
                "noise_multiplier": 0.0, "clipping_norm": 1.0, "num_sampled_clients": 1,
                "train_config": { "lr": 1 }
            }
        })))
        .unwrap();
        assert_eq!(
            b.train_config.unwrap().get("lr"),
            Some(&ConfigValue::Int(1))
        );
    }

    #[test]
    fn named_metrics_keep_only_those() {
        let empty = BTreeMap::new();
        let c = ctx_for("t", &empty);
        assert!(metrics_fn(&c, "train_metrics").unwrap().is_none());
        let options: BTreeMap<String, Value> =
            [("train_metrics".to_owned(), json!(["acc"]))].into();
        let c = ctx_for("t", &options);
        let f = metrics_fn(&c, "train_metrics").unwrap().unwrap();
        let mut m = MetricRecord::new();
        m.insert("num-examples", msg::MetricValue::Int(2));
        m.insert("acc", msg::MetricValue::Float(0.5));
        m.insert("loss", msg::MetricValue::Float(3.0));
        let mut r = msg::RecordDict::new();
        r.insert("metrics", msg::Record::Metrics(m));
        let out = f(&[&r], "num-examples").unwrap();
        assert_eq!(out.keys().collect::<Vec<_>>(), ["acc"]);
    }

    #[test]
    fn help_lists_every_entry_with_defaults() {
        let help = msg_catalog_help();
        for e in MSG_ENTRIES {
            assert!(help.contains(&format!("  {} ({})", e.name, e.class)));
        }
        assert!(help.contains("fraction_train = 1.0"));
        assert!(help.contains("weighted_by_key = \"num-examples\""));
        assert!(help.contains("proximal_mu = 0.0"));
        assert!(help.contains("client_learning_rate = required"));
        // FedYogi's own eta.
        assert!(help.contains("eta = 0.01"));
    }
}
