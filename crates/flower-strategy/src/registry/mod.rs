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
mod options;

use std::collections::BTreeMap;
use std::fmt;

use flower_core::Parameters;
use serde_json::Value;

use crate::aggregate::DynComposed;
use crate::callbacks::{ConfigFn, EvaluateFn, MetricsAggregationFn, Shown, XgbEvaluateFn};
use crate::dp::{
    AdaptiveClippingOptions, DpClientSideAdaptiveClipping, DpClientSideFixedClipping,
    DpFedAvgAdaptive, DpFedAvgAdaptiveOptions, DpFedAvgFixed, DpFedAvgFixedOptions,
    DpServerSideAdaptiveClipping, DpServerSideFixedClipping, FixedClippingOptions,
};
use crate::fedopt::{FedOpt, FedOptKind, FedOptOptions};
use crate::{
    Bulyan, BulyanOptions, FaultTolerantFedAvg, FaultTolerantOptions, FedAvg, FedAvgAndroid,
    FedAvgM, FedAvgMOptions, FedAvgOptions, FedMedian, FedProx, FedTrimmedAvg,
    FedTrimmedAvgOptions, FedXgbBagging, FedXgbCyclic, Krum, KrumOptions, QFedAvg, QFedAvgOptions,
    Strategy, StrategyError,
};
use help::{num, opt, required, Opt, COMMON};
use options::Ctx;

pub use help::catalog_help;

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

impl Entry {
    fn defaults(&self) -> FedAvgOptions {
        self.family.defaults()
    }
}

const INPLACE: Opt = opt(
    "inplace",
    || FedAvgOptions::default().inplace.to_string(),
    "in-place weighted mean (false: Flower's plain `aggregate`)",
);
const INNER: Opt = opt(
    "strategy",
    || format!("{{ name = \"{DEFAULT_INNER}\" }}"),
    "wrapped strategy: { name, options } or a name",
);
const NUM_SAMPLED_CLIENTS: Opt = opt(
    "num_sampled_clients",
    required,
    "clients sampled per round (n_s)",
);
const NOISE_MULTIPLIER: Opt = opt("noise_multiplier", required, "noise multiplier z");
const NUM_MALICIOUS_CLIENTS: Opt = opt(
    "num_malicious_clients",
    || KrumOptions::default().num_malicious_clients.to_string(),
    "assumed number of malicious clients f",
);

/// Flower's defaults of the adaptive-clipping wrappers' tuning.
fn adaptive() -> AdaptiveClippingOptions {
    AdaptiveClippingOptions::new(0.0, 1)
}

/// Flower's defaults of DPFedAvgAdaptive.
fn dpfedavg_adaptive() -> DpFedAvgAdaptiveOptions {
    DpFedAvgAdaptiveOptions::new(1)
}

/// Flower's defaults of DPFedAvgFixed.
fn dpfedavg_fixed() -> DpFedAvgFixedOptions {
    DpFedAvgFixedOptions::new(1, 1.0)
}

const DP_ADAPTIVE: &[Opt] = &[
    NOISE_MULTIPLIER,
    NUM_SAMPLED_CLIENTS,
    opt(
        "initial_clipping_norm",
        || num(adaptive().initial_clipping_norm),
        "initial clipping norm",
    ),
    opt(
        "target_clipped_quantile",
        || num(adaptive().target_clipped_quantile),
        "target fraction of clipped updates",
    ),
    opt(
        "clip_norm_lr",
        || num(adaptive().clip_norm_lr),
        "learning rate of the clipping norm",
    ),
    // `None` in the options: computed from n_s and z.
    opt(
        "clipped_count_stddev",
        || "n_s/20 if z > 0 else 0".into(),
        "stddev of the clipped-count noise",
    ),
    INNER,
];

const DP_FIXED: &[Opt] = &[
    NOISE_MULTIPLIER,
    opt("clipping_norm", required, "clipping norm C"),
    NUM_SAMPLED_CLIENTS,
    INNER,
];

