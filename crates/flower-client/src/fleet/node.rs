//! The SuperNode's join / pull / handle / push loop (see the module head of
//! [`crate::fleet`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flower_fab::{Fab, RunConfig, UserConfig};
use flower_message::{
    deflate_parts, inflate, HandOver, Limits, Message, Metadata, ObjectId, ObjectParts, ObjectTree,
    Payload,
};
use flower_proto as pb;
use futures::{StreamExt, TryStreamExt};
use http::StatusCode;
use rand::Rng;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::transport::{CallError, Transport};
use super::{
    SuperNodeOptions, HEARTBEAT_INTERVAL, MAX_REJOINS, MAX_RETRY_DELAY, OBJECT_CONCURRENCY,
};
use crate::app::{app_error, ClientApp, Context};
use crate::ClientError;

/// Heartbeat calls get 5 s (flwr's `HEARTBEAT_CALL_TIMEOUT`).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on DeactivateNode / UnregisterNode at shutdown.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// PullObject answered "found, not yet available": retried this often at
/// most, waiting 1 s growing to 10 s (flwr's `pull_objects`).
const MAX_PULL_TRIES: u32 = 500;

/// What a run of [`run_supernode`](super::run_supernode) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SuperNodeSummary {
    /// The node id of the last join.
    pub node_id: u64,
    /// Messages received (objects pulled and confirmed).
    pub messages: u64,
    /// Replies pushed with content.
    pub replies: u64,
    /// Replies pushed with an error (no handler, handler error, bad input).
    pub error_replies: u64,
    /// Messages dropped: the run was not running (403), or pulling or
    /// pushing its objects failed.
    pub dropped: u64,
    /// Times the node joined again after the SuperLink forgot it.
    pub rejoins: u64,
}

/// Why a step stopped.
enum Step {
    /// The node must stop with this error.
    Fatal(ClientError),
    /// 401 after joining: join again (the SuperLink may have restarted).
    Rejoin(ClientError),
    /// 403: the run is not running; drop the message.
    RunNotRunning,
    /// The shutdown signal arrived while waiting.
    Shutdown,
    /// This message could not be processed (logged); go on.
    Drop(String),
}

impl From<ClientError> for Step {
    fn from(e: ClientError) -> Self {
        Step::Fatal(e)
    }
}

/// What the node knows about a run (fetched once per run).
struct RunInfo {
    context: Context,
}

pub(super) struct Node {
    options: SuperNodeOptions,
    transport: Arc<Transport>,
    node_id: Arc<AtomicU64>,
    /// The node id a heartbeat found unknown (0: none): rejoin if it is
    /// still the current one.
    forgotten: Arc<AtomicU64>,
    runs: HashMap<u64, RunInfo>,
    summary: SuperNodeSummary,
    shutdown: watch::Receiver<bool>,
    shutdown_tx: Arc<watch::Sender<bool>>,
}

impl Node {
    pub(super) fn new(options: SuperNodeOptions, transport: Transport) -> Self {
        let (tx, rx) = watch::channel(false);
        Node {
            options,
            transport: Arc::new(transport),
            node_id: Arc::new(AtomicU64::new(0)),
            forgotten: Arc::new(AtomicU64::new(0)),
            runs: HashMap::new(),
            summary: SuperNodeSummary::default(),
            shutdown: rx,
            shutdown_tx: Arc::new(tx),
        }
    }

    fn node(&self) -> Option<pb::Node> {
        Some(pb::Node {
            node_id: self.node_id.load(Ordering::SeqCst),
        })
    }

