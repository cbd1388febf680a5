//! The connection driver: `Join`, answer one `ClientMessage` per
//! `ServerMessage`, obey `ReconnectIns`, retry when the server is away.

use std::error::Error as StdError;
use std::time::{Duration, Instant};

use flower_core::{ClientMessage, DisconnectRes, InstructionKind, Reason, ServerMessage};
use flower_proto as pb;
use flower_proto::flower_service_client::FlowerServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tracing::{debug, info, warn};

use crate::client::{handle_message, Client};
use crate::inbound::Framed;
use crate::options::{error_chain, Prepared};
use crate::retry::{Decision, RetryState};
use crate::{ClientError, ClientOptions};

/// A server message that has begun to arrive must keep coming: less than
/// 64 KiB in this long fails the session (and the client retries).
const SERVER_MESSAGE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What one run of [`start_client`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunSummary {
    /// Rounds this client took part in: `max(fit, evaluate)`, since a
    /// Flower round sends each client at most one `FitIns` and one
    /// `EvaluateIns`.
    pub rounds: u64,
    /// `FitIns` answered.
    pub fit: u64,
    /// `EvaluateIns` answered.
    pub evaluate: u64,
    /// `GetParametersIns` answered.
    pub get_parameters: u64,
    /// `GetPropertiesIns` answered.
    pub get_properties: u64,
    /// Replies sent with a non-OK status (errors, undecodable parameters,
    /// methods not implemented).
    pub failed_replies: u64,
    /// `Join` calls the server accepted (1 + reconnects + recoveries).
    pub joins: u64,
    /// `ReconnectIns` with `seconds > 0` obeyed.
    pub reconnects: u64,
    /// Retries after connection failures or a server that went away.
    pub retries: u64,
}

impl RunSummary {
    fn count(&mut self, reply: &ClientMessage) {
        let ok = match reply {
            ClientMessage::Fit(r) => {
                self.fit += 1;
                r.status.is_ok()
            }
            ClientMessage::Evaluate(r) => {
                self.evaluate += 1;
                r.status.is_ok()
            }
            ClientMessage::GetParameters(r) => {
                self.get_parameters += 1;
                r.status.is_ok()
            }
            ClientMessage::GetProperties(r) => {
                self.get_properties += 1;
                r.status.is_ok()
            }
            ClientMessage::Disconnect(_) => true,
        };
        if !ok {
            self.failed_replies += 1;
        }
        self.rounds = self.fit.max(self.evaluate);
    }
}

/// Connects to a Flower server and serves `client` until the server says
/// goodbye; the async entry point (Python's `start_client`).
///
/// Opens `flwr.proto.FlowerService/Join`, waits for instructions and answers
/// each with exactly one reply, computed by `client` on Tokio's blocking
/// pool. On `ReconnectIns`:
///
/// * `seconds > 0`: answers `DisconnectRes{reason: RECONNECT}`, closes the
///   stream, sleeps `seconds`, and joins again (the server sees a new client);
/// * `seconds == 0` (Python's `ReconnectIns()`, sent at the end of a run):
///   answers `DisconnectRes{reason: RECONNECT}`, as Python's client does,
///   closes the stream and returns `Ok`.
///
/// Connection failures and a server going away mid-run are retried according
/// to the options' [`RetryPolicy`](crate::RetryPolicy); authentication and
/// TLS failures are not.
///
/// # Errors
///
/// See [`ClientError`]. An error returned by the client's own methods is not
/// one of them: it is reported to the server as a failed reply.
///
/// # Example
///
/// ```no_run
/// # use flower_client::{start_client, ClientOptions, NumPyClient};
/// # struct MyClient;
/// # impl NumPyClient for MyClient {}
/// # async fn run() -> Result<(), flower_client::ClientError> {
/// let options = ClientOptions::new("127.0.0.1:8080").root_certificates_file("ca.pem");
/// let summary = start_client(options, MyClient.to_client()).await?;
/// println!("took part in {} rounds", summary.rounds);
/// # Ok(()) }
/// ```
pub async fn start_client<C>(options: ClientOptions, client: C) -> Result<RunSummary, ClientError>
where
    C: Client + Send + 'static,
{
    let prepared = options.prepare()?;
    info!(
        server = %prepared.uri,
        bearer_token = prepared.has_token,
        "starting Flower client"
    );
    let mut driver = Driver {
        retry: RetryState::new(prepared.retry.clone()),
        prepared,
        client: Some(client),
        summary: RunSummary::default(),
        last_failure: None,
    };
    driver.run().await
}

/// [`start_client`] on a Tokio runtime of its own, for synchronous programs.
///
/// # Errors
///
/// As [`start_client`], plus [`ClientError::Runtime`] when called from
/// inside a Tokio runtime (use [`start_client`] there) or when the runtime
/// cannot be built.
pub fn start_client_blocking<C>(
    options: ClientOptions,
    client: C,
) -> Result<RunSummary, ClientError>
where
    C: Client + Send + 'static,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(ClientError::Runtime(
            "start_client_blocking called inside a Tokio runtime; use start_client(..).await"
                .into(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("flower-client")
        .enable_all()
        .build()
        .map_err(|e| ClientError::Runtime(format!("cannot build a Tokio runtime: {e}")))?;
    runtime.block_on(start_client(options, client))
}

/// How one `Join` ended.
enum SessionEnd {
    /// `ReconnectIns{seconds: 0}`: done.
    Shutdown,
    /// `ReconnectIns{seconds > 0}`: join again after this (the part of the
    /// delay not already spent waiting for the stream to close).
    Reconnect { after: Duration },
    /// The server could not be reached or went away: retry.
    Transient(String),
    /// Stop with this error.
    Fatal(ClientError),
}

struct Driver<C> {
    prepared: Prepared,
    /// `None` only while the client runs on the blocking pool (or after it
    /// panicked there).
    client: Option<C>,
    summary: RunSummary,
    retry: RetryState,
    last_failure: Option<String>,
}

impl<C: Client + Send + 'static> Driver<C> {
    async fn run(&mut self) -> Result<RunSummary, ClientError> {
        loop {
            match self.session().await {
                SessionEnd::Shutdown => {
                    info!(summary = ?self.summary, "disconnected by the server; shutting down");
                    return Ok(self.summary.clone());
                }
                SessionEnd::Reconnect { after } => {
                    self.summary.reconnects += 1;
                    tokio::time::sleep(after).await;
                }
                SessionEnd::Fatal(e) => {
                    warn!(error = %e, "Flower client stopped");
                    return Err(e);
                }
                SessionEnd::Transient(reason) => {
                    let decision = self
                        .retry
                        .on_failure(Instant::now(), &mut rand::thread_rng());
                    match decision {
                        Decision::Retry(delay) => {
                            self.summary.retries += 1;
                            warn!(
                                error = %reason,
                                retry_in = ?delay,
                                "connection attempt failed, retrying"
                            );
                            self.last_failure = Some(reason);
                            tokio::time::sleep(delay).await;
                        }
                        Decision::GiveUp { attempts, elapsed } => {
                            warn!(attempts, ?elapsed, error = %reason, "giving up");
                            return Err(ClientError::RetriesExhausted {
                                attempts,
                                elapsed,
                                last_error: reason,
                            });
                        }
                    }
                }
            }
        }
    }

    /// One connection and one `Join`, until it ends.
    async fn session(&mut self) -> SessionEnd {
        let p = &self.prepared;
        let channel = match p.endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return classify_connect_error(&e, &p.uri),
        };
        // Server messages are assembled as their bytes arrive, not reserved
        // from their length prefix (see `inbound`).
        let channel = Framed::new(
            channel,
            p.max_decoding_message_size,
            SERVER_MESSAGE_IDLE_TIMEOUT,
        );
        let mut grpc = FlowerServiceClient::with_interceptor(channel, p.metadata.clone())
            .max_decoding_message_size(p.max_decoding_message_size)
            .max_encoding_message_size(p.max_encoding_message_size);

        // Python's client uses a Queue(maxsize=1) as the request stream.
        let (tx, rx) = mpsc::channel::<pb::ClientMessage>(1);
        let mut inbound = match grpc.join(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return classify_status(status, &p.uri),
        };
        self.summary.joins += 1;
        if self.last_failure.take().is_some() {
            info!(server = %p.uri, retries = self.summary.retries, "joined after retrying");
        } else {
            info!(server = %p.uri, "joined");
        }

        let mut replied = false;
        loop {
            let message = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    return SessionEnd::Transient(
                        "the server ended the stream without sending ReconnectIns".into(),
                    )
                }
                Err(status) => return classify_status(status, &self.prepared.uri),
            };
            // A streak of failures ends only once the server has taken one of
            // our replies and asked for more: a server that sends a message
            // and drops the stream must not reset `max_retries` forever.
            if replied {
                self.retry.reset();
            }
            let message = match ServerMessage::try_from(message) {
                Ok(m) => m,
                Err(e) => {
                    return SessionEnd::Fatal(ClientError::Protocol(format!(
                        "invalid ServerMessage: {e}"
                    )))
                }
            };
            let kind = message.kind();
            debug!(%kind, "instruction received");

            if let ServerMessage::Reconnect(ins) = message {
                let reply = ClientMessage::Disconnect(DisconnectRes {
                    reason: Reason::Reconnect,
                });
                // A closed request stream only means the server is gone already.
                let _ = tx.send(reply.into()).await;
                drop(tx);
                let seconds = u64::try_from(ins.seconds).unwrap_or(0);
                let grace = if seconds > 0 {
                    self.prepared
                        .disconnect_grace
                        .min(Duration::from_secs(seconds))
                } else {
                    self.prepared.disconnect_grace
                };
                let waited = linger(inbound, grace).await;
                return if seconds > 0 {
                    info!(
                        seconds,
                        "disconnect, then re-establish connection after {seconds} second(s)"
                    );
                    SessionEnd::Reconnect {
                        after: Duration::from_secs(seconds).saturating_sub(waited),
                    }
                } else {
                    info!("disconnect and shut down");
                    SessionEnd::Shutdown
                };
            }

            let reply = match self.answer(message, kind).await {
                Ok(r) => r,
                Err(e) => return SessionEnd::Fatal(e),
            };
            self.summary.count(&reply);
            debug!(kind = %reply.kind(), "reply sent");
            if tx.send(reply.into()).await.is_err() {
                // The request stream is gone; the response stream tells why.
                debug!("request stream closed while sending a reply");
            } else {
                replied = true;
            }
        }
    }

    /// Runs the user's client on the blocking pool.
    async fn answer(
        &mut self,
        message: ServerMessage,
        kind: InstructionKind,
    ) -> Result<ClientMessage, ClientError> {
        let Some(mut client) = self.client.take() else {
            return Err(ClientError::Protocol("client unavailable".into()));
        };
        let joined = tokio::task::spawn_blocking(move || {
            let reply = handle_message(&mut client, message);
            (client, reply)
        })
        .await;
        match joined {
            Ok((client, reply)) => {
                self.client = Some(client);
                Ok(reply)
            }
            Err(e) => {
                let message = if e.is_panic() {
                    let payload = e.into_panic();
                    payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic payload".into())
                } else {
                    e.to_string()
                };
                Err(ClientError::ClientPanicked { kind, message })
            }
        }
    }
}

