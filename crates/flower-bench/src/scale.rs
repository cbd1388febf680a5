//! `flower-bench scale`: many concurrently connected clients (tiny model)
//! against flower-server; server peak RSS and round time.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::compare::Machine;
use crate::report::{self, opt, ServerResult, Target};
use crate::run::{self, ClientsPlan};
use crate::servers::{server_has_flag, CertDir, Flavor, ServerProcess, ServerSpec};
use crate::{Env, EnvArgs};

/// Server RSS goal of the scale run.
const RSS_GOAL_MIB: f64 = 1024.0;

/// Settings of `scale`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ScaleArgs {
    /// Concurrently connected clients (one process, one Tokio task each).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) clients: usize,
    /// Model size in float32 parameters.
    #[arg(long, default_value_t = 1000)]
    pub(crate) params: usize,
    /// Rounds.
    #[arg(long, default_value_t = 1)]
    pub(crate) rounds: u64,
    /// Plaintext (with the token allowed over it) instead of TLS.
    #[arg(long)]
    pub(crate) insecure: bool,
    /// Do not retry over plaintext when the TLS attempt does not complete.
    #[arg(long)]
    pub(crate) no_fallback: bool,
    /// Clients started per second (0: all at once).
    #[arg(long, default_value_t = 2000)]
    pub(crate) ramp_per_sec: u64,
    /// Time limit of one attempt in seconds, counted from the clients' start.
    #[arg(long, default_value_t = 240.0)]
    pub(crate) timeout_secs: f64,
    /// Tokio worker threads of the clients process.
    #[arg(long, default_value_t = 2)]
    pub(crate) client_threads: usize,
    /// File-descriptor limit for the server and the clients process.
    #[arg(long, default_value_t = 65536)]
    pub(crate) nofile: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Where to keep logs and certificates (default: a temporary directory).
    #[arg(long)]
    pub(crate) work_dir: Option<PathBuf>,
    /// Extra argument for flower-server (repeatable, e.g.
    /// `--server-arg=--aggregation-order --server-arg=arrival`).
    #[arg(long = "server-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub(crate) server_args: Vec<String>,
    #[command(flatten)]
    pub(crate) env: EnvArgs,
}

#[derive(Debug, Clone, Serialize)]
struct Attempt {
    transport: String,
    completed: bool,
    round_wall_s: Vec<Option<f64>>,
    result: ServerResult,
    target: Target,
}

#[derive(Debug, Clone, Serialize)]
struct ScaleResult {
    clients: usize,
    params: usize,
    rounds: u64,
    machine: Machine,
    attempts: Vec<Attempt>,
    notes: Vec<String>,
}

