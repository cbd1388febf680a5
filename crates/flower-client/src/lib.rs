//! Flower clients in Rust, interoperable with stock Python Flower 1.42:
//!
//! * [`fleet`]: a **SuperNode** for modern Flower (the HTTP Fleet API of
//!   `flower-superlink` ≥ 1.40, and of `flower-server --fleet-api-address`),
//!   answering messages with a Rust [`app::ClientApp`] (message API:
//!   `train` / `evaluate` / `query`), or an existing [`NumPyClient`]
//!   through [`app::NumPyClientApp`]. See `examples/supernode.rs`.
//! * The rest of this page: a client for the deprecated grpc-bidi
//!   transport (`flwr.proto.FlowerService/Join`).
//!
//! * [`NumPyClient`]: implement `fit` / `evaluate` / `get_parameters` /
//!   `get_properties` over [`NdArray`](flower_core::NdArray)s, like Python's
//!   `NumPyClient`; [`NumPyClient::to_client`] turns it into a [`Client`].
//! * [`Client`]: the same at the level of the typed Ins/Res messages.
//! * [`start_client`] (async) / [`start_client_blocking`]: connect with
//!   [`ClientOptions`] (TLS, bearer token or token file, message size,
//!   keepalive, retries) and serve the client until the server ends the run.
//!   The token goes through `flower-auth`'s
//!   [`BearerCredentials`](flower_auth::BearerCredentials): never over
//!   plaintext unless explicitly allowed, never logged.
//!
//! ```no_run
//! use flower_client::{start_client_blocking, BoxError, ClientOptions, NumPyClient};
//! use flower_core::{Config, Metrics, NdArray};
//!
//! struct Model { weights: Vec<NdArray> }
//!
//! impl NumPyClient for Model {
//!     fn get_parameters(&mut self, _: &Config) -> Result<Vec<NdArray>, BoxError> {
//!         Ok(self.weights.clone())
//!     }
//!     fn fit(&mut self, parameters: Vec<NdArray>, _: &Config)
//!         -> Result<(Vec<NdArray>, u64, Metrics), BoxError> {
//!         self.weights = parameters; // train here
//!         Ok((self.weights.clone(), 100, Metrics::new()))
//!     }
//!     fn evaluate(&mut self, _parameters: Vec<NdArray>, _: &Config)
//!         -> Result<(f64, u64, Metrics), BoxError> {
//!         Ok((0.5, 100, Metrics::new()))
//!     }
//! }
//!
//! let options = ClientOptions::new("127.0.0.1:8080")
//!     .root_certificates_file("certificates/ca.pem")
//!     .token(std::env::var("FLOWER_TOKEN").unwrap_or_default());
//! let summary = start_client_blocking(options, Model { weights: vec![] }.to_client())?;
//! println!("{summary:?}");
//! # Ok::<(), flower_client::ClientError>(())
//! ```
//!
//! Logging goes through `tracing`; tokens and header values are never logged.

#![forbid(unsafe_code)]

pub mod app;
mod client;
mod driver;
mod error;
pub mod fleet;
mod inbound;
mod metadata;
mod numpy;
mod options;
mod retry;

pub use client::{handle_message, Client};
pub use driver::{start_client, start_client_blocking, RunSummary};
pub use error::ClientError;
pub use numpy::{BoxError, NotImplemented, NumPyClient, NumPyClientAdapter};
pub use options::{
    ClientOptions, DEFAULT_AUTH_HEADER_KEY, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DISCONNECT_GRACE,
};
pub use retry::RetryPolicy;
