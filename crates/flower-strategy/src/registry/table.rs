//! The name table: every registry name with its Flower class, its own
//! options (defaults rendered from the option structs) and its builder.

use super::help::{num, opt, required, Opt};
use super::options::Ctx;
use super::{Entry, Family, DEFAULT_INNER};
use crate::aggregate::DynComposed;
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
    StrategyError,
};

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

pub(super) const DP_ADAPTIVE: &[Opt] = &[
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

pub(super) const DP_FIXED: &[Opt] = &[
    NOISE_MULTIPLIER,
    opt("clipping_norm", required, "clipping norm C"),
    NUM_SAMPLED_CLIENTS,
    INNER,
];

/// The FedOpt family's options, each rendering its default from
/// [`FedOptOptions::defaults`] of the strategy.
pub(super) const fn eta(default: fn() -> String) -> Opt {
    opt("eta", default, "server learning rate")
}
pub(super) const fn eta_l(default: fn() -> String) -> Opt {
    opt("eta_l", default, "client learning rate (stored, unused)")
}
pub(super) const fn beta_1(default: fn() -> String) -> Opt {
    opt("beta_1", default, "first-moment decay")
}
pub(super) const fn beta_2(default: fn() -> String) -> Opt {
    opt("beta_2", default, "second-moment decay")
}
pub(super) const fn tau(default: fn() -> String) -> Opt {
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
pub(super) const ENTRIES: &[Entry] = &[
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