/// The FedOpt family's options, each rendering its default from
/// [`FedOptOptions::defaults`] of the strategy.
const fn eta(default: fn() -> String) -> Opt {
    opt("eta", default, "server learning rate")
}
const fn eta_l(default: fn() -> String) -> Opt {
    opt("eta_l", default, "client learning rate (stored, unused)")
}
const fn beta_1(default: fn() -> String) -> Opt {
    opt("beta_1", default, "first-moment decay")
}
const fn beta_2(default: fn() -> String) -> Opt {
    opt("beta_2", default, "second-moment decay")
}
const fn tau(default: fn() -> String) -> Opt {
    opt("tau", default, "adaptivity")
}

fn hp(kind: FedOptKind) -> FedOptOptions {
    FedOptOptions::defaults(kind)
}

const FEDOPT_OPTIONS: &[Opt] = &[
    eta(|| num(hp(FedOptKind::Base).eta)),
    eta_l(|| num(hp(FedOptKind::Base).eta_l)),
    beta_1(|| num(hp(FedOptKind::Base).beta_1)),
    beta_2(|| num(hp(FedOptKind::Base).beta_2)),
    tau(|| num(hp(FedOptKind::Base).tau)),
];
// β1 and β2 are fixed at 0 for Adagrad.
const FEDADAGRAD_OPTIONS: &[Opt] = &[
    eta(|| num(hp(FedOptKind::Adagrad).eta)),
    eta_l(|| num(hp(FedOptKind::Adagrad).eta_l)),
    tau(|| num(hp(FedOptKind::Adagrad).tau)),
];
const FEDADAM_OPTIONS: &[Opt] = &[
    eta(|| num(hp(FedOptKind::Adam).eta)),
    eta_l(|| num(hp(FedOptKind::Adam).eta_l)),
    beta_1(|| num(hp(FedOptKind::Adam).beta_1)),
    beta_2(|| num(hp(FedOptKind::Adam).beta_2)),
    tau(|| num(hp(FedOptKind::Adam).tau)),
];
const FEDYOGI_OPTIONS: &[Opt] = &[
    eta(|| num(hp(FedOptKind::Yogi).eta)),
    eta_l(|| num(hp(FedOptKind::Yogi).eta_l)),
    beta_1(|| num(hp(FedOptKind::Yogi).beta_1)),
    beta_2(|| num(hp(FedOptKind::Yogi).beta_2)),
    tau(|| num(hp(FedOptKind::Yogi).tau)),
];

