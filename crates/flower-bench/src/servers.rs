//! Starting the two servers under test and reading their round lines.
//!
//! * flower-rs: `flower-server ... --log-json`; the address comes from the
//!   stdout line `flower-server listening on ADDR`, rounds from the JSON log
//!   lines `"message":"round complete"` (fields `round`, `fit_s`,
//!   `evaluate_s`).
//! * Python: `python/flower_reference_server.py`; ready once its port accepts
//!   TCP; rounds from its stdout lines `reference-server round=N fit_s=X` and
//!   `... evaluate_s=X` (the evaluate line completes the round).
//!
//! When a round completes, the line handler samples `/proc/<pid>` and the
//! relay's byte counters at once, so CPU time, RSS and wire bytes can be
//! split per round.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::process::{with_nofile, LineHandler, Monitored, Stream};
use crate::procstat;
use crate::relay::RelayCounters;

/// PEM files of the dev CA and the server certificate (`ca.pem`,
/// `server.pem`, `server.key` in one directory, as the Python reference
/// server's `--cert-dir` wants them).
#[derive(Debug, Clone)]
pub(crate) struct CertDir(pub(crate) PathBuf);

impl CertDir {
    /// Generates a CA and a server certificate for `localhost`, `127.0.0.1`
    /// and `::1` (ECDSA P-256, rcgen) into `dir`.
    pub(crate) fn generate(dir: &Path) -> anyhow::Result<CertDir> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "flower-bench dev CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse()?));
        params
            .subject_alt_names
            .push(SanType::IpAddress("::1".parse()?));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
        std::fs::write(dir.join("server.pem"), cert.pem())?;
        std::fs::write(dir.join("server.key"), key.serialize_pem())?;
        Ok(CertDir(dir.to_path_buf()))
    }

    /// The CA certificate.
    pub(crate) fn ca(&self) -> PathBuf {
        self.0.join("ca.pem")
    }
    /// The server certificate.
    pub(crate) fn cert(&self) -> PathBuf {
        self.0.join("server.pem")
    }
    /// The server key.
    pub(crate) fn key(&self) -> PathBuf {
        self.0.join("server.key")
    }
}

/// A sample taken when a round completed.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RoundSnap {
    /// Round number.
    pub(crate) round: u64,
    /// Fit phase wall seconds, as the server reports it.
    pub(crate) fit_s: Option<f64>,
    /// Evaluate phase wall seconds, as the server reports it.
    pub(crate) evaluate_s: Option<f64>,
    /// Seconds since the server was spawned.
    pub(crate) at_s: f64,
    /// Server CPU seconds (user + sys) so far.
    pub(crate) cpu_s: f64,
    /// Server `VmHWM` so far (KiB).
    pub(crate) hwm_kib: u64,
    /// Server `VmRSS` now (KiB).
    pub(crate) rss_kib: u64,
    /// Relay bytes clients → server so far.
    pub(crate) wire_to_server: u64,
    /// Relay bytes server → clients so far.
    pub(crate) wire_to_clients: u64,
}

/// What the server's output told.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerEvents {
    /// The listening address (flower-rs).
    pub(crate) listening: Option<SocketAddr>,
    /// Completed rounds, in order.
    pub(crate) rounds: Vec<RoundSnap>,
    /// Fit seconds of rounds whose evaluate line did not come yet (Python).
    pending_fit: BTreeMap<u64, f64>,
    /// Most clients connected at once, per the server's `client joined` lines.
    pub(crate) max_connected: u64,
    /// Seconds since spawn when `max_connected` was reached.
    pub(crate) max_connected_at_s: Option<f64>,
    /// The first few error lines.
    pub(crate) errors: Vec<String>,
}

impl ServerEvents {
    fn note_error(&mut self, line: &str) {
        if self.errors.len() < 8 {
            self.errors.push(line.chars().take(400).collect());
        }
    }
}

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// Our `flower-server` binary.
    FlowerRs,
    /// The stock Python Flower 1.42 server (`flower_reference_server.py`).
    Python,
}

impl Flavor {
    /// Key used in tables and JSON.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Flavor::FlowerRs => "flower_rs",
            Flavor::Python => "python",
        }
    }
}

