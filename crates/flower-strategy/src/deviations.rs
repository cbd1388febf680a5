//! Every place where these strategies deliberately differ from Python
//! Flower 1.42, with the reason. This table is the single source: the crate
//! documentation points here and the golden test (`tests/golden.rs`) reads
//! [`DEVIATIONS`] to expect the documented error instead of Flower's output
//! for the listed golden cases.
//!
//! | id | Flower | here | why |
//! |---|---|---|---|
//! | `inplace-integer-layers` | In-place FedAvg (and FedProx, the FedOpt family, the DP wrappers' inner FedAvg) casts each client's weight `n_k/N` to the layer's integer type, so integer layers (BatchNorm counters...) come out as 0 | [`StrategyError::UnsupportedLayer`] from `begin_fit` when the global model has an integer/bool layer and `inplace = true` | A silently zeroed layer corrupts the model; the plain mean (`inplace = false`) averages integer layers into f64 |
//! | `zero-total-examples-plain` | The plain mean with `Σ n_k = 0` returns all-NaN arrays (0/0) | [`StrategyError::ZeroExamples`] (as in-place FedAvg, which raises ZeroDivisionError) | A NaN model is never useful and poisons later rounds |
//! | `shape-broadcasting` | NumPy broadcasting silently averages a client's `[1]`-shaped layer into a `[3]` one (and, in the plain mean, a first client's smaller layer too) | Every result whose layer count, shapes or dtypes differ from the global model is refused with [`StrategyError::Mismatch`]; the server counts that client as failed | A wrongly shaped update is a bug or an attack, never a broadcastable value |
//! | `dtype-within-round` | Results of one round with different float dtypes are cast to the first result's dtype (in place) or promoted (plain mean) | A result whose dtypes differ from the round's first accepted result is refused with [`StrategyError::Mismatch`] (a float client layer where the global is another float width is accepted) | Streaming folds need one accumulator type per layer; mixed precisions within a round are a client bug |
//! | `multikrum-keep-more-than-results` | `num_clients_to_keep > K` slices with a negative start and averages only `num_clients_to_keep − K` clients | [`StrategyError::NotEnoughResults`] | Averaging fewer clients than asked (possibly including the outliers MultiKrum should drop) is an accident of Python slicing |
//! | `negative-num-examples` | Negative `num_examples` are used as weights | The result is refused with [`StrategyError::NegativeExamples`] | A negative weight can cancel the total and flip the mean |
//! | `complex-noise-multiplier` | `DPFedAvgAdaptive` with `noise_multiplier ≥ 2·clip_count_stddev` computes a complex noise multiplier (or divides by zero when the stddev is 0) | [`StrategyError::Config`] at construction | A complex standard deviation is meaningless; the modern adaptive wrappers raise the same ValueError |
//! | `zero-norm-update` | Server-side clipping divides by a zero update norm (ZeroDivisionError aborts the round) | [`StrategyError::ZeroNorm`] refuses that result | Same outcome for the round as an error, but typed |
//! | `missing-norm-bit` | A result without `norm_bit` / `dpfedavg_norm_bit` raises KeyError in `aggregate_fit` | That result is refused with [`StrategyError::MissingMetric`] (the DP wrappers then return no model, as for any failure) | The client is at fault, not the round |
//! | `adaptive-clip-no-results` | Adaptive clipping with zero results and zero failures divides by zero | The clipping norm is left unchanged and no model is returned | Nothing to adapt to |
//! | `xgb-cyclic-empty-sample` | `FedXgbCyclic.configure_fit` with an empty sample raises ZeroDivisionError | No instructions (the server skips the round, as for every other strategy) | An empty sample only means too few clients |
//! | `dp-integer-layers` | Clipping or noising an integer layer raises a NumPy casting error | Integer layers are clipped/noised as f64 and returned as f64 | Keeps integer layers usable under DP |
//! | `fedopt-initial-parameters` | The FedOpt family requires `initial_parameters` | Without them, the server weights are taken from the first global model given to `begin_fit` | The server may obtain the initial model from a client, as for FedAvg |
//! | `inplace-rounding` | In-place FedAvg rounds `x_k·(n_k/N)` to the layer dtype for each client, then adds in that dtype | `f32(x_k·n_k)` is added up in f32 (f64 for f64 layers) and divided by `N` once: the same roundings before the scaling instead of after; results differ by about an ulp (a single client's model is returned exactly, as in Flower; the plain mean is bit-equal) | `N` is only known after the last result: a streaming fold cannot scale by `n_k/N` |
//! | `qffl-summation-order` | QFedAvg sums `Δ_k/H` over clients | It sums `Δ_k` as results arrive and divides by `H = Σh_k` once (f64, last-bit differences) | Streaming |
//! | `float16-compute` | f16 layers are computed in f16 step by step (and the plain mean rounds `n_k` to f16, overflowing above 65504) | f16 layers are computed in f32 and rounded to f16 once | Avoids the overflow; results equal within f16 precision |
//! | `msg-bounded-wait` | Message-API strategies sleep 1 s and poll `get_node_ids()` forever while fewer than `max(min_available_nodes, sample_size)` nodes are connected | [`crate::msg::Grid::wait_for_nodes`] bounds the wait; when it gives up the phase fails with [`StrategyError::TooFewNodes`] (golden cases `edge_too_few_nodes_blocks`, `edge_min_train_nodes_exceeds_blocks`: Flower blocked where this port errors) | A server must not hang forever on a misconfigured minimum |
//! | `msg-dp-noise-source` | The message-API DP wrappers draw Gaussian noise (and the clipped-count noise) from NumPy's global generator | An OS-seeded ChaCha20 stream per wrapper (zero noise is still added, turning -0.0 into +0.0 as in Flower) | NumPy's global generator is shared, seedable by any code and not a cryptographic source |
//! | `msg-streaming-mean` | The message-API mean family (FedAvg, FedProx, FedAvgM, the FedOpt family) sums `x_k·f32(w_k/Σw)` over the replies of a round, all held in memory | Only where a grid streams (the server's `--aggregation-order arrival`): [`crate::msg::StreamingMean`] folds `f32(x_k·w_k)` as replies arrive and divides by `Σw` once (metrics: `Σ m_k·w_k / Σw`); about an ulp apart, a single reply exact. `msg::start` over a plain grid (and the golden test) is unchanged | Memory O(model) instead of O(replies × model); `Σw` is only known after the last reply |
//! | `integer-plain-mean-exact` | The plain mean multiplies integer layers by `n_k` in int64 (wrapping on overflow) | Exact 128-bit sums | No wrap-around |