/// The name table, in catalog order.
const ENTRIES: &[Entry] = &[
    Entry {
        name: "fedavg",
        class: "FedAvg",
        summary: "weighted average of the clients' models",
        family: Family::FedAvg,
        options: &[INPLACE],
        build: |c| Ok(FedAvg::new(c.fedavg_options(true)?)?.boxed()),
    },
    Entry {
        name: "fedavgm",
        class: "FedAvgM",
        summary: "FedAvg with server learning rate and momentum",
        family: Family::FedAvg,
        options: &[
            opt(
                "server_learning_rate",
                || num(FedAvgMOptions::default().server_learning_rate),
                "server learning rate",
            ),
            opt(
                "server_momentum",
                || num(FedAvgMOptions::default().server_momentum),
                "server momentum",
            ),
        ],
        build: |c| {
            let o = c.fedavg_options(false)?;
            let d = FedAvgMOptions::default();
            let server = FedAvgMOptions {
                server_learning_rate: c.f64_or("server_learning_rate", d.server_learning_rate)?,
                server_momentum: c.f64_or("server_momentum", d.server_momentum)?,
            };
            Ok(FedAvgM::new(o, server)?.boxed())
        },
    },
    Entry {
        name: "fedprox",
        class: "FedProx",
        summary: "FedAvg sending proximal_mu to clients",
        family: Family::FedAvg,
        options: &[opt("proximal_mu", required, "weight of the proximal term")],
        build: |c| {
            let o = c.fedavg_options(false)?;
            Ok(FedProx::new(o, c.f64_required("proximal_mu")?)?.boxed())
        },
    },
    Entry {
        name: "fedopt",
        class: "FedOpt",
        summary: "FedOpt base class (in-place FedAvg keeping server weights)",
        family: Family::FedAvg,
        options: FEDOPT_OPTIONS,
        build: |c| build_fedopt(c, FedOptKind::Base),
    },
    Entry {
        name: "fedadagrad",
        class: "FedAdagrad",
        summary: "adaptive server optimizer: Adagrad",
        family: Family::FedAvg,
        options: FEDADAGRAD_OPTIONS,
        build: |c| build_fedopt(c, FedOptKind::Adagrad),
    },
    Entry {
        name: "fedadam",
        class: "FedAdam",
        summary: "adaptive server optimizer: Adam (returns f64 models)",
        family: Family::FedAvg,
        options: FEDADAM_OPTIONS,
        build: |c| build_fedopt(c, FedOptKind::Adam),
    },
    Entry {
        name: "fedyogi",
        class: "FedYogi",
        summary: "adaptive server optimizer: Yogi",
        family: Family::FedAvg,
        options: FEDYOGI_OPTIONS,
        build: |c| build_fedopt(c, FedOptKind::Yogi),
    },
    Entry {
        name: "qfedavg",
        class: "QFedAvg",
        summary: "q-fair FedAvg (needs a server-side evaluate_fn)",
        family: Family::FewClients,
        options: &[
            opt(
                "q_param",
                || num(QFedAvgOptions::default().q_param),
                "fairness parameter q",
            ),
            opt(
                "qffl_learning_rate",
                || num(QFedAvgOptions::default().qffl_learning_rate),
                "q-FFL learning rate",
            ),
        ],
        build: |c| {
            let o = c.fedavg_options(false)?;
            let d = QFedAvgOptions::default();
            let q = QFedAvgOptions {
                q_param: c.f64_or("q_param", d.q_param)?,
                qffl_learning_rate: c.f64_or("qffl_learning_rate", d.qffl_learning_rate)?,
            };
            Ok(QFedAvg::new(o, q)?.boxed())
        },
    },
    Entry {
        name: "fedmedian",
        class: "FedMedian",
        summary: "coordinate-wise median",
        family: Family::FedAvg,
        options: &[],
        build: |c| Ok(FedMedian::new(c.fedavg_options(false)?)?.boxed()),
    },
    Entry {
        name: "fedtrimmedavg",
        class: "FedTrimmedAvg",
        summary: "coordinate-wise trimmed mean",
        family: Family::FedAvg,
        options: &[opt(
            "beta",
            || num(FedTrimmedAvgOptions::default().beta),
            "fraction cut at each end, in [0, 0.5)",
        )],
        build: |c| {
            let o = c.fedavg_options(false)?;
            let beta = c.f64_or("beta", FedTrimmedAvgOptions::default().beta)?;
            Ok(FedTrimmedAvg::new(o, FedTrimmedAvgOptions { beta })?.boxed())
        },
    },
    Entry {
        name: "krum",
        class: "Krum",
        summary: "Krum; MultiKrum with num_clients_to_keep > 0",
        family: Family::FedAvg,
        options: &[
            NUM_MALICIOUS_CLIENTS,
            opt(
                "num_clients_to_keep",
                || KrumOptions::default().num_clients_to_keep.to_string(),
                "MultiKrum: number of best clients averaged (0: Krum)",
            ),
        ],
        build: |c| {
            let o = c.fedavg_options(false)?;
            let d = KrumOptions::default();
            let krum = KrumOptions {
                num_malicious_clients: c
                    .usize_or("num_malicious_clients", d.num_malicious_clients)?,
                num_clients_to_keep: c.usize_or("num_clients_to_keep", d.num_clients_to_keep)?,
            };
            Ok(Krum::new(o, krum)?.boxed())
        },
    },
    Entry {
        name: "bulyan",
        class: "Bulyan",
        summary: "Bulyan over Krum (needs 4f+3 results)",
        family: Family::FedAvg,
        options: &[
            NUM_MALICIOUS_CLIENTS,
            opt(
                "to_keep",
                || "required (0)".into(),
                "Krum keyword; Flower requires to_keep = 0",
            ),
            opt(
                "first_aggregation_rule",
                || "\"krum\"".into(),
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
            let d = BulyanOptions::default();
            let bulyan = BulyanOptions {
                num_malicious_clients: c
                    .usize_or("num_malicious_clients", d.num_malicious_clients)?,
                to_keep: c.usize_opt("to_keep")?,
            };
            Ok(Bulyan::new(o, bulyan)?.boxed())
        },
    },
    Entry {
        name: "fault-tolerant-fedavg",
        class: "FaultTolerantFedAvg",
        summary: "FedAvg aggregating only when enough clients answered",
        family: Family::FewClients,
        options: &[
            opt(
                "min_completion_rate_fit",
                || num(FaultTolerantOptions::default().min_completion_rate_fit),
                "minimum fraction of fit results",
            ),
            opt(
                "min_completion_rate_evaluate",
                || num(FaultTolerantOptions::default().min_completion_rate_evaluate),
                "minimum fraction of evaluate results",
            ),
        ],
        build: |c| {
            let o = c.fedavg_options(false)?;
            let d = FaultTolerantOptions::default();
            let rates = FaultTolerantOptions {
                min_completion_rate_fit: c
                    .f64_or("min_completion_rate_fit", d.min_completion_rate_fit)?,
                min_completion_rate_evaluate: c.f64_or(
                    "min_completion_rate_evaluate",
                    d.min_completion_rate_evaluate,
                )?,
            };
            Ok(FaultTolerantFedAvg::new(o, rates)?.boxed())
        },
    },
    Entry {
        name: "fedavg-android",
        class: "FedAvgAndroid",
        summary: "FedAvg over raw float32 tensors (Android clients)",
        family: Family::FedAvg,
        options: &[],
        build: |c| Ok(FedAvgAndroid::new(c.fedavg_options(false)?)?.boxed()),
    },
    Entry {
        name: "fedxgb-bagging",
        class: "FedXgbBagging",
        summary: "XGBoost tree bagging",
        family: Family::FedAvg,
        options: &[],
        build: |c| {
            let o = c.fedavg_options(false)?;
            let eval = c.common.callbacks.xgb_evaluate_fn.take();
            Ok(FedXgbBagging::new(o, eval)?.boxed())
        },
    },
    Entry {
        name: "fedxgb-cyclic",
        class: "FedXgbCyclic",
        summary: "XGBoost cyclic training (one client per round)",
        family: Family::FedAvg,
        options: &[],
        build: |c| Ok(FedXgbCyclic::new(c.fedavg_options(false)?)?.boxed()),
    },
    Entry {
        name: "dp-server-fixed",
        class: "DifferentialPrivacyServerSideFixedClipping",
        summary: "central DP, server-side fixed clipping",
        family: Family::Wrapper,
        options: DP_FIXED,
        build: |c| {
            let (inner, o, seed) = dp_fixed(c)?;
            Ok(DpServerSideFixedClipping::new(inner, o, seed)?.boxed())
        },
    },
    Entry {
        name: "dp-client-fixed",
        class: "DifferentialPrivacyClientSideFixedClipping",
        summary: "central DP, client-side fixed clipping",
        family: Family::Wrapper,
        options: DP_FIXED,
        build: |c| {
            let (inner, o, seed) = dp_fixed(c)?;
            Ok(DpClientSideFixedClipping::new(inner, o, seed)?.boxed())
        },
    },
    Entry {
        name: "dp-server-adaptive",
        class: "DifferentialPrivacyServerSideAdaptiveClipping",
        summary: "central DP, server-side adaptive clipping",
        family: Family::Wrapper,
        options: DP_ADAPTIVE,
        build: |c| {
            let (inner, o, seed) = dp_adaptive(c)?;
            Ok(DpServerSideAdaptiveClipping::new(inner, o, seed)?.boxed())
        },
    },
    Entry {
        name: "dp-client-adaptive",
        class: "DifferentialPrivacyClientSideAdaptiveClipping",
        summary: "central DP, client-side adaptive clipping",
        family: Family::Wrapper,
        options: DP_ADAPTIVE,
        build: |c| {
            let (inner, o, seed) = dp_adaptive(c)?;
            Ok(DpClientSideAdaptiveClipping::new(inner, o, seed)?.boxed())
        },
    },
    Entry {
        name: "dpfedavg-fixed",
        class: "DPFedAvgFixed",
        summary: "deprecated DP-FedAvg, fixed clipping",
        family: Family::Wrapper,
        options: &[
            NUM_SAMPLED_CLIENTS,
            opt("clip_norm", required, "clipping norm"),
            opt(
                "noise_multiplier",
                || num(dpfedavg_fixed().noise_multiplier),
                "noise multiplier",
            ),
            opt(
                "server_side_noising",
                || dpfedavg_fixed().server_side_noising.to_string(),
                "false: clients are told dpfedavg_noise_stddev",
            ),
            INNER,
        ],
        build: |c| {
            let inner = c.inner()?;
            let seed = c.common.seed;
            let mut o = DpFedAvgFixedOptions::new(
                c.usize_required("num_sampled_clients")?,
                c.f64_required("clip_norm")?,
            );
            o.noise_multiplier = c.f64_or("noise_multiplier", o.noise_multiplier)?;
            o.server_side_noising = c.bool_or("server_side_noising", o.server_side_noising)?;
            Ok(DpFedAvgFixed::new(inner, o, seed)?.boxed())
        },
    },
    Entry {
        name: "dpfedavg-adaptive",
        class: "DPFedAvgAdaptive",
        summary: "deprecated DP-FedAvg, adaptive clipping",
        family: Family::Wrapper,
        options: &[
            NUM_SAMPLED_CLIENTS,
            opt(
                "init_clip_norm",
                || num(dpfedavg_adaptive().init_clip_norm),
                "initial clipping norm",
            ),
            opt(
                "noise_multiplier",
                || num(dpfedavg_adaptive().noise_multiplier),
                "noise multiplier",
            ),
            opt(
                "server_side_noising",
                || dpfedavg_adaptive().server_side_noising.to_string(),
                "false: clients are told dpfedavg_noise_stddev",
            ),
            opt(
                "clip_norm_lr",
                || num(dpfedavg_adaptive().clip_norm_lr),
                "learning rate of the clipping norm",
            ),
            opt(
                "clip_norm_target_quantile",
                || num(dpfedavg_adaptive().clip_norm_target_quantile),
                "target quantile of unclipped updates",
            ),
            // `None` in the options: computed from n_s and z.
            opt(
                "clip_count_stddev",
                || "n_s/20 if z > 0 else 0".into(),
                "stddev of the count noise",
            ),
            INNER,
        ],
        build: |c| {
            let inner = c.inner()?;
            let seed = c.common.seed;
            let d = DpFedAvgAdaptiveOptions::new(c.usize_required("num_sampled_clients")?);
            let o = DpFedAvgAdaptiveOptions {
                init_clip_norm: c.f64_or("init_clip_norm", d.init_clip_norm)?,
                noise_multiplier: c.f64_or("noise_multiplier", d.noise_multiplier)?,
                server_side_noising: c.bool_or("server_side_noising", d.server_side_noising)?,
                clip_norm_lr: c.f64_or("clip_norm_lr", d.clip_norm_lr)?,
                clip_norm_target_quantile: c
                    .f64_or("clip_norm_target_quantile", d.clip_norm_target_quantile)?,
                clip_count_stddev: c.f64_opt("clip_count_stddev")?,
                ..d
            };
            Ok(DpFedAvgAdaptive::new(inner, o, seed)?.boxed())
        },
    },
];

fn build_fedopt(c: &mut Ctx<'_>, kind: FedOptKind) -> Result<DynComposed, StrategyError> {
    let o = c.fedavg_options(false)?;
    let d = FedOptOptions::defaults(kind);
    let hp = FedOptOptions {
        eta: c.f64_or("eta", d.eta)?,
        eta_l: c.f64_or("eta_l", d.eta_l)?,
        beta_1: c.f64_or("beta_1", d.beta_1)?,
        beta_2: c.f64_or("beta_2", d.beta_2)?,
        tau: c.f64_or("tau", d.tau)?,
    };
    Ok(FedOpt::new(kind, o, hp)?.boxed())
}

/// The wrapped strategy and the options of `dp-server-fixed` / `dp-client-fixed`.
fn dp_fixed(
    c: &mut Ctx<'_>,
) -> Result<(DynComposed, FixedClippingOptions, Option<u64>), StrategyError> {
    let inner = c.inner()?;
    let o = FixedClippingOptions {
        noise_multiplier: c.f64_required("noise_multiplier")?,
        clipping_norm: c.f64_required("clipping_norm")?,
        num_sampled_clients: c.usize_required("num_sampled_clients")?,
    };
    Ok((inner, o, c.common.seed))
}

/// The wrapped strategy and the options of `dp-server-adaptive` /
/// `dp-client-adaptive`.
fn dp_adaptive(
    c: &mut Ctx<'_>,
) -> Result<(DynComposed, AdaptiveClippingOptions, Option<u64>), StrategyError> {
    let inner = c.inner()?;
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
    Ok((inner, o, c.common.seed))
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
        entry,
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
