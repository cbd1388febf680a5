//! The message-API robust aggregators: FedMedian, FedTrimmedAvg, Krum,
//! MultiKrum and Bulyan. They need every reply at once (as in Flower) and
//! reuse the legacy catalog's per-coordinate kernels.

use super::fedavg::{aggregate_arrayrecords, weight_factors, FedAvg, FedAvgOptions};
use super::records::{
    Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict, Reply,
};
use super::{Grid, MsgStrategy};
use crate::layers::{pairwise_sum, Data, Layer};
use crate::robust::{closest_layer, median_model, per_coordinate, Trimmed};
use crate::StrategyError;

macro_rules! delegate_configure {
    () => {
        fn configure_train(
            &mut self,
            server_round: u64,
            arrays: &ArrayRecord,
            config: &mut ConfigRecord,
            grid: &mut dyn Grid,
        ) -> Result<Vec<Message>, StrategyError> {
            self.base
                .configure(server_round, arrays, config, grid, MessageType::Train)
        }

        fn configure_evaluate(
            &mut self,
            server_round: u64,
            arrays: &ArrayRecord,
            config: &mut ConfigRecord,
            grid: &mut dyn Grid,
        ) -> Result<Vec<Message>, StrategyError> {
            self.base
                .configure(server_round, arrays, config, grid, MessageType::Evaluate)
        }

        fn aggregate_evaluate(
            &mut self,
            _server_round: u64,
            replies: Vec<Reply>,
        ) -> Result<Option<MetricRecord>, StrategyError> {
            self.base.aggregate_evaluate_records(&replies)
        }
    };
}

/// The arrays of each record under the first record's ArrayRecord key, in
/// that first record's key order (what Flower stacks), decoded.
fn stacked(records: &[&RecordDict]) -> Result<(Vec<String>, Vec<Vec<Layer>>), StrategyError> {
    let first = records
        .first()
        .and_then(|r| r.array_records().next())
        .ok_or_else(|| StrategyError::InconsistentReplies("no ArrayRecord".into()))?;
    let (record_key, arrays) = first;
    let keys: Vec<String> = arrays.keys().map(str::to_owned).collect();
    let mut models = Vec::with_capacity(records.len());
    for r in records {
        let Some(super::Record::Arrays(a)) = r.get(record_key) else {
            return Err(StrategyError::InconsistentReplies(format!(
                "a reply has no ArrayRecord {record_key:?}"
            )));
        };
        let layers = keys
            .iter()
            .map(|k| {
                a.get(k)
                    .ok_or_else(|| StrategyError::InconsistentReplies(format!("no array {k:?}")))?
                    .layer()
            })
            .collect::<Result<Vec<_>, _>>()?;
        models.push(layers);
    }
    check_stackable(&models)?;
    Ok((keys, models))
}

/// `np.stack` refuses arrays of different shapes.
fn check_stackable(models: &[Vec<Layer>]) -> Result<(), StrategyError> {
    if let Some(first) = models.first() {
        for m in &models[1..] {
            if m.len() != first.len() || m.iter().zip(first).any(|(a, b)| a.shape != b.shape) {
                return Err(StrategyError::Shape(
                    "replies' arrays have different shapes".into(),
                ));
            }
        }
    }
    Ok(())
}

fn to_record(keys: &[String], layers: &[Layer]) -> ArrayRecord {
    keys.iter()
        .zip(layers)
        .map(|(k, l)| (k.clone(), Array::of_layer(l)))
        .collect()
}

/// Flower's message-API `FedMedian` (`trimmed_beta = None`) and
/// `FedTrimmedAvg` (`Some(beta)`).
#[derive(Debug, Clone)]
pub struct FedMedian {
    base: FedAvg,
    trimmed_beta: Option<f64>,
}

impl FedMedian {
    /// The coordinate-wise median.
    pub fn new(opts: FedAvgOptions) -> Result<Self, StrategyError> {
        Ok(FedMedian {
            base: FedAvg::new(opts)?,
            trimmed_beta: None,
        })
    }

