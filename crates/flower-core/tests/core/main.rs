//! flower-core's integration tests, in one binary (one module per concern)
//! so that they build and link once and share the machine's threads. The
//! pinned Python interpreter comes from `flower_testkit`.

mod npy_malformed;
mod npy_numpy;
mod proto_python;

/// Decodes the hex the Python scripts print (bytes cross the process
/// boundary as hex in JSON).
fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("hex from Python")
}