/// How to start a server.
#[derive(Debug, Clone)]
pub(crate) struct ServerSpec {
    /// Clients every round waits for (`min_fit`, `min_evaluate`, `min_available`).
    pub(crate) clients: usize,
    /// Rounds.
    pub(crate) rounds: u64,
    /// Model size (float32 parameters).
    pub(crate) params: usize,
    /// TLS material; `None` for plaintext.
    pub(crate) tls: Option<CertDir>,
    /// Bearer token the server requires (`None`: no auth).
    pub(crate) token: Option<String>,
    /// Initial model (.npz) for flower-rs.
    pub(crate) initial_npz: PathBuf,
    /// Working directory for logs and outputs.
    pub(crate) work_dir: PathBuf,
    /// File-descriptor limit of the server process.
    pub(crate) nofile: u64,
    /// flower-rs `--client-wait-timeout` (seconds).
    pub(crate) client_wait_timeout: f64,
    /// Per-reply timeout for both servers (seconds).
    pub(crate) round_timeout: Option<f64>,
    /// Extra flower-server arguments (experiments).
    pub(crate) extra_args: Vec<String>,
}

/// A started server.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    /// Which one.
    pub(crate) flavor: Flavor,
    /// The process.
    pub(crate) process: Monitored,
    /// Its parsed output.
    pub(crate) events: Arc<Mutex<ServerEvents>>,
    /// Where the relay's counters go once it runs.
    pub(crate) relay: Arc<OnceLock<Arc<RelayCounters>>>,
    /// The command line, with the token replaced by `***`.
    pub(crate) command_line: String,
    /// Python only: the port it was told to use.
    port: Option<u16>,
    /// Log file.
    pub(crate) log: PathBuf,
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

fn display_command(program: &Path, args: &[OsString], token: Option<&str>) -> String {
    let mut s = program.display().to_string();
    for a in args {
        let a = a.to_string_lossy();
        s.push(' ');
        if token.is_some_and(|t| a == t) {
            s.push_str("***");
        } else {
            s.push_str(&a);
        }
    }
    s
}

