//! flower-rs: Flower's federated-learning protocol (the grpc-bidi transport of
//! flwr 1.42) in Rust, with authentication built in.
//!
//! This facade re-exports the member crates so that one dependency is enough:
//!
//! * [`proto`] — generated prost/tonic code for `flwr.proto.FlowerService/Join`;
//! * [`core`] — typed messages, scalar maps and the `.npy`/`.npz` array codec;
//! * [`strategy`] — the `Strategy` trait and Flower's strategy catalog;
//! * [`auth`] — bearer-token interceptor, token sources, client credentials;
//! * [`server`] — transport, client manager, round driver;
//! * [`client`] — `Client` / `NumPyClient` and the connection driver.

pub use flower_auth as auth;
pub use flower_client as client;
pub use flower_core as core;
pub use flower_proto as proto;
pub use flower_server as server;
pub use flower_strategy as strategy;
