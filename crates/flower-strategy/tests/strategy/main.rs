//! Integration tests of the strategy catalog, one module per concern:
//!
//! * `sampling`: client counts against Flower's `sampling_table.json`;
//! * `checkpoint`: `state`/`restore_state` resume identically;
//! * `robustness`: malformed client results are refused, never panic;
//! * `wrappers`: DP wrappers compose with the strategy they wrap (its
//!   bookkeeping, the common options given to the wrapper).
//!
//! Run: `cargo test -p flower-strategy --test strategy`.

#[path = "../shared/golden_data.rs"]
mod golden_data;

mod checkpoint;
mod robustness;
mod sampling;
mod wrappers;
