//! `flower-server`: a Flower grpc-bidi server that stock Python Flower
//! clients (and flower-rs clients) join over TLS.
//!
//! Settings (flags, or the same keys in a `--config` TOML file) map onto
//! `flower_server::Server::builder()`; this binary adds only logging, signal
//! handling and exit codes.

mod settings;

use std::process::ExitCode;

use flower_server::{error_chain, parameters_from_npz, Server, ServerError};
use settings::Settings;
use tracing::{error, info};

fn main() -> ExitCode {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flower-server: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(settings.log_json.unwrap_or(false));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flower-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("flower-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(settings: Settings) -> Result<(), String> {
    let chain = |e: ServerError| error_chain(&e);
    let (serve_options, insecure) = settings.serve_options()?;
    let driver_config = settings.driver_config()?;
    let initial = match &settings.initial_parameters {
        Some(path) => {
            Some(parameters_from_npz(path, flower_core::NUMPY_TENSOR_TYPE).map_err(chain)?)
        }
        None => None,
    };
    let common = flower_strategy::CommonOptions {
        seed: Some(driver_config.seed),
        initial_parameters: initial,
        ..Default::default()
    };
    let strategy = flower_strategy::build_strategy(&settings.strategy_spec(), common)
        .map_err(|e| e.to_string())?;
    info!(
        strategy = strategy.name(),
        rounds = driver_config.num_rounds,
        "starting"
    );

    let mut builder = Server::builder()
        .serve_options(serve_options)
        .boxed_strategy(strategy)
        .driver(driver_config)
        .allow_insecure_auth(settings.allow_insecure_auth.unwrap_or(false));
    if insecure {
        builder = builder.insecure();
    }
    if let Some(dir) = &settings.output_dir {
        builder = builder.output_dir(dir);
    }
    if let Some(auth) = settings
        .auth_flags()?
        .into_config()
        .map_err(|e| e.to_string())?
    {
        builder = builder.auth(auth);
    }
    let server = builder.bind().await.map_err(|e| match e {
        ServerError::Auth(e) => format!("authentication: {e}"),
        ServerError::Config(why) => why,
        other => chain(other),
    })?;
    println!("flower-server listening on {}", server.local_addr());

    match server.run(wait_for_signal()).await {
        Ok(outcome) => {
            info!(rounds = outcome.completed_rounds, "done");
            if let Some(dir) = &settings.output_dir {
                println!("history: {}", dir.join("history.json").display());
                println!("model: {}", dir.join("model.npz").display());
            }
            Ok(())
        }
        Err(ServerError::Interrupted) => {
            Err("interrupted by signal; the last completed round is saved".into())
        }
        Err(e @ ServerError::TooFewClients { .. }) => Err(format!(
            "ending run: {e}; the last completed round is saved"
        )),
        Err(e) => Err(chain(e)),
    }
}

/// Completes on SIGINT or SIGTERM (never, when the handlers cannot be set).
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => info!("SIGINT received: stopping"),
        _ = term.recv() => info!("SIGTERM received: stopping"),
    }
}
