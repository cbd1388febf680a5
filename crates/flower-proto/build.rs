//! Compiles the flwr 1.42 protos under `proto/flwr/proto/` with protox (pure
//! Rust, no system `protoc`) and generates prost messages plus tonic clients
//! and servers (`FlowerService` for grpc-bidi, `Fleet` for SuperNodes). All
//! files share the package `flwr.proto`, so everything lands in one module.
//! The compiled descriptor set is kept for tests and reflection.
//!
//! `legacy_fleet.proto` (what flwr 1.13-1.22 SuperNodes send that 1.42 no
//! longer has) is ours, not flwr 1.42's: its methods are appended to the
//! generated `Fleet` service (one gRPC service name answers every era),
//! `PullMessages`/`PushMessages` are generated with its era-neutral
//! superset messages, and the file is left out of the kept descriptor set,
//! which mirrors flwr 1.42 only.

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

/// Our wire-compatible schema of older SuperNodes' Fleet RPCs, and the
/// service whose methods join `Fleet`.
const LEGACY: &str = "legacy_fleet.proto";
const LEGACY_SERVICE: &str = "LegacyFleet";

/// Files whose services are served over protobuf-over-HTTP only (the Control
/// and Runtime APIs of 1.42): their messages are generated, their tonic
/// stubs are not (dozens of unused RPCs would only cost compile time).
const HTTP_ONLY: &[&str] = &["runtime.proto", "control.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files: Vec<PathBuf> = FILES
        .iter()
        .chain([&LEGACY])
        .map(|f| root.join("flwr/proto").join(f))
        .collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut kept = descriptors.clone();
    kept.file.retain(|f| !f.name().ends_with(LEGACY));
    std::fs::write(out.join("flwr_descriptor_set.bin"), kept.encode_to_vec())?;
    let mut codegen = descriptors;
    let mut legacy_methods = Vec::new();
    for file in &mut codegen.file {
        if HTTP_ONLY.iter().any(|f| file.name().ends_with(f)) {
            file.service.clear();
        }
        if file.name().ends_with(LEGACY) {
            for service in file.service.drain(..) {
                if service.name() == LEGACY_SERVICE {
                    legacy_methods.extend(service.method);
                }
            }
        }
    }
    let file = codegen
        .file
        .iter_mut()
        .find(|f| f.service.iter().any(|s| s.name() == "Fleet"))
        .ok_or("no file defines the Fleet service")?;
    let (index, fleet) = file
        .service
        .iter_mut()
        .enumerate()
        .find(|(_, s)| s.name() == "Fleet")
        .ok_or("no Fleet service")?;
    // The era-neutral supersets (see legacy_fleet.proto).
    for method in &mut fleet.method {
        match method.name() {
            "PullMessages" => {
                method.output_type = Some(".flwr.proto.PullMessagesWireResponse".into());
            }
            "PushMessages" => {
                method.input_type = Some(".flwr.proto.PushMessagesWireRequest".into());
            }
            _ => {}
        }
    }
    let first = fleet.method.len();
    let added = legacy_methods.len();
    fleet.method.extend(legacy_methods);
    // prost looks up every method's source location (for its doc comment):
    // the moved methods get empty ones (service = 6, method = 2).
    if let Some(info) = file.source_code_info.as_mut() {
        for m in first..first + added {
            let mut location = info.location.first().cloned().unwrap_or_default();
            location.path = vec![6, i32::try_from(index)?, 2, i32::try_from(m)?];
            location.leading_comments = None;
            location.trailing_comments = None;
            location.leading_detached_comments.clear();
            info.location.push(location);
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
