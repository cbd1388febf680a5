//! Generated Rust code for Flower's wire protocols.
//!
//! The schemas live in `proto/flwr/proto/*.proto` at the workspace root and
//! match flwr 1.42 field for field (checked against the descriptors embedded
//! in flwr's `*_pb2.py` by `tests/descriptors_python.rs`). This crate only
//! holds the generated code: idiomatic types live in `flower-core`
//! (grpc-bidi) and `flower-message` (messages, records, object trees).
//!
//! * [`flwr::proto`] — messages of grpc-bidi (`ServerMessage`, `ClientMessage`,
//!   `Scalar`, ...) and of the Fleet API (`PullMessagesRequest`, `Message`,
//!   `ObjectTree`, `RecordDict`, `Run`, `Fab`, ...).
//! * [`flwr::proto::flower_service_server`] / [`flwr::proto::flower_service_client`]
//!   — tonic service and client for `flwr.proto.FlowerService/Join`.
//! * [`flwr::proto::fleet_server`] / [`flwr::proto::fleet_client`] — tonic
//!   service and client for `flwr.proto.Fleet` (the gRPC form used by
//!   SuperNodes up to 1.39; 1.40+ send the same messages over HTTP/1.1),
//!   with the RPCs of flwr 1.13-1.22 (`CreateNode`, `Ping`, `PullTaskIns`,
//!   ...) from `legacy_fleet.proto`, and `PullMessages`/`PushMessages` on
//!   its era-neutral `PullMessagesWireResponse`/`PushMessagesWireRequest`.

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

/// The encoded `google.protobuf.FileDescriptorSet` of every compiled file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flwr_descriptor_set.bin"));

/// Flower's default maximum gRPC message length, both ways (`GRPC_MAX_MESSAGE_LENGTH`).
pub const GRPC_MAX_MESSAGE_LENGTH: usize = 2_147_483_647;