    /// FedTrimmedAvg: the coordinate-wise mean without the `int(beta·n)`
    /// lowest and highest values (Flower's default beta: 0.2; it must be in
    /// `[0, 0.5)`).
    pub fn trimmed(opts: FedAvgOptions, beta: f64) -> Result<Self, StrategyError> {
        if !(0.0..0.5).contains(&beta) {
            return Err(StrategyError::Config(format!(
                "beta must be in [0, 0.5), got {beta}"
            )));
        }
        Ok(FedMedian {
            base: FedAvg::new(opts)?,
            trimmed_beta: Some(beta),
        })
    }
}

impl MsgStrategy for FedMedian {
    fn name(&self) -> &str {
        if self.trimmed_beta.is_some() {
            "FedTrimmedAvg"
        } else {
            "FedMedian"
        }
    }

    fn aggregate_train(
        &mut self,
        _server_round: u64,
        replies: Vec<Reply>,
    ) -> Result<(Option<ArrayRecord>, Option<MetricRecord>), StrategyError> {
        let valid = self.base.valid(&replies, true)?;
        if valid.is_empty() {
            return Ok((None, None));
        }
        let (keys, models) = stacked(&valid)?;
        let refs: Vec<&[Layer]> = models.iter().map(Vec::as_slice).collect();
        let layers = match self.trimmed_beta {
            None => median_model(&refs),
            Some(beta) => {
                let op = Trimmed {
                    cut: (beta * refs.len() as f64) as usize,
                };
                (0..keys.len())
                    .map(|l| per_coordinate(&refs, l, &op))
                    .collect()
            }
        };
        let metrics = self.base.train_metrics(&valid)?;
        Ok((Some(to_record(&keys, &layers)), Some(metrics)))
    }

    delegate_configure!();
}

/// Flower's `compute_distances`: `‖a‖² + ‖b‖² − 2a·b` of the flattened
/// replies, in f32 for f32 models (the dot products are accumulated in
/// f64 and rounded, where Flower's BLAS accumulates in f32).
fn distances(models: &[Vec<Layer>]) -> Vec<Vec<f64>> {
    let all_f32 = models.iter().all(|m| m.iter().all(|l| !l.data.is_f64()));
    let flat: Vec<Vec<f64>> = models
        .iter()
        .map(|m| m.iter().flat_map(|l| l.data.to_f64()).collect())
        .collect();
    let norms: Vec<f64> = models
        .iter()
        .zip(&flat)
        .map(|(m, f)| {
            if all_f32 {
                let sq: Vec<f32> = m
                    .iter()
                    .flat_map(|l| match &l.data {
                        Data::F32(v) => v.iter().map(|x| x * x).collect::<Vec<_>>(),
                        Data::F64(_) => Vec::new(),
                    })
                    .collect();
                f64::from(pairwise_sum(&sq))
            } else {
                let sq: Vec<f64> = f.iter().map(|x| x * x).collect();
                pairwise_sum(&sq)
            }
        })
        .collect();
    let k = models.len();
    let mut d = vec![vec![0.0; k]; k];
    for i in 0..k {
        for j in 0..k {
            let dot: f64 = flat[i].iter().zip(&flat[j]).map(|(a, b)| a * b).sum();
            d[i][j] = if all_f32 {
                let (ni, nj, dot) = (norms[i] as f32, norms[j] as f32, dot as f32);
                f64::from((ni + nj) - 2.0 * dot)
            } else {
                (norms[i] + norms[j]) - 2.0 * dot
            };
        }
    }
    d
}

/// Indices sorting `v` ascending; ties by index (Flower's argsort is not
/// stable: the golden README recommends this rule).
fn argsort(v: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| crate::robust::nan_last(v[a], v[b]).then(a.cmp(&b)));
    idx
}

/// Flower's `select_multikrum`: the indices of the `num_nodes_to_select`
/// lowest Krum scores, in ascending score order.
fn select_multikrum(models: &[Vec<Layer>], f: usize, num_nodes_to_select: usize) -> Vec<usize> {
    let d = distances(models);
    let n = models.len();
    let num_closest = n.saturating_sub(f).saturating_sub(2).max(1);
    let scores: Vec<f64> = d
        .iter()
        .map(|row| {
            let order = argsort(row);
            let picked: Vec<f64> = order
                .iter()
                .skip(1)
                .take(num_closest)
                .map(|&j| row[j])
                .collect();
            picked.iter().sum()
        })
        .collect();
    argsort(&scores)
        .into_iter()
        .take(num_nodes_to_select)
        .collect()
}

