//! flower-auth's integration tests, in one binary (one module per concern)
//! so that they build and link once and share the machine's threads.
//!
//! They share one process: see [`logs`] for log capture and [`signals`] for
//! `SIGUSR1`. The OpenBao dev server and certificates come from
//! `flower_testkit`.

mod harness;
mod logs;
mod signals;

mod file_source;
mod interceptor;
mod no_token_in_logs;
mod node_keys;
mod vault;
