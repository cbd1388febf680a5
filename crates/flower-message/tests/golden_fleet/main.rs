//! The object codec against flwr 1.42, byte for byte, and against hostile
//! input.
//!
//! * `golden`: every vector in the shared golden directory
//!   (`$FLWR_GOLDEN_FLEET_DIR`, default `<workspace>/../shared/golden/fleet`;
//!   a missing directory fails): objects validate, the tree rebuilt from
//!   their heads inflates, and deflating the result gives back every object,
//!   id and the tree, in flwr's order.
//! * `own`: this crate's vectors (`tests/vectors/`, written by
//!   `tests/make_vectors.py` with flwr's own classes): messages built here
//!   from their description deflate to flwr's exact objects and tree, and
//!   inflate back to the same message; flwr's value typing rules; the
//!   committed vectors equal a fresh run of the script (when the venv is
//!   present).
//! * `hostile`: bad ids, cycles, wrong lengths, unknown classes, chunk-count
//!   lies, truncated bodies, huge declared lengths and more, each with its
//!   exact error, and mutated roots that must never panic.

mod common;
mod golden;
mod hostile;
mod own;