/// Flower's message-API `Krum` (`num_nodes_to_select = 1`) and `MultiKrum`.
#[derive(Debug, Clone)]
pub struct MultiKrum {
    base: FedAvg,
    num_malicious_nodes: usize,
    num_nodes_to_select: usize,
    krum: bool,
}

impl MultiKrum {
    /// Krum: the single reply with the lowest score (default
    /// `num_malicious_nodes = 0`).
    pub fn krum(opts: FedAvgOptions, num_malicious_nodes: usize) -> Result<Self, StrategyError> {
        Ok(MultiKrum {
            base: FedAvg::new(opts)?,
            num_malicious_nodes,
            num_nodes_to_select: 1,
            krum: true,
        })
    }

    /// MultiKrum: the weighted mean of the `num_nodes_to_select` (default 1)
    /// lowest-score replies (all of them when there are fewer).
    pub fn new(
        opts: FedAvgOptions,
        num_malicious_nodes: usize,
        num_nodes_to_select: usize,
    ) -> Result<Self, StrategyError> {
        Ok(MultiKrum {
            base: FedAvg::new(opts)?,
            num_malicious_nodes,
            num_nodes_to_select,
            krum: false,
        })
    }
}

impl MsgStrategy for MultiKrum {
    fn name(&self) -> &str {
        if self.krum {
            "Krum"
        } else {
            "MultiKrum"
        }
    }

    fn aggregate_train(
        &mut self,
        _server_round: u64,
        replies: Vec<Reply>,
    ) -> Result<(Option<ArrayRecord>, Option<MetricRecord>), StrategyError> {
        let valid = self.base.valid(&replies, true)?;
        if valid.is_empty() {
            return Ok((None, None));
        }
        let (_, models) = stacked(&valid)?;
        let chosen: Vec<&RecordDict> =
            select_multikrum(&models, self.num_malicious_nodes, self.num_nodes_to_select)
                .into_iter()
                .map(|i| valid[i])
                .collect();
        let factors = weight_factors(&chosen, &self.base.options().weighted_by_key)?;
        let arrays = aggregate_arrayrecords(&chosen, &factors)?;
        let metrics = self.base.train_metrics(&chosen)?;
        Ok((Some(arrays), Some(metrics)))
    }

    delegate_configure!();
}

/// Flower's message-API `Bulyan` (default `num_malicious_nodes = 0`).
#[derive(Debug, Clone)]
pub struct Bulyan {
    base: FedAvg,
    num_malicious_nodes: usize,
}

impl Bulyan {
    /// Bulyan with MultiKrum selection.
    pub fn new(opts: FedAvgOptions, num_malicious_nodes: usize) -> Result<Self, StrategyError> {
        Ok(Bulyan {
            base: FedAvg::new(opts)?,
            num_malicious_nodes,
        })
    }
}

impl MsgStrategy for Bulyan {
    fn name(&self) -> &str {
        "Bulyan"
    }

    fn aggregate_train(
        &mut self,
        _server_round: u64,
        replies: Vec<Reply>,
    ) -> Result<(Option<ArrayRecord>, Option<MetricRecord>), StrategyError> {
        let valid = self.base.valid(&replies, true)?;
        let f = self.num_malicious_nodes;
        if valid.len() < 4 * f + 3 {
            return Ok((None, None));
        }
        let theta = valid.len() - 2 * f;
        let beta = theta - 2 * f;
        let (_, models) = stacked(&valid)?;
        let chosen_idx = select_multikrum(&models, f, theta);
        let chosen: Vec<&RecordDict> = chosen_idx.iter().map(|&i| valid[i]).collect();
        let (keys, selected) = stacked(&chosen)?;
        let refs: Vec<&[Layer]> = selected.iter().map(Vec::as_slice).collect();
        let med = median_model(&refs);
        let layers: Vec<Layer> = med
            .iter()
            .enumerate()
            .map(|(l, m)| {
                let data = match &m.data {
                    Data::F32(v) => closest_layer::<f32>(&refs, l, v, beta),
                    Data::F64(v) => closest_layer::<f64>(&refs, l, v, beta),
                };
                m.with_data(data)
            })
            .collect();
        let metrics = self.base.train_metrics(&chosen)?;
        Ok((Some(to_record(&keys, &layers)), Some(metrics)))
    }

    delegate_configure!();
}
