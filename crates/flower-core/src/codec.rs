//! [`Parameters`] ⇄ arrays, as Flower's `ndarrays_to_parameters` /
//! `parameters_to_ndarrays` do it: one `.npy` buffer per tensor, in order,
//! with `tensor_type = "numpy.ndarray"`.

use bytes::Bytes;

use crate::npy::{decode_npy, encode_npy, CodecError};
use crate::{NdArray, Parameters, NUMPY_TENSOR_TYPE};

/// Decodes every tensor of `p` (which must have `tensor_type ==
/// "numpy.ndarray"`) into an [`NdArray`], in order.
///
/// A failing tensor is reported as [`CodecError::Tensor`] with its index.
pub fn parameters_to_ndarrays(p: &Parameters) -> Result<Vec<NdArray>, CodecError> {
    if p.tensor_type != NUMPY_TENSOR_TYPE {
        return Err(CodecError::WrongTensorType(p.tensor_type.clone()));
    }
    p.tensors
        .iter()
        .enumerate()
        .map(|(index, t)| {
            decode_npy(t).map_err(|e| CodecError::Tensor {
                index,
                source: Box::new(e),
            })
        })
        .collect()
}

/// Encodes `arrays` as `.npy` tensors with `tensor_type = "numpy.ndarray"`,
/// exactly as Python Flower's `ndarrays_to_parameters` does.
pub fn ndarrays_to_parameters(arrays: &[NdArray]) -> Parameters {
    Parameters {
        tensors: arrays.iter().map(|a| Bytes::from(encode_npy(a))).collect(),
        tensor_type: NUMPY_TENSOR_TYPE.to_owned(),
    }
}
