//! The Fleet service: the twelve RPCs as `POST /v1/fleet/<kebab-rpc>` with
//! raw protobuf bodies over HTTP/1.1 (flwr ≥ 1.40), every request
//! authenticated by its node signature first.
//!
//! Order of checks, cheapest first: the path (404 outside the Fleet API),
//! the method, the signature headers (401), the content type, the body size
//! and its protobuf decoding (403, see [`reply`]), then the node-id binding
//! (401) and the RPC itself.

pub(crate) mod reply;
pub(crate) mod tls;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use bytes::BytesMut;
use flower_auth::node::{verify_node_request, AuthorizedNodeKeys, NodePublicKey};
use flower_message::{validate_object, ObjectId};
use flower_proto as pb;
use flower_server::listener::{Connection, HardenedListener};
use futures::future::BoxFuture;
use http::{header, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use prost::Message as _;
use tracing::{debug, info, warn};

use crate::node::{unix_now, Shared};
use crate::state::{Content, Lookup, PushOutcome, StateError};
use reply::{ApiError, ApiErrorCode, Body};

/// The transport's name in metrics labels.
const TRANSPORT: &str = "fleet-api";

/// The Fleet RPCs and their HTTP paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rpc {
    RegisterNode,
    ActivateNode,
    DeactivateNode,
    UnregisterNode,
    SendNodeHeartbeat,
    PullMessages,
    PushMessages,
    GetRun,
    GetFab,
    PushObject,
    PullObject,
    ConfirmMessageReceived,
}

impl Rpc {
    fn from_path(path: &str) -> Option<Self> {
        Some(match path.strip_prefix("/v1/fleet/")? {
            "register-node" => Rpc::RegisterNode,
            "activate-node" => Rpc::ActivateNode,
            "deactivate-node" => Rpc::DeactivateNode,
            "unregister-node" => Rpc::UnregisterNode,
            "send-node-heartbeat" => Rpc::SendNodeHeartbeat,
            "pull-messages" => Rpc::PullMessages,
            "push-messages" => Rpc::PushMessages,
            "get-run" => Rpc::GetRun,
            "get-fab" => Rpc::GetFab,
            "push-object" => Rpc::PushObject,
            "pull-object" => Rpc::PullObject,
            "confirm-message-received" => Rpc::ConfirmMessageReceived,
            _ => return None,
        })
    }
}

/// Node authentication settings of the service.
#[derive(Clone)]
pub(crate) struct NodeAuth {
    /// The authorized keys (required when supernode auth is enabled).
    pub(crate) authorized: Option<AuthorizedNodeKeys>,
}

impl std::fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAuth")
            .field(
                "authorized_keys",
                &self.authorized.as_ref().map(AuthorizedNodeKeys::len),
            )
            .finish()
    }
}

/// Request bodies at least this large (pushed chunks, up to 5 MiB) are
/// read [`FleetOptions::large_body_readers`](crate::FleetOptions) at a time.
const LARGE_BODY: usize = 1 << 20;

/// A body read that receives nothing for this long is cut (it would
/// otherwise keep a large-body permit).
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The service's shared parts.
#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) shared: Arc<Shared>,
    pub(crate) auth: NodeAuth,
    pub(crate) max_request_bytes: usize,
    /// Permits to read a large body (`FleetOptions::large_body_readers`).
    pub(crate) large_bodies: tokio::sync::Semaphore,
}

fn decode<M: prost::Message + Default>(body: &Bytes) -> Result<M, ApiError> {
    M::decode(body.clone()).map_err(|_| ApiError::Forbidden(ApiErrorCode::InvalidProtobufPayload))
}

/// Every state refusal of a run-scoped call means "not this running run".
fn run_refusal(_: StateError) -> ApiError {
    ApiError::Forbidden(ApiErrorCode::RunStatusNotAllowed)
}

