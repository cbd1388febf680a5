//! Message-API FedAvg: sampling, reply validation, the weighted mean of the
//! arrays and of the metrics. Every other message-API strategy builds on it.

use std::fmt;
use std::sync::Arc;

use flower_core::DType;

use super::records::{
    Array, ArrayRecord, ConfigRecord, ConfigValue, Message, MessageType, MetricRecord, MetricValue,
    Record, RecordDict, Reply,
};
use super::{Grid, MsgStrategy};
use crate::layers::{is_plain_le, Data, Layer};
use crate::StrategyError;

/// A replacement for Flower's metric aggregation
/// (`train_metrics_aggr_fn` / `evaluate_metrics_aggr_fn`): it receives the
/// valid reply contents and `weighted_by_key`.
pub type MetricsAggrFn =
    Arc<dyn Fn(&[&RecordDict], &str) -> Result<MetricRecord, StrategyError> + Send + Sync>;

/// The constructor arguments every message-API strategy shares, with
/// Flower's defaults.
#[derive(Clone)]
pub struct FedAvgOptions {
    /// Fraction of the connected nodes sampled for training (default 1.0).
    pub fraction_train: f64,
    /// Fraction sampled for evaluation (default 1.0).
    pub fraction_evaluate: f64,
    /// Minimum nodes sampled for training (default 2).
    pub min_train_nodes: usize,
    /// Minimum nodes sampled for evaluation (default 2).
    pub min_evaluate_nodes: usize,
    /// Minimum nodes connected before sampling (default 2).
    pub min_available_nodes: usize,
    /// The reply metric that weights the means (default `"num-examples"`).
    pub weighted_by_key: String,
    /// Content key of the arrays sent (default `"arrays"`).
    pub arrayrecord_key: String,
    /// Content key of the config sent (default `"config"`).
    pub configrecord_key: String,
    /// Replaces the weighted mean of the train metrics.
    pub train_metrics_aggr_fn: Option<MetricsAggrFn>,
    /// Replaces the weighted mean of the evaluate metrics.
    pub evaluate_metrics_aggr_fn: Option<MetricsAggrFn>,
}

impl Default for FedAvgOptions {
    fn default() -> Self {
        FedAvgOptions {
            fraction_train: 1.0,
            fraction_evaluate: 1.0,
            min_train_nodes: 2,
            min_evaluate_nodes: 2,
            min_available_nodes: 2,
            weighted_by_key: "num-examples".into(),
            arrayrecord_key: "arrays".into(),
            configrecord_key: "config".into(),
            train_metrics_aggr_fn: None,
            evaluate_metrics_aggr_fn: None,
        }
    }
}

impl fmt::Debug for FedAvgOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FedAvgOptions")
            .field("fraction_train", &self.fraction_train)
            .field("fraction_evaluate", &self.fraction_evaluate)
            .field("min_train_nodes", &self.min_train_nodes)
            .field("min_evaluate_nodes", &self.min_evaluate_nodes)
            .field("min_available_nodes", &self.min_available_nodes)
            .field("weighted_by_key", &self.weighted_by_key)
            .field("arrayrecord_key", &self.arrayrecord_key)
            .field("configrecord_key", &self.configrecord_key)
            .field(
                "train_metrics_aggr_fn",
                &self.train_metrics_aggr_fn.is_some(),
            )
            .field(
                "evaluate_metrics_aggr_fn",
                &self.evaluate_metrics_aggr_fn.is_some(),
            )
            .finish()
    }
}

/// Flower's message-API `FedAvg`.
#[derive(Debug, Clone)]
pub struct FedAvg {
    opts: FedAvgOptions,
}

impl FedAvg {
    /// FedAvg with `opts`. As in Flower, a fraction of 0 also sets its
    /// `min_*_nodes` to 0.
    pub fn new(mut opts: FedAvgOptions) -> Result<Self, StrategyError> {
        for (name, v) in [
            ("fraction_train", opts.fraction_train),
            ("fraction_evaluate", opts.fraction_evaluate),
        ] {
            // Flower does not check; a negative or NaN fraction would make
            // `int(n * fraction)` meaningless.
            if v.is_nan() || v < 0.0 {
                return Err(StrategyError::Config(format!(
                    "{name} must be >= 0, got {v}"
                )));
            }
        }
        if opts.fraction_train == 0.0 {
            opts.min_train_nodes = 0;
        }
        if opts.fraction_evaluate == 0.0 {
            opts.min_evaluate_nodes = 0;
        }
        Ok(FedAvg { opts })
    }