/// After answering `ReconnectIns` and half-closing: waits up to `grace` for
/// the server to end the stream (so the `DisconnectRes` is not cancelled in
/// flight), then drops it. Returns the time spent.
async fn linger(mut inbound: Streaming<pb::ServerMessage>, grace: Duration) -> Duration {
    let start = Instant::now();
    if grace.is_zero() {
        return Duration::ZERO;
    }
    let _ = tokio::time::timeout(grace, async {
        while let Ok(Some(_)) = inbound.message().await {
            debug!("ignoring an instruction received after ReconnectIns");
        }
    })
    .await;
    start.elapsed()
}

/// True when the chain holds a TLS failure (rustls reports through
/// `io::ErrorKind::InvalidData`; tonic's own "HTTP/2 was not negotiated").
fn is_tls_failure(err: &(dyn StdError + 'static)) -> bool {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::InvalidData && io.get_ref().is_some() {
                return true;
            }
        }
        if e.to_string().contains("HTTP/2 was not negotiated") {
            return true;
        }
        current = e.source();
    }
    false
}

/// `Code: message: source: source...` on one line.
fn status_text(status: &tonic::Status) -> String {
    let mut out = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = status.source() {
        let chain = error_chain(source);
        if !out.contains(&chain) {
            out.push_str(": ");
            out.push_str(&chain);
        }
    }
    out
}

