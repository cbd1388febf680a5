//! Byzantine-robust aggregators: [`FedMedian`], [`FedTrimmedAvg`], [`Krum`]
//! (and MultiKrum), [`Bulyan`]. They need every update at once, so results
//! are kept (decoded) until `aggregate_fit`. `num_examples` is ignored except
//! by MultiKrum's final mean.

use std::cmp::Ordering;
use std::fmt;

use flower_core::{DType, FitRes, Metrics, Parameters, NUMPY_TENSOR_TYPE};

use crate::common::{current_round, forward_to_base, Base, RoundState};
use crate::fedavg::FedAvgOptions;
use crate::layers::{
    check_views, encode_all, pairwise_sum, parse_layout, parse_views, view_to_layer, Data,
    DtypeRule, Layer, LayerSpec,
};
use crate::mean::{MeanMode, WeightedMean};
use crate::strategy::{ClientFailure, ClientId, Strategy};
use crate::StrategyError;

/// One kept result.
struct Kept {
    num_examples: i64,
    layers: Vec<Layer>,
    raw: Parameters,
}

/// The results of one round, kept for a robust aggregator.
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
        let layers: Vec<Layer> = views.iter().map(view_to_layer).collect::<Result<_, _>>()?;
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
}

impl RoundState for Collected {
    fn server_round(&self) -> u64 {
        self.server_round
    }

    fn num_results(&self) -> usize {
        self.results.len()
    }
}

/// The round bookkeeping every robust aggregator shares.
struct RobustCore {
    base: Base,
    round: Option<Collected>,
}

impl RobustCore {
    fn new(options: FedAvgOptions) -> Result<Self, StrategyError> {
        Ok(RobustCore {
            base: Base::new(options)?,
            round: None,
        })
    }

    fn begin(&mut self, server_round: u64, global: &Parameters) -> Result<(), StrategyError> {
        self.round = None;
        self.round = Some(Collected::begin(server_round, global)?);
        Ok(())
    }

    fn accumulate(&mut self, server_round: u64, result: FitRes) -> Result<(), StrategyError> {
        current_round(&mut self.round, server_round)?.add(result)
    }

    /// The round's results if they are to be aggregated (gating passed).
    fn take(&mut self, server_round: u64, failures: &[ClientFailure]) -> Option<Collected> {
        self.base
            .take_gated(&mut self.round, server_round, failures)
    }
}

/// The [`Strategy`] methods every robust aggregator shares: the `Base`
/// forwards, and the round bookkeeping of [`RobustCore`].
macro_rules! delegate_common {
    () => {
        forward_to_base!(core.base => all);

        fn begin_fit(
            &mut self,
            server_round: u64,
            global: &Parameters,
        ) -> Result<(), StrategyError> {
            self.core.begin(server_round, global)
        }

        fn accumulate_fit(
            &mut self,
            server_round: u64,
            _client: ClientId,
            result: FitRes,
        ) -> Result<(), StrategyError> {
            self.core.accumulate(server_round, result)
        }
    };
}

// ---- per-coordinate helpers ------------------------------------------------