use crate::StrategyError;

/// What a golden case must produce in this port instead of Flower's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// The fit step of `round` fails with the error named `error` (a
    /// [`StrategyError::kind`] value) at `begin_fit`, `accumulate_fit` or
    /// `aggregate_fit`; the case ends there.
    FitError {
        /// 1-based round.
        round: u64,
        /// [`StrategyError::kind`] of the error.
        error: &'static str,
    },
}

/// One documented deviation from Flower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deviation {
    /// Short identifier (see the module table).
    pub id: &'static str,
    /// What Flower does.
    pub flower: &'static str,
    /// What this crate does instead.
    pub here: &'static str,
    /// Why.
    pub reason: &'static str,
    /// Golden cases (file stems) whose outcome changes, with the expected
    /// outcome here.
    pub golden_cases: &'static [(&'static str, Expected)],
}

const fn fit_error(round: u64, error: &'static str) -> Expected {
    Expected::FitError { round, error }
}

/// Every deviation from Flower (same content as the module table).
pub const DEVIATIONS: &[Deviation] = &[
    Deviation {
        id: "inplace-integer-layers",
        flower: "in-place FedAvg casts n_k/N to the integer dtype: integer layers come out as 0",
        here: "UnsupportedLayer from begin_fit when the global model has an integer/bool layer and inplace = true",
        reason: "a silently zeroed layer corrupts the model; inplace = false averages integer layers into f64",
        golden_cases: &[("edge_mixed_dtypes_inplace", fit_error(1, "UnsupportedLayer"))],
    },
    Deviation {
        id: "zero-total-examples-plain",
        flower: "the plain mean with a zero total returns all-NaN arrays",
        here: "ZeroExamples",
        reason: "a NaN model is never useful and poisons later rounds",
        golden_cases: &[("edge_all_zero_num_examples_not_inplace", fit_error(1, "ZeroExamples"))],
    },
    Deviation {
        id: "shape-broadcasting",
        flower: "NumPy broadcasting silently averages differently shaped layers",
        here: "results whose layer count, shapes or dtypes differ from the global model are refused with Mismatch",
        reason: "a wrongly shaped update is a bug or an attack",
        golden_cases: &[
            ("edge_mismatch_broadcast_later_inplace", fit_error(1, "Mismatch")),
            ("edge_mismatch_broadcast_later_not_inplace", fit_error(1, "Mismatch")),
            ("edge_mismatch_broadcast_first_not_inplace", fit_error(1, "Mismatch")),
        ],
    },
    Deviation {
        id: "dtype-within-round",
        flower: "results with different float dtypes are cast to the first one (in place) or promoted (plain)",
        here: "a result whose dtypes differ from the round's first accepted result is refused with Mismatch",
        reason: "one accumulator type per layer; mixed precisions within a round are a client bug",
        golden_cases: &[],
    },
    Deviation {
        id: "multikrum-keep-more-than-results",
        flower: "num_clients_to_keep > K keeps only num_clients_to_keep - K clients (negative slice start)",
        here: "NotEnoughResults",
        reason: "an accident of Python slicing that may keep the outliers MultiKrum should drop",
        golden_cases: &[("edge_multikrum_keep_more_than_clients", fit_error(1, "NotEnoughResults"))],
    },
    Deviation {
        id: "negative-num-examples",
        flower: "negative num_examples are used as weights",
        here: "the result is refused with NegativeExamples",
        reason: "a negative weight can cancel the total and flip the mean",
        golden_cases: &[],
    },
    Deviation {
        id: "complex-noise-multiplier",
        flower: "DPFedAvgAdaptive with noise_multiplier >= 2*clip_count_stddev computes a complex noise multiplier",
        here: "Config error at construction",
        reason: "a complex standard deviation is meaningless",
        golden_cases: &[],
    },
    Deviation {
        id: "zero-norm-update",
        flower: "server-side clipping of a zero update raises ZeroDivisionError",
        here: "ZeroNorm refuses that result",
        reason: "same outcome for the round, typed",
        golden_cases: &[],
    },
    Deviation {
        id: "missing-norm-bit",
        flower: "a result without norm_bit / dpfedavg_norm_bit raises KeyError in aggregate_fit",
        here: "that result is refused with MissingMetric",
        reason: "the client is at fault, not the round",
        golden_cases: &[],
    },
    Deviation {
        id: "adaptive-clip-no-results",
        flower: "adaptive clipping with no results divides by zero",
        here: "the clipping norm is left unchanged",
        reason: "nothing to adapt to",
        golden_cases: &[],
    },
    Deviation {
        id: "xgb-cyclic-empty-sample",
        flower: "FedXgbCyclic.configure_fit with an empty sample raises ZeroDivisionError",
        here: "no instructions (the round is skipped)",
        reason: "an empty sample only means too few clients",
        golden_cases: &[],
    },
    Deviation {
        id: "dp-integer-layers",
        flower: "clipping or noising an integer layer raises a NumPy casting error",
        here: "integer layers are clipped/noised as f64",
        reason: "keeps integer layers usable under DP",
        golden_cases: &[],
    },
    Deviation {
        id: "fedopt-initial-parameters",
        flower: "the FedOpt family requires initial_parameters",
        here: "without them the server weights come from the first global model given to begin_fit",
        reason: "the server may obtain the initial model from a client",
        golden_cases: &[],
    },
    Deviation {
        id: "inplace-rounding",
        flower: "in-place FedAvg rounds x_k*(n_k/N) per client and adds in the layer dtype",
        here: "f32(x_k*n_k) summed in the layer dtype, divided by N once (about an ulp apart)",
        reason: "N is only known after the last result of a streaming fold",
        golden_cases: &[],
    },
    Deviation {
        id: "qffl-summation-order",
        flower: "QFedAvg sums Delta_k/H over clients",
        here: "sums Delta_k, divides by H once",
        reason: "streaming",
        golden_cases: &[],
    },
    Deviation {
        id: "float16-compute",
        flower: "f16 layers are computed step by step in f16 (n_k rounded to f16)",
        here: "f16 layers are computed in f32 and rounded once",
        reason: "avoids overflow above 65504",
        golden_cases: &[],
    },
    Deviation {
        id: "msg-bounded-wait",
        flower: "message-API sampling sleeps and polls get_node_ids() forever while too few nodes are connected",
        here: "Grid::wait_for_nodes bounds the wait; the phase then fails with TooFewNodes (golden_msg checks edge_too_few_nodes_blocks and edge_min_train_nodes_exceeds_blocks)",
        reason: "a server must not hang forever on a misconfigured minimum",
        golden_cases: &[],
    },
    Deviation {
        id: "msg-dp-noise-source",
        flower: "the message-API DP wrappers draw noise from NumPy's global generator",
        here: "an OS-seeded ChaCha20 stream per wrapper; zero noise is still added (-0.0 becomes +0.0)",
        reason: "NumPy's global generator is shared, seedable by any code and not a cryptographic source",
        golden_cases: &[],
    },
    Deviation {
        id: "msg-streaming-mean",
        flower: "the message-API mean family sums x_k·f32(w_k/Σw) over all replies of a round, held in memory",
        here: "where a grid streams (the server's arrival order), StreamingMean folds f32(x_k·w_k) as replies arrive and divides by Σw once; about an ulp apart, a single reply exact",
        reason: "memory O(model) instead of O(replies × model); Σw is only known after the last reply",
        golden_cases: &[],
    },
    Deviation {
        id: "integer-plain-mean-exact",
        flower: "int64 products and sums wrap on overflow",
        here: "exact 128-bit sums",
        reason: "no wrap-around",
        golden_cases: &[],
    },
];

