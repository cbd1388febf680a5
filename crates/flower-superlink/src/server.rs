//! The Control and Runtime APIs over HTTP/1.1: `POST /v1/control/<rpc>` and
//! `POST /v1/runtime/<rpc>` with raw protobuf bodies, JSON errors
//! (`{"code", "detail"}`) with flwr's statuses, and
//! `application/flower-protobuf-stream` (4-byte big-endian length frames)
//! for `stream-logs`. Runtime calls other than `acquire-task` carry the
//! task token of `AcquireTask` in the `flwr-task-token` header.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use flower_fleet::state::ExchangeFailure;
use flower_fleet::FleetLink;
use flower_message::{validate_object, ObjectId};
use flower_proto as pb;
use futures::StreamExt;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::relay::Relay;
use crate::runs::{NewRun, RunError, Runs, COMPLETED, NO_ACCOUNT, SUPERLINK_NODE_ID};
use crate::time::{iso, unix_now};

/// A response body: one buffer, or the frames of a stream.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

const PROTOBUF: &str = "application/protobuf";
const PROTOBUF_STREAM: &str = "application/flower-protobuf-stream";
/// flwr's `TASK_TOKEN_HEADER`.
const TASK_TOKEN_HEADER: &str = "flwr-task-token";
/// How often `stream-logs` looks for new lines (flwr's
/// `LOG_STREAM_INTERVAL` is 0.5 s too).
const LOG_POLL: Duration = Duration::from_millis(500);
/// `flwr ls` without `--limit` (flwr's default page).
const DEFAULT_LIST_LIMIT: u64 = 20;

/// An API error: flwr's `ApiErrorCode`, HTTP status and public message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ApiError {
    code: u32,
    status: StatusCode,
    detail: &'static str,
}

impl ApiError {
    const fn new(code: u32, status: StatusCode, detail: &'static str) -> Self {
        ApiError {
            code,
            status,
            detail,
        }
    }
    const UNSUPPORTED_CONTENT_TYPE: ApiError = ApiError::new(
        1002,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "Unsupported Content-Type.",
    );
    const INVALID_PROTOBUF_PAYLOAD: ApiError =
        ApiError::new(1003, StatusCode::BAD_REQUEST, "Invalid protobuf payload.");
    const TOO_LARGE: ApiError = ApiError::new(
        1004,
        StatusCode::PAYLOAD_TOO_LARGE,
        "Request body too large.",
    );
    const RUNTIME_AUTHENTICATION_FAILED: ApiError =
        ApiError::new(1008, StatusCode::UNAUTHORIZED, "Authentication failed.");
    const INVALID_RUN_CONFIG: ApiError = ApiError::new(
        15,
        StatusCode::PRECONDITION_FAILED,
        "Invalid run configuration.",
    );
    const RUN_ID_NOT_FOUND: ApiError =
        ApiError::new(16, StatusCode::NOT_FOUND, "Run ID not found.");
    const RUN_ALREADY_FINISHED: ApiError = ApiError::new(
        18,
        StatusCode::PRECONDITION_FAILED,
        "Run is already finished.",
    );
    const NO_ACCOUNT_AUTH: ApiError = ApiError::new(
        19,
        StatusCode::NOT_IMPLEMENTED,
        "ControlServicer initialized without account authentication.",
    );
    const TASK_START_FAILED: ApiError = ApiError::new(
        3002,
        StatusCode::PRECONDITION_FAILED,
        "Failed to start task.",
    );
    const UNEXPECTED_NODE_ID: ApiError =
        ApiError::new(3004, StatusCode::PRECONDITION_FAILED, "Unexpected node ID.");
    const MALFORMED: ApiError = ApiError::new(1003, StatusCode::BAD_REQUEST, "Malformed request.");
    const NOT_FOUND: ApiError = ApiError::new(0, StatusCode::NOT_FOUND, "Not Found");

    fn response(&self) -> Response<Body> {
        let body = if self.code == 0 {
            serde_json::json!({ "detail": self.detail })
        } else {
            serde_json::json!({ "code": self.code, "detail": self.detail })
        };
        let mut response = Response::new(full(Bytes::from(body.to_string())));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).boxed_unsync()
}

fn protobuf(message: &impl prost::Message) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(message.encode_to_vec())));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    response
}

