//! Core types of flower-rs: what Flower's grpc-bidi protocol carries, as
//! idiomatic Rust, plus the NumPy array codec.
//!
//! * [`Scalar`], [`Config`], [`Metrics`], [`Properties`] — Flower's scalar maps,
//!   following Python Flower's mapping rules (bool before int, `sint64` for ints,
//!   `uint64` only above `i64::MAX`).
//! * [`Parameters`], [`Status`], the Ins/Res pairs and [`ServerMessage`] /
//!   [`ClientMessage`], with lossless conversions to and from [`flower_proto`].
//! * The array codec ([`NdArray`], `npy`, `npz`): `.npy` tensors inside
//!   [`Parameters`] as `numpy.save(allow_pickle=False)` writes them, and `.npz` model files.

mod array;
mod codec;
mod messages;
pub mod npy;
pub mod npz;
mod scalar;

pub use array::{DType, NdArray};
pub use codec::{ndarrays_to_parameters, parameters_to_ndarrays};
pub use messages::*;
pub use npy::CodecError;
pub use scalar::{Config, Metrics, Properties, Scalar, ScalarMap};

/// Errors converting generated proto messages into the typed ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConversionError {
    /// A message's `oneof msg` was not set.
    #[error("{0} carries no message (its `msg` oneof is empty)")]
    EmptyMessage(&'static str),
    /// A `Scalar` had no value set.
    #[error("Scalar carries no value")]
    EmptyScalar,
    /// A map entry's `Scalar` had no value set.
    #[error("map entry {0:?} carries an empty Scalar")]
    EmptyScalarInMap(String),
}
