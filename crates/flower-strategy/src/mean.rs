//! The streaming weighted mean behind FedAvg and its relatives.
//!
//! Each result is folded into one accumulator per layer as it arrives,
//! straight from the `.npy` bytes for little-endian C-order f32/f64 layers
//! (no intermediate array), split across cores with rayon for large layers.
//!
//! Two modes, as in Flower:
//! * [`MeanMode::Plain`] (`aggregate`): `Σ x_k·n_k / N` in the array dtype
//!   (for f32, `n_k` and `N` are rounded to f32), folded left to right:
//!   bit-equal to Flower. Integer/bool layers are summed exactly and divided
//!   in f64 (Flower returns f64 for them too).
//! * [`MeanMode::InPlace`] (`aggregate_inplace`, the default): Flower computes
//!   `Σ f32(x_k · (n_k/N))` (product in f64, rounded, summed in f32), which
//!   needs `N` before the first result. We fold `Σ f32(x_k · n_k)` (product
//!   in f64, rounded, summed in f32: the same roundings, applied before the
//!   scaling instead of after) and divide by `N` in f64 at the end. The
//!   accumulator stays f32, so memory and bandwidth are those of the model;
//!   results agree with Flower to an ulp or so, not bit for bit. f64 layers
//!   accumulate `x_k·n_k` in f64. Integer layers are refused (Flower zeroes
//!   them, see [`crate::deviations`]).

use flower_core::npy::NpyView;
use flower_core::{DType, FitRes, Metrics, NdArray, Parameters};
use rayon::prelude::*;

use crate::layers::{
    check_views, is_float, parse_layout, parse_views, Data, DtypeRule, Layer, LayerSpec,
};
use crate::StrategyError;

/// Layers with at least this many elements are folded in parallel.
const PAR_MIN: usize = 1 << 16;
/// Elements per parallel work item.
const CHUNK: usize = 1 << 15;

/// Which of Flower's two weighted means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MeanMode {
    /// `aggregate_inplace` (FedAvg's default).
    InPlace,
    /// `aggregate`.
    Plain,
}

impl MeanMode {
    /// FedAvg's `inplace` option.
    pub(crate) fn of(inplace: bool) -> Self {
        if inplace {
            MeanMode::InPlace
        } else {
            MeanMode::Plain
        }
    }
}

#[derive(Debug)]
enum Acc {
    /// Not yet sized (no result so far).
    Empty,
    /// Plain mean of f32: f32 sums of `x·f32(n)`.
    F32(Vec<f32>),
    /// Plain mean of f16, computed in f32.
    F16(Vec<f32>),
    /// In-place mean of f32: f32 sums of `f32(x·n)` (product in f64). The
    /// first result is kept unscaled (`pending` holds its weight) until a
    /// second one arrives, so that a single client's mean is its model
    /// exactly, as in Flower.
    Scaled { acc: Vec<f32>, pending: Option<f64> },
    /// In-place mean of f16 (`half`): f64 sums of `x·n`.
    Wide { acc: Vec<f64>, half: bool },
    /// Plain mean of f64.
    F64(Vec<f64>),
    /// In-place mean of f64: sums of `x·n`, first result kept unscaled as in
    /// [`Acc::Scaled`].
    F64Scaled { acc: Vec<f64>, pending: Option<f64> },
    /// Plain mean of integers/bools: exact sums.
    Int(Vec<i128>),
}