/// The expected outcome of golden case `case` if a deviation changes it.
pub fn expected_for(case: &str) -> Option<(&'static Deviation, Expected)> {
    DEVIATIONS.iter().find_map(|d| {
        d.golden_cases
            .iter()
            .find(|(c, _)| *c == case)
            .map(|(_, e)| (d, *e))
    })
}

impl StrategyError {
    /// The variant's name (`"Mismatch"`, `"ZeroExamples"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            StrategyError::Decode { .. } => "Decode",
            StrategyError::Malformed(_) => "Malformed",
            StrategyError::Mismatch(_) => "Mismatch",
            StrategyError::ZeroExamples => "ZeroExamples",
            StrategyError::Config(_) => "Config",
            StrategyError::WrongRound { .. } => "WrongRound",
            StrategyError::Invariant(_) => "Invariant",
            StrategyError::UnsupportedLayer(_) => "UnsupportedLayer",
            StrategyError::NotEnoughResults { .. } => "NotEnoughResults",
            StrategyError::NegativeExamples(_) => "NegativeExamples",
            StrategyError::ZeroNorm => "ZeroNorm",
            StrategyError::MissingMetric(_) => "MissingMetric",
            StrategyError::Missing(_) => "Missing",
            StrategyError::State(_) => "State",
            StrategyError::InconsistentReplies(_) => "InconsistentReplies",
            StrategyError::Aggregation(_) => "Aggregation",
            StrategyError::Shape(_) => "Shape",
            StrategyError::TooFewNodes { .. } => "TooFewNodes",
            StrategyError::InPhase { .. } => "InPhase",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_cases_listed_once() {
        let mut ids: Vec<_> = DEVIATIONS.iter().map(|d| d.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), DEVIATIONS.len());
        let mut cases: Vec<_> = DEVIATIONS
            .iter()
            .flat_map(|d| d.golden_cases.iter().map(|(c, _)| *c))
            .collect();
        let n = cases.len();
        cases.sort_unstable();
        cases.dedup();
        assert_eq!(cases.len(), n);
        assert!(expected_for("edge_mixed_dtypes_inplace").is_some());
        assert!(expected_for("fedavg_inplace").is_none());
    }
}
