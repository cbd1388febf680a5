//! The pinned Python interpreter (flwr 1.42, numpy) and the tools installed
//! next to it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::workspace_root;

/// True when the test command asked for the Python-backed tests
/// (`FLOWER_REQUIRE_PYTHON=1`): then a missing venv fails instead of skipping.
pub fn python_required() -> bool {
    std::env::var("FLOWER_REQUIRE_PYTHON").is_ok_and(|v| v == "1")
}

/// Skips (`None`, with a printed reason) or, when [`python_required`],
/// panics.
fn missing<T>(reason: &str) -> Option<T> {
    if python_required() {
        panic!("FLOWER_REQUIRE_PYTHON=1 but {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

/// Path of the pinned Python interpreter (`FLOWER_PYTHON`, else
/// `.venv/bin/python` at the workspace root), or `None` (with a printed
/// reason) when it is absent and not required. Panics when required but
/// missing.
pub fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("FLOWER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    if candidate.exists() {
        return Some(candidate);
    }
    missing(&format!(
        "pinned Python venv not found at {} (run scripts/test.sh to create it)",
        candidate.display()
    ))
}

/// Directory holding the pinned interpreter and the venv's executables
/// (such as `bao`), if any.
pub fn venv_bin() -> Option<PathBuf> {
    python().and_then(|p| p.parent().map(Path::to_path_buf))
}

/// Path of the executable `name` installed in the venv, or `None` (with a
/// printed reason) when it is absent and not required. Panics when required
/// but missing.
pub fn venv_tool(name: &str) -> Option<PathBuf> {
    let bin = venv_bin()?.join(name);
    if bin.exists() {
        return Some(bin);
    }
    missing(&format!("{} not found in the venv", bin.display()))
}

/// Runs a Python snippet (`python -c script args...`) with telemetry off and
/// returns its stdout. Panics with stderr when the script fails.
pub fn run_python(python: &Path, script: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .env("FLWR_TELEMETRY_ENABLED", "0")
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
