//! [`StreamingMean`]: train replies folded into their weighted mean as they
//! arrive, for strategies whose `aggregate_train` depends on the replies
//! only through that mean ([`MsgStrategy::streaming_key`]).
//!
//! A grid that receives replies one by one folds each into one accumulator
//! per array and drops it: memory O(model), not O(replies × model). It then
//! hands the strategy one pre-averaged reply (weight `Σw`, arrays and
//! metrics the weighted means), whose FedAvg is itself. The weighted mean is
//! associative, so replies that cannot be folded (error replies, replies
//! inconsistent with the first, whose validation error the strategy must
//! raise) are passed on beside it. The fold sums `f32(x·w)` and divides by
//! `Σw` once (`Σw` is only known at the end), where Flower sums
//! `x·f32(w/Σw)`: results differ by about an ulp (deviation
//! `msg-streaming-mean`); a single reply is returned exactly.

use flower_core::npy::NpyView;
use flower_core::DType;

use super::fedavg::validate;
use super::records::{Array, ArrayRecord, MetricRecord, MetricValue, Record, RecordDict, Reply};
use super::MsgStrategy;
use crate::layers::{is_plain_le, Data, Layer};

/// Weights below 2^24 are exact in f32: `x * f32(w)` in f32 is then the
/// correctly rounded product, `f32(x·w)`.
const F32_EXACT_INT: f64 = 16_777_216.0;

/// One array's running sum of `x·w`.
#[derive(Debug)]
enum Acc {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// One metric's running sum of `v·w`.
#[derive(Debug)]
enum MetricAcc {
    Scalar(f64),
    List(Vec<f64>),
}

/// The running sums once two replies were folded.
#[derive(Debug)]
struct Sums {
    arrays: Vec<(String, Vec<usize>, Acc)>,
    metrics: Vec<(String, MetricAcc)>,
}

/// The weighted mean of train replies, folded as they arrive (see the
/// module documentation).
#[derive(Debug)]
pub struct StreamingMean {
    weighted_by_key: String,
    /// The first foldable reply: the reference every later reply is
    /// checked against, and the result when it stays alone.
    first: Option<(u64, RecordDict, f64)>,
    sums: Option<Sums>,
    total: f64,
    /// Every folded weight was an integer.
    int_weights: bool,
    folded: usize,
    passthrough: Vec<Reply>,
}

fn le32(c: &[u8]) -> f32 {
    <[u8; 4]>::try_from(c).map_or(0.0, f32::from_le_bytes)
}

fn le64(c: &[u8]) -> f64 {
    <[u8; 8]>::try_from(c).map_or(0.0, f64::from_le_bytes)
}

/// `acc = x·w` (`first`) or `acc += x·w`, in the accumulator's type.
fn fold(acc: &mut Acc, view: &NpyView<'_>, w: f64, first: bool) {
    match acc {
        Acc::F32(a) if w < F32_EXACT_INT => {
            crate::mean::fold_f32_bytes(a, view.data, w as f32, first)
        }
        Acc::F32(a) => a
            .iter_mut()
            .zip(view.data.chunks_exact(4))
            .for_each(|(a, c)| {
                let p = (f64::from(le32(c)) * w) as f32;
                *a = if first { p } else { *a + p };
            }),
        Acc::F64(a) => a
            .iter_mut()
            .zip(view.data.chunks_exact(8))
            .for_each(|(a, c)| {
                let p = le64(c) * w;
                *a = if first { p } else { *a + p };
            }),
    }
}

fn weight(content: &RecordDict, key: &str) -> Option<f64> {
    match content.first_metrics()?.get(key)? {
        MetricValue::Int(i) => Some(*i as f64),
        MetricValue::Float(f) => Some(*f),
        _ => None,
    }
}

/// The arrays of `content` when every one is a plain little-endian f32 or
/// f64 array.
fn foldable(content: &RecordDict) -> Option<Vec<(&str, NpyView<'_>)>> {
    content
        .first_arrays()?
        .iter()
        .map(|(k, a)| {
            let v = a.view().ok()?;
            let float = matches!(v.dtype, DType::F32 | DType::F64);
            (float && is_plain_le(&v)).then_some((k, v))
        })
        .collect()
}

impl StreamingMean {
    /// A fold weighting replies by their `weighted_by_key` metric.
    pub fn new(weighted_by_key: impl Into<String>) -> Self {
        StreamingMean {
            weighted_by_key: weighted_by_key.into(),
            first: None,
            sums: None,
            total: 0.0,
            int_weights: true,
            folded: 0,
            passthrough: Vec::new(),
        }
    }