/// Total order with NaN last (NumPy's sort order).
fn nan_last(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Applies `f` to the column of coordinate `i` of layer `layer` across
/// `models`, building an output layer of the models' dtype.
fn per_coordinate(
    models: &[&[Layer]],
    layer: usize,
    f32op: impl Fn(&mut [f32]) -> f32,
    f64op: impl Fn(&mut [f64]) -> f64,
) -> Layer {
    let template = &models[0][layer];
    let n = template.len();
    let data = match &template.data {
        Data::F32(_) => {
            let mut column = Vec::with_capacity(models.len());
            Data::F32(
                (0..n)
                    .map(|i| {
                        column.clear();
                        column.extend(models.iter().map(|m| match &m[layer].data {
                            Data::F32(v) => v.get(i).copied().unwrap_or(f32::NAN),
                            Data::F64(v) => v.get(i).map_or(f32::NAN, |&x| x as f32),
                        }));
                        f32op(&mut column)
                    })
                    .collect(),
            )
        }
        Data::F64(_) => {
            let mut column = Vec::with_capacity(models.len());
            Data::F64(
                (0..n)
                    .map(|i| {
                        column.clear();
                        column.extend(models.iter().map(|m| m[layer].data.get(i)));
                        f64op(&mut column)
                    })
                    .collect(),
            )
        }
    };
    template.with_data(data)
}

macro_rules! median_fn {
    ($name:ident, $t:ty) => {
        /// `np.median` of one column: the middle value, or `(a+b)/2` in the
        /// dtype for an even count; NaN if any value is NaN.
        fn $name(column: &mut [$t]) -> $t {
            if column.is_empty() || column.iter().any(|x| x.is_nan()) {
                return <$t>::NAN;
            }
            column.sort_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
            let k = column.len();
            if k % 2 == 1 {
                column[k / 2]
            } else {
                (column[k / 2 - 1] + column[k / 2]) / 2.0
            }
        }
    };
}
median_fn!(median_f32, f32);
median_fn!(median_f64, f64);

macro_rules! trimmed_fn {
    ($name:ident, $t:ty) => {
        /// Mean of the column without its `cut` lowest and `cut` highest values.
        fn $name(column: &mut [$t], cut: usize) -> $t {
            column.sort_by(|a, b| nan_last(f64::from(*a), f64::from(*b)));
            let lo = cut.min(column.len());
            let hi = column.len().saturating_sub(cut).max(lo);
            let kept = &column[lo..hi];
            let mut sum: $t = 0.0;
            for x in kept {
                sum += *x;
            }
            sum / kept.len() as $t
        }
    };
}
trimmed_fn!(trimmed_f32, f32);
trimmed_fn!(trimmed_f64, f64);

fn median_model(models: &[&[Layer]]) -> Vec<Layer> {
    let Some(first) = models.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|l| per_coordinate(models, l, median_f32, median_f64))
        .collect()
}

fn fit_output(layers: &[Layer], metrics: Metrics) -> (Option<Parameters>, Metrics) {
    (Some(encode_all(layers)), metrics)
}

// ---- FedMedian ---------------------------------------------------------------

/// Flower's `FedMedian`: the coordinate-wise median of the clients' arrays
/// (even count: mean of the two middle values in the array dtype; NaN
/// propagates). Integer layers come out as f64, as with `np.median`.
pub struct FedMedian {
    core: RobustCore,
}

impl fmt::Debug for FedMedian {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FedMedian")
            .field("options", &self.core.base.opts)
            .finish_non_exhaustive()
    }
}

impl FedMedian {
    /// Builds FedMedian.
    pub fn new(options: FedAvgOptions) -> Result<Self, StrategyError> {
        Ok(FedMedian {
            core: RobustCore::new(options)?,
        })
    }
}

impl Strategy for FedMedian {
    fn name(&self) -> &str {
        "FedMedian"
    }

    delegate_common!();

    fn aggregate_fit(
        &mut self,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        let Some(round) = self.core.take(server_round, failures) else {
            return Ok((None, Metrics::new()));
        };
        let models: Vec<&[Layer]> = round.results.iter().map(|r| r.layers.as_slice()).collect();
        Ok(fit_output(
            &median_model(&models),
            self.core.base.fit_metrics(&round.metrics),
        ))
    }
}

// ---- FedTrimmedAvg -----------------------------------------------------------

/// Flower's `FedTrimmedAvg(beta)`: per coordinate, drop the `⌊β·K⌋` lowest
/// and highest values and average the rest in the array dtype.
pub struct FedTrimmedAvg {
    core: RobustCore,
    beta: f64,
}

impl fmt::Debug for FedTrimmedAvg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FedTrimmedAvg")
            .field("beta", &self.beta)
            .field("options", &self.core.base.opts)
            .finish_non_exhaustive()
    }
}

impl FedTrimmedAvg {
    /// Builds FedTrimmedAvg (Flower's default `beta = 0.2`); `beta` must be
    /// in `[0, 0.5)`.
    pub fn new(options: FedAvgOptions, beta: f64) -> Result<Self, StrategyError> {
        if !(0.0..0.5).contains(&beta) {
            return Err(StrategyError::Config(format!(
                "`beta` must be in the range [0, 0.5), got {beta}"
            )));
        }
        Ok(FedTrimmedAvg {
            core: RobustCore::new(options)?,
            beta,
        })
    }
}