fn decode<M: prost::Message + Default>(body: &Bytes) -> Result<M, ApiError> {
    M::decode(body.clone()).map_err(|_| ApiError::INVALID_PROTOBUF_PAYLOAD)
}

/// The state the two APIs share.
#[derive(Debug)]
pub(crate) struct Core {
    runs: Mutex<Runs>,
    relay: Mutex<Relay>,
    fleet: FleetLink,
    max_request_bytes: usize,
    store: Option<Arc<dyn crate::RunStore>>,
}

impl Core {
    pub(crate) fn new(
        runs: Runs,
        relay: Relay,
        fleet: FleetLink,
        max_request_bytes: usize,
        store: Option<Arc<dyn crate::RunStore>>,
    ) -> Arc<Self> {
        Arc::new(Core {
            runs: Mutex::new(runs),
            relay: Mutex::new(relay),
            fleet,
            max_request_bytes,
            store,
        })
    }

    fn runs(&self) -> MutexGuard<'_, Runs> {
        // A panic elsewhere cannot leave the registry inconsistent in a
        // way that stopping the server would fix.
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn relay(&self) -> MutexGuard<'_, Relay> {
        self.relay.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a run through to the store (if any).
    fn save(&self, run_id: u64) {
        let Some(store) = &self.store else {
            return;
        };
        let record = self.runs().get(run_id).cloned();
        if let Some(record) = record {
            if let Err(e) = store.save_run(&record) {
                warn!(run_id, error = %crate::error_chain(&e), "saving the run failed");
            }
        }
    }

    /// A run ended (output pushed, stopped, silent): the nodes stop
    /// serving it and its messages are dropped.
    pub(crate) fn run_ended(&self, run_id: u64) {
        self.fleet.with_state(|s| s.finish(run_id));
        self.relay().drop_run(run_id);
        self.save(run_id);
    }

    /// Housekeeping.
    pub(crate) fn tick(&self, task_patience: f64) {
        let now = unix_now();
        let silent = self.runs().tick(now, task_patience);
        for run_id in silent {
            warn!(run_id, "ServerApp task silent: run failed");
            self.run_ended(run_id);
        }
        self.relay().tick(now);
    }

    /// One request; every outcome is a response.
    pub(crate) async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        let result = if let Some(rpc) = path.strip_prefix("/v1/control/") {
            let rpc = rpc.to_owned();
            match self.read(request).await {
                Ok(body) => self.control(&rpc, &body),
                Err(e) => Err(e),
            }
        } else if let Some(rpc) = path.strip_prefix("/v1/runtime/") {
            let rpc = rpc.to_owned();
            let token = request
                .headers()
                .get(TASK_TOKEN_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match self.read(request).await {
                Ok(body) if rpc == "push-object" => self.push_object(token.as_deref(), body).await,
                Ok(body) => self.runtime(&rpc, token.as_deref(), body),
                Err(e) => Err(e),
            }
        } else {
            Err(ApiError::NOT_FOUND)
        };
        result.unwrap_or_else(|e| {
            debug!(path, error = e.detail, "request refused");
            e.response()
        })
    }