    /// The effective options.
    pub fn options(&self) -> &FedAvgOptions {
        &self.opts
    }

    /// [`MsgStrategy::streaming_key`] of FedAvg and the strategies built
    /// on its mean.
    pub(crate) fn mean_streaming_key(&self) -> Option<&str> {
        self.opts
            .train_metrics_aggr_fn
            .is_none()
            .then_some(self.opts.weighted_by_key.as_str())
    }

    /// Samples the nodes of one phase (Flower's `sample_nodes`).
    pub(crate) fn sample(
        &self,
        grid: &mut dyn Grid,
        fraction: f64,
        min_nodes: usize,
    ) -> Result<Vec<u64>, StrategyError> {
        let n0 = grid.node_ids().len();
        // Python's int() truncates the f64 product.
        let sample_size = ((n0 as f64 * fraction) as usize).max(min_nodes);
        let required = self.opts.min_available_nodes.max(sample_size);
        let mut all = grid.node_ids();
        while all.len() < required {
            if !grid.wait_for_nodes() {
                return Err(StrategyError::TooFewNodes {
                    required,
                    online: all.len(),
                });
            }
            all = grid.node_ids();
        }
        Ok(grid.sample(&all, sample_size))
    }

    /// `configure_train`/`configure_evaluate` of FedAvg.
    pub(crate) fn configure(
        &self,
        server_round: u64,
        arrays: &ArrayRecord,
        config: &mut ConfigRecord,
        grid: &mut dyn Grid,
        message_type: MessageType,
    ) -> Result<Vec<Message>, StrategyError> {
        let (fraction, min_nodes) = match message_type {
            MessageType::Train => (self.opts.fraction_train, self.opts.min_train_nodes),
            MessageType::Evaluate => (self.opts.fraction_evaluate, self.opts.min_evaluate_nodes),
        };
        if fraction == 0.0 {
            return Ok(Vec::new());
        }
        let nodes = self.sample(grid, fraction, min_nodes)?;
        config.insert("server-round", ConfigValue::Int(server_round as i64));
        Ok(self.messages(arrays, config, &nodes, message_type))
    }

    /// One message per node, all sharing one content.
    pub(crate) fn messages(
        &self,
        arrays: &ArrayRecord,
        config: &ConfigRecord,
        nodes: &[u64],
        message_type: MessageType,
    ) -> Vec<Message> {
        let mut content = RecordDict::new();
        content.insert(
            self.opts.arrayrecord_key.clone(),
            Record::Arrays(arrays.clone()),
        );
        content.insert(
            self.opts.configrecord_key.clone(),
            Record::Config(config.clone()),
        );
        let content = Arc::new(content);
        nodes
            .iter()
            .map(|&dst_node_id| Message {
                dst_node_id,
                message_type,
                content: Arc::clone(&content),
            })
            .collect()
    }

    /// The replies without errors, validated as Flower does
    /// (`_check_and_log_replies`).
    pub(crate) fn valid<'a>(
        &self,
        replies: &'a [Reply],
        is_train: bool,
    ) -> Result<Vec<&'a RecordDict>, StrategyError> {
        let valid: Vec<&RecordDict> = replies
            .iter()
            .filter_map(|r| r.content.as_ref().ok())
            .collect();
        if !valid.is_empty() {
            validate(&valid, &self.opts.weighted_by_key, is_train)?;
        }
        Ok(valid)
    }

    /// The train metrics (the callback or the weighted mean).
    pub(crate) fn train_metrics(
        &self,
        records: &[&RecordDict],
    ) -> Result<MetricRecord, StrategyError> {
        match &self.opts.train_metrics_aggr_fn {
            Some(f) => f(records, &self.opts.weighted_by_key),
            None => aggregate_metricrecords(records, &self.opts.weighted_by_key),
        }
    }

    /// The weighted mean of the arrays of `records`.
    pub(crate) fn mean_arrays(
        &self,
        records: &[&RecordDict],
    ) -> Result<ArrayRecord, StrategyError> {
        let factors = weight_factors(records, &self.opts.weighted_by_key)?;
        aggregate_arrayrecords(records, &factors)
    }

    /// FedAvg's `aggregate_train`.
    pub(crate) fn aggregate_train_records(
        &self,
        replies: &[Reply],
    ) -> Result<(Option<ArrayRecord>, Option<MetricRecord>), StrategyError> {
        let valid = self.valid(replies, true)?;
        if valid.is_empty() {
            return Ok((None, None));
        }
        let arrays = self.mean_arrays(&valid)?;
        let metrics = self.train_metrics(&valid)?;
        Ok((Some(arrays), Some(metrics)))
    }

    /// FedAvg's `aggregate_evaluate`.
    pub(crate) fn aggregate_evaluate_records(
        &self,
        replies: &[Reply],
    ) -> Result<Option<MetricRecord>, StrategyError> {
        let valid = self.valid(replies, false)?;
        if valid.is_empty() {
            return Ok(None);
        }
        let metrics = match &self.opts.evaluate_metrics_aggr_fn {
            Some(f) => f(&valid, &self.opts.weighted_by_key)?,
            None => aggregate_metricrecords(&valid, &self.opts.weighted_by_key)?,
        };
        Ok(Some(metrics))
    }
}

