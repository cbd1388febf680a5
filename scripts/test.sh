#!/usr/bin/env bash
# The whole test suite, on a fresh machine: creates the pinned Python venv
# when missing, then runs every test with the interop/Vault tests required
# (they fail, not skip, if Python is missing), the fuzz smoke run, then the
# documentation build
# with warnings as errors and the dependency licence/advisory check
# (cargo-deny, installed when missing).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/setup-venv.sh
export FLOWER_REQUIRE_PYTHON=1
export FLOWER_PYTHON="$root/.venv/bin/python"
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?
# The pip-installable wheel (maturin from PyPI), alone: its build rewrites
# the binary that the other end-to-end tests run.
cargo test -p flower-server-cli --test e2e wheel -- --ignored || status=$?
# Every fuzz target over its committed corpus plus a short mutation run.
bash scripts/fuzz-smoke.sh || status=$?
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet || status=$?
bash scripts/deny.sh || status=$?
exit "$status"