/// Where one layer of one result comes from.
enum Src<'a> {
    F32Le(&'a [u8]),
    F64Le(&'a [u8]),
    Owned(NdArray),
}

#[inline]
fn le32(c: &[u8]) -> f32 {
    <[u8; 4]>::try_from(c).map_or(0.0, f32::from_le_bytes)
}

#[inline]
fn le64(c: &[u8]) -> f64 {
    <[u8; 8]>::try_from(c).map_or(0.0, f64::from_le_bytes)
}

/// Runs `kernel` over matching chunks of `acc` and `data` (`width` bytes per
/// element), in parallel for large layers.
fn split<A: Send>(
    acc: &mut [A],
    data: &[u8],
    width: usize,
    kernel: impl Fn(&mut [A], &[u8]) + Sync,
) {
    if acc.len() >= PAR_MIN {
        acc.par_chunks_mut(CHUNK)
            .zip(data.par_chunks(CHUNK * width))
            .for_each(|(a, d)| kernel(a, d));
    } else {
        kernel(acc, data);
    }
}

/// Folds raw little-endian f32 bytes: `acc = x·w` (first) or `acc += x·w`.
pub(crate) fn fold_f32_bytes(acc: &mut [f32], data: &[u8], w: f32, first: bool) {
    fold_f32_le(acc, data, w, first);
}

fn fold_f32_le(acc: &mut [f32], data: &[u8], w: f32, first: bool) {
    split(acc, data, 4, |a, d| {
        let it = a.iter_mut().zip(d.chunks_exact(4));
        if first {
            it.for_each(|(a, c)| *a = le32(c) * w);
        } else {
            it.for_each(|(a, c)| *a += le32(c) * w);
        }
    });
}

/// Weights below 2^24 are exact in f32, and then `x * f32(w)` in f32 is the
/// correctly rounded product, the same value as `f32(f64(x) * w)`.
const F32_EXACT_INT: f64 = 16_777_216.0;

/// In-place fold of f32 bytes with weight `w`. `pending` is the weight of
/// an unscaled first result still in `acc` (see [`Acc::Scaled`]).
fn fold_f32_le_scaled(acc: &mut [f32], data: &[u8], w: f64, first: bool, pending: Option<f64>) {
    let small = w < F32_EXACT_INT && pending.is_none_or(|p| p < F32_EXACT_INT);
    split(acc, data, 4, |a, d| {
        let it = a.iter_mut().zip(d.chunks_exact(4));
        match (first, pending) {
            (true, _) => it.for_each(|(a, c)| *a = le32(c)),
            (false, Some(w1)) if small => {
                let (w1, w) = (w1 as f32, w as f32);
                it.for_each(|(a, c)| *a = *a * w1 + le32(c) * w)
            }
            (false, Some(w1)) => it.for_each(|(a, c)| {
                *a = (f64::from(*a) * w1) as f32 + (f64::from(le32(c)) * w) as f32
            }),
            (false, None) if small => {
                let w = w as f32;
                it.for_each(|(a, c)| *a += le32(c) * w)
            }
            (false, None) => it.for_each(|(a, c)| *a += (f64::from(le32(c)) * w) as f32),
        }
    });
}

fn fold_f64_le(acc: &mut [f64], data: &[u8], w: f64, first: bool) {
    split(acc, data, 8, |a, d| {
        let it = a.iter_mut().zip(d.chunks_exact(8));
        if first {
            it.for_each(|(a, c)| *a = le64(c) * w);
        } else {
            it.for_each(|(a, c)| *a += le64(c) * w);
        }
    });
}

fn fold_iter<A, X>(acc: &mut [A], xs: impl Iterator<Item = X>, f: impl Fn(&mut A, X)) {
    acc.iter_mut().zip(xs).for_each(|(a, x)| f(a, x));
}

/// An owned array's elements as f64 (for f32/f64 sources in odd layouts).
fn owned_f64(array: &NdArray) -> Vec<f64> {
    match array {
        NdArray::F16(a) => a.iter().map(|x| f64::from(x.to_f32())).collect(),
        NdArray::F32(a) => a.iter().map(|&x| f64::from(x)).collect(),
        NdArray::F64(a) => a.iter().copied().collect(),
        other => int_values(other).into_iter().map(|x| x as f64).collect(),
    }
}

fn int_values(array: &NdArray) -> Vec<i128> {
    match array {
        NdArray::I8(a) => a.iter().map(|&x| i128::from(x)).collect(),
        NdArray::I16(a) => a.iter().map(|&x| i128::from(x)).collect(),
        NdArray::I32(a) => a.iter().map(|&x| i128::from(x)).collect(),
        NdArray::I64(a) => a.iter().map(|&x| i128::from(x)).collect(),
        NdArray::U8(a) => a.iter().map(|&x| i128::from(x)).collect(),
        NdArray::U16(a) => a.iter().map(|&x| i128::from(x)).collect(),
        NdArray::U32(a) => a.iter().map(|&x| i128::from(x)).collect(),
        NdArray::U64(a) => a.iter().map(|&x| i128::from(x)).collect(),
        NdArray::Bool(a) => a.iter().map(|&x| i128::from(x)).collect(),
        NdArray::F16(a) => a.iter().map(|x| x.to_f32() as i128).collect(),
        NdArray::F32(a) => a.iter().map(|&x| x as i128).collect(),
        NdArray::F64(a) => a.iter().map(|&x| x as i128).collect(),
    }
}

/// The streaming weighted mean of one round.
#[derive(Debug)]
pub(crate) struct WeightedMean {
    mode: MeanMode,
    layout: Vec<LayerSpec>,
    /// Per-layer dtypes of the first accepted result.
    first: Option<Vec<DType>>,
    acc: Vec<Acc>,
    total: i128,
    count: usize,
}

impl WeightedMean {
    /// Starts a mean over results shaped like `layout` (the global model).
    pub(crate) fn new(mode: MeanMode, layout: Vec<LayerSpec>) -> Result<Self, StrategyError> {
        if mode == MeanMode::InPlace {
            if let Some((i, spec)) = layout.iter().enumerate().find(|(_, s)| !is_float(s.dtype)) {
                return Err(StrategyError::UnsupportedLayer(format!(
                    "layer {i} is {}: in-place FedAvg would truncate its weights to integers \
                     (Flower returns zeros); use inplace = false, which averages integer layers \
                     into float64",
                    spec.dtype.numpy_name()
                )));
            }
        }
        let acc = layout.iter().map(|_| Acc::Empty).collect();
        Ok(WeightedMean {
            mode,
            layout,
            first: None,
            acc,
            total: 0,
            count: 0,
        })
    }

    /// Number of results folded so far.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    fn rule(&self) -> DtypeRule {
        match self.mode {
            MeanMode::InPlace => DtypeRule::FloatWidth,
            MeanMode::Plain => DtypeRule::FloatWidthOrInt,
        }
    }

    /// Folds one result with weight `num_examples`. On error nothing is folded.
    pub(crate) fn add(
        &mut self,
        params: &Parameters,
        num_examples: i64,
    ) -> Result<(), StrategyError> {
        let views = parse_views(params)?;
        self.add_views(&views, num_examples)
    }

    /// Folds already parsed tensors (see [`WeightedMean::add`]).
    pub(crate) fn add_views(
        &mut self,
        views: &[NpyView<'_>],
        num_examples: i64,
    ) -> Result<(), StrategyError> {
        if num_examples < 0 {
            return Err(StrategyError::NegativeExamples(num_examples));
        }
        check_views(&self.layout, views, self.rule(), self.first.as_deref())?;
        // Everything fallible happens before the first accumulator is touched.
        let mut sources = Vec::with_capacity(views.len());
        for (i, v) in views.iter().enumerate() {
            let plain = crate::layers::is_plain_le(v);
            sources.push(match v.dtype {
                DType::F32 if plain => Src::F32Le(v.data),
                DType::F64 if plain => Src::F64Le(v.data),
                _ => Src::Owned(
                    v.to_ndarray()
                        .map_err(|e| crate::layers::decode_err(i, e))?,
                ),
            });
        }
        let first = self.first.is_none();
        let n = num_examples;
        for ((acc, src), view) in self.acc.iter_mut().zip(&sources).zip(views) {
            fold(acc, src, view.dtype, view.len(), n, self.mode, first);
        }
        if first {
            self.first = Some(views.iter().map(|v| v.dtype).collect());
        }
        self.total += i128::from(n);
        self.count += 1;
        Ok(())
    }

    /// The mean as layers. A zero total is [`StrategyError::ZeroExamples`].
    pub(crate) fn finish_layers(self) -> Result<Vec<Layer>, StrategyError> {
        if self.total == 0 {
            return Err(StrategyError::ZeroExamples);
        }
        let total = self.total;
        Ok(self
            .acc
            .into_iter()
            .zip(self.layout)
            .map(|(acc, spec)| finish(acc, spec.shape, total))
            .collect())
    }
}

fn fold(
    acc: &mut Acc,
    src: &Src<'_>,
    dtype: DType,
    len: usize,
    n: i64,
    mode: MeanMode,
    first: bool,
) {
    if matches!(acc, Acc::Empty) {
        *acc = match (mode, dtype) {
            (MeanMode::Plain, DType::F64) => Acc::F64(vec![0.0; len]),
            (MeanMode::InPlace, DType::F64) => Acc::F64Scaled {
                acc: vec![0.0; len],
                pending: None,
            },
            (MeanMode::Plain, DType::F32) => Acc::F32(vec![0.0; len]),
            (MeanMode::Plain, DType::F16) => Acc::F16(vec![0.0; len]),
            (MeanMode::Plain, _) => Acc::Int(vec![0; len]),
            (MeanMode::InPlace, DType::F32) => Acc::Scaled {
                acc: vec![0.0; len],
                pending: None,
            },
            (MeanMode::InPlace, d) => Acc::Wide {
                acc: vec![0.0; len],
                half: d == DType::F16,
            },
        };
    }
    match (acc, src) {
        (Acc::F32(a), Src::F32Le(d)) => fold_f32_le(a, d, n as f32, first),
        (Acc::F32(a), Src::Owned(x)) => {
            let w = n as f32;
            let xs = owned_f64(x).into_iter().map(|v| v as f32);
            if first {
                fold_iter(a, xs, |a, x| *a = x * w);
            } else {
                fold_iter(a, xs, |a, x| *a += x * w);
            }
        }
        (Acc::F16(a), src) => {
            let w = n as f32;
            let xs = match src {
                Src::Owned(x) => owned_f64(x),
                Src::F32Le(d) => crate::layers::f32s_from_le(d)
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                Src::F64Le(d) => crate::layers::f64s_from_le(d),
            };
            fold_iter(a, xs.into_iter(), |a, x| *a += x as f32 * w);
        }
        (Acc::Scaled { acc: a, pending }, src) => {
            let w = n as f64;
            match src {
                Src::F32Le(d) => fold_f32_le_scaled(a, d, w, first, *pending),
                Src::Owned(x) => {
                    let xs = owned_f64(x).into_iter();
                    match (first, *pending) {
                        (true, _) => fold_iter(a, xs, |a, x| *a = x as f32),
                        (false, Some(w1)) => fold_iter(a, xs, |a, x| {
                            *a = (f64::from(*a) * w1) as f32 + (x * w) as f32
                        }),
                        (false, None) => fold_iter(a, xs, |a, x| *a += (x * w) as f32),
                    }
                }
                // An f32 accumulator only ever sees f32 results.
                Src::F64Le(_) => {}
            }
            *pending = if first { Some(w) } else { None };
        }
        (Acc::Wide { acc: a, .. }, src) => {
            let w = n as f64;
            let xs = match src {
                Src::Owned(x) => owned_f64(x),
                Src::F32Le(d) => crate::layers::f32s_from_le(d)
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                Src::F64Le(d) => crate::layers::f64s_from_le(d),
            };
            fold_iter(a, xs.into_iter(), |a, x| *a += x * w);
        }
        (Acc::F64Scaled { acc: a, pending }, src) => {
            let w = n as f64;
            let xs: Vec<f64> = match src {
                Src::Owned(x) => owned_f64(x),
                Src::F32Le(d) => crate::layers::f32s_from_le(d)
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                Src::F64Le(d) => crate::layers::f64s_from_le(d),
            };
            match (first, *pending) {
                (true, _) => fold_iter(a, xs.into_iter(), |a, x| *a = x),
                (false, Some(w1)) => fold_iter(a, xs.into_iter(), |a, x| *a = *a * w1 + x * w),
                (false, None) => fold_iter(a, xs.into_iter(), |a, x| *a += x * w),
            }
            *pending = if first { Some(w) } else { None };
        }
        (Acc::F64(a), Src::F64Le(d)) => fold_f64_le(a, d, n as f64, first),
        (Acc::F64(a), src) => {
            let w = n as f64;
            let xs = match src {
                Src::Owned(x) => owned_f64(x),
                Src::F32Le(d) => crate::layers::f32s_from_le(d)
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                Src::F64Le(d) => crate::layers::f64s_from_le(d),
            };
            if first {
                fold_iter(a, xs.into_iter(), |a, x| *a = x * w);
            } else {
                fold_iter(a, xs.into_iter(), |a, x| *a += x * w);
            }
        }
        (Acc::Int(a), src) => {
            let w = i128::from(n);
            let xs = match src {
                Src::Owned(x) => int_values(x),
                // Float sources cannot reach an integer accumulator: the
                // dtype of every result equals the first result's.
                Src::F32Le(_) | Src::F64Le(_) => Vec::new(),
            };
            fold_iter(a, xs.into_iter(), |a, x| {
                *a = a.saturating_add(x.saturating_mul(w))
            });
        }
        // Unreachable combinations (an f32 accumulator never sees f64 bytes,
        // because every result of a round has the first result's dtypes).
        (Acc::F32(_), Src::F64Le(_)) | (Acc::Empty, _) => {}
    }
}

fn par_map<A: Sync, B: Send>(v: &[A], f: impl Fn(&A) -> B + Sync + Send) -> Vec<B> {
    if v.len() >= PAR_MIN {
        v.par_iter().with_min_len(CHUNK).map(f).collect()
    } else {
        v.iter().map(f).collect()
    }
}

/// Applies `f` to every element in place, in parallel for large layers.
fn par_apply<A: Send>(mut v: Vec<A>, f: impl Fn(&mut A) + Sync + Send) -> Vec<A> {
    if v.len() >= PAR_MIN {
        v.par_iter_mut().with_min_len(CHUNK).for_each(f);
    } else {
        v.iter_mut().for_each(f);
    }
    v
}

/// The mean of a layer, divided in the accumulator's own buffer where the
/// type stays (no second model-sized buffer at the end of a round).
fn finish(acc: Acc, shape: Vec<usize>, total: i128) -> Layer {
    let (data, half) = match acc {
        Acc::Empty => (Data::F64(Vec::new()), false),
        Acc::F32(a) => {
            let n = total as f32;
            (Data::F32(par_apply(a, |x| *x /= n)), false)
        }
        Acc::F16(a) => {
            let n = total as f32;
            (Data::F32(par_apply(a, |x| *x /= n)), true)
        }
        // A single result: its model, exactly.
        Acc::Scaled {
            acc,
            pending: Some(_),
        } => (Data::F32(acc), false),
        Acc::Scaled { acc, pending: None } => {
            let n = total as f64;
            (
                Data::F32(par_apply(acc, |x| *x = (f64::from(*x) / n) as f32)),
                false,
            )
        }
        Acc::Wide { acc, half } => {
            let n = total as f64;
            (Data::F32(par_map(&acc, |x| (x / n) as f32)), half)
        }
        Acc::F64(a)
        | Acc::F64Scaled {
            acc: a,
            pending: None,
        } => {
            let n = total as f64;
            (Data::F64(par_apply(a, |x| *x /= n)), false)
        }
        Acc::F64Scaled {
            acc,
            pending: Some(_),
        } => (Data::F64(acc), false),
        Acc::Int(a) => {
            let n = total as f64;
            (Data::F64(a.iter().map(|&x| x as f64 / n).collect()), false)
        }
    };
    Layer { shape, data, half }
}

/// A weighted mean over the fit results of one round, with their metrics.
#[derive(Debug)]
pub(crate) struct MeanRound {
    pub(crate) server_round: u64,
    pub(crate) mean: WeightedMean,
    pub(crate) metrics: Vec<(i64, Metrics)>,
}

impl MeanRound {
    /// Starts a round whose results must look like `global`.
    pub(crate) fn begin(
        server_round: u64,
        global: &Parameters,
        mode: MeanMode,
    ) -> Result<Self, StrategyError> {
        let layout = parse_layout(global)?;
        Ok(MeanRound {
            server_round,
            mean: WeightedMean::new(mode, layout)?,
            metrics: Vec::new(),
        })
    }

    /// Folds one result (weight `num_examples`) and keeps its metrics.
    pub(crate) fn accumulate(&mut self, result: FitRes) -> Result<(), StrategyError> {
        self.mean.add(&result.parameters, result.num_examples)?;
        self.metrics.push((result.num_examples, result.metrics));
        Ok(())
    }

    /// Number of results folded.
    pub(crate) fn num_results(&self) -> usize {
        self.mean.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::encode_all;

    fn params(layers: &[Layer]) -> Parameters {
        encode_all(layers)
    }

    fn f32_layer(v: &[f32]) -> Layer {
        Layer {
            shape: vec![v.len()],
            data: Data::F32(v.to_vec()),
            half: false,
        }
    }

    #[test]
    fn f32_product_equals_rounded_f64_product_below_2_pow_24() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..100_000 {
            let x = f32::from_bits((next() >> 32) as u32);
            let w = (next() % (1 << 24)) as f64;
            if !x.is_finite() {
                continue;
            }
            let fast = x * w as f32;
            let wide = (f64::from(x) * w) as f32;
            assert!(
                fast.to_bits() == wide.to_bits() || (fast.is_nan() && wide.is_nan()),
                "{x} * {w}"
            );
        }
    }

    #[test]
    fn single_inplace_result_is_returned_exactly() {
        let global = params(&[f32_layer(&[0.0, 0.0])]);
        let mut m = WeightedMean::new(MeanMode::InPlace, parse_layout(&global).unwrap()).unwrap();
        m.add(&params(&[f32_layer(&[0.1, 1.0 / 3.0])]), 7).unwrap();
        assert_eq!(
            m.finish_layers().unwrap()[0].data,
            Data::F32(vec![0.1, 1.0 / 3.0])
        );
    }

    #[test]
    fn plain_mean_is_flower_order() {
        let global = params(&[f32_layer(&[0.0, 0.0])]);
        let layout = parse_layout(&global).unwrap();
        let mut m = WeightedMean::new(MeanMode::Plain, layout).unwrap();
        m.add(&params(&[f32_layer(&[1.0, 2.0])]), 1).unwrap();
        m.add(&params(&[f32_layer(&[3.0, 4.0])]), 3).unwrap();
        let out = m.finish_layers().unwrap();
        assert_eq!(out[0].data, Data::F32(vec![2.5, 3.5]));
    }

    #[test]
    fn large_layers_fold_in_parallel() {
        let n = PAR_MIN * 3 + 17;
        let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..n).map(|i| -(i as f32) * 0.5).collect();
        let global = params(&[f32_layer(&a)]);
        for mode in [MeanMode::Plain, MeanMode::InPlace] {
            let mut m = WeightedMean::new(mode, parse_layout(&global).unwrap()).unwrap();
            m.add(&params(&[f32_layer(&a)]), 1).unwrap();
            m.add(&params(&[f32_layer(&b)]), 2).unwrap();
            let out = m.finish_layers().unwrap();
            let Data::F32(v) = &out[0].data else {
                panic!("f32 expected")
            };
            assert_eq!(v.len(), n);
            assert_eq!(v[n - 1], 0.0);
            assert_eq!(v[0], 0.0);
        }
    }

    #[test]
    fn refuses_mismatch_and_negative_weights() {
        let global = params(&[f32_layer(&[0.0, 0.0])]);
        let mut m = WeightedMean::new(MeanMode::InPlace, parse_layout(&global).unwrap()).unwrap();
        assert!(matches!(
            m.add(&params(&[f32_layer(&[1.0])]), 1),
            Err(StrategyError::Mismatch(_))
        ));
        assert!(matches!(
            m.add(&params(&[f32_layer(&[1.0, 2.0])]), -1),
            Err(StrategyError::NegativeExamples(-1))
        ));
        assert!(matches!(
            m.add(
                &Parameters {
                    tensors: vec![bytes::Bytes::from_static(b"junk")],
                    tensor_type: String::new()
                },
                1
            ),
            Err(StrategyError::Decode { tensor: 0, .. })
        ));
        assert_eq!(m.count(), 0);
        assert!(matches!(
            m.finish_layers(),
            Err(StrategyError::ZeroExamples)
        ));
    }
}
