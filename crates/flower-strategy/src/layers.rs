//! Decoded model layers for the strategies that compute on whole arrays
//! (server optimizers, robust aggregators, DP clipping), with the NumPy
//! dtype rules they need: f32 stays f32, anything combined with f64 becomes
//! f64, a Python float (a "weak" scalar) takes the array's dtype, a NumPy
//! f64 scalar (a "strong" one) promotes to f64.
//!
//! Integer and bool layers are computed as f64 (what NumPy's reductions
//! return for them); f16 layers are computed in f32 and written back as f16.

use base64::Engine as _;
use bytes::Bytes;
use flower_core::npy::{npy_header, parse_npy, CodecError, NpyView};
use flower_core::{DType, NdArray, Parameters, NUMPY_TENSOR_TYPE};

use crate::float::{self, Float};
use crate::StrategyError;

/// Element storage of a [`Layer`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Data {
    /// float32 (also the compute type of float16 layers).
    F32(Vec<f32>),
    /// float64 (also the compute type of integer and bool layers).
    F64(Vec<f64>),
}

/// One decoded layer in C order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layer {
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Data,
    /// Written back as float16 (only with [`Data::F32`]).
    pub(crate) half: bool,
}

/// dtype and shape of one tensor, from its `.npy` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LayerSpec {
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<usize>,
}

pub(crate) fn is_float(d: DType) -> bool {
    matches!(d, DType::F16 | DType::F32 | DType::F64)
}

impl Data {
    pub(crate) fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
        }
    }

    pub(crate) fn to_f64(&self) -> Vec<f64> {
        match self {
            Data::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Data::F64(v) => v.clone(),
        }
    }

    /// Element `i` as f64.
    pub(crate) fn get(&self, i: usize) -> f64 {
        match self {
            Data::F32(v) => v.get(i).map_or(f64::NAN, |&x| f64::from(x)),
            Data::F64(v) => v.get(i).copied().unwrap_or(f64::NAN),
        }
    }

    pub(crate) fn zeros_like(&self) -> Data {
        match self {
            Data::F32(v) => Data::F32(vec![0.0; v.len()]),
            Data::F64(v) => Data::F64(vec![0.0; v.len()]),
        }
    }

    pub(crate) fn is_f64(&self) -> bool {
        matches!(self, Data::F64(_))
    }
}

impl Layer {
    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }

    /// The dtype this layer is written as.
    pub(crate) fn dtype(&self) -> DType {
        match (&self.data, self.half) {
            (Data::F32(_), true) => DType::F16,
            (Data::F32(_), false) => DType::F32,
            (Data::F64(_), _) => DType::F64,
        }
    }

    pub(crate) fn with_data(&self, data: Data) -> Layer {
        let half = self.half && !data.is_f64();
        Layer {
            shape: self.shape.clone(),
            data,
            half,
        }
    }
}

fn elementwise<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> Vec<T> {
    a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
}

/// `a ∘ b` with NumPy promotion (f32 ∘ f32 → f32, otherwise f64).
pub(crate) fn binary(
    a: &Data,
    b: &Data,
    f32op: impl Fn(f32, f32) -> f32,
    f64op: impl Fn(f64, f64) -> f64,
) -> Data {
    match (a, b) {
        (Data::F32(x), Data::F32(y)) => Data::F32(elementwise(x, y, f32op)),
        (Data::F64(x), Data::F64(y)) => Data::F64(elementwise(x, y, f64op)),
        (Data::F32(x), Data::F64(y)) => Data::F64(
            x.iter()
                .zip(y)
                .map(|(&x, &y)| f64op(f64::from(x), y))
                .collect(),
        ),
        (Data::F64(x), Data::F32(y)) => Data::F64(
            x.iter()
                .zip(y)
                .map(|(&x, &y)| f64op(x, f64::from(y)))
                .collect(),
        ),
    }
}

pub(crate) fn sub(a: &Data, b: &Data) -> Data {
    binary(a, b, |x, y| x - y, |x, y| x - y)
}

pub(crate) fn add(a: &Data, b: &Data) -> Data {
    binary(a, b, |x, y| x + y, |x, y| x + y)
}

pub(crate) fn mul(a: &Data, b: &Data) -> Data {
    binary(a, b, |x, y| x * y, |x, y| x * y)
}