impl Strategy for FedTrimmedAvg {
    fn name(&self) -> &str {
        "FedTrimmedAvg"
    }

    delegate_common!();

    fn aggregate_fit(
        &mut self,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        let Some(round) = self.core.take(server_round, failures) else {
            return Ok((None, Metrics::new()));
        };
        let models: Vec<&[Layer]> = round.results.iter().map(|r| r.layers.as_slice()).collect();
        let cut = (self.beta * models.len() as f64) as usize;
        let layers: Vec<Layer> = (0..models[0].len())
            .map(|l| per_coordinate(&models, l, |c| trimmed_f32(c, cut), |c| trimmed_f64(c, cut)))
            .collect();
        Ok(fit_output(
            &layers,
            self.core.base.fit_metrics(&round.metrics),
        ))
    }
}

// ---- Krum --------------------------------------------------------------------

/// `‖a − b‖` of two flattened models, as `np.linalg.norm` computes it: the
/// difference in the models' dtype, the dot product (accumulated in f64
/// here), rounded to f32 for f32 models.
fn distance_norm(a: &[&Layer], b: &[&Layer], all_f32: bool) -> f64 {
    let mut dot = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        match (&x.data, &y.data) {
            (Data::F32(u), Data::F32(v)) => {
                for (p, q) in u.iter().zip(v) {
                    let d = f64::from(p - q);
                    dot += d * d;
                }
            }
            (u, v) => {
                for i in 0..u.len().min(v.len()) {
                    let d = u.get(i) - v.get(i);
                    dot += d * d;
                }
            }
        }
    }
    if all_f32 {
        f64::from((dot as f32).sqrt())
    } else {
        dot.sqrt()
    }
}

/// Flower's `_compute_distances`: squared L2 distances between the
/// flattened models, with the norm taken (and squared) in f32 for f32 models.
fn distance_matrix(models: &[&[Layer]]) -> Vec<Vec<f64>> {
    let all_f32 = models.iter().all(|m| m.iter().all(|l| !l.data.is_f64()));
    let k = models.len();
    let refs: Vec<Vec<&Layer>> = models.iter().map(|m| m.iter().collect()).collect();
    let mut d = vec![vec![0.0f64; k]; k];
    for i in 0..k {
        for j in (i + 1)..k {
            let norm = distance_norm(&refs[i], &refs[j], all_f32);
            let sq = if all_f32 {
                let n = norm as f32;
                f64::from(n * n)
            } else {
                norm * norm
            };
            d[i][j] = sq;
            d[j][i] = sq;
        }
    }
    d
}

/// Krum scores: for each model, the sum of its `max(1, K−f−2)` smallest
/// distances to the others (the smallest entry, its distance to itself, is
/// skipped).
fn krum_scores(distances: &[Vec<f64>], num_malicious: usize) -> Vec<f64> {
    let k = distances.len();
    let closest = k.saturating_sub(num_malicious).saturating_sub(2).max(1);
    distances
        .iter()
        .map(|row| {
            let mut sorted = row.clone();
            sorted.sort_by(|a, b| nan_last(*a, *b));
            let end = (closest + 1).min(sorted.len());
            let picked = sorted.get(1..end).unwrap_or(&[]);
            pairwise_sum(picked)
        })
        .collect()
}

/// `np.argmin`: the first minimum (a NaN counts as the minimum).
fn argmin(scores: &[f64]) -> usize {
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return i;
    }
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if *s < scores[best] {
            best = i;
        }
    }
    best
}

/// Flower's `Krum`; with `num_clients_to_keep > 0` it is MultiKrum.
///
/// Krum returns the arrays of the client with the lowest score unchanged.
/// MultiKrum averages (plain `num_examples`-weighted mean) the
/// `num_clients_to_keep` best clients, summed in descending score order as
/// Flower does; ties are broken by client order (Flower's unstable argsort
/// makes its tie order platform-dependent).
pub struct Krum {
    core: RobustCore,
    num_malicious_clients: usize,
    num_clients_to_keep: usize,
}

