//! Byzantine-robust aggregators: [`FedMedian`], [`FedTrimmedAvg`], [`Krum`]
//! (and MultiKrum), [`Bulyan`]. They need every update at once, so results
//! are kept (decoded) until `aggregate`. `num_examples` is ignored except
//! by MultiKrum's final mean.

mod krum;

use std::cmp::Ordering;
use std::fmt;

use flower_core::{DType, FitRes, Metrics, Parameters};

use crate::aggregate::{Aggregate, Composed};
use crate::bookkeeping::{current_round, Bookkeeping, Policy, RoundState};
use crate::fedavg::FedAvgOptions;
use crate::float::Float;
use crate::layers::{
    check_views, encode_all, parse_layout, parse_views, views_to_layers, DtypeRule, Layer,
    LayerSpec,
};
use crate::strategy::{ClientFailure, ClientId};
use crate::StrategyError;

pub(crate) use krum::closest_layer;
pub use krum::{Bulyan, BulyanOptions, BulyanRule, Krum, KrumOptions, KrumRule};

/// One kept result.
#[derive(Debug)]
struct Kept {
    num_examples: i64,
    layers: Vec<Layer>,
    raw: Parameters,
}

/// The results of one round, kept for a robust aggregator.
#[derive(Debug)]
struct Collected {
    server_round: u64,
    layout: Vec<LayerSpec>,
    first: Option<Vec<DType>>,
    results: Vec<Kept>,
    metrics: Vec<(i64, Metrics)>,
}

impl Collected {
    fn begin(server_round: u64, global: &Parameters) -> Result<Self, StrategyError> {
        Ok(Collected {
            server_round,
            layout: parse_layout(global)?,
            first: None,
            results: Vec::new(),
            metrics: Vec::new(),
        })
    }

    fn add(&mut self, result: FitRes) -> Result<(), StrategyError> {
        let views = parse_views(&result.parameters)?;
        check_views(
            &self.layout,
            &views,
            DtypeRule::FloatWidthOrInt,
            self.first.as_deref(),
        )?;
        let layers = views_to_layers(&views)?;
        if self.first.is_none() {
            self.first = Some(views.iter().map(|v| v.dtype).collect());
        }
        drop(views);
        self.metrics.push((result.num_examples, result.metrics));
        self.results.push(Kept {
            num_examples: result.num_examples,
            layers,
            raw: result.parameters,
        });
        Ok(())
    }

    fn models(&self) -> Vec<&[Layer]> {
        self.results.iter().map(|r| r.layers.as_slice()).collect()
    }
}

impl RoundState for Collected {
    fn server_round(&self) -> u64 {
        self.server_round
    }

    fn num_results(&self) -> usize {
        self.results.len()
    }
}

/// How a robust aggregator combines the kept results of a round.
trait RobustRule: Send + fmt::Debug {
    /// Flower's class name.
    fn name(&self) -> &str;
    /// The new model (the round passed the gate, so it has results).
    fn combine(&self, round: &Collected) -> Result<Parameters, StrategyError>;
}

/// The aggregation step of the robust aggregators: every result is kept,
/// then the rule `R` combines them.
#[derive(Debug)]
pub struct RobustStep<R> {
    rule: R,
    round: Option<Collected>,
}

impl<R> RobustStep<R> {
    fn compose(options: FedAvgOptions, rule: R) -> Result<Composed<Self>, StrategyError> {
        Ok(Composed {
            book: Bookkeeping::new(options, Policy::default())?,
            step: RobustStep { rule, round: None },
        })
    }
}

impl<R: RobustRule> Aggregate for RobustStep<R> {
    fn name(&self) -> &str {
        self.rule.name()
    }

    fn begin(
        &mut self,
        _book: &Bookkeeping,
        server_round: u64,
        global: &Parameters,
    ) -> Result<(), StrategyError> {
        self.round = None;
        self.round = Some(Collected::begin(server_round, global)?);
        Ok(())
    }

    fn accumulate(
        &mut self,
        server_round: u64,
        _client: ClientId,
        result: FitRes,
    ) -> Result<(), StrategyError> {
        current_round(&mut self.round, server_round)?.add(result)
    }

    fn aggregate(
        &mut self,
        book: &mut Bookkeeping,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        let Some(round) = book.take_gated(&mut self.round, server_round, failures) else {
            return Ok((None, Metrics::new()));
        };
        let metrics = book.fit_metrics(&round.metrics);
        Ok((Some(self.rule.combine(&round)?), metrics))
    }
}

// ---- per-coordinate helpers ------------------------------------------------

/// Total order with NaN last (NumPy's sort order).
pub(crate) fn nan_last<T: Float>(a: T, b: T) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// A reduction of one coordinate's column of values to one value.
pub(crate) trait ColumnOp {
    fn apply<T: Float>(&self, column: &mut [T]) -> T;
}

/// Coordinate `i` of layer `layer` of every model, as `T` (an f64 value in
/// an f32 model is rounded, as NumPy's stacking would).
fn column<T: Float>(models: &[&[Layer]], layer: usize, i: usize, out: &mut Vec<T>) {
    out.clear();
    out.extend(models.iter().map(|m| T::from_f64(m[layer].data.get(i))));
}