pub(crate) fn div(a: &Data, b: &Data) -> Data {
    binary(a, b, |x, y| x / y, |x, y| x / y)
}

/// `a ∘ s` for a Python float `s` (rounded to the array's dtype first).
pub(crate) fn weak(
    a: &Data,
    s: f64,
    f32op: impl Fn(f32, f32) -> f32,
    f64op: impl Fn(f64, f64) -> f64,
) -> Data {
    match a {
        Data::F32(x) => {
            let s = s as f32;
            Data::F32(x.iter().map(|&x| f32op(x, s)).collect())
        }
        Data::F64(x) => Data::F64(x.iter().map(|&x| f64op(x, s)).collect()),
    }
}

/// `s * a` for a Python float `s`.
pub(crate) fn scale_weak(a: &Data, s: f64) -> Data {
    weak(a, s, |x, s| s * x, |x, s| s * x)
}

/// `a + s` for a Python float `s`.
pub(crate) fn add_weak(a: &Data, s: f64) -> Data {
    weak(a, s, |x, s| x + s, |x, s| x + s)
}

/// `s * a` for a NumPy float64 scalar `s`: always f64.
pub(crate) fn scale_strong(a: &Data, s: f64) -> Data {
    Data::F64(match a {
        Data::F32(x) => x.iter().map(|&x| s * f64::from(x)).collect(),
        Data::F64(x) => x.iter().map(|&x| s * x).collect(),
    })
}

pub(crate) fn unary(a: &Data, f32op: impl Fn(f32) -> f32, f64op: impl Fn(f64) -> f64) -> Data {
    match a {
        Data::F32(x) => Data::F32(x.iter().map(|&x| f32op(x)).collect()),
        Data::F64(x) => Data::F64(x.iter().map(|&x| f64op(x)).collect()),
    }
}

pub(crate) fn sqrt(a: &Data) -> Data {
    unary(a, f32::sqrt, f64::sqrt)
}

/// NumPy's `sign`: -1, 0 or 1 (NaN stays NaN).
pub(crate) fn sign(a: &Data) -> Data {
    unary(a, float::sign, float::sign)
}

/// Reads `n` little-endian f32 values.
pub(crate) fn f32s_from_le(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub(crate) fn f64s_from_le(data: &[u8]) -> Vec<f64> {
    data.chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

/// True when the view's bytes are the array's elements in C order,
/// little-endian (what `np.save` writes on every common platform).
pub(crate) fn is_plain_le(view: &NpyView<'_>) -> bool {
    (!view.big_endian || view.dtype.size() == 1) && (!view.fortran_order || view.shape.len() <= 1)
}

fn ndarray_to_data(array: NdArray) -> (Data, bool) {
    fn collect<T: Copy>(a: &ndarray::ArrayD<T>, f: impl Fn(T) -> f64) -> Vec<f64> {
        a.iter().map(|&x| f(x)).collect()
    }
    match array {
        NdArray::F16(a) => (Data::F32(a.iter().map(|x| x.to_f32()).collect()), true),
        NdArray::F32(a) => (Data::F32(a.iter().copied().collect()), false),
        NdArray::F64(a) => (Data::F64(a.iter().copied().collect()), false),
        NdArray::I8(a) => (Data::F64(collect(&a, f64::from)), false),
        NdArray::I16(a) => (Data::F64(collect(&a, f64::from)), false),
        NdArray::I32(a) => (Data::F64(collect(&a, f64::from)), false),
        NdArray::I64(a) => (Data::F64(collect(&a, |x| x as f64)), false),
        NdArray::U8(a) => (Data::F64(collect(&a, f64::from)), false),
        NdArray::U16(a) => (Data::F64(collect(&a, f64::from)), false),
        NdArray::U32(a) => (Data::F64(collect(&a, f64::from)), false),
        NdArray::U64(a) => (Data::F64(collect(&a, |x| x as f64)), false),
        NdArray::Bool(a) => (Data::F64(collect(&a, |x| if x { 1.0 } else { 0.0 })), false),
    }
}

/// Tensor `tensor` could not be decoded.
pub(crate) fn decode_err(tensor: usize, source: CodecError) -> StrategyError {
    StrategyError::Decode { tensor, source }
}

/// Decodes parsed tensors.
pub(crate) fn views_to_layers(views: &[NpyView<'_>]) -> Result<Vec<Layer>, StrategyError> {
    views
        .iter()
        .enumerate()
        .map(|(i, v)| view_to_layer(v).map_err(|e| decode_err(i, e)))
        .collect()
}

/// Decodes one parsed tensor.
pub(crate) fn view_to_layer(view: &NpyView<'_>) -> Result<Layer, CodecError> {
    let shape = view.shape.clone();
    if is_plain_le(view) {
        match view.dtype {
            DType::F32 => {
                return Ok(Layer {
                    shape,
                    data: Data::F32(f32s_from_le(view.data)),
                    half: false,
                })
            }
            DType::F64 => {
                return Ok(Layer {
                    shape,
                    data: Data::F64(f64s_from_le(view.data)),
                    half: false,
                })
            }
            _ => {}
        }
    }
    let array = view.to_ndarray()?;
    let (data, half) = ndarray_to_data(array);
    Ok(Layer { shape, data, half })
}

/// Decodes every tensor of `params` as `.npy` (whatever its `tensor_type`,
/// as Python Flower does).
pub(crate) fn decode_all(params: &Parameters) -> Result<Vec<Layer>, StrategyError> {
    params
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let view = parse_npy(t).map_err(|e| decode_err(i, e))?;
            view_to_layer(&view).map_err(|e| decode_err(i, e))
        })
        .collect()
}

/// Decodes every tensor into an [`NdArray`] (for user callbacks).
pub(crate) fn decode_ndarrays(params: &Parameters) -> Result<Vec<NdArray>, StrategyError> {
    params
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| flower_core::npy::decode_npy(t).map_err(|e| decode_err(i, e)))
        .collect()
}

