//! Compiles the flwr 1.42 protos under `proto/flwr/proto/` with protox (pure
//! Rust, no system `protoc`) and generates prost messages plus tonic clients
//! and servers (`FlowerService` for grpc-bidi, `Fleet` for SuperNodes). All
//! files share the package `flwr.proto`, so everything lands in one module.
//! The compiled descriptor set is kept for tests and reflection.

use std::path::PathBuf;

use prost::Message as _;

/// Every file compiled: transport.proto (grpc-bidi) and fleet.proto with
/// its imports (the Fleet API and the message/record types).
const FILES: &[&str] = &[
    "transport.proto",
    "error.proto",
    "node.proto",
    "heartbeat.proto",
    "fab.proto",
    "run.proto",
    "recorddict.proto",
    "message.proto",
    "fleet.proto",
    "task.proto",
    "runseries.proto",
    "federation_config.proto",
    "federation.proto",
    "log.proto",
    "runtime.proto",
    "control.proto",
];

/// Files whose services are served over protobuf-over-HTTP only (the Control
/// and Runtime APIs of 1.42): their messages are generated, their tonic
/// stubs are not (dozens of unused RPCs would only cost compile time).
const HTTP_ONLY: &[&str] = &["runtime.proto", "control.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files: Vec<PathBuf> = FILES
        .iter()
        .map(|f| root.join("flwr/proto").join(f))
        .collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("flwr_descriptor_set.bin"),
        descriptors.encode_to_vec(),
    )?;
    let mut codegen = descriptors.clone();
    for file in &mut codegen.file {
        if HTTP_ONLY.iter().any(|f| file.name().ends_with(f)) {
            file.service.clear();
        }
    }
    tonic_prost_build::configure()
        // Tensors and object contents are large: keep them as
        // reference-counted `Bytes` so that decoding does not copy them again.
        .bytes(".")
        // Sorted maps make our encoding deterministic.
        .btree_map(".")
        .compile_fds(codegen)?;
    Ok(())
}
