//! Supervision of Flower's `flower-superexec` (flwr 1.42's default
//! `subprocess` isolation): the SuperLink starts it with
//! `--runtime-api-address` pointing at its own Runtime API and
//! `--parent-pid` (so it exits with us), and the SuperExec starts one
//! `flwr-serverapp` per acquired task. A SuperExec that exits is started
//! again after a delay; on stop it is killed (its ServerApps follow: they
//! watch their parent).

use std::net::SocketAddr;

use tokio::process::Command;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::SuperExecOptions;

/// The SuperExec's arguments (without the program).
pub(crate) fn arguments(
    options: &SuperExecOptions,
    address: SocketAddr,
    insecure: bool,
) -> Vec<String> {
    let mut args = Vec::new();
    if insecure {
        args.push("--insecure".to_owned());
    } else if let Some(ca) = &options.root_certificates {
        args.push("--root-certificates".to_owned());
        args.push(ca.display().to_string());
    }
    args.push("--runtime-api-address".to_owned());
    args.push(address.to_string());
    args.push("--parent-pid".to_owned());
    args.push(std::process::id().to_string());
    args
}

/// Runs the SuperExec until `stop`, restarting it when it exits.
pub(crate) async fn supervise(
    options: SuperExecOptions,
    address: SocketAddr,
    insecure: bool,
    mut stop: watch::Receiver<bool>,
) {
    let args = arguments(&options, address, insecure);
    loop {
        let mut command = Command::new(&options.program);
        command.args(&args).kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                warn!(
                    program = %options.program.display(),
                    error = %e,
                    "cannot start flower-superexec; runs submitted with flwr run stay pending"
                );
                tokio::select! {
                    _ = tokio::time::sleep(options.restart_delay) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        };
        info!(pid = child.id(), %address, "flower-superexec started");
        let stopped = tokio::select! {
            status = child.wait() => {
                warn!(?status, "flower-superexec exited; restarting");
                false
            }
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopped {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(options.restart_delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_follow_flwr_superlink() {
        let opts = SuperExecOptions::default();
        let addr: SocketAddr = "127.0.0.1:9093".parse().expect("addr");
        let args = arguments(&opts, addr, true);
        assert_eq!(
            &args[..3],
            ["--insecure", "--runtime-api-address", "127.0.0.1:9093"]
        );
        assert_eq!(args[3], "--parent-pid");
        let mut tls = opts.clone();
        tls.root_certificates = Some("ca.pem".into());
        assert_eq!(
            &arguments(&tls, addr, false)[..2],
            ["--root-certificates", "ca.pem"]
        );
    }
}
