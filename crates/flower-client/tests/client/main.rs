//! flower-client's integration tests, in one binary (one module per concern)
//! so that they build and link once and share the machine's threads.
//!
//! The stock Python Flower server, certificates and ports come from
//! `flower_testkit`; the scripted Rust server and the deterministic client
//! are this binary's own.

use std::time::Duration;

mod scripted;
mod trainer;

mod channel_options;
mod client_errors;
mod dtypes;
mod fleet_retries;
mod fleet_server;
mod fleet_superlink;
mod python_server;
mod reconnect;
mod retries;

/// Upper bound of any single wait in these tests.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Installs a `tracing` subscriber once per process
/// (`RUST_LOG=flower_client=debug` to see the driver); later calls do
/// nothing. Output goes through the test harness's capture.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "flower_client=info".into()),
        )
        .with_test_writer()
        .try_init();
}
