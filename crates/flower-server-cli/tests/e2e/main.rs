//! End-to-end tests of the `flower-server` binary: stock Python Flower
//! clients, Rust clients and raw gRPC peers against the real process.
//!
//! One test binary; each module is one concern. Python tests skip with a
//! `SKIPPED:` line when the pinned venv is missing, and fail instead under
//! `FLOWER_REQUIRE_PYTHON=1` (what `scripts/test.sh` sets).

mod adversarial;
mod auth;
mod common;
mod config_file;
mod control;
mod failures;
mod fleet;
mod msg_strategies;
mod ops;
mod python_clients;
mod raw_grpc;
mod resume;
mod rust_clients;
mod strategies;
mod wheel;