impl Service {
    /// One request, never failing: every outcome is a response.
    pub(crate) async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let Some(rpc) = Rpc::from_path(request.uri().path()) else {
            return reply::not_found();
        };
        let response = match self.handle_rpc(rpc, request).await {
            Ok(body) => reply::protobuf(body),
            Err(e) => {
                debug!(?rpc, error = ?e, "fleet request refused");
                e.response()
            }
        };
        let sent = hyper::body::Body::size_hint(response.body()).lower();
        self.shared.metrics().bytes_sent(TRANSPORT).inc_by(sent);
        response
    }

    async fn handle_rpc(
        &self,
        rpc: Rpc,
        request: Request<Incoming>,
    ) -> Result<Vec<Bytes>, ApiError> {
        if request.method() != Method::POST {
            return Err(ApiError::Forbidden(ApiErrorCode::InvalidProtobufPayload));
        }
        let key = verify_node_request(request.headers(), SystemTime::now()).map_err(|e| {
            // Only the reason, never a key or signature.
            debug!(error = %e, "node authentication failed");
            self.shared.refusals().count(e.refusal_reason());
            ApiError::Unauthenticated
        })?;
        if !reply::is_protobuf(request.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::Forbidden(ApiErrorCode::UnsupportedContentType));
        }
        // Only signed requests get here; a large one waits its turn (the
        // node waits for the response, its bytes wait in its socket).
        let large = content_length(request.headers()).is_some_and(|n| n >= LARGE_BODY);
        let _reading = match large {
            true => Some(
                self.large_bodies
                    .acquire()
                    .await
                    .map_err(|_| ApiError::Unavailable)?,
            ),
            false => None,
        };
        let body = read_body(request, self.max_request_bytes, large)
            .await
            .ok_or(ApiError::Forbidden(ApiErrorCode::InvalidProtobufPayload))?;
        self.shared
            .metrics()
            .bytes_received(TRANSPORT)
            .inc_by(body.len() as u64);
        if rpc == Rpc::PullObject {
            return self.pull_object(&key, &body);
        }
        self.dispatch(rpc, &key, &body)
            .await
            .map(|b| vec![Bytes::from(b)])
    }

    /// `PullObject`: the response is built around the object's content
    /// parts (see [`pull_object_response`]).
    pub(crate) fn pull_object(
        &self,
        key: &NodePublicKey,
        body: &Bytes,
    ) -> Result<Vec<Bytes>, ApiError> {
        let req: pb::PullObjectRequest = decode(body)?;
        self.bound(key, req.node.unwrap_or_default().node_id)?;
        let found = self
            .shared
            .read_state(|s| s.pull_object(req.run_id, &req.object_id))
            .map_err(run_refusal)?;
        Ok(pull_object_response(found))
    }

    /// The node bound to `key` must be `node_id`, or `key` unknown and
    /// `node_id` the id it derives: then the node is taken back (this
    /// server restarted; see [`LinkState::readmit`](crate::state::LinkState::readmit)).
    fn bound(&self, key: &NodePublicKey, node_id: u64) -> Result<(), ApiError> {
        self.bound_or_readmitted(key, node_id)
            .inspect_err(|_| self.shared.refusals().count("unbound"))
    }

    fn bound_or_readmitted(&self, key: &NodePublicKey, node_id: u64) -> Result<(), ApiError> {
        let found = self.shared.read_state(|s| s.node_for_key(key.sec1_bytes()));
        match found {
            Some(id) if id == node_id => Ok(()),
            Some(_) => Err(ApiError::Unauthenticated),
            None => {
                let authorized = self.authorized(key);
                self.shared
                    .with_state(|s| s.readmit(key.sec1_bytes(), node_id, authorized, unix_now()))
                    .map_err(|e| {
                        debug!(node_id, error = %e, "unknown node not re-admitted");
                        ApiError::Unauthenticated
                    })?;
                info!(
                    node_id,
                    key = key.fingerprint(),
                    "SuperNode re-admitted (known by its key-derived id)"
                );
                Ok(())
            }
        }
    }

    /// The node bound to `key` must be `node_id`, without re-admission: a
    /// node unknown here need not be deactivated or unregistered.
    fn bound_strict(&self, key: &NodePublicKey, node_id: u64) -> Result<(), ApiError> {
        let found = self.shared.read_state(|s| s.node_for_key(key.sec1_bytes()));
        if found == Some(node_id) {
            Ok(())
        } else {
            self.shared.refusals().count("unbound");
            Err(ApiError::Unauthenticated)
        }
    }

    /// `public_key` (PEM bytes) of Register/ActivateNode must be the signer.
    fn same_key(key: &NodePublicKey, pem: &[u8]) -> Result<(), ApiError> {
        match NodePublicKey::from_pem_bytes(pem) {
            Ok(body_key) if body_key == *key => Ok(()),
            _ => Err(ApiError::Unauthenticated),
        }
    }

    pub(crate) fn authorized(&self, key: &NodePublicKey) -> bool {
        self.auth
            .authorized
            .as_ref()
            .is_some_and(|keys| keys.contains(key))
    }

    pub(crate) async fn dispatch(
        &self,
        rpc: Rpc,
        key: &NodePublicKey,
        body: &Bytes,
    ) -> Result<Vec<u8>, ApiError> {
        let shared = &self.shared;
        let now = unix_now();
        Ok(match rpc {
            Rpc::RegisterNode => {
                let req: pb::RegisterNodeFleetRequest = decode(body)?;
                Self::same_key(key, &req.public_key)?;
                let node_id = shared
                    .with_state(|s| s.register(key.sec1_bytes()))
                    .map_err(|e| match e {
                        StateError::RegistrationDisabled => {
                            ApiError::Refused(ApiErrorCode::RegistrationDisabled)
                        }
                        _ => ApiError::Refused(ApiErrorCode::PublicKeyAlreadyInUse),
                    })?;
                debug!(node_id, key = key.fingerprint(), "SuperNode registered");
                pb::RegisterNodeFleetResponse { node_id }.encode_to_vec()
            }
            Rpc::ActivateNode => {
                let req: pb::ActivateNodeRequest = decode(body)?;
                Self::same_key(key, &req.public_key)?;
                let authorized = self.authorized(key);
                let node_id = shared
                    .with_state(|s| {
                        s.activate(key.sec1_bytes(), req.heartbeat_interval, authorized, now)
                    })
                    .map_err(|e| match e {
                        StateError::BadHeartbeatInterval(_) => {
                            ApiError::Forbidden(ApiErrorCode::InvalidHeartbeatInterval)
                        }
                        _ => ApiError::Refused(ApiErrorCode::NodeActivationFailed),
                    })?;
                pb::ActivateNodeResponse { node_id }.encode_to_vec()
            }
            Rpc::DeactivateNode => {
                let req: pb::DeactivateNodeRequest = decode(body)?;
                self.bound_strict(key, req.node_id)?;
                shared
                    .with_state(|s| s.deactivate(req.node_id, now))
                    .map_err(|_| ApiError::Forbidden(ApiErrorCode::NodeDeactivationFailed))?;
                pb::DeactivateNodeResponse {}.encode_to_vec()
            }
            Rpc::UnregisterNode => {
                let req: pb::UnregisterNodeFleetRequest = decode(body)?;
                self.bound_strict(key, req.node_id)?;
                shared
                    .with_state(|s| s.unregister(req.node_id))
                    .map_err(|e| match e {
                        StateError::UnregistrationDisabled => {
                            ApiError::Forbidden(ApiErrorCode::UnregistrationDisabled)
                        }
                        _ => ApiError::Forbidden(ApiErrorCode::NodeUnregistrationFailed),
                    })?;
                pb::UnregisterNodeFleetResponse {}.encode_to_vec()
            }
            Rpc::SendNodeHeartbeat => {
                let req: pb::SendNodeHeartbeatRequest = decode(body)?;
                let node_id = req.node.unwrap_or_default().node_id;
                self.bound(key, node_id)?;
                let success = shared
                    .with_state(|s| s.heartbeat(node_id, req.heartbeat_interval, now))
                    .map_err(|_| ApiError::Forbidden(ApiErrorCode::InvalidHeartbeatInterval))?;
                pb::SendNodeHeartbeatResponse { success }.encode_to_vec()
            }
            Rpc::PullMessages => {
                let req: pb::PullMessagesRequest = decode(body)?;
                let node_id = req.node.unwrap_or_default().node_id;
                self.bound(key, node_id)?;
                let (messages_list, message_object_trees) =
                    match shared.with_state(|s| s.pull_messages(node_id, now)) {
                        Some((m, t)) => (vec![m], vec![t]),
                        None => (Vec::new(), Vec::new()),
                    };
                pb::PullMessagesResponse {
                    reconnect: None,
                    messages_list,
                    message_object_trees,
                }
                .encode_to_vec()
            }
            Rpc::PushMessages => {
                let req: pb::PushMessagesRequest = decode(body)?;
                let node_id = req.node.unwrap_or_default().node_id;
                self.bound(key, node_id)?;
                let (Some(message), Some(tree)) =
                    (req.messages_list.first(), req.message_object_trees.first())
                else {
                    return Err(ApiError::Forbidden(ApiErrorCode::InvalidProtobufPayload));
                };
                let accepted = shared
                    .with_state(|s| s.push_messages(node_id, message, tree, now))
                    .map_err(run_refusal)?;
                pb::PushMessagesResponse {
                    reconnect: Some(pb::Reconnect { reconnect: 5 }),
                    results: [(accepted.message_id, 0)].into_iter().collect(),
                    objects_to_push: accepted.objects_to_push,
                    session_id: accepted.session_id,
                }
                .encode_to_vec()
            }
            Rpc::GetRun => {
                let req: pb::GetRunRequest = decode(body)?;
                self.bound(key, req.node.unwrap_or_default().node_id)?;
                let run = shared
                    .read_state(|s| s.run_info(req.run_id).cloned())
                    .ok_or_else(|| self.run_missing(req.run_id, ApiErrorCode::GetRunFailed))?;
                pb::GetRunResponse { run: Some(run) }.encode_to_vec()
            }
            Rpc::GetFab => {
                let req: pb::GetFabRequest = decode(body)?;
                self.bound(key, req.node.unwrap_or_default().node_id)?;
                let fab = shared
                    .read_state(|s| s.run_fab(req.run_id).cloned())
                    .ok_or_else(|| self.run_missing(req.run_id, ApiErrorCode::GetFabFailed))?;
                if fab.hash_str != req.hash_str {
                    return Err(ApiError::Forbidden(ApiErrorCode::GetFabFailed));
                }
                pb::GetFabResponse { fab: Some(fab) }.encode_to_vec()
            }
            Rpc::PushObject => {
                let req: pb::PushObjectRequest = decode(body)?;
                let node_id = req.node.unwrap_or_default().node_id;
                self.bound(key, node_id)?;
                shared
                    .read_state(|s| s.check_running(req.run_id))
                    .map_err(run_refusal)?;
                let stored = self.push_object(node_id, req).await?;
                pb::PushObjectResponse { stored }.encode_to_vec()
            }
            // Answered by `pull_object` without a copy of the content.
            Rpc::PullObject => return Err(ApiError::Unavailable),
            Rpc::ConfirmMessageReceived => {
                let req: pb::ConfirmMessageReceivedRequest = decode(body)?;
                let node_id = req.node.unwrap_or_default().node_id;
                self.bound(key, node_id)?;
                shared
                    .with_state(|s| s.confirm(node_id, req.run_id, &req.message_object_id))
                    .map_err(run_refusal)?;
                pb::ConfirmMessageReceivedResponse {}.encode_to_vec()
            }
        })
    }

    /// Why a run has nothing to serve: a known run that is not running
    /// gets "run status not allowed", any other id `unknown`.
    fn run_missing(&self, run_id: u64, unknown: ApiErrorCode) -> ApiError {
        if self.shared.read_state(|s| s.knows_run(run_id)) {
            ApiError::Forbidden(ApiErrorCode::RunStatusNotAllowed)
        } else {
            ApiError::Forbidden(unknown)
        }
    }

    /// Stores one pushed object if its session awaits it and it is valid
    /// (hash and head); a node pushing a bad object fails its exchange.
    pub(crate) async fn push_object(
        &self,
        node_id: u64,
        req: pb::PushObjectRequest,
    ) -> Result<bool, ApiError> {
        let Ok(id) = req.object_id.parse::<ObjectId>() else {
            return Ok(false);
        };
        let shared = &self.shared;
        if !shared.read_state(|s| s.is_pending(node_id, &req.session_id, &id)) {
            return Ok(false);
        }
        let content = req.object_content;
        // Hashing a 5 MiB chunk takes milliseconds: off the async threads.
        let checked = content.clone();
        let valid = tokio::task::spawn_blocking(move || validate_object(&id, &checked).map(|_| ()))
            .await
            .map_err(|_| ApiError::Unavailable)?;
        if let Err(e) = valid {
            warn!(node_id, error = %e, "SuperNode pushed an invalid object; its reply fails");
            shared.with_state(|s| s.reject_reply(node_id, &req.session_id, e.to_string()));
            return Ok(false);
        }
        let outcome = shared
            .with_state(|s| s.push_object(node_id, req.run_id, &req.session_id, &id, content))
            .map_err(run_refusal)?;
        Ok(outcome != PushOutcome::Refused)
    }
}

