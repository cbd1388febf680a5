//! Flower's server-side strategies for flower-rs.
//!
//! [`Strategy`] is what the round driver calls; [`FedAvg`] and the rest of
//! Flower's legacy catalog implement it with Flower's numbers.

mod strategy;

pub use strategy::{ClientFailure, ClientId, ClientSampler, Strategy};

/// Errors of a strategy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StrategyError {
    /// A client's tensors could not be decoded.
    #[error("undecodable parameters: {0}")]
    Decode(String),
    /// A client's arrays do not match the global model (count, shape or dtype).
    #[error("parameters do not match the global model: {0}")]
    Mismatch(String),
    /// The total weight is zero (Python: ZeroDivisionError / NaN).
    #[error("total number of examples is zero")]
    ZeroExamples,
    /// Invalid strategy configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Any other failure.
    #[error("{0}")]
    Other(String),
}
