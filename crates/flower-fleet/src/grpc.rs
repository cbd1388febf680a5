//! The Fleet API over gRPC (`flwr.proto.Fleet`, tonic) for SuperNodes of
//! flwr 1.13 to 1.39, which have no HTTP Fleet client. The RPCs of 1.23+
//! are authenticated from the ≤ 1.39 binary metadata
//! (`flwr-public-key-bin`: raw PEM, `flwr-signature-bin`: raw DER,
//! `flwr-timestamp`) and then handled by the HTTP service's own handlers,
//! so both transports share one link state and one set of rules. The
//! SuperNodes of 1.13 to 1.22 (`CreateNode`, `Ping`, `PullTaskIns`, ...,
//! and every call of a node created with `CreateNode` or without signature
//! metadata) are answered by [`legacy`] in their release's wire form, on
//! the same link state; a 1.19 node, whose objects differ, is recognized
//! at its first instruction and refused (see [`legacy`]).
//!
//! Refusals become gRPC statuses the way flwr's `grpc_rere` servicer
//! aborts: `UNAUTHENTICATED` for identity failures (the SuperNode stops),
//! `PERMISSION_DENIED` when the run is not running (the message is
//! dropped), `UNAVAILABLE` when the server is busy (retried).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use flower_auth::node::{verify_node_signature_raw, NodePublicKey};
use flower_proto as pb;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::http::reply::ApiError;
use crate::http::{Rpc, Service};
use crate::node::NodeRefusals;

mod legacy;

/// The metadata names of a node's signature (public key PEM, DER
/// signature, timestamp): flwr 1.16+, then flwr 1.15.
const SIGNATURE_NAMES: [(&str, &str, &str); 2] = [
    (
        "flwr-public-key-bin",
        "flwr-signature-bin",
        "flwr-timestamp",
    ),
    ("public-key-bin", "signature-bin", "timestamp"),
];

/// The gRPC face of the Fleet service.
#[derive(Debug, Clone)]
pub(crate) struct GrpcFleet {
    service: Arc<Service>,
    old: Arc<legacy::OldNodes>,
}

fn status(e: ApiError) -> Status {
    match e {
        ApiError::Unauthenticated => unauthenticated(),
        ApiError::Refused(code) => Status::unauthenticated(code.message()),
        ApiError::Forbidden(code) => Status::permission_denied(code.message()),
        ApiError::Unavailable => Status::unavailable("Service unavailable."),
    }
}

fn unauthenticated() -> Status {
    Status::unauthenticated(flower_auth::node::INVALID_NODE_AUTH_MESSAGE)
}

/// The verified signer of a request; `None` when it carries no signature
/// metadata (flwr 1.13/1.14 nodes). Refusals are counted in `refusals`.
fn signer(
    metadata: &MetadataMap,
    refusals: &NodeRefusals,
) -> Result<Option<NodePublicKey>, Status> {
    let refuse = |reason: &str| {
        refusals.count(reason);
        unauthenticated()
    };
    for (key_name, signature_name, timestamp_name) in SIGNATURE_NAMES {
        let Some(key) = metadata.get_bin(key_name) else {
            continue;
        };
        let key = key.to_bytes().map_err(|_| refuse("malformed"))?;
        let signature = metadata
            .get_bin(signature_name)
            .and_then(|v| v.to_bytes().ok())
            .ok_or_else(|| refuse("missing"))?;
        let timestamp = metadata
            .get(timestamp_name)
            .ok_or_else(|| refuse("missing"))?;
        return verify_node_signature_raw(
            &key,
            timestamp.as_bytes(),
            &signature,
            SystemTime::now(),
        )
        .map(Some)
        .map_err(|e| {
            // Only the reason, never a key or signature.
            debug!(error = %e, "grpc node authentication failed");
            refuse(e.refusal_reason())
        });
    }
    Ok(None)
}

/// Who answers an RPC whose name flwr ≤ 1.22 and 1.23+ share.
enum Route {
    /// A node created with `CreateNode`, or an unsigned call.
    Old(Option<NodePublicKey>),
    /// A 1.23+ node: the HTTP service's handler.
    Current(NodePublicKey),
}

impl GrpcFleet {
    /// The verified signer of a request (see the free [`signer`]).
    fn signer(&self, metadata: &MetadataMap) -> Result<Option<NodePublicKey>, Status> {
        signer(metadata, self.service.shared.refusals())
    }

