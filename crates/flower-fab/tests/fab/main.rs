//! Integration tests: FABs built by the venv's `flwr build` from the test
//! apps in `python/apps/`, read by this crate and by flwr's own functions,
//! and the results compared.
//!
//! Needs the pinned venv (skipped with a reason when absent, unless
//! `FLOWER_REQUIRE_PYTHON=1`).

mod apps;
mod flwr_parity;
mod malformed;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flower_testkit::flwr::{app_dir, build_fab};
use tempfile::TempDir;

/// FABs of the two test apps, built once per test binary.
pub(crate) struct Built {
    _dir: TempDir,
    pub(crate) modern: PathBuf,
    pub(crate) legacy: PathBuf,
}

/// Builds (once) and returns the two FABs; `None` when the venv is absent.
pub(crate) fn built() -> Option<&'static Built> {
    static BUILT: OnceLock<Option<Built>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = TempDir::new().expect("temp dir");
            let modern = build_fab(&app_dir("modern"), dir.path())?;
            let legacy = build_fab(&app_dir("legacy"), dir.path())?;
            Some(Built {
                _dir: dir,
                modern,
                legacy,
            })
        })
        .as_ref()
}

/// Runs a Python snippet with the venv and parses the last line of its
/// stdout as JSON (flwr functions print progress lines before it).
pub(crate) fn python_json(script: &str, args: &[&str]) -> Option<serde_json::Value> {
    let python = flower_testkit::python()?;
    let out = flower_testkit::run_python(&python, script, args);
    let text = String::from_utf8_lossy(&out);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Some(
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("python did not end with JSON ({e}):\n{text}")),
    )
}

/// `path` as a `&str` for a Python argument.
pub(crate) fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}
