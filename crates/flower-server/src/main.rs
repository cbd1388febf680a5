//! `flower-server`: a Flower grpc-bidi server that stock Python Flower
//! clients (and flower-rs clients) join over TLS.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