    /// The gRPC service over `service`'s handlers and link state.
    pub(crate) fn new(service: Arc<Service>) -> Self {
        GrpcFleet {
            service,
            old: Arc::default(),
        }
    }

    /// flwr 1.20-1.22 nodes exchange messages as 1.23+ (`objects`): their
    /// `PullMessages`/`PushMessages` go to the HTTP service's handlers once
    /// their heartbeat told their era; other old nodes' to [`legacy`]. A
    /// node found to be flwr 1.19 is refused.
    fn route(&self, metadata: &MetadataMap, objects: bool) -> Result<Route, Status> {
        Ok(match self.signer(metadata)? {
            None => Route::Old(None),
            Some(key) => match self.old.owner(&key) {
                Some(Some(legacy::Era::V119)) => return Err(legacy::refusal_1_19()),
                Some(Some(legacy::Era::Objects)) if objects => Route::Current(key),
                Some(_) => Route::Old(Some(key)),
                None => Route::Current(key),
            },
        })
    }

    /// The signer of an object RPC (only 1.19+ nodes use objects; they sign
    /// every call), refused if it is a flwr 1.19 node.
    fn object_caller(&self, metadata: &MetadataMap) -> Result<NodePublicKey, Status> {
        let key = self.signer(metadata)?.ok_or_else(unauthenticated)?;
        if self.old.owner(&key) == Some(Some(legacy::Era::V119)) {
            return Err(legacy::refusal_1_19());
        }
        Ok(key)
    }

    /// A 1.23+ RPC: authenticated, then the HTTP service's handler.
    async fn call<Req, Resp>(
        &self,
        rpc: Rpc,
        request: Request<Req>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let key = self
            .signer(request.metadata())?
            .ok_or_else(unauthenticated)?;
        self.call_as(rpc, &key, request).await
    }

    async fn call_as<Req, Resp>(
        &self,
        rpc: Rpc,
        key: &NodePublicKey,
        request: Request<Req>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let body = Bytes::from(request.into_inner().encode_to_vec());
        let out = if rpc == Rpc::PullObject {
            let parts = self.service.pull_object(key, &body).map_err(status)?;
            let mut joined = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for part in parts {
                joined.extend_from_slice(&part);
            }
            joined.freeze()
        } else {
            Bytes::from(
                self.service
                    .dispatch(rpc, key, &body)
                    .await
                    .map_err(status)?,
            )
        };
        Resp::decode(out)
            .map(Response::new)
            .map_err(|_| Status::internal("response encoding"))
    }
}