fn content_length(headers: &http::HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// The request body in one buffer, read at most `limit` bytes: the frames
/// are appended to one buffer, so a pushed object is never held twice (a
/// single frame is kept as it is). The buffer grows as bytes arrive, up to
/// the announced length, so that a Content-Length alone reserves nothing;
/// with `reserve` (a large body holding one of the few read permits, so
/// the total is bounded) the announced length is reserved at once, which
/// spares the growth's copies. A body that sends nothing for
/// [`BODY_IDLE_TIMEOUT`] is cut. `None` when the body is too long, stalls
/// or the connection fails.
async fn read_body(request: Request<Incoming>, limit: usize, reserve: bool) -> Option<Bytes> {
    let announced = content_length(request.headers());
    if announced.is_some_and(|n| n > limit) {
        return None;
    }
    let mut body = request.into_body();
    let mut first: Option<Bytes> = None;
    let mut buf = match (reserve, announced) {
        (true, Some(n)) => BytesMut::with_capacity(n),
        _ => BytesMut::new(),
    };
    while let Some(frame) = tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame())
        .await
        .ok()?
    {
        let Ok(data) = frame.ok()?.into_data() else {
            // Trailers carry nothing for us.
            continue;
        };
        let total = buf.len() + first.as_ref().map_or(0, Bytes::len) + data.len();
        if total > limit {
            return None;
        }
        match first.take() {
            None if buf.is_empty() && buf.capacity() == 0 => first = Some(data),
            held => {
                // Grown as bytes arrive (doubling, capped by the announced
                // length), never reserved from the Content-Length alone.
                if buf.capacity() < total {
                    let target = (buf.capacity() * 2)
                        .max(total)
                        .min(announced.unwrap_or(usize::MAX).max(total));
                    buf.reserve(target - buf.len());
                }
                if let Some(held) = held {
                    buf.extend_from_slice(&held);
                }
                buf.extend_from_slice(&data);
            }
        }
    }
    Some(first.unwrap_or_else(|| buf.freeze()))
}

