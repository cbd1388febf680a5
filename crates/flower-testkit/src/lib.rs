//! Test support shared by the flower-rs test suites. Every helper panics
//! with a clear message instead of returning errors: a failing helper is a
//! failing test.
//!
//! One module per job:
//!
//! * [`mod@python`] finds the pinned Python virtual environment (`.venv` at the
//!   workspace root, or `FLOWER_PYTHON`) and runs snippets with it. When
//!   `FLOWER_REQUIRE_PYTHON=1` (set by `scripts/test.sh`) a missing
//!   interpreter fails the test; otherwise the test is skipped with a
//!   printed reason.
//! * [`net`] picks free loopback ports and waits for listeners.
//! * [`process`] holds [`ChildGuard`], which kills a child process when
//!   dropped, so a failing test never leaves a server behind.
//! * [`tls`] generates [`DevCertificates`]: a throwaway CA and a server
//!   certificate for `localhost`, `127.0.0.1` and `::1`.
//! * [`stock_server`] runs the stock Python Flower server (flwr 1.42,
//!   FedAvg, optional TLS and bearer token) as a child process.
//! * [`flwr`] builds FABs of the test apps under `python/apps/` with the
//!   venv's `flwr build`, runs stock `flower-supernode`s ([`flwr::SuperNode`])
//!   and generates SuperNode ECDSA keys.
//! * [`superlink`] runs the stock `flower-superlink` (insecure or TLS,
//!   optional `--enable-supernode-auth`) and submits runs with `flwr run`.
//! * [`bao`] runs an OpenBao dev server (the venv's `bao` binary) and drives
//!   it through its CLI; [`jwt`] mints the JWTs its JWT auth method checks.
//!
//! The most used items are re-exported at the crate root.

pub mod bao;
pub mod flwr;
pub mod jwt;
pub mod net;
pub mod process;
pub mod python;
pub mod stock_server;
pub mod superlink;
pub mod tls;

use std::path::{Path, PathBuf};

pub use net::{free_port, wait_for_port};
pub use process::ChildGuard;
pub use python::{python, python_required, run_python, venv_bin};
pub use tls::DevCertificates;

/// Workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}