    /// For `strategy`'s train replies, when its aggregation allows it.
    pub fn for_strategy(strategy: &dyn MsgStrategy) -> Option<Self> {
        strategy.streaming_key().map(StreamingMean::new)
    }

    /// Replies folded so far (the others are passed on).
    pub fn folded(&self) -> usize {
        self.folded
    }

    /// Folds `reply`, or keeps it to pass on.
    pub fn add(&mut self, reply: Reply) {
        let Ok(content) = &reply.content else {
            self.passthrough.push(reply);
            return;
        };
        let key = self.weighted_by_key.clone();
        let Some(w) = weight(content, &key).filter(|w| w.is_finite() && *w >= 0.0) else {
            self.passthrough.push(reply);
            return;
        };
        let reference = self.first.as_ref().map(|(_, r, _)| r);
        let consistent = match reference {
            None => validate(&[content], &key, true).is_ok(),
            Some(r) => validate(&[r, content], &key, true).is_ok() && same_layout(r, content),
        };
        if !consistent || foldable(content).is_none() {
            self.passthrough.push(reply);
            return;
        }
        let int = matches!(
            content.first_metrics().and_then(|m| m.get(&key)),
            Some(MetricValue::Int(_))
        );
        let Reply {
            src_node_id,
            content,
        } = reply;
        let Ok(content) = content else { return };
        if self.first.is_none() {
            self.first = Some((src_node_id, content, w));
        } else {
            if self.sums.is_none() {
                let Some((_, first, w1)) = &self.first else {
                    return;
                };
                let (first, w1) = (first.clone(), *w1);
                self.sums = Some(self.start(&first, w1));
            }
            self.fold_in(&content, w);
        }
        self.total += w;
        self.int_weights &= int;
        self.folded += 1;
    }

