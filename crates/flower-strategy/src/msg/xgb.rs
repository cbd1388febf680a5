//! The message-API XGBoost strategies: FedXgbBagging (tree bagging with
//! the legacy catalog's JSON merge) and FedXgbCyclic (one node per round,
//! in registration order).

use bytes::Bytes;
use flower_core::npy::npy_header;
use flower_core::DType;

use super::fedavg::{FedAvg, FedAvgOptions};
use super::records::{
    Array, ArrayRecord, ConfigRecord, ConfigValue, Message, MessageType, MetricRecord, Record,
    Reply,
};
use super::{Grid, MsgStrategy};
use crate::xgb::bagging_aggregate;
use crate::StrategyError;

/// The bytes of the single array `"0"` of `arrays` (an XGBoost JSON model).
fn single_model(arrays: &ArrayRecord) -> Result<Bytes, StrategyError> {
    if arrays.len() != 1 {
        return Err(StrategyError::InconsistentReplies(
            "expected exactly one Array in the ArrayRecord".into(),
        ));
    }
    let (_, array) = arrays
        .iter()
        .next()
        .ok_or_else(|| StrategyError::InconsistentReplies("empty ArrayRecord".into()))?;
    let view = array.view()?;
    Ok(Bytes::copy_from_slice(view.data))
}

fn model_record(model: &[u8]) -> ArrayRecord {
    let mut out = npy_header(DType::U8, &[model.len()]);
    out.extend_from_slice(model);
    let mut record = ArrayRecord::new();
    // The header is ours, so it always parses.
    if let Ok(a) = Array::from_npy(Bytes::from(out)) {
        record.insert("0", a);
    }
    record
}

/// Flower's message-API `FedXgbBagging`.
#[derive(Debug, Clone)]
pub struct FedXgbBagging {
    base: FedAvg,
    current: Option<Bytes>,
}

impl FedXgbBagging {
    /// FedXgbBagging with the common options.
    pub fn new(opts: FedAvgOptions) -> Result<Self, StrategyError> {
        Ok(FedXgbBagging {
            base: FedAvg::new(opts)?,
            current: None,
        })
    }
}

impl MsgStrategy for FedXgbBagging {
    fn name(&self) -> &str {
        "FedXgbBagging"
    }

    fn configure_train(
        &mut self,
        server_round: u64,
        arrays: &ArrayRecord,
        config: &mut ConfigRecord,
        grid: &mut dyn Grid,
    ) -> Result<Vec<Message>, StrategyError> {
        self.current = Some(single_model(arrays)?);
        self.base
            .configure(server_round, arrays, config, grid, MessageType::Train)
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
        let key = valid[0]
            .array_records()
            .next()
            .map(|(k, _)| k.to_owned())
            .unwrap_or_default();
        for content in &valid {
            let Some(Record::Arrays(arrays)) = content.get(&key) else {
                return Err(StrategyError::InconsistentReplies(format!(
                    "a reply has no ArrayRecord {key:?}"
                )));
            };
            let model = single_model(arrays)?;
            if let Some(cur) = &self.current {
                self.current = Some(bagging_aggregate(Some(cur), &model)?);
            }
        }
        let arrays = self.current.as_ref().map(|m| model_record(m));
        let metrics = self.base.train_metrics(&valid)?;
        Ok((arrays, Some(metrics)))
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
}

/// Flower's message-API `FedXgbCyclic`: each round trains (and evaluates)
/// on one node, cycling through the nodes in the order they were first
/// sampled.
#[derive(Debug, Clone)]
pub struct FedXgbCyclic {
    base: FedAvg,
    registered: Vec<u64>,
}

impl FedXgbCyclic {
    /// FedXgbCyclic; `fraction_train` and `fraction_evaluate` must be 0.0
    /// or 1.0, as in Flower.
    pub fn new(opts: FedAvgOptions) -> Result<Self, StrategyError> {
        for (name, v) in [
            ("fraction_train", opts.fraction_train),
            ("fraction_evaluate", opts.fraction_evaluate),
        ] {
            if v != 0.0 && v != 1.0 {
                return Err(StrategyError::Config(format!(
                    "{name} can only be 1.0 or 0.0 for FedXgbCyclic"
                )));
            }
        }
        Ok(FedXgbCyclic {
            base: FedAvg::new(opts)?,
            registered: Vec::new(),
        })
    }

    /// The node ids in registration order.
    pub fn registered_nodes(&self) -> &[u64] {
        &self.registered
    }

    fn pick(&mut self, grid: &mut dyn Grid, server_round: u64) -> Result<u64, StrategyError> {
        let o = self.base.options();
        let (fraction, min_nodes) = (o.fraction_train, o.min_train_nodes);
        let sample = self.base.sample(grid, fraction, min_nodes)?;
        for n in &sample {
            if !self.registered.contains(n) {
                self.registered.push(*n);
            }
        }
        let mut ordered = sample;
        ordered.sort_by_key(|n| self.registered.iter().position(|r| r == n));
        if ordered.is_empty() {
            // Flower: `(server_round - 1) % 0` raises ZeroDivisionError.
            return Err(StrategyError::Config(
                "FedXgbCyclic sampled no node (fraction_train = 0)".into(),
            ));
        }
        Ok(ordered[((server_round - 1) % ordered.len() as u64) as usize])
    }

    fn configure(
        &mut self,
        server_round: u64,
        arrays: &ArrayRecord,
        config: &mut ConfigRecord,
        grid: &mut dyn Grid,
        message_type: MessageType,
    ) -> Result<Vec<Message>, StrategyError> {
        let node = self.pick(grid, server_round)?;
        config.insert("server-round", ConfigValue::Int(server_round as i64));
        Ok(self.base.messages(arrays, config, &[node], message_type))
    }
}

impl MsgStrategy for FedXgbCyclic {
    fn name(&self) -> &str {
        "FedXgbCyclic"
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
        let valid = self.base.valid(&replies, true)?;
        let Some(first) = valid.first() else {
            return Ok((None, None));
        };
        let arrays = first.first_arrays().cloned();
        let metrics = self.base.train_metrics(&valid)?;
        Ok((arrays, Some(metrics)))
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
        self.base.aggregate_evaluate_records(&replies)
    }
}
