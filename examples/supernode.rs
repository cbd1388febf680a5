//! A Rust SuperNode: joins a Flower 1.42 federation (stock
//! `flower-superlink`, or `flower-server --fleet-api-address`) over the HTTP
//! Fleet API and answers its train / evaluate messages in Rust, beside
//! Python SuperNodes. Flags as the stock `flower-supernode`'s:
//!
//! ```sh
//! cargo run --example supernode -- --superlink 127.0.0.1:9092 \
//!     --root-certificates certificates/out/ca.pem --node-config "factor=2 examples=30"
//! ```
//!
//! The run's FAB is not executed: whatever app the ServerApp runs, this node
//! answers with the documented arithmetic below, for any `ArrayRecord`:
//!
//! * **train**: every floating-point array `x` (float16/32/64) becomes
//!   `x + lr * factor`, where `lr` is the message's `config["lr"]` (else the
//!   run config's `lr`, else 0.1) and `factor` the node config's (default
//!   1.0); other dtypes come back unchanged. Metrics: `num-examples` = the
//!   node config's `examples` (default 10), `delta` = `lr * factor` and
//!   `server-round` (from the config, 0 if absent): the keys of
//!   `python/apps/modern`'s ClientApp, since flwr's FedAvg refuses replies
//!   whose metric keys differ.
//! * **evaluate**: metrics `num-examples`, `loss` = the mean of every
//!   element of every float array (in f64), and `factor`.
//! * **query** and other types: an error reply (no handler).
//!
//! Ctrl-C or SIGTERM deactivates the node (and unregisters a self-registered
//! one) before exiting.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use flower_client::app::{ClientApp, Context, Instruction, Reply};
use flower_client::fleet::{run_supernode, shutdown_signal, SuperNodeOptions};
use flower_client::BoxError;
use flower_core::NdArray;

/// Command-line flags (the stock `flower-supernode`'s names).
#[derive(Debug, Parser)]
#[command(about = "Rust SuperNode for the Flower 1.42 HTTP Fleet API")]
struct Args {
    /// SuperLink Fleet API address, HOST:PORT (no scheme).
    #[arg(long, default_value = "127.0.0.1:9092")]
    superlink: String,
    /// Plain HTTP instead of HTTPS.
    #[arg(long, conflicts_with = "root_certificates")]
    insecure: bool,
    /// CA certificate(s), PEM, for HTTPS (default: the system's roots).
    #[arg(long)]
    root_certificates: Option<PathBuf>,
    /// OpenSSH ECDSA private key registered with `flwr supernode register`
    /// (default: an ephemeral P-384 key, self-registered). Requires TLS.
    #[arg(long)]
    auth_supernode_private_key: Option<PathBuf>,
    /// Node config, `"key=value ..."` with TOML values.
    #[arg(long, default_value = "")]
    node_config: String,
    /// Give up a failing call after this many retries (default: never).
    #[arg(long)]
    max_retries: Option<u32>,
}

/// The documented arithmetic of the module head.
struct ShiftApp;

impl ShiftApp {
    fn delta(ins: &Instruction, ctx: &Context) -> f64 {
        let lr = ins
            .config_f64("lr")
            .or_else(|| ctx.run_f64("lr"))
            .unwrap_or(0.1);
        lr * ctx.node_f64("factor").unwrap_or(1.0)
    }

    fn examples(ctx: &Context) -> u64 {
        ctx.node_f64("examples").map_or(10, |e| e.max(0.0) as u64)
    }
}

impl ClientApp for ShiftApp {
    fn name(&self) -> &str {
        "supernode-example (x + lr * factor)"
    }

    fn train(&mut self, ins: Instruction, ctx: &Context) -> Result<Reply, BoxError> {
        let delta = Self::delta(&ins, ctx);
        let round = ins.server_round().unwrap_or(0);
        let arrays = ins
            .arrays
            .into_iter()
            .map(|(name, a)| {
                let shifted = match a {
                    NdArray::F16(x) => {
                        NdArray::F16(x.mapv(|v| half::f16::from_f64(v.to_f64() + delta)))
                    }
                    NdArray::F32(x) => NdArray::F32(x.mapv(|v| (f64::from(v) + delta) as f32)),
                    NdArray::F64(x) => NdArray::F64(x + delta),
                    other => other,
                };
                (name, shifted)
            })
            .collect();
        Ok(Reply::train(arrays, Self::examples(ctx))
            .metric("delta", delta)
            .metric("server-round", round))
    }

    fn evaluate(&mut self, ins: Instruction, ctx: &Context) -> Result<Reply, BoxError> {
        let (mut sum, mut count) = (0.0f64, 0usize);
        for (_, a) in &ins.arrays {
            let values: Vec<f64> = match a {
                NdArray::F16(x) => x.iter().map(|v| v.to_f64()).collect(),
                NdArray::F32(x) => x.iter().map(|v| f64::from(*v)).collect(),
                NdArray::F64(x) => x.iter().copied().collect(),
                _ => continue,
            };
            count += values.len();
            sum += values.iter().sum::<f64>();
        }
        let loss = if count == 0 { 0.0 } else { sum / count as f64 };
        Ok(Reply::evaluate(Self::examples(ctx))
            .metric("loss", loss)
            .metric("factor", ctx.node_f64("factor").unwrap_or(1.0)))
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut options = SuperNodeOptions::new(&args.superlink);
    if args.insecure {
        options = options.insecure();
    }
    if let Some(ca) = &args.root_certificates {
        options = options.root_certificates(ca);
    }
    if let Some(key) = &args.auth_supernode_private_key {
        options = options.auth_private_key(key);
    }
    if let Some(n) = args.max_retries {
        options = options.max_retries(n);
    }
    let options = match options.node_config(&args.node_config) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_supernode(options, ShiftApp, shutdown_signal())) {
        Ok(summary) => {
            println!("supernode finished: {summary:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
