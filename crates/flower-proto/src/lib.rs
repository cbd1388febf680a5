//! Generated Rust code for Flower's grpc-bidi wire protocol.
//!
//! The schema lives in `proto/flwr/proto/transport.proto` at the workspace
//! root and matches flwr 1.42 field for field. This crate only holds the
//! generated code: idiomatic types live in `flower-core`.
//!
//! * [`flwr::proto`] — messages (`ServerMessage`, `ClientMessage`, `Scalar`, ...)
//! * [`flwr::proto::flower_service_server`] / [`flwr::proto::flower_service_client`]
//!   — tonic service and client for `flwr.proto.FlowerService/Join`.

#![allow(missing_docs, unreachable_pub, clippy::all)]

/// Package `flwr`.
pub mod flwr {
    /// Package `flwr.proto`.
    pub mod proto {
        tonic::include_proto!("flwr.proto");
    }
}

pub use flwr::proto::*;

/// Full gRPC path of the one RPC of Flower's grpc-bidi transport.
pub const JOIN_PATH: &str = "/flwr.proto.FlowerService/Join";

/// Flower's default maximum gRPC message length, both ways (`GRPC_MAX_MESSAGE_LENGTH`).
pub const GRPC_MAX_MESSAGE_LENGTH: usize = 2_147_483_647;