    /// The sums initialized with the first reply.
    fn start(&self, first: &RecordDict, w: f64) -> Sums {
        let arrays = foldable(first)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                let mut acc = match v.dtype {
                    DType::F32 => Acc::F32(vec![0.0; v.len()]),
                    _ => Acc::F64(vec![0.0; v.len()]),
                };
                fold(&mut acc, &v, w, true);
                (k.to_owned(), v.shape.clone(), acc)
            })
            .collect();
        let mut sums = Sums {
            arrays,
            metrics: Vec::new(),
        };
        self.fold_metrics(&mut sums, first, w);
        sums
    }

    fn fold_in(&mut self, content: &RecordDict, w: f64) {
        let Some(mut sums) = self.sums.take() else {
            return;
        };
        if let Some(views) = foldable(content) {
            for ((_, _, acc), (_, v)) in sums.arrays.iter_mut().zip(views) {
                fold(acc, &v, w, false);
            }
        }
        self.fold_metrics(&mut sums, content, w);
        self.sums = Some(sums);
    }

    fn fold_metrics(&self, sums: &mut Sums, content: &RecordDict, w: f64) {
        let Some(metrics) = content.first_metrics() else {
            return;
        };
        for (k, v) in metrics.iter() {
            if k == self.weighted_by_key {
                continue;
            }
            let vals = v.values();
            match sums.metrics.iter_mut().find(|(n, _)| n == k) {
                None => {
                    let acc = if v.is_list() {
                        MetricAcc::List(vals.iter().map(|x| x * w).collect())
                    } else {
                        MetricAcc::Scalar(vals[0] * w)
                    };
                    sums.metrics.push((k.to_owned(), acc));
                }
                Some((_, MetricAcc::Scalar(s))) => *s += vals.first().copied().unwrap_or(0.0) * w,
                Some((_, MetricAcc::List(l))) => {
                    l.iter_mut().zip(&vals).for_each(|(s, x)| *s += x * w);
                }
            }
        }
    }

    /// The replies for the strategy: the mean reply first (none when
    /// nothing was folded), then the passed-on ones in arrival order.
    pub fn finish(self) -> Vec<Reply> {
        let mut out = Vec::with_capacity(1 + self.passthrough.len());
        match (self.first, self.sums) {
            (Some((id, content, _)), None) => out.push(Reply {
                src_node_id: id,
                content: Ok(content),
            }),
            (Some((id, first, _)), Some(sums)) => {
                let total = self.total;
                let arrays: ArrayRecord = sums
                    .arrays
                    .into_iter()
                    .map(|(k, shape, acc)| {
                        let data = match acc {
                            Acc::F32(a) => Data::F32(
                                a.into_iter()
                                    .map(|s| (f64::from(s) / total) as f32)
                                    .collect(),
                            ),
                            Acc::F64(a) => Data::F64(a.into_iter().map(|s| s / total).collect()),
                        };
                        let layer = Layer {
                            shape,
                            data,
                            half: false,
                        };
                        (k, Array::of_layer(&layer))
                    })
                    .collect();
                let mut metrics = MetricRecord::new();
                let weight = if self.int_weights && total < 9.0e15 {
                    MetricValue::Int(total as i64)
                } else {
                    MetricValue::Float(total)
                };
                // The reference's key order, weight included.
                let order: Vec<String> = first
                    .first_metrics()
                    .map(|m| m.keys().map(str::to_owned).collect())
                    .unwrap_or_default();
                for k in order {
                    if k == self.weighted_by_key {
                        metrics.insert(k, weight.clone());
                    } else if let Some((_, acc)) = sums.metrics.iter().find(|(n, _)| *n == k) {
                        let v = match acc {
                            MetricAcc::Scalar(s) => MetricValue::Float(s / total),
                            MetricAcc::List(l) => {
                                MetricValue::FloatList(l.iter().map(|s| s / total).collect())
                            }
                        };
                        metrics.insert(k, v);
                    }
                }
                let mut content = RecordDict::new();
                for (k, r) in first.iter() {
                    match r {
                        Record::Arrays(_) => content.insert(k, Record::Arrays(arrays.clone())),
                        Record::Metrics(_) => content.insert(k, Record::Metrics(metrics.clone())),
                        Record::Config(_) => {}
                    }
                }
                out.push(Reply {
                    src_node_id: id,
                    content: Ok(content),
                });
            }
            (None, _) => {}
        }
        out.extend(self.passthrough);
        out
    }
}

