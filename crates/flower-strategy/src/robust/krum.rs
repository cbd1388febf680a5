//! [`Krum`] (and MultiKrum) and [`Bulyan`], which selects models by
//! repeated Krum.

use flower_core::{Parameters, NUMPY_TENSOR_TYPE};

use super::{median_model, nan_last, Collected, RobustRule, RobustStep};
use crate::aggregate::Composed;
use crate::fedavg::FedAvgOptions;
use crate::float::Float;
use crate::layers::{encode_all, pairwise_sum, Data, Layer};
use crate::mean::{MeanMode, WeightedMean};
use crate::StrategyError;

/// `‖a − b‖` of two flattened models, as `np.linalg.norm` computes it: the
/// difference in the models' dtype, the dot product (accumulated in f64
/// here), rounded to f32 for f32 models.
fn distance_norm(a: &[Layer], b: &[Layer], all_f32: bool) -> f64 {
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
    let mut d = vec![vec![0.0f64; k]; k];
    for i in 0..k {
        for j in (i + 1)..k {
            let norm = distance_norm(models[i], models[j], all_f32);
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

/// Krum (`to_keep == 0`): index of the selected model.
fn krum_select(models: &[&[Layer]], num_malicious: usize) -> usize {
    argmin(&krum_scores(&distance_matrix(models), num_malicious))
}

// ---- Krum --------------------------------------------------------------------

/// Flower's `Krum`; with `num_clients_to_keep > 0` it is MultiKrum.
///
/// Krum returns the arrays of the client with the lowest score unchanged.
/// MultiKrum averages (plain `num_examples`-weighted mean) the
/// `num_clients_to_keep` best clients, summed in descending score order as
/// Flower does; ties are broken by client order (Flower's unstable argsort
/// makes its tie order platform-dependent).
pub type Krum = Composed<RobustStep<KrumRule>>;

/// Krum's own arguments (Flower's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KrumOptions {
    /// Assumed number of malicious clients f (Flower's
    /// `num_malicious_clients`, default 0).
    pub num_malicious_clients: usize,
    /// MultiKrum: number of best clients averaged, 0 for Krum (Flower's
    /// `num_clients_to_keep`, default 0).
    pub num_clients_to_keep: usize,
}

/// [`Krum`]'s rule.
#[derive(Debug, Clone, Copy)]
pub struct KrumRule(KrumOptions);

impl Krum {
    /// Builds Krum.
    pub fn new(options: FedAvgOptions, krum: KrumOptions) -> Result<Self, StrategyError> {
        RobustStep::compose(options, KrumRule(krum))
    }
}

impl RobustRule for KrumRule {
    fn name(&self) -> &str {
        "Krum"
    }

    fn combine(&self, round: &Collected) -> Result<Parameters, StrategyError> {
        let KrumOptions {
            num_malicious_clients,
            num_clients_to_keep,
        } = self.0;
        let models = round.models();
        if num_clients_to_keep == 0 {
            let best = krum_select(&models, num_malicious_clients);
            let mut out = round.results[best].raw.clone();
            out.tensor_type = NUMPY_TENSOR_TYPE.to_owned();
            return Ok(out);
        }
        let k = models.len();
        if num_clients_to_keep > k {
            return Err(StrategyError::NotEnoughResults {
                rule: "MultiKrum",
                needed: num_clients_to_keep,
                got: k,
            });
        }
        let scores = krum_scores(&distance_matrix(&models), num_malicious_clients);
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| nan_last(scores[a], scores[b]).then(a.cmp(&b)));
        let mut selected: Vec<usize> = order.into_iter().take(num_clients_to_keep).collect();
        selected.reverse();
        let mut mean = WeightedMean::new(MeanMode::Plain, round.layout.clone())?;
        for i in selected {
            let r = &round.results[i];
            mean.add(&r.raw, r.num_examples)?;
        }
        Ok(encode_all(&mean.finish_layers()?))
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
pub type Bulyan = Composed<RobustStep<BulyanRule>>;

/// Bulyan's own arguments (Flower's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BulyanOptions {
    /// Assumed number of malicious clients f (Flower's
    /// `num_malicious_clients`, default 0).
    pub num_malicious_clients: usize,
    /// Flower's `aggregation_rule_kwargs["to_keep"]` (no default; Flower
    /// requires 0).
    pub to_keep: Option<usize>,
}

/// [`Bulyan`]'s rule.
#[derive(Debug, Clone, Copy)]
pub struct BulyanRule(BulyanOptions);

impl Bulyan {
    /// Builds Bulyan.
    pub fn new(options: FedAvgOptions, bulyan: BulyanOptions) -> Result<Self, StrategyError> {
        RobustStep::compose(options, BulyanRule(bulyan))
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
        // Flower looks the Krum pick up again by value (a NaN model is never found).
        let found = remaining
            .iter()
            .position(|m| same_model(m, remaining[best]))
            .ok_or(StrategyError::Invariant(
                "The reference weights not found in list_of_weights.",
            ))?;
        selected.push(pool.remove(found));
    }
    Ok(selected)
}

/// Mean of the `beta` values of the column closest to `med`.
fn closest_mean<T: Float>(column: &[T], med: T, beta: usize) -> T {
    let mut idx: Vec<usize> = (0..column.len()).collect();
    idx.sort_by(|&a, &b| {
        nan_last((column[a] - med).abs(), (column[b] - med).abs()).then(a.cmp(&b))
    });
    let mut sum = T::ZERO;
    for &i in idx.iter().take(beta) {
        sum += column[i];
    }
    sum / T::from_usize(beta)
}

/// Bulyan's second stage for one layer: per coordinate, the mean of the
/// `beta` values of `selected` closest to the median `med`.
pub(crate) fn closest_layer<T: Float>(
    selected: &[&[Layer]],
    l: usize,
    med: &[T],
    beta: usize,
) -> Data {
    T::data(
        med.iter()
            .enumerate()
            .map(|(i, &m)| {
                let column: Vec<T> = selected
                    .iter()
                    .map(|s| T::from_f64(s[l].data.get(i)))
                    .collect();
                closest_mean(&column, m, beta)
            })
            .collect(),
    )
}

impl RobustRule for BulyanRule {
    fn name(&self) -> &str {
        "Bulyan"
    }

    fn combine(&self, round: &Collected) -> Result<Parameters, StrategyError> {
        let f = self.0.num_malicious_clients;
        let k = round.results.len();
        let needed = f.saturating_mul(4).saturating_add(3);
        if k < needed {
            return Err(StrategyError::NotEnoughResults {
                rule: "Bulyan (4·num_malicious_clients + 3)",
                needed,
                got: k,
            });
        }
        match self.0.to_keep {
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
        let models = round.models();
        let selected: Vec<&[Layer]> = bulyan_select(&models, f, theta)?
            .into_iter()
            .map(|i| models[i])
            .collect();
        let median = median_model(&selected);
        let layers: Vec<Layer> = median
            .iter()
            .enumerate()
            .map(|(l, med)| {
                let data = match &med.data {
                    Data::F32(m) => closest_layer(&selected, l, m, beta),
                    Data::F64(m) => closest_layer(&selected, l, m, beta),
                };
                med.with_data(data)
            })
            .collect();
        Ok(encode_all(&layers))
    }
}