    async fn read(&self, request: Request<Incoming>) -> Result<Bytes, ApiError> {
        if request.method() != http::Method::POST {
            return Err(ApiError::NOT_FOUND);
        }
        let protobuf = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim() == PROTOBUF));
        if !protobuf {
            return Err(ApiError::UNSUPPORTED_CONTENT_TYPE);
        }
        Limited::new(request.into_body(), self.max_request_bytes)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|_| ApiError::TOO_LARGE)
    }

    fn control(self: &Arc<Self>, rpc: &str, body: &Bytes) -> Result<Response<Body>, ApiError> {
        let now = unix_now();
        match rpc {
            "start-run" => {
                let req: pb::StartRunRequest = decode(body)?;
                let new = new_run(req)?;
                let run_id = self.runs().create(new, now);
                self.save(run_id);
                info!(run_id, "run submitted");
                let series_id = self.runs().get(run_id).map(|r| r.run.series_id);
                Ok(protobuf(&pb::StartRunResponse {
                    run_id: Some(run_id),
                    note: None,
                    series_id,
                    federation: crate::runs::DEFAULT_FEDERATION.into(),
                }))
            }
            "list-runs" => {
                let req: pb::ListRunsRequest = decode(body)?;
                let runs = self.runs();
                let run_dict = match req.run_id {
                    Some(id) => {
                        let record = runs.get(id).ok_or(ApiError::RUN_ID_NOT_FOUND)?;
                        [(id, record.run.clone())].into_iter().collect()
                    }
                    None => {
                        let limit = req.limit.unwrap_or(DEFAULT_LIST_LIMIT);
                        let skip = req.skip.unwrap_or(0);
                        runs.list(
                            usize::try_from(limit).unwrap_or(usize::MAX),
                            usize::try_from(skip).unwrap_or(usize::MAX),
                        )
                        .into_iter()
                        .map(|r| (r.run.run_id, r.run.clone()))
                        .collect()
                    }
                };
                Ok(protobuf(&pb::ListRunsResponse {
                    run_dict,
                    now: iso(now),
                }))
            }
            "stop-run" => {
                let req: pb::StopRunRequest = decode(body)?;
                self.runs().stop(req.run_id, now).map_err(|e| match e {
                    RunError::AlreadyFinished(_) => ApiError::RUN_ALREADY_FINISHED,
                    _ => ApiError::RUN_ID_NOT_FOUND,
                })?;
                info!(run_id = req.run_id, "run stopped");
                self.run_ended(req.run_id);
                Ok(protobuf(&pb::StopRunResponse { success: true }))
            }
            "stream-logs" => {
                let req: pb::StreamLogsRequest = decode(body)?;
                if self.runs().get(req.run_id).is_none() {
                    return Err(ApiError::RUN_ID_NOT_FOUND);
                }
                Ok(self.stream_logs(req.run_id, req.after_timestamp))
            }
            "get-login-details" | "get-auth-tokens" | "refresh-auth-tokens" => {
                Err(ApiError::NO_ACCOUNT_AUTH)
            }
            _ => Err(ApiError::NOT_FOUND),
        }
    }

    /// `stream-logs`: frames of new log lines every [`LOG_POLL`] until the
    /// run is finished and every line is sent (or the client leaves: the
    /// stream is dropped with the connection).
    fn stream_logs(self: &Arc<Self>, run_id: u64, after: f64) -> Response<Body> {
        // flwr adds an epsilon so the line at `after` is not sent again.
        let state = (self.clone(), after + 1e-6, false);
        let frames = futures::stream::unfold(state, move |(core, mut after, done)| async move {
            if done {
                return None;
            }
            loop {
                let (text, latest, finished) = {
                    let runs = core.runs();
                    let (text, latest) = runs.logs_after(run_id, after);
                    let finished = runs.get(run_id).is_none_or(|r| r.is_finished());
                    (text, latest, finished)
                };
                if !text.is_empty() {
                    after = latest.max(after) + 1e-6;
                    let frame = frame(&pb::StreamLogsResponse {
                        log_output: text,
                        latest_timestamp: latest,
                    });
                    return Some((frame, (core, after, finished)));
                }
                if finished {
                    return None;
                }
                tokio::time::sleep(LOG_POLL).await;
            }
        });
        let body = StreamBody::new(frames.map(|b| Ok::<_, Infallible>(Frame::data(b))));
        let mut response = Response::new(BodyExt::boxed_unsync(body));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROTOBUF_STREAM),
        );
        response
    }

    fn runtime(
        self: &Arc<Self>,
        rpc: &str,
        token: Option<&str>,
        body: Bytes,
    ) -> Result<Response<Body>, ApiError> {
        let now = unix_now();
        if rpc == "acquire-task" {
            let req: pb::AcquireTaskRequest = decode(&body)?;
            let acquired = self.runs().acquire(&req.supported_task_types, now);
            return Ok(protobuf(&match acquired {
                Some((task, token)) => {
                    info!(run_id = task.run_id, "ServerApp task acquired");
                    let run_id = task.run_id;
                    let response = pb::AcquireTaskResponse {
                        task: Some(task),
                        token,
                    };
                    self.save(run_id);
                    response
                }
                None => pb::AcquireTaskResponse::default(),
            }));
        }
        let run_id = token
            .and_then(|t| self.runs().by_token(t))
            .ok_or(ApiError::RUNTIME_AUTHENTICATION_FAILED)?;
        match rpc {
            "send-task-heartbeat" => {
                let _: pb::SendTaskHeartbeatRequest = decode(&body)?;
                let success = self.runs().heartbeat(run_id, now);
                Ok(protobuf(&pb::SendTaskHeartbeatResponse { success }))
            }
            "pull-task-input" => {
                let _: pb::PullTaskInputRequest = decode(&body)?;
                let input = self
                    .runs()
                    .start(run_id, now)
                    .map_err(|_| ApiError::TASK_START_FAILED)?;
                if let (Some(run), Some(fab)) = (&input.run, &input.fab) {
                    // From now on the SuperNodes may fetch the run and FAB.
                    self.fleet
                        .with_state(|s| s.add_run(run.clone(), fab.clone()));
                }
                self.save(run_id);
                info!(run_id, "ServerApp started");
                Ok(protobuf(&input))
            }
            "push-task-output" => {
                let req: pb::PushTaskOutputRequest = decode(&body)?;
                let sub = if req.sub_status.is_empty() {
                    COMPLETED
                } else {
                    req.sub_status.as_str()
                };
                if self.runs().finish(run_id, sub, &req.details, now) {
                    info!(run_id, sub_status = sub, "ServerApp finished");
                    self.run_ended(run_id);
                }
                Ok(protobuf(&pb::PushTaskOutputResponse {}))
            }
            "push-logs" => {
                let req: pb::PushLogsRequest = decode(&body)?;
                self.runs().push_logs(run_id, req.logs, now);
                Ok(protobuf(&pb::PushLogsResponse {}))
            }
            "get-nodes" => {
                let _: pb::GetNodesRequest = decode(&body)?;
                let nodes = self.fleet.with_state(|s| s.nodes());
                let nodes = nodes
                    .into_iter()
                    .filter(|n| n.status == flower_fleet::state::NodeStatus::Online)
                    .map(|n| pb::NodeInfo {
                        node_id: n.node_id,
                        owner_aid: NO_ACCOUNT.into(),
                        owner_name: "none".into(),
                        status: "online".into(),
                        online_until: Some(n.online_until),
                        heartbeat_interval: n.heartbeat_interval,
                        ..pb::NodeInfo::default()
                    })
                    .collect();
                Ok(protobuf(&pb::GetNodesResponse { nodes }))
            }
            "push-messages" => {
                let req: pb::PushAppMessagesRequest = decode(&body)?;
                let accepted = self
                    .relay()
                    .push_messages(run_id, req.messages_list, &req.message_object_trees, now)
                    .map_err(|e| {
                        debug!(run_id, error = %e, "push-messages refused");
                        ApiError::MALFORMED
                    })?;
                Ok(protobuf(&pb::PushAppMessagesResponse {
                    message_ids: accepted.message_ids,
                    objects_to_push: accepted.objects_to_push,
                    session_id: accepted.session_id,
                }))
            }
            "pull-messages" => {
                let req: pb::PullAppMessagesRequest = decode(&body)?;
                let (messages_list, message_object_trees) =
                    self.relay().pull_messages(run_id, &req.message_ids);
                Ok(protobuf(&pb::PullAppMessagesResponse {
                    messages_list,
                    message_object_trees,
                }))
            }
            "pull-object" => {
                let req: pb::PullObjectRequest = decode(&body)?;
                if req.node.unwrap_or_default().node_id != SUPERLINK_NODE_ID {
                    return Err(ApiError::UNEXPECTED_NODE_ID);
                }
                let content = self.relay().pull_object(run_id, &req.object_id);
                Ok(protobuf(&pb::PullObjectResponse {
                    object_found: content.is_some(),
                    object_available: content.is_some(),
                    object_content: content.unwrap_or_default(),
                }))
            }
            "confirm-message-received" => {
                let req: pb::ConfirmMessageReceivedRequest = decode(&body)?;
                self.relay().confirm(run_id, &req.message_object_id);
                Ok(protobuf(&pb::ConfirmMessageReceivedResponse {}))
            }
            _ => Err(ApiError::NOT_FOUND),
        }
    }

    /// `PushObject`: the content is hashed off the async threads and
    /// outside the relay's lock (a chunk is up to 5 MiB).
    async fn push_object(
        self: &Arc<Self>,
        token: Option<&str>,
        body: Bytes,
    ) -> Result<Response<Body>, ApiError> {
        let run_id = token
            .and_then(|t| self.runs().by_token(t))
            .ok_or(ApiError::RUNTIME_AUTHENTICATION_FAILED)?;
        let req: pb::PushObjectRequest = decode(&body)?;
        if req.node.unwrap_or_default().node_id != SUPERLINK_NODE_ID {
            return Err(ApiError::UNEXPECTED_NODE_ID);
        }
        let refused = || Ok(protobuf(&pb::PushObjectResponse { stored: false }));
        let Ok(id) = req.object_id.parse::<ObjectId>() else {
            return refused();
        };
        if !self.relay().awaits(run_id, &req.session_id, &id) {
            return refused();
        }
        let content = req.object_content;
        let checked = content.clone();
        let valid = tokio::task::spawn_blocking(move || validate_object(&id, &checked).is_ok())
            .await
            .unwrap_or(false);
        if !valid {
            return refused();
        }
        let (stored, outgoing) = self
            .relay()
            .store_valid(run_id, &req.session_id, id, content);
        let now = unix_now();
        for out in outgoing {
            self.send(out, now);
        }
        Ok(protobuf(&pb::PushObjectResponse { stored }))
    }

    /// Queues an instruction on its node and relays the outcome back.
    fn send(self: &Arc<Self>, out: crate::relay::Outgoing, now: f64) {
        let id = out.instruction.tree.id.to_string();
        let node_id = out.node_id;
        let (tx, rx) = oneshot::channel();
        let queued = self
            .fleet
            .with_state(|s| s.enqueue(node_id, out.instruction, tx, now));
        match queued {
            Ok(_) => {
                debug!(node_id, message_id = %id, "instruction queued");
                let core = self.clone();
                tokio::spawn(async move {
                    let outcome = rx.await.unwrap_or(Err(ExchangeFailure::RunFinished));
                    core.relay().deliver(&id, outcome, unix_now());
                });
            }
            Err(e) => {
                debug!(node_id, message_id = %id, error = %e, "instruction not deliverable");
                self.relay().undeliverable(&id, &e.to_string(), now);
            }
        }
    }
}

