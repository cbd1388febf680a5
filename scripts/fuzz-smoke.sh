#!/usr/bin/env bash
# Fuzz smoke run (issue 15): every fuzz target over its committed corpus
# (fuzz/corpus/<target>/) plus a short deterministic mutation run, through
# the same functions `cargo fuzz` drives, under plain `cargo test`: no
# nightly flags, no libFuzzer, no cargo-fuzz install. Takes seconds once the
# workspace is built; the long campaign is in fuzz/README.md.
#
# Extra arguments go to `cargo test` (e.g. `-- --nocapture`). Environment:
# FUZZ_SMOKE_MUTATIONS (default 3000 per target), FUZZ_SMOKE_SEED.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# The fuzz crate is its own workspace (cargo-fuzz builds it with sanitizer
# flags); sharing the root target directory reuses the workspace's built
# dependencies instead of building them all again.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
cargo test --manifest-path fuzz/Cargo.toml --no-default-features "$@"