fn json_f64(v: Option<&serde_json::Value>) -> Option<f64> {
    match v? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn snap(
    pid: u32,
    spawned: Instant,
    relay: &OnceLock<Arc<RelayCounters>>,
    round: u64,
    fit_s: Option<f64>,
    evaluate_s: Option<f64>,
) -> RoundSnap {
    let s = procstat::sample(pid).unwrap_or_default();
    let (to_server, to_clients) = relay.get().map(|r| r.bytes()).unwrap_or((0, 0));
    RoundSnap {
        round,
        fit_s,
        evaluate_s,
        at_s: spawned.elapsed().as_secs_f64(),
        cpu_s: s.cpu_s(),
        hwm_kib: s.vm_hwm_kib,
        rss_kib: s.vm_rss_kib,
        wire_to_server: to_server,
        wire_to_clients: to_clients,
    }
}

/// Handles one line of flower-server output.
fn flower_rs_line(
    events: &Mutex<ServerEvents>,
    ctx: (u32, Instant, &OnceLock<Arc<RelayCounters>>),
    stream: Stream,
    line: &str,
) {
    let (pid, spawned, relay) = ctx;
    if stream == Stream::Stdout {
        if let Some(addr) = line.trim().strip_prefix("flower-server listening on ") {
            if let Ok(addr) = addr.trim().parse() {
                events.lock().expect("events").listening = Some(addr);
            }
        }
        return;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        if line.to_ascii_lowercase().contains("error") {
            events.lock().expect("events").note_error(line);
        }
        return;
    };
    let fields = &v["fields"];
    match fields["message"].as_str() {
        Some("round complete") => {
            let round = fields["round"].as_u64().unwrap_or(0);
            let s = snap(
                pid,
                spawned,
                relay,
                round,
                json_f64(fields.get("fit_s")),
                json_f64(fields.get("evaluate_s")),
            );
            events.lock().expect("events").rounds.push(s);
        }
        Some("client joined") => {
            if let Some(n) = fields["connected"].as_u64() {
                let mut e = events.lock().expect("events");
                if n > e.max_connected {
                    e.max_connected = n;
                    e.max_connected_at_s = Some(spawned.elapsed().as_secs_f64());
                }
            }
        }
        _ => {
            if v["level"].as_str() == Some("ERROR") {
                events.lock().expect("events").note_error(line);
            }
        }
    }
}

/// Parses `reference-server round=N fit_s=X` / `evaluate_s=X`.
pub(crate) fn parse_python_round(line: &str) -> Option<(u64, &str, f64)> {
    let rest = line.trim().strip_prefix("reference-server round=")?;
    let (round, rest) = rest.split_once(' ')?;
    let (key, value) = rest.trim().split_once('=')?;
    Some((round.parse().ok()?, key, value.trim().parse().ok()?))
}

/// Handles one line of the Python reference server's output.
fn python_line(
    events: &Mutex<ServerEvents>,
    ctx: (u32, Instant, &OnceLock<Arc<RelayCounters>>),
    stream: Stream,
    line: &str,
) {
    let (pid, spawned, relay) = ctx;
    if let Some((round, key, secs)) = parse_python_round(line) {
        match key {
            "fit_s" => {
                events
                    .lock()
                    .expect("events")
                    .pending_fit
                    .insert(round, secs);
            }
            "evaluate_s" => {
                let s = snap(pid, spawned, relay, round, None, Some(secs));
                let mut e = events.lock().expect("events");
                let fit = e.pending_fit.remove(&round);
                e.rounds.push(RoundSnap { fit_s: fit, ..s });
            }
            _ => {}
        }
        return;
    }
    if stream == Stream::Stderr && (line.contains("ERROR") || line.contains("Traceback")) {
        events.lock().expect("events").note_error(line);
    }
}

impl ServerProcess {
    /// Starts `flower-server` (binary `bin`) on `127.0.0.1:0`.
    pub(crate) fn start_flower_rs(
        bin: &Path,
        spec: &ServerSpec,
        token_flag: bool,
    ) -> anyhow::Result<ServerProcess> {
        let mut args: Vec<OsString> = vec!["--address".into(), "127.0.0.1:0".into()];
        match &spec.tls {
            Some(c) => {
                args.push("--ssl-ca-certfile".into());
                args.push(c.ca().into());
                args.push("--ssl-certfile".into());
                args.push(c.cert().into());
                args.push("--ssl-keyfile".into());
                args.push(c.key().into());
            }
            None => args.push("--insecure".into()),
        }
        if let (Some(t), true) = (&spec.token, token_flag) {
            args.push("--token".into());
            args.push(t.into());
            if spec.tls.is_none() {
                args.push("--allow-insecure-auth".into());
            }
        }
        let k = spec.clients.to_string();
        for (flag, value) in [
            ("--rounds", spec.rounds.to_string()),
            ("--min-fit-clients", k.clone()),
            ("--min-evaluate-clients", k.clone()),
            ("--min-available-clients", k),
            (
                "--client-wait-timeout",
                spec.client_wait_timeout.to_string(),
            ),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        if let Some(t) = spec.round_timeout {
            args.push("--round-timeout".into());
            args.push(t.to_string().into());
        }
        args.push("--initial-parameters".into());
        args.push(spec.initial_npz.clone().into());
        args.push("--log-json".into());
        args.extend(spec.extra_args.iter().map(OsString::from));
        let command_line = display_command(bin, &args, spec.token.as_deref());
        let mut command = with_nofile(spec.nofile, bin, &args);
        command.env("RUST_LOG", "info");
        let log = spec.work_dir.join("flower-rs-server.log");
        let events = Arc::new(Mutex::new(ServerEvents::default()));
        let relay: Arc<OnceLock<Arc<RelayCounters>>> = Arc::new(OnceLock::new());
        let (ev, rl) = (events.clone(), relay.clone());
        let process = Monitored::spawn("flower-rs server", command, &log, move |pid, t0| {
            Arc::new(move |stream, line: &str| flower_rs_line(&ev, (pid, t0, &rl), stream, line))
                as LineHandler
        })?;
        Ok(ServerProcess {
            flavor: Flavor::FlowerRs,
            process,
            events,
            relay,
            command_line,
            port: None,
            log,
        })
    }

    /// Starts the Python reference server on a free port.
    pub(crate) fn start_python(
        python: &Path,
        script: &Path,
        spec: &ServerSpec,
    ) -> anyhow::Result<ServerProcess> {
        let port = free_port()?;
        let mut args: Vec<OsString> = vec![
            script.into(),
            "--port".into(),
            port.to_string().into(),
            "--rounds".into(),
            spec.rounds.to_string().into(),
            "--min-clients".into(),
            spec.clients.to_string().into(),
            "--out".into(),
            spec.work_dir.join("python-result.json").into(),
        ];
        if let Some(c) = &spec.tls {
            args.push("--cert-dir".into());
            args.push(c.0.clone().into());
        }
        if let Some(t) = &spec.token {
            args.push("--token".into());
            args.push(t.into());
        }
        if let Some(t) = spec.round_timeout {
            args.push("--round-timeout".into());
            args.push(t.to_string().into());
        }
        let command_line = display_command(python, &args, spec.token.as_deref());
        let mut command = with_nofile(spec.nofile, python, &args);
        command
            .env("FLWR_TELEMETRY_ENABLED", "0")
            .env("FLOWER_TEST_PARAMS", spec.params.to_string())
            .env("PYTHONUNBUFFERED", "1");
        let log = spec.work_dir.join("python-server.log");
        let events = Arc::new(Mutex::new(ServerEvents::default()));
        let relay: Arc<OnceLock<Arc<RelayCounters>>> = Arc::new(OnceLock::new());
        let (ev, rl) = (events.clone(), relay.clone());
        let process = Monitored::spawn("python server", command, &log, move |pid, t0| {
            Arc::new(move |stream, line: &str| python_line(&ev, (pid, t0, &rl), stream, line))
                as LineHandler
        })?;
        Ok(ServerProcess {
            flavor: Flavor::Python,
            process,
            events,
            relay,
            command_line,
            port: Some(port),
            log,
        })
    }

    /// Waits until the server accepts connections; returns its address.
    pub(crate) fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.process.has_exited() {
                bail!(
                    "{} exited before it was ready; see {}\n{}",
                    self.process.name,
                    self.log.display(),
                    tail(&self.log, 15)
                );
            }
            match (self.flavor, self.port) {
                (Flavor::FlowerRs, _) => {
                    if let Some(a) = self.events.lock().expect("events").listening {
                        return Ok(a);
                    }
                }
                (Flavor::Python, Some(port)) => {
                    let addr = SocketAddr::from(([127, 0, 0, 1], port));
                    if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                        return Ok(addr);
                    }
                }
                (Flavor::Python, None) => unreachable!("python server has a port"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} not ready within {timeout:?}; see {}",
            self.process.name,
            self.log.display()
        )
    }

    /// A copy of what was parsed so far.
    pub(crate) fn events(&self) -> ServerEvents {
        self.events.lock().expect("events").clone()
    }
}