#[tonic::async_trait]
impl pb::fleet_server::Fleet for GrpcFleet {
    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeFleetRequest>,
    ) -> Result<Response<pb::RegisterNodeFleetResponse>, Status> {
        self.call(Rpc::RegisterNode, request).await
    }

    async fn activate_node(
        &self,
        request: Request<pb::ActivateNodeRequest>,
    ) -> Result<Response<pb::ActivateNodeResponse>, Status> {
        self.call(Rpc::ActivateNode, request).await
    }

    async fn deactivate_node(
        &self,
        request: Request<pb::DeactivateNodeRequest>,
    ) -> Result<Response<pb::DeactivateNodeResponse>, Status> {
        self.call(Rpc::DeactivateNode, request).await
    }

    async fn unregister_node(
        &self,
        request: Request<pb::UnregisterNodeFleetRequest>,
    ) -> Result<Response<pb::UnregisterNodeFleetResponse>, Status> {
        self.call(Rpc::UnregisterNode, request).await
    }

    async fn send_node_heartbeat(
        &self,
        request: Request<pb::SendNodeHeartbeatRequest>,
    ) -> Result<Response<pb::SendNodeHeartbeatResponse>, Status> {
        match self.route(request.metadata(), false)? {
            Route::Old(caller) => self
                .old
                .send_node_heartbeat(&self.service.shared, caller.as_ref(), request.get_ref())
                .map(Response::new),
            Route::Current(key) => self.call_as(Rpc::SendNodeHeartbeat, &key, request).await,
        }
    }

    async fn pull_messages(
        &self,
        request: Request<pb::PullMessagesRequest>,
    ) -> Result<Response<pb::PullMessagesWireResponse>, Status> {
        match self.route(request.metadata(), true)? {
            Route::Old(caller) => self
                .old
                .pull_messages(&self.service.shared, caller.as_ref(), request.get_ref())
                .await
                .map(Response::new),
            Route::Current(key) => {
                let probe = self.old.needs_probe(&key);
                let mut response: Response<pb::PullMessagesWireResponse> =
                    self.call_as(Rpc::PullMessages, &key, request).await?;
                if probe {
                    legacy::add_probe(response.get_mut());
                }
                Ok(response)
            }
        }
    }

    async fn push_messages(
        &self,
        request: Request<pb::PushMessagesWireRequest>,
    ) -> Result<Response<pb::PushMessagesResponse>, Status> {
        match self.route(request.metadata(), true)? {
            Route::Old(caller) => self
                .old
                .push_messages(&self.service.shared, caller.as_ref(), request.into_inner())
                .map(Response::new),
            Route::Current(key) => {
                self.old.objects_used(&key);
                self.call_as(Rpc::PushMessages, &key, request).await
            }
        }
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        match self.route(request.metadata(), false)? {
            Route::Old(caller) => self
                .old
                .get_run(&self.service.shared, caller.as_ref(), request.get_ref())
                .map(Response::new),
            Route::Current(key) => self.call_as(Rpc::GetRun, &key, request).await,
        }
    }

    async fn get_fab(
        &self,
        request: Request<pb::GetFabRequest>,
    ) -> Result<Response<pb::GetFabResponse>, Status> {
        match self.route(request.metadata(), false)? {
            Route::Old(caller) => self
                .old
                .get_fab(&self.service.shared, caller.as_ref(), request.get_ref())
                .map(Response::new),
            Route::Current(key) => self.call_as(Rpc::GetFab, &key, request).await,
        }
    }

    async fn push_object(
        &self,
        request: Request<pb::PushObjectRequest>,
    ) -> Result<Response<pb::PushObjectResponse>, Status> {
        let key = self.object_caller(request.metadata())?;
        self.call_as(Rpc::PushObject, &key, request).await
    }

    async fn pull_object(
        &self,
        request: Request<pb::PullObjectRequest>,
    ) -> Result<Response<pb::PullObjectResponse>, Status> {
        let key = self.object_caller(request.metadata())?;
        if request.get_ref().object_id == legacy::probe_id().to_string()
            && self.old.refuse_1_19(&self.service.shared, &key)
        {
            return Err(legacy::refusal_1_19());
        }
        self.call_as(Rpc::PullObject, &key, request).await
    }

    async fn confirm_message_received(
        &self,
        request: Request<pb::ConfirmMessageReceivedRequest>,
    ) -> Result<Response<pb::ConfirmMessageReceivedResponse>, Status> {
        let key = self.object_caller(request.metadata())?;
        self.old.objects_used(&key);
        self.call_as(Rpc::ConfirmMessageReceived, &key, request)
            .await
    }

    async fn create_node(
        &self,
        request: Request<pb::CreateNodeRequest>,
    ) -> Result<Response<pb::CreateNodeResponse>, Status> {
        let caller = self.signer(request.metadata())?;
        let authorized = caller.as_ref().is_some_and(|k| self.service.authorized(k));
        self.old
            .create_node(
                &self.service.shared,
                request.metadata(),
                caller.as_ref(),
                authorized,
                request.get_ref(),
            )
            .map(Response::new)
    }

    async fn delete_node(
        &self,
        request: Request<pb::DeleteNodeRequest>,
    ) -> Result<Response<pb::DeleteNodeResponse>, Status> {
        let caller = self.signer(request.metadata())?;
        self.old
            .delete_node(&self.service.shared, caller.as_ref(), request.get_ref())
            .map(Response::new)
    }

    async fn ping(
        &self,
        request: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        let caller = self.signer(request.metadata())?;
        self.old
            .ping(&self.service.shared, caller.as_ref(), request.get_ref())
            .map(Response::new)
    }

    async fn pull_task_ins(
        &self,
        request: Request<pb::PullTaskInsRequest>,
    ) -> Result<Response<pb::PullTaskInsResponse>, Status> {
        let caller = self.signer(request.metadata())?;
        self.old
            .pull_task_ins(&self.service.shared, caller.as_ref(), request.get_ref())
            .await
            .map(Response::new)
    }

    async fn push_task_res(
        &self,
        request: Request<pb::PushTaskResRequest>,
    ) -> Result<Response<pb::PushTaskResResponse>, Status> {
        let caller = self.signer(request.metadata())?;
        self.old
            .push_task_res(&self.service.shared, caller.as_ref(), request.into_inner())
            .map(Response::new)
    }
}