/// Same array keys in the same order, with the same shapes and dtypes.
fn same_layout(a: &RecordDict, b: &RecordDict) -> bool {
    match (foldable(a), foldable(b)) {
        (Some(x), Some(y)) => {
            x.len() == y.len()
                && x.iter().zip(&y).all(|((ka, va), (kb, vb))| {
                    ka == kb && va.shape == vb.shape && va.dtype == vb.dtype
                })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{FedAvg, FedAvgOptions, ReplyError};
    use crate::StrategyError;

    fn reply(id: u64, w: i64, x: &[f32], acc: f64) -> Reply {
        let layer = Layer {
            shape: vec![x.len()],
            data: Data::F32(x.to_vec()),
            half: false,
        };
        let mut m = MetricRecord::new();
        m.insert("num-examples", MetricValue::Int(w));
        m.insert("acc", MetricValue::Float(acc));
        let mut c = RecordDict::new();
        c.insert(
            "arrays",
            Record::Arrays([("w", Array::of_layer(&layer))].into_iter().collect()),
        );
        c.insert("metrics", Record::Metrics(m));
        Reply {
            src_node_id: id,
            content: Ok(c),
        }
    }

    fn values(r: &(Option<ArrayRecord>, Option<MetricRecord>)) -> Vec<f32> {
        let a = r.0.as_ref().expect("arrays");
        match a.get("w").expect("w").layer().expect("layer").data {
            Data::F32(v) => v,
            Data::F64(_) => panic!("f32 expected"),
        }
    }

    /// Deviation `msg-streaming-mean`: the pre-averaged reply gives
    /// FedAvg's result within an ulp, the same metrics, and passes error
    /// replies on; one reply is exact.
    #[test]
    fn folded_fedavg_matches_the_batch_fedavg() {
        let replies = vec![
            reply(1, 10, &[1.0, 2.5, -3.0], 0.5),
            reply(2, 30, &[0.1, 7.0, 1e-3], 0.25),
            Reply {
                src_node_id: 3,
                content: Err(ReplyError {
                    code: 1,
                    reason: "x".into(),
                }),
            },
            reply(4, 7, &[3.3, -1.0, 2.0], 1.0),
        ];
        let mut s = FedAvg::new(FedAvgOptions::default()).expect("fedavg");
        let batch = s.aggregate_train(1, replies.clone()).expect("batch");
        let mut fold = StreamingMean::for_strategy(&s).expect("streams");
        replies.into_iter().for_each(|r| fold.add(r));
        assert_eq!(fold.folded(), 3);
        let folded = fold.finish();
        assert_eq!(folded.len(), 2, "the mean and the error reply");
        let streamed = s.aggregate_train(1, folded).expect("streamed");
        for (a, b) in values(&batch).iter().zip(values(&streamed)) {
            assert!(
                (a - b).abs() <= 2.0 * f32::EPSILON * a.abs().max(1.0),
                "{a} vs {b}"
            );
        }
        let m = |r: &(Option<ArrayRecord>, Option<MetricRecord>)| {
            r.1.as_ref()
                .and_then(|m| m.get("acc"))
                .and_then(MetricValue::as_f64)
        };
        assert!((m(&batch).unwrap() - m(&streamed).unwrap()).abs() < 1e-15);

        let one = vec![reply(1, 10, &[0.1, 0.2, 0.3], 0.5)];
        let batch = s.aggregate_train(1, one.clone()).expect("batch");
        let mut fold = StreamingMean::new("num-examples");
        one.into_iter().for_each(|r| fold.add(r));
        let streamed = s.aggregate_train(1, fold.finish()).expect("streamed");
        assert_eq!(values(&batch), values(&streamed));
    }

    /// A reply inconsistent with the first is passed on, so the strategy
    /// raises Flower's validation error.
    #[test]
    fn inconsistent_replies_still_fail_validation() {
        let mut odd = reply(2, 5, &[1.0, 2.0, 3.0], 0.5);
        if let Ok(c) = &mut odd.content {
            if let Some(Record::Metrics(m)) = c.get("metrics").cloned() {
                let mut m = m;
                m.insert("extra", MetricValue::Int(1));
                c.insert("metrics", Record::Metrics(m));
            }
        }
        let mut fold = StreamingMean::new("num-examples");
        fold.add(reply(1, 10, &[1.0, 2.0, 3.0], 0.5));
        fold.add(odd);
        fold.add(reply(3, 10, &[1.0, 2.0, 3.0], 0.5));
        let mut s = FedAvg::new(FedAvgOptions::default()).expect("fedavg");
        let e = s.aggregate_train(1, fold.finish()).unwrap_err();
        assert!(matches!(e, StrategyError::InconsistentReplies(_)), "{e}");
    }
}
