//! `flower-server` as a drop-in `flower-superlink` 1.42 for `flwr run`:
//! the stock CLI (`flwr run`, `flwr log`, `flwr ls`, `flwr stop`) against
//! the Control API, the stock `flower-superexec`/`flwr-serverapp` that the
//! server starts running the modern app's message-API FedAvg ServerApp
//! against the Runtime API, and two stock `flower-supernode` 1.42 on the
//! Fleet API. The final arrays must equal the app README's arithmetic (the
//! same numbers a stock `flower-superlink` prints for this app: `final w:
//! [[5.0, 6.0, 7.0], [8.0, 9.0, 10.0]]`, `final b: [5.5, 4.5]`).
//!
//! Also: a restart with the same `--database` still lists the finished
//! runs; SuperNodes of older flwr (gRPC Fleet clients, up to 1.39) join
//! through `--fleet-grpc-address` beside a 1.42 one, one run per version
//! (only when `FLOWER_OLD_FLWR_BINS` lists, `:`-separated, the `bin/` of
//! venvs such as `python -m venv v && v/bin/pip install flwr==1.39.0`;
//! 1.13.0, 1.14.0, 1.15.0, 1.18.0, 1.20.0, 1.22.0, 1.32.1 and 1.39.0 pass,
//! those before 1.23 (`CreateNode` SuperNodes) in a `--fab` run of the
//! legacy app; 1.19 is not served; the test says SKIPPED otherwise); a non-loopback Control address without TLS and
//! `--allow-remote-control` is refused at start-up (no Python needed).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flower_testkit::flwr::{app_dir, flwr_env, SuperNode};

use crate::common::{ChildGuard, DevCertificates};

/// Bound on one run from `flwr run` to `finished`.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// Bound on one CLI call.
const CLI_LIMIT: Duration = Duration::from_secs(60);

/// A `flower-server` in SuperLink mode, stopped with SIGTERM (so it stops
/// its SuperExec) when dropped.
struct SuperLinkServer {
    child: ChildGuard,
    fleet: String,
    control: String,
    log: PathBuf,
}

impl SuperLinkServer {
    /// Starts the server (its log named after `tag`) with its runs in
    /// `database`.
    fn start(dir: &Path, venv_bin: &Path, database: &Path, tag: &str) -> SuperLinkServer {
        Self::start_with(dir, venv_bin, database, tag, &[])
    }

    fn start_with(
        dir: &Path,
        venv_bin: &Path,
        database: &Path,
        tag: &str,
        extra: &[&str],
    ) -> SuperLinkServer {
        let log = dir.join(format!("server-{tag}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flower-server"));
        cmd.args([
            "--insecure",
            "--fleet-api-address",
            "127.0.0.1:0",
            "--control-api-address",
            "127.0.0.1:0",
        ])
        .arg("--database")
        .arg(database)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("server log"));
        // flower-superexec (started by the server) and flwr-serverapp come
        // from the venv, offline.
        flwr_env(&mut cmd, venv_bin, &dir.join("server-flwr-home"));
        cmd.env("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1");
        let mut child = cmd.spawn().expect("start flower-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("flower-server fleet-api listening on ") {
                    let _ = tx.send((true, addr.to_owned()));
                } else if let Some(addr) =
                    line.strip_prefix("flower-server control-api listening on ")
                {
                    let _ = tx.send((false, addr.to_owned()));
                }
            }
        });
        let mut child = ChildGuard(child);
        let (mut fleet, mut control) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while fleet.is_none() || control.is_none() {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((true, a)) => fleet = Some(a),
                Ok((false, a)) => control = Some(a),
                Err(_) => {
                    child.kill();
                    panic!(
                        "server did not listen; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        SuperLinkServer {
            child,
            fleet: fleet.unwrap_or_default(),
            control: control.unwrap_or_default(),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SuperLinkServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.0.id().to_string()])
            .status();
        if self.child.wait_timeout(Duration::from_secs(10)).is_none() {
            self.child.kill();
        }
    }
}

/// The stock `flwr` CLI with `FLWR_HOME` holding a `[superlink.local]`
/// entry for the server's Control API, run in a copy of the modern app.
struct Cli {
    flwr: PathBuf,
    bin: PathBuf,
    home: PathBuf,
    app: PathBuf,
}

