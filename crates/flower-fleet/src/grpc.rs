//! The Fleet API over gRPC (`flwr.proto.Fleet`, tonic) for SuperNodes of
//! flwr 1.13 to 1.39, which have no HTTP Fleet client. The RPCs of 1.23+
//! are authenticated from the ≤ 1.39 binary metadata
//! (`flwr-public-key-bin`: raw PEM, `flwr-signature-bin`: raw DER,
//! `flwr-timestamp`) and then handled by the HTTP service's own handlers,
//! so both transports share one link state and one set of rules. The
//! keyless SuperNodes of 1.13 to 1.22 (`CreateNode`, `Ping`,
//! `PullTaskIns`, ..., and any RPC without signature metadata) are handled
//! by [`legacy`] on the same link state.
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

mod legacy;

/// flwr's ≤ 1.39 metadata keys.
const PUBLIC_KEY_BIN: &str = "flwr-public-key-bin";
const SIGNATURE_BIN: &str = "flwr-signature-bin";
const TIMESTAMP: &str = "flwr-timestamp";

/// The gRPC face of the Fleet service.
#[derive(Debug, Clone)]
pub(crate) struct GrpcFleet {
    service: Arc<Service>,
    keyless: Arc<legacy::KeylessNodes>,
}

fn status(e: ApiError) -> Status {
    match e {
        ApiError::Unauthenticated => {
            Status::unauthenticated(flower_auth::node::INVALID_NODE_AUTH_MESSAGE)
        }
        ApiError::Refused(code) => Status::unauthenticated(code.message()),
        ApiError::Forbidden(code) => Status::permission_denied(code.message()),
        ApiError::Unavailable => Status::unavailable("Service unavailable."),
    }
}

impl GrpcFleet {
    /// The gRPC service over `service`'s handlers and link state.
    pub(crate) fn new(service: Arc<Service>) -> Self {
        GrpcFleet {
            service,
            keyless: Arc::default(),
        }
    }

    fn authenticate(metadata: &MetadataMap) -> Result<NodePublicKey, Status> {
        let unauthenticated =
            || Status::unauthenticated(flower_auth::node::INVALID_NODE_AUTH_MESSAGE);
        let key = metadata
            .get_bin(PUBLIC_KEY_BIN)
            .and_then(|v| v.to_bytes().ok())
            .ok_or_else(unauthenticated)?;
        let signature = metadata
            .get_bin(SIGNATURE_BIN)
            .and_then(|v| v.to_bytes().ok())
            .ok_or_else(unauthenticated)?;
        let timestamp = metadata.get(TIMESTAMP).ok_or_else(unauthenticated)?;
        verify_node_signature_raw(&key, timestamp.as_bytes(), &signature, SystemTime::now())
            .map_err(|e| {
                // Only the reason, never a key or signature.
                debug!(error = %e, "grpc node authentication failed");
                unauthenticated()
            })
    }

    async fn call<Req, Resp>(
        &self,
        rpc: Rpc,
        request: Request<Req>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let key = Self::authenticate(request.metadata())?;
        let body = Bytes::from(request.into_inner().encode_to_vec());
        let out = if rpc == Rpc::PullObject {
            let parts = self.service.pull_object(&key, &body).map_err(status)?;
            let mut joined = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for part in parts {
                joined.extend_from_slice(&part);
            }
            joined.freeze()
        } else {
            Bytes::from(
                self.service
                    .dispatch(rpc, &key, &body)
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
        if !legacy::is_keyed(request.metadata()) {
            return self
                .keyless
                .send_node_heartbeat(&self.service.shared, request.get_ref())
                .map(Response::new);
        }
        self.call(Rpc::SendNodeHeartbeat, request).await
    }

    async fn pull_messages(
        &self,
        request: Request<pb::PullMessagesRequest>,
    ) -> Result<Response<pb::PullMessagesWireResponse>, Status> {
        if !legacy::is_keyed(request.metadata()) {
            return self
                .keyless
                .pull_messages(&self.service.shared, request.get_ref())
                .await
                .map(Response::new);
        }
        self.call(Rpc::PullMessages, request).await
    }

    async fn push_messages(
        &self,
        request: Request<pb::PushMessagesWireRequest>,
    ) -> Result<Response<pb::PushMessagesWireResponse>, Status> {
        if !legacy::is_keyed(request.metadata()) {
            return self
                .keyless
                .push_messages(&self.service.shared, request.into_inner())
                .map(Response::new);
        }
        self.call(Rpc::PushMessages, request).await
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        if !legacy::is_keyed(request.metadata()) {
            return self
                .keyless
                .get_run(&self.service.shared, request.get_ref())
                .map(Response::new);
        }
        self.call(Rpc::GetRun, request).await
    }

    async fn get_fab(
        &self,
        request: Request<pb::GetFabRequest>,
    ) -> Result<Response<pb::GetFabResponse>, Status> {
        if !legacy::is_keyed(request.metadata()) {
            return self
                .keyless
                .get_fab(&self.service.shared, request.get_ref())
                .map(Response::new);
        }
        self.call(Rpc::GetFab, request).await
    }

    async fn push_object(
        &self,
        request: Request<pb::PushObjectRequest>,
    ) -> Result<Response<pb::PushObjectResponse>, Status> {
        if !legacy::is_keyed(request.metadata()) {
            return self
                .keyless
                .push_object(&self.service, request.into_inner())
                .await
                .map(Response::new);
        }
        self.call(Rpc::PushObject, request).await
    }

    async fn pull_object(
        &self,
        request: Request<pb::PullObjectRequest>,
    ) -> Result<Response<pb::PullObjectResponse>, Status> {
        if !legacy::is_keyed(request.metadata()) {
            return self
                .keyless
                .pull_object(&self.service.shared, request.get_ref())
                .map(Response::new);
        }
        self.call(Rpc::PullObject, request).await
    }

    async fn confirm_message_received(
        &self,
        request: Request<pb::ConfirmMessageReceivedRequest>,
    ) -> Result<Response<pb::ConfirmMessageReceivedResponse>, Status> {
        if !legacy::is_keyed(request.metadata()) {
            return self
                .keyless
                .confirm_message_received(&self.service.shared, request.get_ref())
                .map(Response::new);
        }
        self.call(Rpc::ConfirmMessageReceived, request).await
    }

    async fn create_node(
        &self,
        request: Request<pb::CreateNodeRequest>,
    ) -> Result<Response<pb::CreateNodeResponse>, Status> {
        self.keyless
            .create_node(&self.service.shared, request.metadata(), request.get_ref())
            .map(Response::new)
    }

    async fn delete_node(
        &self,
        request: Request<pb::DeleteNodeRequest>,
    ) -> Result<Response<pb::DeleteNodeResponse>, Status> {
        self.keyless
            .delete_node(&self.service.shared, request.get_ref())
            .map(Response::new)
    }

    async fn ping(
        &self,
        request: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        self.keyless
            .ping(&self.service.shared, request.get_ref())
            .map(Response::new)
    }

    async fn pull_task_ins(
        &self,
        request: Request<pb::PullTaskInsRequest>,
    ) -> Result<Response<pb::PullTaskInsResponse>, Status> {
        self.keyless
            .pull_task_ins(&self.service.shared, request.get_ref())
            .await
            .map(Response::new)
    }

    async fn push_task_res(
        &self,
        request: Request<pb::PushTaskResRequest>,
    ) -> Result<Response<pb::PushTaskResResponse>, Status> {
        self.keyless
            .push_task_res(&self.service.shared, request.into_inner())
            .map(Response::new)
    }
}