/// The last `n` lines of a log file (for error messages).
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// True when `flower-server --help` lists `flag`.
pub(crate) fn server_has_flag(bin: &Path, flag: &str) -> anyhow::Result<bool> {
    let out = Command::new(bin)
        .arg("--help")
        .output()
        .with_context(|| format!("running {} --help", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .any(|w| w == flag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_round_lines() {
        assert_eq!(
            parse_python_round("reference-server round=2 fit_s=12.345"),
            Some((2, "fit_s", 12.345))
        );
        assert_eq!(
            parse_python_round("reference-server round=1 evaluate_s=0.5\n"),
            Some((1, "evaluate_s", 0.5))
        );
        assert_eq!(parse_python_round("INFO round 1"), None);
    }

    #[test]
    fn flower_rs_round_line() {
        let events = Mutex::new(ServerEvents::default());
        let relay = OnceLock::new();
        let line = r#"{"timestamp":"t","level":"INFO","fields":{"message":"round complete","round":3,"fit_results":2,"fit_s":"1.250","evaluate_s":"0.125"},"target":"flower_server::driver"}"#;
        flower_rs_line(
            &events,
            (std::process::id(), Instant::now(), &relay),
            Stream::Stderr,
            line,
        );
        flower_rs_line(
            &events,
            (std::process::id(), Instant::now(), &relay),
            Stream::Stdout,
            "flower-server listening on 127.0.0.1:4242",
        );
        let e = events.into_inner().unwrap();
        assert_eq!(e.listening, Some("127.0.0.1:4242".parse().unwrap()));
        assert_eq!(e.rounds.len(), 1);
        assert_eq!(e.rounds[0].round, 3);
        assert_eq!(e.rounds[0].fit_s, Some(1.25));
        assert_eq!(e.rounds[0].evaluate_s, Some(0.125));
        assert!(e.rounds[0].cpu_s > 0.0 || e.rounds[0].hwm_kib > 0);
    }
}
