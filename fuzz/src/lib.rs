//! Fuzz targets for flower-rs's decoders of peer input.
//!
//! Each target is a plain function of the fuzz input that returns quietly on
//! input the library refuses and panics only when an invariant breaks: a
//! panic or abort inside the library, or an oracle (a round trip through the
//! library's own encoder, a reference model of the auth check) disagreeing.
//! The `fuzz_targets/*.rs` binaries hand them to libFuzzer (`cargo fuzz run
//! <target>`); `tests/smoke.rs` replays the committed corpus through the same
//! functions, plus a short deterministic mutation run, under plain
//! `cargo test` (see `README.md`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod core;
mod fleet;
pub mod smoke;
mod xgb;

pub use auth::auth_header;
pub use core::{client_message, npy, npz};
pub use fleet::{fleet_objects, fleet_proto, objects_of, OBJECT_SEPARATOR};
pub use xgb::fedxgb_json;

/// A fuzz target: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` binary and corpus
/// directory.
pub const TARGETS: [(&str, Target); 7] = [
    ("npy", npy),
    ("npz", npz),
    ("client_message", client_message),
    ("auth_header", auth_header),
    ("fedxgb_json", fedxgb_json),
    ("fleet_objects", fleet_objects),
    ("fleet_proto", fleet_proto),
];