/// A `PullObjectResponse` as its encoded parts: the fields up to the
/// content's length prefix and the object's head in one small buffer, then
/// the content's remaining parts as they are stored (for a broadcast chunk,
/// a slice of the model's bytes).
fn pull_object_response(found: Lookup) -> Vec<Bytes> {
    let (object_found, object_available, content) = match found {
        Lookup::NotFound => (false, false, Content::default()),
        Lookup::Pending => (true, false, Content::default()),
        Lookup::Found(c) => (true, true, c),
    };
    let mut prefix = pb::PullObjectResponse {
        object_found,
        object_available,
        object_content: Bytes::new(),
    }
    .encode_to_vec();
    if content.is_empty() {
        return vec![Bytes::from(prefix)];
    }
    // Field 3, length-delimited: what prost writes for `object_content`.
    prost::encoding::encode_key(3, prost::encoding::WireType::LengthDelimited, &mut prefix);
    prost::encoding::encode_varint(content.len() as u64, &mut prefix);
    let mut parts = content.parts();
    let mut out = Vec::with_capacity(2);
    match parts.next() {
        // A small head joins the prefix; a big first part is sent as is.
        Some(head) if head.len() <= 4096 => prefix.extend_from_slice(head),
        Some(big) => out.push(big.clone()),
        None => {}
    }
    out.insert(0, Bytes::from(prefix));
    out.extend(parts.cloned());
    out
}