    pub(super) async fn run<A, F>(
        mut self,
        app: A,
        shutdown: F,
    ) -> Result<SuperNodeSummary, ClientError>
    where
        A: ClientApp + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let tx = self.shutdown_tx.clone();
        let watcher = tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        let result = self.serve(app).await;
        watcher.abort();
        if self.node_id.load(Ordering::SeqCst) != 0 {
            self.leave().await;
        }
        result.map(|()| self.summary.clone())
    }

    async fn serve<A: ClientApp + 'static>(&mut self, app: A) -> Result<(), ClientError> {
        match self.join().await {
            Ok(()) => {}
            Err(Step::Shutdown) => return Ok(()),
            Err(Step::Fatal(e) | Step::Rejoin(e)) => return Err(e),
            Err(Step::RunNotRunning | Step::Drop(_)) => {
                return Err(ClientError::NodeUnknown("joining failed".into()))
            }
        }
        info!(
            node_id = self.summary.node_id,
            app = app.name(),
            "SuperNode joined {}; serving messages with Rust ClientApp `{}`",
            self.options.superlink,
            app.name()
        );
        let heartbeat = self.spawn_heartbeat();
        let mut app = Some(app);
        let mut rejoins = 0u32;
        let outcome = loop {
            if *self.shutdown.borrow() {
                break Ok(());
            }
            let rejected = self.forgotten.swap(0, Ordering::SeqCst);
            if rejected != 0 && rejected == self.node_id.load(Ordering::SeqCst) {
                match self
                    .rejoin(&mut rejoins, "heartbeat not recognized".into())
                    .await
                {
                    Ok(()) => continue,
                    Err(e) => break Err(e),
                }
            }
            match self.step(&mut app).await {
                Ok(true) => rejoins = 0,
                Ok(false) => {
                    rejoins = 0;
                    let interval = self.options.poll_interval;
                    if self.sleep(interval).await.is_err() {
                        break Ok(());
                    }
                }
                Err(Step::Shutdown) => break Ok(()),
                Err(Step::Fatal(e)) => break Err(e),
                Err(Step::Rejoin(e)) => match self.rejoin(&mut rejoins, e.to_string()).await {
                    Ok(()) => {}
                    Err(err) => break Err(err),
                },
                Err(Step::RunNotRunning) => {
                    self.summary.dropped += 1;
                    info!("run not in `RUNNING` status: message ignored");
                }
                Err(Step::Drop(why)) => {
                    self.summary.dropped += 1;
                    warn!("message dropped: {why}");
                }
            }
        };
        heartbeat.abort();
        outcome
    }

    async fn rejoin(&mut self, rejoins: &mut u32, why: String) -> Result<(), ClientError> {
        *rejoins += 1;
        if *rejoins > MAX_REJOINS {
            return Err(ClientError::NodeUnknown(why));
        }
        warn!("the SuperLink no longer knows this node ({why}); joining again");
        self.runs.clear();
        match self.join().await {
            Ok(()) => {
                self.summary.rejoins += 1;
                Ok(())
            }
            Err(Step::Shutdown) => Ok(()),
            Err(Step::Fatal(e) | Step::Rejoin(e)) => Err(e),
            Err(Step::RunNotRunning | Step::Drop(_)) => Err(ClientError::NodeUnknown(why)),
        }
    }

    /// RegisterNode (ephemeral key only) + ActivateNode.
    async fn join(&mut self) -> Result<(), Step> {
        let public_key = self.transport.signer().public_key_pem();
        if self.transport.signer().is_ephemeral() {
            let request = pb::RegisterNodeFleetRequest {
                public_key: public_key.clone().into(),
            };
            match self
                .invoke::<_, pb::RegisterNodeFleetResponse>("register-node", &request)
                .await
            {
                Ok(_) => {}
                // 412: the key is already registered (a rejoin on a
                // SuperLink that kept it), or self-registration is off
                // (`--enable-supernode-auth`); ActivateNode tells which.
                Err(Step::Fatal(ClientError::FleetStatus {
                    status: 412, body, ..
                })) => {
                    info!("RegisterNode refused ({body}); trying ActivateNode");
                }
                Err(e) => return Err(e),
            }
        }
        let request = pb::ActivateNodeRequest {
            public_key: public_key.into(),
            heartbeat_interval: HEARTBEAT_INTERVAL,
        };
        let response: pb::ActivateNodeResponse = self.invoke("activate-node", &request).await?;
        if response.node_id == 0 {
            return Err(Step::Fatal(ClientError::NodeUnknown(
                "ActivateNode returned no node id".into(),
            )));
        }
        self.node_id.store(response.node_id, Ordering::SeqCst);
        self.summary.node_id = response.node_id;
        Ok(())
    }

    /// DeactivateNode, then UnregisterNode for a self-registered node; each
    /// once, bounded, errors ignored (as flwr's `finally` block).
    async fn leave(&self) {
        let node_id = self.node_id.load(Ordering::SeqCst);
        let _ = self
            .transport
            .call::<_, pb::DeactivateNodeResponse>(
                "deactivate-node",
                &pb::DeactivateNodeRequest { node_id },
                LEAVE_TIMEOUT,
            )
            .await;
        if self.transport.signer().is_ephemeral() {
            let _ = self
                .transport
                .call::<_, pb::UnregisterNodeFleetResponse>(
                    "unregister-node",
                    &pb::UnregisterNodeFleetRequest { node_id },
                    LEAVE_TIMEOUT,
                )
                .await;
        }
        info!(node_id, "SuperNode left the federation");
    }

    /// The heartbeat task: one now, then every `(30 - 5) * U(0.7, 0.9)` s;
    /// failures retried with back-off; `success = false` or 401 flags the
    /// node as forgotten for the main loop.
    fn spawn_heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let transport = self.transport.clone();
        let node_id = self.node_id.clone();
        let forgotten = self.forgotten.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let id = node_id.load(Ordering::SeqCst);
                let request = pb::SendNodeHeartbeatRequest {
                    node: Some(pb::Node { node_id: id }),
                    heartbeat_interval: HEARTBEAT_INTERVAL,
                };
                let wait = match transport
                    .call::<_, pb::SendNodeHeartbeatResponse>(
                        "send-node-heartbeat",
                        &request,
                        HEARTBEAT_TIMEOUT,
                    )
                    .await
                {
                    Ok(r) if r.success => {
                        failures = 0;
                        let factor = 0.8 + rand::thread_rng().gen_range(-0.1..0.1);
                        Duration::from_secs_f64((HEARTBEAT_INTERVAL - 5.0) * factor)
                    }
                    Ok(_) => {
                        forgotten.store(id, Ordering::SeqCst);
                        Duration::from_secs(1)
                    }
                    Err(CallError::Status { status, .. }) if status == StatusCode::UNAUTHORIZED => {
                        forgotten.store(id, Ordering::SeqCst);
                        Duration::from_secs(1)
                    }
                    Err(e) => {
                        failures += 1;
                        debug!("heartbeat failed: {e:?}");
                        backoff(failures)
                    }
                };
                tokio::time::sleep(wait).await;
            }
        })
    }

    /// Waits `duration`, or less if the shutdown signal comes.
    async fn sleep(&mut self, duration: Duration) -> Result<(), Step> {
        let mut rx = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(duration) => Ok(()),
            _ = rx.wait_for(|stop| *stop) => Err(Step::Shutdown),
        }
    }

    /// One call with flwr's retry rules.
    async fn invoke<Req, Resp>(&self, rpc: &'static str, request: &Req) -> Result<Resp, Step>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        invoke(
            &self.transport,
            &self.options,
            self.shutdown.clone(),
            rpc,
            request,
        )
        .await
    }

    /// Pulls and handles at most one message. `Ok(false)`: nothing to do.
    async fn step<A: ClientApp + 'static>(&mut self, app: &mut Option<A>) -> Result<bool, Step> {
        let response: pb::PullMessagesResponse = self
            .invoke(
                "pull-messages",
                &pb::PullMessagesRequest {
                    node: self.node(),
                    message_ids: Vec::new(),
                },
            )
            .await?;
        let (Some(wire), Some(tree)) = (
            response.messages_list.into_iter().next(),
            response.message_object_trees.into_iter().next(),
        ) else {
            return Ok(false);
        };
        let metadata: Metadata = wire.metadata.unwrap_or_default().into();
        let run_id = metadata.run_id;
        info!(
            run_id,
            group = %metadata.group_id,
            "Receiving: {} message (ID: {})",
            metadata.message_type,
            metadata.message_id
        );
        let limits = Limits::default();
        let tree = ObjectTree::from_proto(&tree, &limits)
            .map_err(|e| Step::Drop(format!("bad object tree: {e}")))?;
        if !self.runs.contains_key(&run_id) {
            let info = self
                .fetch_run(run_id, app.as_ref().map_or("?", |a| a.name()))
                .await?;
            self.runs.insert(run_id, info);
        }
        let objects = self.pull_objects(run_id, &tree).await?;
        // Handed over: each chunk goes once its array is assembled.
        let message = inflate(&tree, &HandOver::new(objects), &limits)
            .map_err(|e| Step::Drop(format!("cannot rebuild message {}: {e}", tree.id)))?;
        let _: pb::ConfirmMessageReceivedResponse = self
            .invoke(
                "confirm-message-received",
                &pb::ConfirmMessageReceivedRequest {
                    node: self.node(),
                    run_id,
                    message_object_id: tree.id.to_string(),
                },
            )
            .await?;
        self.summary.messages += 1;

        let mut context = self
            .runs
            .get(&run_id)
            .map(|r| r.context.clone())
            .unwrap_or_default();
        context.node_id = self.node_id.load(Ordering::SeqCst);
        let Some(mut handler) = app.take() else {
            return Err(Step::Fatal(ClientError::Runtime(
                "the ClientApp was lost".into(),
            )));
        };
        let started = Instant::now();
        let handled = tokio::task::spawn_blocking(move || {
            let result =
                std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(&message, &context)));
            (handler, message, result)
        })
        .await;
        let runtime = started.elapsed().as_secs_f64();
        let (handler, message, result) = handled
            .map_err(|e| Step::Fatal(ClientError::Runtime(format!("handler task failed: {e}"))))?;
        *app = Some(handler);
        let payload = match result {
            Ok(Ok(content)) => Payload::Content(content),
            Ok(Err(error)) => Payload::Error(error),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                Payload::Error(app_error(format!("the ClientApp panicked: {what}")))
            }
        };
        if let Payload::Error(e) = &payload {
            warn!(code = e.code, "replying with an error: {}", e.reason);
        }
        // The instruction's arrays go before the reply is pushed: only its
        // metadata is needed now.
        let metadata = { message }.metadata;
        self.push_reply(&metadata, payload, runtime).await?;
        Ok(true)
    }

    /// GetRun + GetFab; the run config from the FAB's defaults and the
    /// run's overrides. A FAB that does not parse still lets the node serve
    /// the run, with the overrides alone as run config.
    async fn fetch_run(&self, run_id: u64, app_name: &str) -> Result<RunInfo, Step> {
        let run: pb::GetRunResponse = self
            .invoke(
                "get-run",
                &pb::GetRunRequest {
                    node: self.node(),
                    run_id,
                },
            )
            .await?;
        let run = run.run.unwrap_or_default();
        let fab: pb::GetFabResponse = self
            .invoke(
                "get-fab",
                &pb::GetFabRequest {
                    node: self.node(),
                    hash_str: run.fab_hash.clone(),
                    run_id,
                },
            )
            .await?;
        let fab = fab.fab.unwrap_or_default();
        let overrides = run
            .override_config
            .iter()
            .filter_map(|(k, v)| {
                flower_core::Scalar::try_from(v.clone())
                    .ok()
                    .map(|s| (k.clone(), s))
            })
            .collect::<Vec<_>>();
        let overrides = UserConfig::from_scalars(overrides).unwrap_or_default();
        let parsed = match Fab::from_bytes(fab.content) {
            Ok(fab) => RunConfig::new(&fab, overrides.clone()).map(|c| c.values().clone()),
            Err(e) => Err(e),
        };
        let run_config = parsed.unwrap_or_else(|e| {
            warn!(
                run_id,
                "cannot read the run's FAB ({e}); run config = overrides only"
            );
            overrides
        });
        info!(
            run_id,
            "run {run_id} runs app {} {} (FAB {}): not executed here, served by Rust ClientApp `{app_name}`",
            run.fab_id,
            run.fab_version,
            run.fab_hash.get(..8).unwrap_or(&run.fab_hash)
        );
        Ok(RunInfo {
            context: Context {
                run_id,
                node_id: self.node_id.load(Ordering::SeqCst),
                node_config: self.options.node_config.clone(),
                run_config,
                fab_id: run.fab_id,
                fab_version: run.fab_version,
            },
        })
    }

    /// PullObject for every distinct object of `tree`, two in flight, each
    /// retried while found but not yet available.
    async fn pull_objects(
        &self,
        run_id: u64,
        tree: &ObjectTree,
    ) -> Result<HashMap<ObjectId, Bytes>, Step> {
        // Collected first: a lazy `map` closure in the stream makes the
        // future's `Send` bound unprovable (rust-lang/rust#102211).
        let pulls: Vec<_> = tree
            .unique_ids()
            .into_iter()
            .map(|id| self.pull_object(run_id, id))
            .collect();
        futures::stream::iter(pulls)
            .buffer_unordered(OBJECT_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn pull_object(&self, run_id: u64, id: ObjectId) -> Result<(ObjectId, Bytes), Step> {
        let request = pb::PullObjectRequest {
            node: self.node(),
            run_id,
            object_id: id.to_string(),
        };
        for attempt in 0..MAX_PULL_TRIES {
            let response: pb::PullObjectResponse = self.invoke("pull-object", &request).await?;
            if !response.object_found {
                return Err(Step::Drop(format!(
                    "object {id} not found on the SuperLink"
                )));
            }
            if response.object_available {
                return Ok((id, response.object_content));
            }
            let wait = Duration::from_secs_f64((1.5f64).powi(attempt.min(6) as i32).min(10.0));
            let mut rx = self.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = rx.wait_for(|stop| *stop) => return Err(Step::Shutdown),
            }
        }
        Err(Step::Drop(format!(
            "object {id} still not available after {MAX_PULL_TRIES} tries"
        )))
    }

    /// Builds the reply (metadata as flwr's `Message(..., reply_to=msg)`),
    /// deflates it, PushMessages, then PushObject for what the SuperLink
    /// asks for.
    async fn push_reply(
        &mut self,
        instruction: &Metadata,
        payload: Payload,
        runtime: f64,
    ) -> Result<(), Step> {
        let now = unix_now();
        let is_error = matches!(payload, Payload::Error(_));
        let mut reply = Message {
            metadata: Metadata {
                run_id: instruction.run_id,
                message_id: String::new(),
                src_node_id: instruction.dst_node_id,
                dst_node_id: instruction.src_node_id,
                reply_to_message_id: instruction.message_id.clone(),
                group_id: instruction.group_id.clone(),
                // What is left of the instruction's lifetime.
                ttl: instruction.created_at + instruction.ttl - now,
                message_type: instruction.message_type.clone(),
                created_at: now,
                src_task_id: instruction.dst_task_id,
                dst_task_id: instruction.src_task_id,
            },
            payload,
        };
        // Chunks stay slices of the reply's arrays; each object's content is
        // put together only when it is pushed.
        let deflated = deflate_parts(&reply);
        reply.metadata.message_id = deflated.root.to_string();
        let request = pb::PushMessagesRequest {
            node: self.node(),
            messages_list: vec![reply.to_wire_proto()],
            message_object_trees: vec![deflated.tree.to_proto()],
            clientapp_runtime_list: vec![runtime],
        };
        let response: pb::PushMessagesResponse = self.invoke("push-messages", &request).await?;
        let wanted: HashSet<&str> = response
            .objects_to_push
            .iter()
            .map(String::as_str)
            .collect();
        let run_id = reply.metadata.run_id;
        let session_id = &response.session_id;
        // `deflated.objects` is in post-order: children before parents.
        let this: &Node = self;
        let pushes: Vec<_> = deflated
            .objects
            .iter()
            .filter(|(id, _)| wanted.contains(id.to_string().as_str()))
            .map(|(id, content)| this.push_parts(run_id, *id, content.clone(), session_id.clone()))
            .collect();
        futures::stream::iter(pushes)
            .buffer_unordered(OBJECT_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        if is_error {
            self.summary.error_replies += 1;
        } else {
            self.summary.replies += 1;
        }
        info!(
            run_id,
            "Sent reply {} ({} of {} objects pushed)",
            deflated.root,
            wanted.len(),
            deflated.objects.len()
        );
        Ok(())
    }
}

impl Node {
    /// Pushes one object, its content put together only now.
    async fn push_parts(
        &self,
        run_id: u64,
        id: ObjectId,
        content: ObjectParts,
        session_id: String,
    ) -> Result<(), Step> {
        self.push_object(pb::PushObjectRequest {
            node: self.node(),
            run_id,
            object_id: id.to_string(),
            object_content: content.to_bytes(),
            session_id,
        })
        .await
    }

    async fn push_object(&self, request: pb::PushObjectRequest) -> Result<(), Step> {
        let response: pb::PushObjectResponse = self.invoke("push-object", &request).await?;
        if response.stored {
            Ok(())
        } else {
            Err(Step::Drop(format!(
                "the SuperLink did not store object {}",
                request.object_id
            )))
        }
    }
}

/// Seconds since the Unix epoch, as Python's `now().timestamp()`.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// flwr's `exponential(max_delay=20)`: 1, 2, 4, ... seconds, at most 20.
fn backoff(failures: u32) -> Duration {
    let secs = 2f64.powi(failures.saturating_sub(1).min(16) as i32);
    Duration::from_secs_f64(secs).min(MAX_RETRY_DELAY)
}

/// One call with flwr's retry rules: transport errors and 502/503/504 are
/// retried with [`backoff`] (bounded by the options), 401 asks for a
/// rejoin, 403 drops the message, anything else is fatal.
async fn invoke<Req, Resp>(
    transport: &Transport,
    options: &SuperNodeOptions,
    mut shutdown: watch::Receiver<bool>,
    rpc: &'static str,
    request: &Req,
) -> Result<Resp, Step>
where
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    let first_failure = Instant::now();
    let mut failures = 0u32;
    loop {
        let last_error = match transport.call(rpc, request, options.call_timeout).await {
            Ok(response) => {
                if failures > 0 {
                    info!("{rpc}: connection successful after {failures} retries");
                }
                return Ok(response);
            }
            Err(CallError::Decode(source)) => {
                return Err(Step::Fatal(ClientError::FleetDecode { rpc, source }))
            }
            Err(CallError::Tls(message)) => {
                return Err(Step::Fatal(ClientError::Tls {
                    address: options.superlink.clone(),
                    message,
                }))
            }
            Err(CallError::Status { status, body }) => match status.as_u16() {
                401 => {
                    return Err(Step::Rejoin(ClientError::NodeUnauthorized { rpc, body }));
                }
                403 => return Err(Step::RunNotRunning),
                502..=504 => format!("HTTP {status}: {body}"),
                other => {
                    return Err(Step::Fatal(ClientError::FleetStatus {
                        rpc,
                        status: other,
                        body,
                    }))
                }
            },
            Err(CallError::Transport(message)) => message,
        };
        failures += 1;
        let out_of_tries = options.max_retries.is_some_and(|max| failures > max);
        let out_of_time = options
            .max_wait_time
            .is_some_and(|max| first_failure.elapsed() >= max);
        if out_of_tries || out_of_time {
            return Err(Step::Fatal(ClientError::RetriesExhausted {
                attempts: failures,
                elapsed: first_failure.elapsed(),
                last_error,
            }));
        }
        let wait = backoff(failures);
        warn!("{rpc}: connection attempt failed ({last_error}), retrying in {wait:.2?}");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Err(Step::Shutdown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_twenty_seconds() {
        let secs: Vec<u64> = (1..=7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 20, 20]);
        assert_eq!(backoff(1000), Duration::from_secs(20));
    }
}
