//! Compiles `proto/flwr/proto/transport.proto` with protox (pure Rust, no
//! system `protoc`) and generates prost messages plus tonic client/server.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("flwr/proto/transport.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        // Tensors are large: keep them as reference-counted `Bytes` so that
        // decoding a 40 MB message does not copy each tensor again.
        .bytes(".")
        // Sorted maps make our encoding deterministic.
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}