async fn serve_connection(
    service: Arc<Service>,
    io: Connection,
    header_read_timeout: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let handler = service_fn(move |request| {
        let service = service.clone();
        async move { Ok::<_, Infallible>(service.handle(request).await) }
    });
    // The timer makes hyper enforce the header read timeout: a peer that
    // trickles its headers (or idles between requests) is closed.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), handler);
    let mut conn = std::pin::pin!(conn);
    let mut stop = stop;
    let stopped = tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(error = %e, "fleet connection ended");
            }
            false
        }
        _ = stop.wait_for(|s| *s) => true,
    };
    if stopped {
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    }
}

/// Serves the connections of `listener` (capped, TLS and keepalive done
/// there, see [`flower_server::listener`]) until `stop` completes.
pub(crate) fn accept_loop(
    listener: HardenedListener,
    header_read_timeout: Duration,
    service: Arc<Service>,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut stop = stop;
        let mut incoming = listener.incoming();
        loop {
            let conn = tokio::select! {
                _ = &mut stop => break,
                conn = incoming.next() => match conn {
                    Some(conn) => conn,
                    None => break,
                },
            };
            tokio::spawn(serve_connection(
                service.clone(),
                conn,
                header_read_timeout,
                stop_rx.clone(),
            ));
        }
        // Dropping `incoming` closes the listening socket.
        drop(incoming);
        let _ = stop_tx.send(true);
    })
}