impl fmt::Debug for Krum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Krum")
            .field("num_malicious_clients", &self.num_malicious_clients)
            .field("num_clients_to_keep", &self.num_clients_to_keep)
            .field("options", &self.core.base.opts)
            .finish_non_exhaustive()
    }
}

impl Krum {
    /// Builds Krum (Flower's defaults: `num_malicious_clients = 0`,
    /// `num_clients_to_keep = 0`).
    pub fn new(
        options: FedAvgOptions,
        num_malicious_clients: usize,
        num_clients_to_keep: usize,
    ) -> Result<Self, StrategyError> {
        Ok(Krum {
            core: RobustCore::new(options)?,
            num_malicious_clients,
            num_clients_to_keep,
        })
    }
}

/// Krum (`to_keep == 0`): index of the selected model.
fn krum_select(models: &[&[Layer]], num_malicious: usize) -> usize {
    argmin(&krum_scores(&distance_matrix(models), num_malicious))
}

impl Strategy for Krum {
    fn name(&self) -> &str {
        "Krum"
    }

    delegate_common!();

    fn aggregate_fit(
        &mut self,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        let Some(round) = self.core.take(server_round, failures) else {
            return Ok((None, Metrics::new()));
        };
        let models: Vec<&[Layer]> = round.results.iter().map(|r| r.layers.as_slice()).collect();
        let metrics = self.core.base.fit_metrics(&round.metrics);
        if self.num_clients_to_keep == 0 {
            let best = krum_select(&models, self.num_malicious_clients);
            let mut out = round.results[best].raw.clone();
            out.tensor_type = NUMPY_TENSOR_TYPE.to_owned();
            return Ok((Some(out), metrics));
        }
        let k = models.len();
        if self.num_clients_to_keep > k {
            return Err(StrategyError::NotEnoughResults {
                rule: "MultiKrum",
                needed: self.num_clients_to_keep,
                got: k,
            });
        }
        let scores = krum_scores(&distance_matrix(&models), self.num_malicious_clients);
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| nan_last(scores[a], scores[b]).then(a.cmp(&b)));
        let mut selected: Vec<usize> = order.into_iter().take(self.num_clients_to_keep).collect();
        selected.reverse();
        let mut mean = WeightedMean::new(MeanMode::Plain, round.layout.clone())?;
        for i in selected {
            let r = &round.results[i];
            mean.add(&r.raw, r.num_examples)?;
        }
        Ok(fit_output(&mean.finish_layers()?, metrics))
    }
}

// ---- Bulyan ------------------------------------------------------------------

/// Flower's `Bulyan` with its only first aggregation rule, Krum.
///
/// Needs `K ≥ 4f+3` results. `θ = K−2f` models are picked by repeated Krum,
/// then per coordinate the `β = θ−2f` values closest to the median of the
/// picked ones are averaged (array dtype).
///
/// Flower requires the Krum keyword `to_keep = 0` in
/// `aggregation_rule_kwargs`; without it (`None`) aggregation fails with
/// [`StrategyError::Missing`] (Flower: TypeError), with `to_keep > 0` with
/// [`StrategyError::Config`] (Flower: ValueError).
pub struct Bulyan {
    core: RobustCore,
    num_malicious_clients: usize,
    to_keep: Option<usize>,
}

impl fmt::Debug for Bulyan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulyan")
            .field("num_malicious_clients", &self.num_malicious_clients)
            .field("to_keep", &self.to_keep)
            .field("options", &self.core.base.opts)
            .finish_non_exhaustive()
    }
}

impl Bulyan {
    /// Builds Bulyan (Flower's default `num_malicious_clients = 0`; `to_keep`
    /// is Flower's `aggregation_rule_kwargs["to_keep"]`).
    pub fn new(
        options: FedAvgOptions,
        num_malicious_clients: usize,
        to_keep: Option<usize>,
    ) -> Result<Self, StrategyError> {
        Ok(Bulyan {
            core: RobustCore::new(options)?,
            num_malicious_clients,
            to_keep,
        })
    }
}