/// Applies `op` to every coordinate of layer `layer` across `models`,
/// building an output layer of the first model's dtype.
pub(crate) fn per_coordinate(models: &[&[Layer]], layer: usize, op: &impl ColumnOp) -> Layer {
    fn run<T: Float>(models: &[&[Layer]], layer: usize, op: &impl ColumnOp) -> Vec<T> {
        let mut col = Vec::with_capacity(models.len());
        (0..models[0][layer].len())
            .map(|i| {
                column::<T>(models, layer, i, &mut col);
                op.apply(&mut col)
            })
            .collect()
    }
    let template = &models[0][layer];
    let data = if template.data.is_f64() {
        f64::data(run::<f64>(models, layer, op))
    } else {
        f32::data(run::<f32>(models, layer, op))
    };
    template.with_data(data)
}

/// `np.median` of one column: the middle value, or `(a+b)/2` in the dtype
/// for an even count; NaN if any value is NaN.
pub(crate) struct Median;

impl ColumnOp for Median {
    fn apply<T: Float>(&self, column: &mut [T]) -> T {
        if column.is_empty() || column.iter().any(|x| x.is_nan()) {
            return T::NAN;
        }
        column.sort_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
        let k = column.len();
        if k % 2 == 1 {
            column[k / 2]
        } else {
            (column[k / 2 - 1] + column[k / 2]) / T::TWO
        }
    }
}

/// Mean of the column without its `cut` lowest and `cut` highest values.
pub(crate) struct Trimmed {
    pub(crate) cut: usize,
}

impl ColumnOp for Trimmed {
    fn apply<T: Float>(&self, column: &mut [T]) -> T {
        column.sort_by(|a, b| nan_last(*a, *b));
        let lo = self.cut.min(column.len());
        let hi = column.len().saturating_sub(self.cut).max(lo);
        let kept = &column[lo..hi];
        let mut sum = T::ZERO;
        for x in kept {
            sum += *x;
        }
        sum / T::from_usize(kept.len())
    }
}

/// The coordinate-wise median model.
pub(crate) fn median_model(models: &[&[Layer]]) -> Vec<Layer> {
    let Some(first) = models.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|l| per_coordinate(models, l, &Median))
        .collect()
}

// ---- FedMedian ---------------------------------------------------------------

/// Flower's `FedMedian`: the coordinate-wise median of the clients' arrays
/// (even count: mean of the two middle values in the array dtype; NaN
/// propagates). Integer layers come out as f64, as with `np.median`.
pub type FedMedian = Composed<RobustStep<FedMedianRule>>;

/// [`FedMedian`]'s rule.
#[derive(Debug, Clone, Copy, Default)]
pub struct FedMedianRule;

impl FedMedian {
    /// Builds FedMedian.
    pub fn new(options: FedAvgOptions) -> Result<Self, StrategyError> {
        RobustStep::compose(options, FedMedianRule)
    }
}

impl RobustRule for FedMedianRule {
    fn name(&self) -> &str {
        "FedMedian"
    }

    fn combine(&self, round: &Collected) -> Result<Parameters, StrategyError> {
        Ok(encode_all(&median_model(&round.models())))
    }
}

// ---- FedTrimmedAvg -----------------------------------------------------------

/// Flower's `FedTrimmedAvg(beta)`: per coordinate, drop the `⌊β·K⌋` lowest
/// and highest values and average the rest in the array dtype.
pub type FedTrimmedAvg = Composed<RobustStep<FedTrimmedAvgRule>>;

/// FedTrimmedAvg's own argument (Flower's default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FedTrimmedAvgOptions {
    /// Fraction cut at each end, in `[0, 0.5)` (Flower's `beta`, default 0.2).
    pub beta: f64,
}

impl Default for FedTrimmedAvgOptions {
    fn default() -> Self {
        FedTrimmedAvgOptions { beta: 0.2 }
    }
}

/// [`FedTrimmedAvg`]'s rule.
#[derive(Debug, Clone, Copy)]
pub struct FedTrimmedAvgRule {
    beta: f64,
}

impl FedTrimmedAvg {
    /// Builds FedTrimmedAvg; `beta` must be in `[0, 0.5)`.
    pub fn new(options: FedAvgOptions, trim: FedTrimmedAvgOptions) -> Result<Self, StrategyError> {
        let beta = trim.beta;
        if !(0.0..0.5).contains(&beta) {
            return Err(StrategyError::Config(format!(
                "`beta` must be in the range [0, 0.5), got {beta}"
            )));
        }
        RobustStep::compose(options, FedTrimmedAvgRule { beta })
    }
}

impl RobustRule for FedTrimmedAvgRule {
    fn name(&self) -> &str {
        "FedTrimmedAvg"
    }

    fn combine(&self, round: &Collected) -> Result<Parameters, StrategyError> {
        let models = round.models();
        let op = Trimmed {
            cut: (self.beta * models.len() as f64) as usize,
        };
        let layers: Vec<Layer> = (0..models[0].len())
            .map(|l| per_coordinate(&models, l, &op))
            .collect();
        Ok(encode_all(&layers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_trimmed_mean_in_both_widths() {
        assert_eq!(Median.apply(&mut [3.0f32, 1.0, 2.0]), 2.0);
        assert_eq!(Median.apply(&mut [4.0f64, 1.0, 2.0, 3.0]), 2.5);
        assert!(Median.apply(&mut [1.0f32, f32::NAN]).is_nan());
        assert_eq!(Trimmed { cut: 1 }.apply(&mut [9.0f64, 1.0, 2.0, 4.0]), 3.0);
        // NaN sorts last, so it is cut with the highest values.
        assert_eq!(
            Trimmed { cut: 1 }.apply(&mut [f32::NAN, 1.0, 2.0, 3.0]),
            2.5
        );
    }
}