fn classify_connect_error(err: &tonic::transport::Error, uri: &str) -> SessionEnd {
    let message = error_chain(err);
    if is_tls_failure(err) {
        SessionEnd::Fatal(ClientError::Tls {
            address: uri.to_owned(),
            message,
        })
    } else {
        SessionEnd::Transient(format!("cannot connect to {uri}: {message}"))
    }
}

/// Sorts a `Join` failure into retry / auth / fatal.
///
/// * `UNAUTHENTICATED`, `PERMISSION_DENIED` → [`ClientError::Auth`];
/// * a status produced locally from a transport failure (it has a source:
///   an h2 reset, `GOAWAY`, a broken connection), `UNAVAILABLE` → retry;
/// * anything else the server sent → [`ClientError::Rpc`].
fn classify_status(status: tonic::Status, uri: &str) -> SessionEnd {
    use tonic::Code;
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => {
            return SessionEnd::Fatal(ClientError::Auth {
                code: status.code(),
                message: status.message().to_owned(),
            })
        }
        Code::Unavailable => {
            return SessionEnd::Transient(format!("{uri}: {}", status_text(&status)))
        }
        _ => {}
    }
    if let Some(source) = status.source() {
        if is_tls_failure(source) {
            return SessionEnd::Fatal(ClientError::Tls {
                address: uri.to_owned(),
                message: status_text(&status),
            });
        }
        return SessionEnd::Transient(format!("{uri}: connection lost: {}", status_text(&status)));
    }
    // tonic's generated client reports a channel that broke before the call
    // as "Service was not ready", without a source.
    if status.code() == Code::Unknown && status.message().starts_with("Service was not ready") {
        return SessionEnd::Transient(format!("{uri}: {}", status.message()));
    }
    SessionEnd::Fatal(ClientError::Rpc(Box::new(status)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_codes_are_fatal_and_unavailable_is_transient() {
        let end = classify_status(tonic::Status::unauthenticated("Invalid bearer token"), "u");
        assert!(matches!(
            end,
            SessionEnd::Fatal(ClientError::Auth {
                code: tonic::Code::Unauthenticated,
                ..
            })
        ));
        let end = classify_status(tonic::Status::permission_denied("no"), "u");
        assert!(matches!(end, SessionEnd::Fatal(ClientError::Auth { .. })));
        let end = classify_status(tonic::Status::unavailable("Cancelling all calls"), "u");
        assert!(matches!(end, SessionEnd::Transient(_)));
        let end = classify_status(
            tonic::Status::deadline_exceeded("Timeout of 2.0sec was exceeded."),
            "u",
        );
        assert!(matches!(end, SessionEnd::Fatal(ClientError::Rpc(_))));
    }

    #[test]
    fn transport_failures_with_a_source_are_transient() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let status = tonic::Status::from_error(Box::new(io));
        assert!(matches!(
            classify_status(status, "u"),
            SessionEnd::Transient(_)
        ));
    }

    #[test]
    fn summary_counts_failed_replies_and_rounds() {
        use flower_core::{Code, FitRes, Metrics, Parameters, Status};
        let mut s = RunSummary::default();
        let fit = |code| {
            ClientMessage::Fit(FitRes {
                status: Status {
                    code,
                    message: String::new(),
                },
                parameters: Parameters::default(),
                num_examples: 0,
                metrics: Metrics::new(),
            })
        };
        s.count(&fit(Code::Ok));
        s.count(&fit(Code::FitNotImplemented));
        assert_eq!((s.fit, s.rounds, s.failed_replies), (2, 2, 1));
    }
}