/// A stream frame: the message's length (4 bytes, big-endian), then it.
fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(4 + len);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message.encode_raw(&mut buf);
    buf.freeze()
}

/// A run from `StartRun`: the FAB must parse, and every override key must
/// exist in its `[tool.flwr.app.config]` (as flwr's `fuse_dicts(...,
/// check_keys=True)`; a SuperNode would die on an unknown key).
fn new_run(req: pb::StartRunRequest) -> Result<NewRun, ApiError> {
    let fab = req.fab.unwrap_or_default();
    if fab.content.is_empty() {
        // Stored and Hub apps (`app_spec`) need an app store this server
        // does not have.
        return Err(ApiError::INVALID_RUN_CONFIG);
    }
    if fab.content.len() > flower_fab::FAB_MAX_SIZE {
        return Err(ApiError::INVALID_RUN_CONFIG);
    }
    let parsed = flower_fab::Fab::from_bytes(fab.content.clone()).map_err(|e| {
        debug!(error = %crate::error_chain(&e), "start-run: invalid FAB");
        ApiError::INVALID_RUN_CONFIG
    })?;
    let mut overrides = Vec::with_capacity(req.override_config.len());
    for (key, value) in &req.override_config {
        let scalar = flower_core::Scalar::try_from(value.clone())
            .map_err(|_| ApiError::INVALID_RUN_CONFIG)?;
        overrides.push((key.clone(), scalar));
    }
    let overrides = flower_fab::UserConfig::from_scalars(overrides)
        .map_err(|_| ApiError::INVALID_RUN_CONFIG)?;
    flower_fab::RunConfig::new(&parsed, overrides).map_err(|e| {
        debug!(error = %crate::error_chain(&e), "start-run: invalid run config");
        ApiError::INVALID_RUN_CONFIG
    })?;
    Ok(NewRun {
        fab: pb::Fab {
            hash_str: parsed.hash_str().to_owned(),
            content: fab.content,
            verifications: fab.verifications,
        },
        fab_id: parsed.fab_id(),
        fab_version: parsed.fab_version().to_owned(),
        override_config: req.override_config,
    })
}