/// Runs `scale`.
pub(crate) fn run(args: ScaleArgs) -> anyhow::Result<i32> {
    let env = Env::resolve(&args.env)?;
    let machine = Machine::read();
    let (work_dir, _temp) = crate::work_dir(args.work_dir.clone())?;
    eprintln!("work directory: {}", work_dir.display());
    let bin = env.server_bin()?;
    let token_flag = server_has_flag(&bin, "--token")?;
    let mut notes = Vec::new();
    if !token_flag {
        notes.push(format!(
            "{} has no --token flag yet: the server ran without token checks",
            bin.display()
        ));
    }
    let initial_npz = work_dir.join("initial.npz");
    flower_core::npz::write_npz_arrays(&initial_npz, &crate::clients::model(args.params))
        .context("writing the initial model")?;
    let certs = CertDir::generate(&work_dir.join("certs"))?;
    let token = crate::random_token();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let timeout = Duration::from_secs_f64(args.timeout_secs);

    let mut attempts = Vec::new();
    let modes: &[bool] = if args.insecure {
        &[false]
    } else if args.no_fallback {
        &[true]
    } else {
        &[true, false]
    };
    for &tls in modes {
        let transport = if tls {
            "TLS 1.3 + bearer token"
        } else {
            "plaintext HTTP/2 + bearer token (--allow-insecure-auth)"
        };
        eprintln!("scale: {} clients over {transport}", args.clients);
        let tls_dir = tls.then(|| certs.clone());
        let attempt_dir = work_dir.join(if tls { "tls" } else { "plaintext" });
        std::fs::create_dir_all(&attempt_dir)?;
        let spec = ServerSpec {
            clients: args.clients,
            rounds: args.rounds,
            params: args.params,
            tls: tls_dir.clone(),
            token: Some(token.clone()),
            initial_npz: initial_npz.clone(),
            work_dir: attempt_dir.clone(),
            nofile: args.nofile,
            client_wait_timeout: (args.timeout_secs - 20.0).max(10.0),
            round_timeout: Some(120.0),
            extra_args: args.server_args.clone(),
        };
        let plan = ClientsPlan {
            rust_clients: args.clients,
            python_clients: 0,
            params: args.params,
            tls: tls_dir,
            token: Some(token.clone()),
            ramp_per_sec: args.ramp_per_sec,
            max_retries: 5,
            nofile: args.nofile,
            threads: args.client_threads,
            relay: false,
            python: None,
            root: env.root.clone(),
            work_dir: attempt_dir,
        };
        let server = ServerProcess::start_flower_rs(&bin, &spec, token_flag)?;
        let outcome = run::run(server, &plan, timeout, &runtime)?;
        let result =
            ServerResult::from_outcome(Flavor::FlowerRs.key(), &outcome, args.clients, args.params);
        let completed = result.completed_rounds as u64 == args.rounds;
        let target = Target {
            name: format!("server peak RSS with {} clients", args.clients),
            goal: format!("< {RSS_GOAL_MIB:.0} MiB"),
            measured: report::mib(result.peak_rss_mib),
            met: Some(result.peak_rss_mib < RSS_GOAL_MIB && completed),
        };
        let round_wall_s = result
            .rounds
            .iter()
            .map(|r| Some(r.fit_s? + r.evaluate_s?))
            .collect();
        attempts.push(Attempt {
            transport: transport.into(),
            completed,
            round_wall_s,
            result,
            target,
        });
        if completed {
            break;
        }
        if tls && modes.len() > 1 {
            notes.push("the TLS attempt did not complete; retried over plaintext".into());
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    let result = ScaleResult {
        clients: args.clients,
        params: args.params,
        rounds: args.rounds,
        machine,
        attempts,
        notes,
    };
    print_result(&result);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    Ok(if result.attempts.iter().any(|a| a.completed) {
        0
    } else {
        1
    })
}

fn print_result(r: &ScaleResult) {
    println!();
    println!(
        "flower-bench scale: {} clients, P = {} float32, R = {}; {} CPUs, {}",
        r.clients, r.params, r.rounds, r.machine.cpus, r.machine.cpu_model
    );
    let header = ["figure", "value"];
    for a in &r.attempts {
        let s = &a.result;
        let c = s.rust_clients.as_ref();
        let mut rows: Vec<Vec<String>> = vec![
            vec!["transport".into(), a.transport.clone()],
            vec![
                "completed rounds".into(),
                format!("{} of {}", s.completed_rounds, r.rounds),
            ],
            vec![
                "clients connected (server's count, max)".into(),
                s.max_connected.map_or("-".into(), |n| n.to_string()),
            ],
            vec![
                "all connected after s (from clients' start)".into(),
                opt(s.all_connected_after_s, 2),
            ],
        ];
        for (i, round) in s.rounds.iter().enumerate() {
            rows.push(vec![
                format!("round {} fit_s / evaluate_s", round.round),
                format!("{} / {}", opt(round.fit_s, 3), opt(round.evaluate_s, 3)),
            ]);
            rows.push(vec![
                format!("round {} wall s (fit + evaluate)", round.round),
                opt(a.round_wall_s.get(i).copied().flatten(), 3),
            ]);
            rows.push(vec![
                format!("round {} server CPU s (incl. connects)", round.round),
                format!("{:.2}", round.cpu_s),
            ]);
            rows.push(vec![
                format!("round {} server VmRSS MiB at completion", round.round),
                format!("{:.1}", round.rss_mib),
            ]);
        }
        rows.extend([
            vec![
                "server peak RSS MiB (VmHWM)".into(),
                format!("{:.1}", s.peak_rss_mib),
            ],
            vec![
                "server CPU s, whole life".into(),
                format!("{:.2}", s.total_cpu_s),
            ],
            vec![
                "wall s, clients start -> server exit".into(),
                format!("{:.2}", s.wall_s),
            ],
            vec![
                "clients ok / failed".into(),
                c.map_or("-".into(), |c| format!("{} / {}", c.ok, c.failed)),
            ],
            vec![
                "client retries".into(),
                c.map_or("-".into(), |c| c.retries.to_string()),
            ],
            vec![
                "first fit reached clients after ms (min..max)".into(),
                c.map_or("-".into(), |c| {
                    format!(
                        "{}..{}",
                        c.first_fit_min_ms.map_or("-".into(), |v| v.to_string()),
                        c.first_fit_max_ms.map_or("-".into(), |v| v.to_string())
                    )
                }),
            ],
            vec![
                "clients process CPU s / peak RSS MiB".into(),
                format!(
                    "{:.2} / {}",
                    s.rust_clients_cpu_s,
                    opt(s.rust_clients_peak_rss_mib, 1)
                ),
            ],
            vec![
                "server exit".into(),
                s.exit_status.clone().unwrap_or_else(|| "?".into()),
            ],
        ]);
        println!();
        print!("{}", report::table(&header, &rows));
        if let Some(c) = c {
            if !c.errors.is_empty() {
                println!("client errors: {:?}", c.errors);
            }
        }
        for e in &s.server_errors {
            println!("server error line: {e}");
        }
        println!("target {}", a.target);
    }
    for n in &r.notes {
        println!("note: {n}");
    }
}