impl MsgStrategy for FedAvg {
    fn name(&self) -> &str {
        "FedAvg"
    }

    fn configure_train(
        &mut self,
        server_round: u64,
        arrays: &ArrayRecord,
        config: &mut ConfigRecord,
        grid: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError> {
        self.configure(server_round, arrays, config, grid, MessageType::Train)
    }

    fn aggregate_train(
        &mut self,
        _server_round: u64,
        replies: Vec<Reply>,
    ) -> Result<(Option<ArrayRecord>, Option<MetricRecord>), StrategyError> {
        self.aggregate_train_records(&replies)
    }

    fn configure_evaluate(
        &mut self,
        server_round: u64,
        arrays: &ArrayRecord,
        config: &mut ConfigRecord,
        grid: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError> {
        self.configure(server_round, arrays, config, grid, MessageType::Evaluate)
    }

    fn aggregate_evaluate(
        &mut self,
        _server_round: u64,
        replies: Vec<Reply>,
    ) -> Result<Option<MetricRecord>, StrategyError> {
        self.aggregate_evaluate_records(&replies)
    }

    fn streaming_key(&self) -> Option<&str> {
        self.mean_streaming_key()
    }
}

fn inconsistent(m: &str) -> StrategyError {
    StrategyError::InconsistentReplies(m.to_owned())
}

/// Flower's `validate_message_reply_consistency`.
pub(crate) fn validate(
    replies: &[&RecordDict],
    weighted_by_key: &str,
    check_arrayrecord: bool,
) -> Result<(), StrategyError> {
    let Some(first) = replies.first() else {
        return Ok(());
    };
    let same_keys = |record_key: &str, all: &[&str]| {
        replies[1..].iter().all(|r| {
            let keys = r.get(record_key).map(Record::key_set).unwrap_or_default();
            keys == all
        })
    };
    if check_arrayrecord {
        if replies.iter().any(|r| r.array_records().count() != 1) {
            return Err(inconsistent(
                "expected exactly one ArrayRecord in every reply",
            ));
        }
        if let Some((key, arrays)) = first.array_records().next() {
            if !same_keys(key, &arrays.key_set()) {
                return Err(inconsistent("all ArrayRecords must have the same keys"));
            }
        }
    }
    if replies.iter().any(|r| r.metric_records().count() != 1) {
        return Err(inconsistent(
            "expected exactly one MetricRecord in every reply",
        ));
    }
    let Some((key, metrics)) = first.metric_records().next() else {
        return Err(inconsistent(
            "expected exactly one MetricRecord in every reply",
        ));
    };
    let all = metrics.key_set();
    if !same_keys(key, &all) {
        return Err(inconsistent("all MetricRecords must have the same keys"));
    }
    if !all.contains(&weighted_by_key) {
        return Err(inconsistent(&format!(
            "missing the weight key {weighted_by_key:?} in the MetricRecord of a reply"
        )));
    }
    let list = replies.iter().any(|r| {
        matches!(
            r.get(key),
            Some(Record::Metrics(m)) if m.get(weighted_by_key).is_some_and(MetricValue::is_list)
        )
    });
    if list {
        return Err(inconsistent(&format!(
            "the weight key {weighted_by_key:?} must be a single value, not a list"
        )));
    }
    Ok(())
}

/// A Python number: an exact int or a float.
#[derive(Clone, Copy)]
enum PyNum {
    Int(i128),
    Float(f64),
}

impl PyNum {
    fn add(self, other: PyNum) -> PyNum {
        match (self, other) {
            (PyNum::Int(a), PyNum::Int(b)) => PyNum::Int(a.saturating_add(b)),
            (PyNum::Int(a), PyNum::Float(b)) => PyNum::Float(a as f64 + b),
            (PyNum::Float(a), PyNum::Int(b)) => PyNum::Float(a + b as f64),
            (PyNum::Float(a), PyNum::Float(b)) => PyNum::Float(a + b),
        }
    }

    fn is_zero(self) -> bool {
        match self {
            PyNum::Int(a) => a == 0,
            PyNum::Float(a) => a == 0.0,
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            PyNum::Int(a) => a as f64,
            PyNum::Float(a) => a,
        }
    }
}

/// `w_i / Σw` as Python computes it (ints summed exactly).
pub(crate) fn weight_factors(
    records: &[&RecordDict],
    key: &str,
) -> Result<Vec<f64>, StrategyError> {
    let weights = records
        .iter()
        .map(|r| match r.first_metrics().and_then(|m| m.get(key)) {
            Some(MetricValue::Int(i)) => Ok(PyNum::Int(i128::from(*i))),
            Some(MetricValue::Float(f)) => Ok(PyNum::Float(*f)),
            _ => Err(inconsistent(&format!("reply without a scalar {key:?}"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let total = weights.iter().fold(PyNum::Int(0), |acc, &w| acc.add(w));
    if total.is_zero() {
        return Err(StrategyError::ZeroExamples);
    }
    let t = total.as_f64();
    // Python's int / int is correctly rounded; both are exact in f64 below
    // 2^53, where f64 division is correctly rounded too.
    Ok(weights.iter().map(|w| w.as_f64() / t).collect())
}

/// Flower's `aggregate_metricrecords`: the weighted mean of every metric
/// but the weight, as floats, in order of first appearance.
pub(crate) fn aggregate_metricrecords(
    records: &[&RecordDict],
    weighted_by_key: &str,
) -> Result<MetricRecord, StrategyError> {
    let factors = weight_factors(records, weighted_by_key)?;
    let mut out = MetricRecord::new();
    for (record, &f) in records.iter().zip(&factors) {
        for (_, metrics) in record.metric_records() {
            for (key, value) in metrics.iter() {
                if key == weighted_by_key {
                    continue;
                }
                let next = match (out.get(key), value) {
                    (None, v) if v.is_list() => {
                        MetricValue::FloatList(v.values().iter().map(|x| x * f).collect())
                    }
                    (None, v) => MetricValue::Float(v.values()[0] * f),
                    (Some(MetricValue::FloatList(cur)), v) if v.is_list() => {
                        let vals = v.values();
                        if vals.len() != cur.len() {
                            return Err(StrategyError::Shape(format!(
                                "metric {key:?}: lists of length {} and {}",
                                cur.len(),
                                vals.len()
                            )));
                        }
                        MetricValue::FloatList(
                            cur.iter().zip(&vals).map(|(c, x)| c + x * f).collect(),
                        )
                    }
                    (Some(MetricValue::Float(cur)), v) if !v.is_list() => {
                        MetricValue::Float(cur + v.values()[0] * f)
                    }
                    _ => {
                        return Err(StrategyError::Shape(format!(
                            "metric {key:?} is a list in some replies and a number in others"
                        )))
                    }
                };
                out.insert(key, next);
            }
        }
    }
    Ok(out)
}

/// One accumulated array of the weighted mean.
struct Acc {
    shape: Vec<usize>,
    data: Data,
}

/// `x · f` in NumPy's rules for a Python float `f`: f32 stays f32 (`f`
/// rounded), f64 stays f64, integers become f64.
fn product(layer: Layer, f: f64) -> Data {
    match layer.data {
        Data::F32(mut v) => {
            let f = f as f32;
            v.iter_mut().for_each(|x| *x *= f);
            Data::F32(v)
        }
        Data::F64(mut v) => {
            v.iter_mut().for_each(|x| *x *= f);
            Data::F64(v)
        }
    }
}

/// Maps each index of `out` to an index of a `src`-shaped array
/// broadcast to it, or `None` when NumPy refuses (`src` larger, or a
/// dimension neither equal nor 1).
fn broadcast_index(src: &[usize], out: &[usize]) -> Option<Vec<usize>> {
    if src.len() > out.len() {
        return None;
    }
    let lead = out.len() - src.len();
    for (i, &d) in src.iter().enumerate() {
        if d != out[lead + i] && d != 1 {
            return None;
        }
    }
    let total: usize = out.iter().product();
    let mut strides = vec![0usize; src.len()];
    let mut s = 1;
    for i in (0..src.len()).rev() {
        strides[i] = if src[i] == 1 { 0 } else { s };
        s *= src[i];
    }
    let mut idx = Vec::with_capacity(total);
    let mut pos = vec![0usize; out.len()];
    for _ in 0..total {
        let mut k = 0;
        for (i, st) in strides.iter().enumerate() {
            k += pos[lead + i] * st;
        }
        idx.push(k);
        for d in (0..out.len()).rev() {
            pos[d] += 1;
            if pos[d] < out[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    Some(idx)
}

/// `acc += p` with NumPy's in-place rules: the accumulator keeps its dtype
/// (an f64 addend into f32 is added in f64 and rounded), and `p` is
/// broadcast to the accumulator's shape.
fn add_into(key: &str, acc: &mut Acc, shape: &[usize], p: Data) -> Result<(), StrategyError> {
    let idx = if shape == acc.shape.as_slice() {
        None
    } else {
        Some(broadcast_index(shape, &acc.shape).ok_or_else(|| {
            StrategyError::Shape(format!(
                "array {key:?}: shape {shape:?} cannot be added into {:?}",
                acc.shape
            ))
        })?)
    };
    let at = |i: usize| idx.as_ref().map_or(i, |m| m[i]);
    match (&mut acc.data, &p) {
        (Data::F32(a), Data::F32(x)) => a.iter_mut().enumerate().for_each(|(i, a)| *a += x[at(i)]),
        (Data::F32(a), Data::F64(x)) => a
            .iter_mut()
            .enumerate()
            .for_each(|(i, a)| *a = (f64::from(*a) + x[at(i)]) as f32),
        (Data::F64(a), Data::F32(x)) => a
            .iter_mut()
            .enumerate()
            .for_each(|(i, a)| *a += f64::from(x[at(i)])),
        (Data::F64(a), Data::F64(x)) => a.iter_mut().enumerate().for_each(|(i, a)| *a += x[at(i)]),
    }
    Ok(())
}

/// Flower's `aggregate_arrayrecords`: for each reply in order and each of
/// its arrays, `acc[k] = x·f` (first) or `acc[k] += x·f`. Plain
/// little-endian f32 arrays are folded straight from their bytes; the
/// accumulators are one model's worth of memory whatever the reply count.
pub(crate) fn aggregate_arrayrecords(
    records: &[&RecordDict],
    factors: &[f64],
) -> Result<ArrayRecord, StrategyError> {
    let mut accs: Vec<(String, Acc)> = Vec::new();
    for (record, &f) in records.iter().zip(factors) {
        for (_, arrays) in record.array_records() {
            for (key, array) in arrays.iter() {
                let view = array.view()?;
                let slot = accs.iter().position(|(k, _)| k == key);
                let fast = view.dtype == DType::F32 && is_plain_le(&view);
                match slot {
                    Some(i) => {
                        let acc = &mut accs[i].1;
                        match &mut acc.data {
                            Data::F32(a) if fast && view.shape == acc.shape => {
                                crate::mean::fold_f32_bytes(a, view.data, f as f32, false)
                            }
                            _ => {
                                let layer = array.layer()?;
                                let shape = layer.shape.clone();
                                add_into(key, acc, &shape, product(layer, f))?;
                            }
                        }
                    }
                    None => {
                        let data = if fast {
                            let mut a = vec![0f32; view.len()];
                            crate::mean::fold_f32_bytes(&mut a, view.data, f as f32, true);
                            Data::F32(a)
                        } else {
                            product(array.layer()?, f)
                        };
                        accs.push((
                            key.to_owned(),
                            Acc {
                                shape: view.shape.clone(),
                                data,
                            },
                        ));
                    }
                }
            }
        }
    }
    Ok(accs
        .into_iter()
        .map(|(k, a)| {
            let layer = Layer {
                shape: a.shape,
                data: a.data,
                half: false,
            };
            (k, Array::of_layer(&layer))
        })
        .collect())
}