impl Cli {
    fn new(dir: &Path, bin: &Path, control: &str) -> Cli {
        let home = dir.join("cli-flwr-home");
        std::fs::create_dir_all(&home).expect("FLWR_HOME");
        // `flwr run` builds the FAB from the app directory.
        let app = dir.join("modern");
        let status = Command::new("cp")
            .arg("-r")
            .arg(app_dir("modern"))
            .arg(&app)
            .status()
            .expect("cp");
        assert!(status.success(), "copying the app failed");
        let _ = std::fs::remove_dir_all(app.join("modern_app/__pycache__"));
        let cli = Cli {
            flwr: bin.join("flwr"),
            bin: bin.to_path_buf(),
            home,
            app,
        };
        cli.point_at(control);
        cli
    }

    /// The `[superlink.local]` entry: the Control API at `control`.
    fn point_at(&self, control: &str) {
        std::fs::write(
            self.home.join("config.toml"),
            format!(
                "[superlink]\ndefault = \"local\"\n\n[superlink.local]\naddress = \"{control}\"\ninsecure = true\n"
            ),
        )
        .expect("config.toml");
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.flwr);
        cmd.args(args)
            .current_dir(&self.app)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        flwr_env(&mut cmd, &self.bin, &self.home);
        cmd
    }

    /// Runs `flwr args...` to completion within [`CLI_LIMIT`].
    fn run(&self, args: &[&str]) -> Output {
        self.run_within(args, CLI_LIMIT)
    }

    fn run_within(&self, args: &[&str], limit: Duration) -> Output {
        let child = self.command(args).spawn().expect("spawn flwr");
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(limit) {
            Ok(out) => out.expect("flwr output"),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                panic!("flwr {args:?} did not finish within {limit:?}");
            }
        }
    }

    /// `flwr run . local [extra...]`: the new run's id.
    fn submit(&self, extra: &[&str]) -> u64 {
        let mut args = vec!["run", ".", "local"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "flwr run failed:\n{text}");
        text.lines()
            .find_map(|l| l.trim().strip_prefix("Successfully started run "))
            .and_then(|id| id.trim().parse().ok())
            .unwrap_or_else(|| panic!("no run id in:\n{text}"))
    }

    /// `flwr ls --format json` (one run, or all): the `runs` array.
    fn ls(&self, run_id: Option<u64>) -> Vec<serde_json::Value> {
        let id = run_id.map(|r| r.to_string());
        let mut args = vec!["ls", "--format", "json"];
        if let Some(id) = &id {
            args.extend(["--run-id", id]);
        }
        let out = self.run(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        let json: serde_json::Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("flwr ls output is not JSON ({e}):\n{text}"));
        assert_eq!(json["success"], true, "flwr ls failed: {json}");
        json["runs"].as_array().cloned().unwrap_or_default()
    }

    fn status(&self, run_id: u64) -> String {
        self.ls(Some(run_id))
            .first()
            .and_then(|r| r["status"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Polls `flwr ls` until the run's status starts with `prefix`.
    fn wait_status(
        &self,
        run_id: u64,
        prefix: &str,
        server: &SuperLinkServer,
        nodes: &[&SuperNode],
    ) -> String {
        let deadline = Instant::now() + RUN_LIMIT;
        loop {
            let status = self.status(run_id);
            if status.starts_with(prefix) {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "run {run_id} is {status:?}, not {prefix}*, after {RUN_LIMIT:?}\nserver:\n{}\nnodes:\n{}",
                    server.log_text(),
                    nodes.iter().map(|n| n.log()).collect::<Vec<_>>().join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// The venv's `bin/` (with `flwr`, `flower-superexec`, ...), or `None`
/// (the test skips, saying so) without the venv.
fn venv() -> Option<PathBuf> {
    flower_testkit::python::venv_tool("flower-superexec")?;
    flower_testkit::venv_bin()
}

#[test]
fn flwr_run_ls_log_stop_against_flower_server() {
    let Some(bin) = venv() else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let database = dir.path().join("state.db");
    let server = SuperLinkServer::start(dir.path(), &bin, &database, "first");
    let node_a = SuperNode::builder(server.fleet.clone())
        .insecure()
        .node_config("factor=1 examples=10")
        .start()
        .expect("SuperNode");
    let node_b = SuperNode::builder(server.fleet.clone())
        .insecure()
        .node_config("factor=3 examples=30")
        .start()
        .expect("SuperNode");
    let nodes = [&node_a, &node_b];
    let cli = Cli::new(dir.path(), &bin, &server.control);

    // flwr run, then flwr log (streaming, the default) follows it to the end.
    let run_id = cli.submit(&[]);
    let out = cli.run_within(&["log", &run_id.to_string()], RUN_LIMIT);
    let log = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "flwr log failed:\n{log}");
    // D = (10*1 + 30*3) / 40 = 2.5 per round, two rounds.
    assert!(
        log.contains("final w: [[5.0, 6.0, 7.0], [8.0, 9.0, 10.0]]"),
        "streamed log lacks the final arrays:\n{log}\nserver:\n{}",
        server.log_text()
    );
    assert!(log.contains("final b: [5.5, 4.5]"), "{log}");
    // The evaluate loss of round 2: 1.875 + 2 * 2.5.
    assert!(log.contains("'loss': 6.875"), "{log}");
    let status = cli.wait_status(run_id, "finished", &server, &nodes);
    assert_eq!(status, "finished:completed");
    // flwr log --show prints the whole log of a finished run.
    let out = cli.run(&["log", &run_id.to_string(), "--show"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("final b: [5.5, 4.5]"));

    // flwr ls lists it, with the app and the federation of a SuperLink
    // without accounts.
    let all = cli.ls(None);
    let listed = all
        .iter()
        .find(|r| r["run-id"].as_str() == Some(run_id.to_string().as_str()))
        .unwrap_or_else(|| panic!("run {run_id} not listed: {all:?}"));
    assert_eq!(listed["federation-id"], "@none/default", "{listed}");
    assert_eq!(listed["fab-id"], "flower-rs/modern-app", "{listed}");
    assert_eq!(listed["status"], "finished:completed", "{listed}");

    // A long run is stopped with flwr stop once it runs.
    let long = cli.submit(&["--run-config", "num-server-rounds=1000"]);
    cli.wait_status(long, "running", &server, &nodes);
    let out = cli.run(&["stop", &long.to_string()]);
    assert!(
        out.status.success(),
        "flwr stop failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cli.status(long), "finished:stopped");
    // Stopping it again is refused (flwr's RUN_ALREADY_FINISHED).
    assert!(!cli.run(&["stop", &long.to_string()]).status.success());
    // An override key the FAB does not define is refused at submission.
    let out = cli.run(&["run", ".", "local", "--run-config", "no-such-key=1"]);
    assert!(
        !out.status.success()
            || !String::from_utf8_lossy(&out.stdout).contains("Successfully started")
    );

    // A restart with the same --database still lists both runs.
    drop(server);
    let server = SuperLinkServer::start(dir.path(), &bin, &database, "second");
    cli.point_at(&server.control);
    assert_eq!(cli.status(run_id), "finished:completed");
    assert_eq!(cli.status(long), "finished:stopped");
    let out = cli.run(&["log", &run_id.to_string(), "--show"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("final b: [5.5, 4.5]"),
        "the log survives the restart"
    );
    eprintln!("flwr run/log/ls/stop e2e: {:.1?}", started.elapsed());
}

#[test]
fn older_supernodes_join_over_grpc() {
    let Some(bin) = venv() else {
        return;
    };
    // FLOWER_OLD_FLWR_BINS names the bin/ of venvs with flwr <= 1.39;
    // by default those scripts/setup-venv.sh creates.
    let old_bins: Vec<PathBuf> = match std::env::var_os("FLOWER_OLD_FLWR_BINS") {
        Some(bins) => std::env::split_paths(&bins).collect(),
        None => [
            "1.13.0", "1.15.0", "1.18.0", "1.19.0", "1.20.0", "1.32.1", "1.39.0",
        ]
        .iter()
        .map(|v| flower_testkit::workspace_root().join(format!(".venv-flwr-{v}/bin")))
        .filter(|bin| bin.join("flower-supernode").exists())
        .collect(),
    };
    if old_bins.is_empty() {
        assert!(
            !flower_testkit::python::python_required(),
            "FLOWER_REQUIRE_PYTHON=1 but no venv with flwr <= 1.39 \
             (run scripts/setup-venv.sh or set FLOWER_OLD_FLWR_BINS)"
        );
        eprintln!("SKIPPED: no venv with flwr <= 1.39 (scripts/setup-venv.sh creates them)");
        return;
    }
    for old_bin in old_bins {
        let version = flwr_version(&old_bin);
        if create_node_era(&version) {
            create_node_supernode_run(&old_bin, &version);
        } else {
            old_supernode_run(&bin, &old_bin);
        }
    }
}

/// The flwr version installed beside `old_bin`'s `flower-supernode`.
fn flwr_version(old_bin: &Path) -> String {
    let out = Command::new(old_bin.join("python"))
        .args([
            "-c",
            "from importlib.metadata import version; print(version('flwr'))",
        ])
        .output()
        .expect("python of the old venv");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// flwr 1.13 to 1.22: SuperNodes that join with `CreateNode`; no
/// `flwr.app` API for the ClientApp.
fn create_node_era(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    major == 1 && minor < 23
}

/// A `CreateNode` SuperNode (flwr <= 1.22) on gRPC beside a 1.42 one on HTTP,
/// in a `--fab` run of the legacy app (a `client_fn` NumPyClient, which
/// those releases can run) with `--fleet-message-format legacy`. The FAB
/// is built by the old release's own `flwr build` code (1.13 installs the
/// wheel that its FABs carry, which 1.42's FABs lack; 1.42 installs either
/// form). One round: D = (10*1 + 30*3) / 40 = 2.5.
fn create_node_supernode_run(old_bin: &Path, version: &str) {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let app = dir.path().join("legacy");
    let status = Command::new("cp")
        .arg("-r")
        .arg(app_dir("legacy"))
        .arg(&app)
        .status()
        .expect("cp");
    assert!(status.success(), "copying the app failed");
    let _ = std::fs::remove_dir_all(app.join("legacy_app/__pycache__"));
    // `flwr build`'s function: 1.13's `flwr` command fails to start with
    // the click release that pip installs beside it today.
    let mut build = Command::new(old_bin.join("python"));
    build
        .args([
            "-c",
            "from pathlib import Path\nfrom flwr.cli.build import build\nbuild(app=Path('.'))",
        ])
        .current_dir(&app)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    flwr_env(&mut build, old_bin, &dir.path().join("build-flwr-home"));
    let mut child = ChildGuard(build.spawn().expect("flwr build"));
    let built = child.wait_timeout(Duration::from_secs(120));
    assert!(
        built.is_some_and(|s| s.success()),
        "flwr {version} build failed"
    );
    let fab = std::fs::read_dir(&app)
        .expect("app dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "fab"))
        .expect("the built FAB");

    let init = crate::fleet::write_init(dir.path());
    let out = dir.path().join("out");
    let mut args = crate::fleet::base_args(&fab, &init, &out, 1, 2, true);
    args.extend(
        [
            "--insecure",
            "--fleet-message-format",
            "legacy",
            "--fleet-grpc-address",
            "127.0.0.1:0",
        ]
        .map(String::from),
    );
    let mut server = crate::fleet::FleetServer::start(&args, dir.path(), "create-node");
    let grpc = server.grpc_fleet_address();
    let Some(new_node) = crate::fleet::supernode(&server, None, None, "factor=1 examples=10")
    else {
        return;
    };
    let old_home = dir.path().join("old-flwr-home");
    std::fs::create_dir_all(&old_home).expect("old FLWR_HOME");
    let old_log = dir.path().join("old-supernode.log");
    let port = flower_testkit::free_port();
    let mut cmd = Command::new(old_bin.join("flower-supernode"));
    cmd.args([
        "--insecure",
        "--superlink",
        &grpc,
        "--node-config",
        "factor=3 examples=30",
        "--clientappio-api-address",
        &format!("127.0.0.1:{port}"),
    ])
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&old_log).expect("log"))
    .stderr(std::fs::File::create(dir.path().join("old-supernode.err")).expect("log"));
    // Its own venv first on PATH: the SuperNode starts `flwr-clientapp`
    // (and 1.13 pip-installs the FAB's wheel) from there.
    flwr_env(&mut cmd, old_bin, &old_home);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut old = ChildGuard(cmd.spawn().expect("start the old flower-supernode"));
    let old_text = || {
        std::fs::read_to_string(&old_log).unwrap_or_default()
            + &std::fs::read_to_string(dir.path().join("old-supernode.err")).unwrap_or_default()
    };
    if version.starts_with("1.19.") {
        // Not served: refused at its first instruction (see the gRPC
        // legacy layer's docs), with a reason on both sides; the SuperNode
        // logs it, leaves (`DeleteNode`) and exits (with status 0).
        let exit = old.wait_timeout(Duration::from_secs(180));
        let text = old_text();
        assert!(
            exit.is_some()
                && text.contains("flwr 1.19 SuperNodes are not supported by this server"),
            "flwr {version} SuperNode not refused ({exit:?}):\n{text}\n--- server ---\n{}",
            server.log_text()
        );
        assert!(
            server.log_text().contains("refused a flwr 1.19 SuperNode"),
            "no refusal in the server log:\n{}",
            server.log_text()
        );
        eprintln!(
            "SuperNode of flwr {version} ({}): refused in {:.1?}",
            old_bin.display(),
            started.elapsed()
        );
        return;
    }
    let exit = server.wait_exit();
    let old_text = old_text();
    assert!(
        exit.is_some_and(|s| s.success()),
        "server ended with {exit:?}; log:\n{}\n--- flwr {version} SuperNode ---\n{old_text}\n--- 1.42 SuperNode ---\n{}",
        server.log_text(),
        new_node.log()
    );
    crate::common::assert_close(
        &crate::fleet::final_model(&out),
        &crate::fleet::shifted(2.5),
        0.0,
    );
    let h = crate::common::history(&out);
    assert_eq!(h["rounds"][0]["fit_results"], 2, "{h}");
    assert_eq!(h["rounds"][0]["fit_failures"], 0, "{h}");
    let loss = h["losses_distributed"][0][1].as_f64().expect("loss");
    assert!((loss - 4.375).abs() < 1e-9, "{h}");
    assert!(
        server
            .log_text()
            .contains("SuperNode (flwr <= 1.22) created"),
        "the old SuperNode did not join over gRPC"
    );
    drop(new_node);
    // `--`: without it kill(1) reads "-<pgid>" as an option.
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", old.0.id())])
        .status();
    drop(old);
    eprintln!(
        "SuperNode of flwr {version} ({}): run over gRPC in {:.1?}",
        old_bin.display(),
        started.elapsed()
    );
}

/// One run with a 1.42 SuperNode on HTTP and the SuperNode of `old_bin`
/// on gRPC.
fn old_supernode_run(bin: &Path, old_bin: &Path) {
    let started = Instant::now();
    let bin = bin.to_path_buf();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = SuperLinkServer::start_with(
        dir.path(),
        &bin,
        &dir.path().join("state.db"),
        "grpc",
        &["--fleet-grpc-address", "127.0.0.1:0"],
    );
    let grpc = server
        .log_text()
        .lines()
        .find_map(|l| {
            l.split("fleet api (grpc, flwr <= 1.39) listening on ")
                .nth(1)
        })
        .map(|a| a.split_whitespace().next().unwrap_or_default().to_owned())
        .expect("grpc address in the server log");
    let new_node = SuperNode::builder(server.fleet.clone())
        .insecure()
        .node_config("factor=1 examples=10")
        .start()
        .expect("SuperNode");
    // The old SuperNode with its own venv first on PATH (its SuperExec and
    // ClientApp processes are 1.39 too), in its own process group.
    let old_home = dir.path().join("old-flwr-home");
    std::fs::create_dir_all(&old_home).expect("old FLWR_HOME");
    let old_log = dir.path().join("old-supernode.log");
    let program = old_bin.join("flower-supernode");
    // The local API flag was renamed (1.32: --clientappio-api-address
    // HOST:PORT, 1.39: --port PORT).
    let help = Command::new(&program)
        .arg("--help")
        .output()
        .expect("--help");
    let port = flower_testkit::free_port();
    let local_api = if String::from_utf8_lossy(&help.stdout).contains("--clientappio-api-address") {
        vec![
            "--clientappio-api-address".to_owned(),
            format!("127.0.0.1:{port}"),
        ]
    } else {
        vec!["--port".to_owned(), port.to_string()]
    };
    let mut cmd = Command::new(&program);
    cmd.args([
        "--insecure",
        "--superlink",
        &grpc,
        "--node-config",
        "factor=3 examples=30",
    ])
    .args(&local_api)
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&old_log).expect("log"))
    .stderr(std::fs::File::create(dir.path().join("old-supernode.err")).expect("log"));
    flwr_env(&mut cmd, old_bin, &old_home);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let old = ChildGuard(cmd.spawn().expect("start flwr 1.39 flower-supernode"));
    let cli = Cli::new(dir.path(), &bin, &server.control);
    let run_id = cli.submit(&["--run-config", "num-server-rounds=1"]);
    let out = cli.run_within(&["log", &run_id.to_string()], RUN_LIMIT);
    let log = String::from_utf8_lossy(&out.stdout).to_string();
    let old_text = std::fs::read_to_string(&old_log).unwrap_or_default()
        + &std::fs::read_to_string(dir.path().join("old-supernode.err")).unwrap_or_default();
    // One round: D = (10*1 + 30*3) / 40 = 2.5.
    assert!(
        log.contains("final w: [[2.5, 3.5, 4.5], [5.5, 6.5, 7.5]]"),
        "log:\n{log}\nold SuperNode:\n{old_text}\nserver:\n{}",
        server.log_text()
    );
    assert_eq!(cli.status(run_id), "finished:completed");
    drop(new_node);
    // The group: the SuperNode and its SuperExec/ClientApp children.
    let _ = Command::new("kill")
        // `--`: without it kill(1) reads "-<pgid>" as an option and signals
        // every process (pid -1).
        .args(["-TERM", "--", &format!("-{}", old.0.id())])
        .status();
    drop(old);
    eprintln!(
        "SuperNode of {}: run over gRPC in {:.1?}",
        old_bin.display(),
        started.elapsed()
    );
}

/// Starts the server with `args` and expects it to exit with an error
/// mentioning `needle` (bounded).
fn refused(args: &[&str], needle: &str) {
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_flower-server"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start flower-server"),
    );
    let status = child
        .wait_timeout(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("flower-server {args:?} kept running"));
    let mut err = String::new();
    if let Some(mut stderr) = child.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
    }
    assert!(!status.success(), "{args:?} started");
    assert!(err.contains(needle), "{args:?}: {err}");
}

#[test]
fn a_reachable_control_api_needs_tls_and_consent() {
    refused(
        &[
            "--insecure",
            "--fleet-api-address",
            "127.0.0.1:0",
            "--control-api-address",
            "0.0.0.0:0",
        ],
        "refusing to serve the Control API on 0.0.0.0:0",
    );
    let certs = DevCertificates::generate();
    let (ca, cert, key) = (
        certs.ca().display().to_string(),
        certs.cert().display().to_string(),
        certs.key().display().to_string(),
    );
    let tls = [
        "--ssl-ca-certfile",
        ca.as_str(),
        "--ssl-certfile",
        cert.as_str(),
        "--ssl-keyfile",
        key.as_str(),
        "--fleet-api-address",
        "127.0.0.1:0",
        "--control-api-address",
        "0.0.0.0:0",
    ];
    // TLS alone is not consent.
    refused(&tls, "--allow-remote-control");
    // --allow-remote-control without TLS is not enough either.
    refused(
        &[
            "--insecure",
            "--allow-remote-control",
            "--fleet-api-address",
            "127.0.0.1:0",
            "--control-api-address",
            "0.0.0.0:0",
        ],
        "refusing to serve the Control API",
    );
}