/// The dtype and shape of every tensor of `params`.
pub(crate) fn parse_layout(params: &Parameters) -> Result<Vec<LayerSpec>, StrategyError> {
    params
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v = parse_npy(t).map_err(|e| decode_err(i, e))?;
            Ok(LayerSpec {
                dtype: v.dtype,
                shape: v.shape,
            })
        })
        .collect()
}

/// Parses the tensors of a client result.
pub(crate) fn parse_views(params: &Parameters) -> Result<Vec<NpyView<'_>>, StrategyError> {
    params
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| parse_npy(t).map_err(|e| decode_err(i, e)))
        .collect()
}

/// How a client's dtype may differ from the global model's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DtypeRule {
    /// Equal, or both floating point (a client may train in another precision).
    FloatWidth,
    /// Also integer/bool where the global is float (the plain mean turns
    /// integer layers into f64, so the next global is f64 while clients keep
    /// sending integers).
    FloatWidthOrInt,
}

/// Checks a client's layers against the global model's layout and against
/// the dtypes of the round's first accepted result (`first`).
pub(crate) fn check_against(
    global: &[LayerSpec],
    client: &[(DType, &[usize])],
    rule: DtypeRule,
    first: Option<&[DType]>,
) -> Result<(), StrategyError> {
    if client.len() != global.len() {
        return Err(StrategyError::Mismatch(format!(
            "{} layers, the global model has {}",
            client.len(),
            global.len()
        )));
    }
    for (i, ((dtype, shape), spec)) in client.iter().zip(global).enumerate() {
        if *shape != spec.shape.as_slice() {
            return Err(StrategyError::Mismatch(format!(
                "layer {i} has shape {shape:?}, the global model has {:?}",
                spec.shape
            )));
        }
        let ok = *dtype == spec.dtype
            || (is_float(*dtype) && is_float(spec.dtype))
            || (rule == DtypeRule::FloatWidthOrInt && is_float(spec.dtype));
        if !ok {
            return Err(StrategyError::Mismatch(format!(
                "layer {i} has dtype {}, the global model has {}",
                dtype.numpy_name(),
                spec.dtype.numpy_name()
            )));
        }
        if let Some(first) = first {
            if let Some(f) = first.get(i) {
                if f != dtype {
                    return Err(StrategyError::Mismatch(format!(
                        "layer {i} has dtype {}, this round's first result has {}",
                        dtype.numpy_name(),
                        f.numpy_name()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Checks decoded layers against the global layout (used where results are
/// decoded before aggregation).
pub(crate) fn check_views(
    global: &[LayerSpec],
    views: &[NpyView<'_>],
    rule: DtypeRule,
    first: Option<&[DType]>,
) -> Result<(), StrategyError> {
    let client: Vec<(DType, &[usize])> = views
        .iter()
        .map(|v| (v.dtype, v.shape.as_slice()))
        .collect();
    check_against(global, &client, rule, first)
}

/// Appends the little-endian bytes of `data` (as `dtype`) to `out`.
pub(crate) fn append_le(data: &Data, half: bool, out: &mut Vec<u8>) {
    match data {
        Data::F32(v) if half => {
            for x in v {
                out.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes());
            }
        }
        Data::F32(v) => {
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        Data::F64(v) => {
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
}

/// Writes `values` as little-endian bytes into `out` (`W` bytes each), in
/// parallel for large layers.
fn write_le<T: Copy + Sync, const W: usize>(
    values: &[T],
    out: &mut [u8],
    to_le: impl Fn(T) -> [u8; W] + Sync,
) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    let kernel = |(dst, src): (&mut [u8], &[T])| {
        for (d, &v) in dst.chunks_exact_mut(W).zip(src) {
            d.copy_from_slice(&to_le(v));
        }
    };
    if values.len() >= 1 << 16 {
        out.par_chunks_mut(CHUNK * W)
            .zip(values.par_chunks(CHUNK))
            .for_each(kernel);
    } else {
        kernel((out, values));
    }
}

/// Encodes one layer as `.npy`.
pub(crate) fn encode_layer(layer: &Layer) -> Bytes {
    let dtype = layer.dtype();
    let mut out = npy_header(dtype, &layer.shape);
    let start = out.len();
    match &layer.data {
        Data::F32(v) if !layer.half => {
            out.resize(start + v.len() * 4, 0);
            write_le(v, &mut out[start..], f32::to_le_bytes);
        }
        Data::F64(v) => {
            out.resize(start + v.len() * 8, 0);
            write_le(v, &mut out[start..], f64::to_le_bytes);
        }
        data => append_le(data, layer.half, &mut out),
    }
    Bytes::from(out)
}

/// Encodes layers as `numpy.ndarray` parameters, freeing each layer once
/// encoded (one layer, not the whole model, exists twice at a time).
pub(crate) fn encode_owned(layers: Vec<Layer>) -> Parameters {
    Parameters {
        tensors: layers.into_iter().map(|l| encode_layer(&l)).collect(),
        tensor_type: NUMPY_TENSOR_TYPE.into(),
    }
}

/// Encodes layers as `numpy.ndarray` parameters.
pub(crate) fn encode_all(layers: &[Layer]) -> Parameters {
    Parameters {
        tensors: layers.iter().map(encode_layer).collect(),
        tensor_type: NUMPY_TENSOR_TYPE.to_owned(),
    }
}

/// Layers as JSON (dtype, shape, base64 of the little-endian bytes), for
/// [`Strategy::state`](crate::Strategy::state).
pub(crate) fn layers_to_json(layers: &[Layer]) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::Value::Array(
        layers
            .iter()
            .map(|l| {
                let mut bytes = Vec::new();
                append_le(&l.data, false, &mut bytes);
                serde_json::json!({
                    "dtype": match l.data { Data::F32(_) => "float32", Data::F64(_) => "float64" },
                    "half": l.half,
                    "shape": l.shape,
                    "data": b64.encode(bytes),
                })
            })
            .collect(),
    )
}

/// Inverse of [`layers_to_json`].
pub(crate) fn layers_from_json(value: &serde_json::Value) -> Result<Vec<Layer>, StrategyError> {
    let bad = |m: &str| StrategyError::State(m.to_owned());
    let b64 = base64::engine::general_purpose::STANDARD;
    let items = value
        .as_array()
        .ok_or_else(|| bad("layers must be an array"))?;
    items
        .iter()
        .map(|item| {
            let shape: Vec<usize> = item
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| bad("layer without shape"))?
                .iter()
                .map(|d| {
                    d.as_u64()
                        .and_then(|d| usize::try_from(d).ok())
                        .ok_or_else(|| bad("bad dimension"))
                })
                .collect::<Result<_, _>>()?;
            let bytes = b64
                .decode(
                    item.get("data")
                        .and_then(|d| d.as_str())
                        .ok_or_else(|| bad("layer without data"))?,
                )
                .map_err(|e| StrategyError::State(e.to_string()))?;
            let half = item.get("half").and_then(|h| h.as_bool()).unwrap_or(false);
            let count = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad("shape overflows"))?;
            let data = match item.get("dtype").and_then(|d| d.as_str()) {
                Some("float32") if bytes.len() / 4 == count && bytes.len() % 4 == 0 => {
                    Data::F32(f32s_from_le(&bytes))
                }
                Some("float64") if bytes.len() / 8 == count && bytes.len() % 8 == 0 => {
                    Data::F64(f64s_from_le(&bytes))
                }
                _ => return Err(bad("layer dtype/size mismatch")),
            };
            Ok(Layer { shape, data, half })
        })
        .collect()
}

/// Optional layers as JSON (`null` for `None`).
pub(crate) fn opt_layers_to_json(layers: &Option<Vec<Layer>>) -> serde_json::Value {
    layers
        .as_ref()
        .map_or(serde_json::Value::Null, |l| layers_to_json(l))
}

/// Inverse of [`opt_layers_to_json`]; a missing key is `None`.
pub(crate) fn opt_layers_from_json(
    value: Option<&serde_json::Value>,
) -> Result<Option<Vec<Layer>>, StrategyError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => layers_from_json(v).map(Some),
    }
}

/// NumPy's pairwise summation (`pairwise_sum` in `loops_utils.h`), used by
/// `np.sum` over a contiguous axis: sequential below 8 elements, 8
/// interleaved accumulators up to 128, and recursive halving above.
pub(crate) fn pairwise_sum<T>(a: &[T]) -> T
where
    T: Copy + std::ops::Add<Output = T> + Default,
{
    let n = a.len();
    if n < 8 {
        let mut res = T::default();
        // NumPy starts from -0.0 for floats; the sign of a zero sum is irrelevant here.
        for &x in a {
            res = res + x;
        }
        res
    } else if n <= 128 {
        let mut r = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
        let mut i = 8;
        while i < n - (n % 8) {
            for (j, rj) in r.iter_mut().enumerate() {
                *rj = *rj + a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res = res + a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `float(np.sum(np.square(v)))` for a contiguous f32/f64 vector.
pub(crate) fn sum_of_squares(data: &Data) -> f64 {
    match data {
        Data::F32(v) => {
            let sq: Vec<f32> = v.iter().map(|x| x * x).collect();
            f64::from(pairwise_sum(&sq))
        }
        Data::F64(v) => {
            let sq: Vec<f64> = v.iter().map(|x| x * x).collect();
            pairwise_sum(&sq)
        }
    }
}

/// `np.linalg.norm(v)` as NumPy computes it for f32 (a BLAS dot, rounded to
/// f32) or f64, returned as f64. Accumulated in f64, then rounded.
pub(crate) fn l2_norm(data: &Data) -> f64 {
    match data {
        Data::F32(v) => {
            let dot: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            f64::from((dot as f32).sqrt())
        }
        Data::F64(v) => v.iter().map(|x| x * x).sum::<f64>().sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_matches_naive_for_small() {
        let v: Vec<f64> = (0..300).map(|i| i as f64 * 0.5).collect();
        assert_eq!(pairwise_sum(&v), v.iter().sum::<f64>());
        assert_eq!(pairwise_sum::<f64>(&[]), 0.0);
    }

    #[test]
    fn promotion() {
        let a = Data::F32(vec![1.0, 2.0]);
        let b = Data::F64(vec![0.5, 0.25]);
        assert_eq!(sub(&a, &b), Data::F64(vec![0.5, 1.75]));
        assert_eq!(sub(&a, &a), Data::F32(vec![0.0, 0.0]));
        assert!(scale_strong(&a, 2.0).is_f64());
        assert!(!scale_weak(&a, 2.0).is_f64());
        assert_eq!(
            sign(&Data::F32(vec![-3.0, 0.0, 2.0])),
            Data::F32(vec![-1.0, 0.0, 1.0])
        );
    }

    #[test]
    fn state_round_trip() {
        let layers = vec![
            Layer {
                shape: vec![2],
                data: Data::F32(vec![1.5, f32::NAN]),
                half: false,
            },
            Layer {
                shape: vec![],
                data: Data::F64(vec![3.0]),
                half: false,
            },
        ];
        let back = layers_from_json(&layers_to_json(&layers)).unwrap();
        assert_eq!(back[1], layers[1]);
        assert_eq!(back[0].shape, vec![2]);
    }
}