fn same_model(a: &[Layer], b: &[Layer]) -> bool {
    // np.array_equal: NaN never equals NaN.
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.shape == y.shape
                && x.len() == y.len()
                && (0..x.len()).all(|i| x.data.get(i) == y.data.get(i))
        })
}

/// Indices (into `models`) of Bulyan's selection, in selection order.
fn bulyan_select(models: &[&[Layer]], f: usize, theta: usize) -> Result<Vec<usize>, StrategyError> {
    let mut pool: Vec<usize> = (0..models.len()).collect();
    let mut selected = Vec::with_capacity(theta);
    for _ in 0..theta {
        let remaining: Vec<&[Layer]> = pool.iter().map(|&i| models[i]).collect();
        let best = krum_select(&remaining, f);
        let found = remaining
            .iter()
            .position(|m| same_model(m, remaining[best]))
            .ok_or_else(|| {
                StrategyError::Other("The reference weights not found in list_of_weights.".into())
            })?;
        selected.push(pool.remove(found));
    }
    Ok(selected)
}

macro_rules! closest_mean_fn {
    ($name:ident, $t:ty) => {
        /// Mean of the `beta` values of the column closest to `med`.
        fn $name(column: &[$t], med: $t, beta: usize) -> $t {
            let mut idx: Vec<usize> = (0..column.len()).collect();
            idx.sort_by(|&a, &b| {
                nan_last(
                    f64::from((column[a] - med).abs()),
                    f64::from((column[b] - med).abs()),
                )
                .then(a.cmp(&b))
            });
            let mut sum: $t = 0.0;
            for &i in idx.iter().take(beta) {
                sum += column[i];
            }
            sum / beta as $t
        }
    };
}
closest_mean_fn!(closest_mean_f32, f32);
closest_mean_fn!(closest_mean_f64, f64);

impl Strategy for Bulyan {
    fn name(&self) -> &str {
        "Bulyan"
    }

    delegate_common!();

    fn aggregate_fit(
        &mut self,
        server_round: u64,
        failures: &[ClientFailure],
    ) -> Result<(Option<Parameters>, Metrics), StrategyError> {
        let Some(round) = self.core.take(server_round, failures) else {
            return Ok((None, Metrics::new()));
        };
        let f = self.num_malicious_clients;
        let k = round.results.len();
        let needed = f.saturating_mul(4).saturating_add(3);
        if k < needed {
            return Err(StrategyError::NotEnoughResults {
                rule: "Bulyan (4·num_malicious_clients + 3)",
                needed,
                got: k,
            });
        }
        match self.to_keep {
            None => {
                return Err(StrategyError::Missing(
                    "Bulyan's Krum rule needs aggregation_rule_kwargs to_keep = 0".into(),
                ))
            }
            Some(0) => {}
            Some(n) => {
                return Err(StrategyError::Config(format!(
                    "Bulyan needs a first aggregation rule returning one of the models; Krum with to_keep = {n} averages"
                )))
            }
        }
        let theta = k - 2 * f;
        let beta = theta - 2 * f;
        let models: Vec<&[Layer]> = round.results.iter().map(|r| r.layers.as_slice()).collect();
        let selected: Vec<&[Layer]> = bulyan_select(&models, f, theta)?
            .into_iter()
            .map(|i| models[i])
            .collect();
        let median = median_model(&selected);
        let layers: Vec<Layer> = median
            .iter()
            .enumerate()
            .map(|(l, med)| {
                let n = med.len();
                let data = match &med.data {
                    Data::F32(m) => Data::F32(
                        (0..n)
                            .map(|i| {
                                let column: Vec<f32> =
                                    selected.iter().map(|s| s[l].data.get(i) as f32).collect();
                                closest_mean_f32(&column, m[i], beta)
                            })
                            .collect(),
                    ),
                    Data::F64(m) => Data::F64(
                        (0..n)
                            .map(|i| {
                                let column: Vec<f64> =
                                    selected.iter().map(|s| s[l].data.get(i)).collect();
                                closest_mean_f64(&column, m[i], beta)
                            })
                            .collect(),
                    ),
                };
                med.with_data(data)
            })
            .collect();
        Ok(fit_output(
            &layers,
            self.core.base.fit_metrics(&round.metrics),
        ))
    }
}
