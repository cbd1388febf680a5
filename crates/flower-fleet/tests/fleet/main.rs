//! flower-fleet integration tests: the Fleet API against stock
//! `flower-supernode` 1.42 processes (skipped with `SKIPPED:` when the
//! pinned venv is missing, unless `FLOWER_REQUIRE_PYTHON=1`), and
//! protocol-level tests with a Rust HTTP client.

mod hardening;
mod old_grpc;
mod protocol;
mod supernode;
mod support;
