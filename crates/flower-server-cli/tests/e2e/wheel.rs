//! The `flower-server` wheel: built with maturin (binary bindings) from
//! `crates/flower-server-cli/pyproject.toml`, installed with pip into a
//! fresh venv, where it is on the venv's PATH; a federation of stock Python
//! clients then runs against that installed binary.
//!
//! Needs PyPI (maturin is installed into a throwaway venv). The wheel is a
//! `dev`-profile build so that it reuses this test run's compiled crates.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// The maturin used to build the wheel (from PyPI).
const MATURIN: &str = "maturin==1.16.0";

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn venv(py: &Path, dir: &Path) {
    run(
        Command::new(py).args(["-m", "venv"]).arg(dir),
        "python -m venv",
    );
}

// Ignored in the parallel suite: maturin's cargo build rewrites the
// binary the other e2e tests execute. scripts/test.sh runs it afterwards:
// `cargo test -p flower-server-cli --test e2e wheel -- --ignored`.
#[test]
#[ignore = "builds a wheel with maturin from PyPI; scripts/test.sh runs it after the suite"]
fn the_wheel_installs_flower_server_on_the_venv_path_and_runs_a_federation() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = flower_testkit::workspace_root();

    // Build the wheel with maturin from PyPI, in a throwaway venv.
    let tools = dir.path().join("tools");
    venv(&py, &tools);
    run(
        Command::new(tools.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            MATURIN,
        ]),
        "pip install maturin",
    );
    let wheels = dir.path().join("wheels");
    run(
        Command::new(tools.join("bin/maturin"))
            .args(["build", "--profile", "dev", "--manifest-path"])
            .arg(root.join("crates/flower-server-cli/Cargo.toml"))
            .arg("--out")
            .arg(&wheels)
            .current_dir(&root),
        "maturin build",
    );
    let wheel = std::fs::read_dir(&wheels)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("a wheel");
    assert!(
        wheel
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("flower_rs_server-"),
        "{}",
        wheel.display()
    );

    // Install it into a fresh venv: the binary lands in the venv's bin/.
    let env = dir.path().join("env");
    venv(&py, &env);
    run(
        Command::new(env.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--no-index",
                "--disable-pip-version-check",
            ])
            .arg(&wheel),
        "pip install the wheel",
    );
    let installed = env.join("bin/flower-server");
    assert!(installed.is_file(), "no {}", installed.display());
    let path = format!(
        "{}:{}",
        env.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let version = Command::new("flower-server")
        .arg("--version")
        .env("PATH", &path)
        .output()
        .expect("flower-server on PATH");
    assert!(String::from_utf8_lossy(&version.stdout).contains("flower-server"));

    // A federation with the installed binary and two stock Python clients.
    let init = dir.path().join("init.npz");
    write_initial_npz(&py, &init);
    let out = dir.path().join("out");
    let port = flower_testkit::free_port();
    let address = format!("127.0.0.1:{port}");
    let log = dir.path().join("server.log");
    let mut server = flower_testkit::ChildGuard(
        Command::new("flower-server")
            .env("PATH", &path)
            .args(["--insecure", "--address", &address, "--rounds", "2"])
            .args(["--min-available-clients", "2", "--min-fit-clients", "2"])
            .args(["--min-evaluate-clients", "2", "--client-wait-timeout", "60"])
            .arg("--initial-parameters")
            .arg(&init)
            .arg("--output-dir")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(
        flower_testkit::wait_for_port(port, Duration::from_secs(30)),
        "installed server did not listen"
    );
    let mut clients: Vec<_> = (0..2)
        .map(|i| {
            python_client(
                &py,
                &address,
                None,
                i,
                &[],
                &dir.path().join(format!("c{i}.log")),
            )
        })
        .collect();
    let status = server
        .wait_timeout(Duration::from_secs(120))
        .expect("server exits");
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_clients_succeed(&mut clients);
    assert_eq!(history(&out)["rounds"].as_array().unwrap().len(), 2);
}
