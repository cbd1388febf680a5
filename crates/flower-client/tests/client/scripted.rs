//! A scripted `FlowerService` in Rust over real gRPC on loopback: each
//! `Join` runs a test-supplied async script that sends instructions and
//! reads the client's replies.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use flower_core::{ClientMessage, ServerMessage};
use flower_proto as pb;
use flower_proto::flower_service_server::{FlowerService, FlowerServiceServer};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::STEP_TIMEOUT;

/// One `Join` as the test server sees it.
#[derive(Debug)]
pub(crate) struct Session {
    /// 0 for the first `Join`, 1 for the second, ...
    pub(crate) index: usize,
    pub(crate) metadata: MetadataMap,
    tx: Option<mpsc::Sender<Result<pb::ServerMessage, Status>>>,
    rx: Streaming<pb::ClientMessage>,
}

impl Session {
    /// Sends an instruction and waits (bounded) for the reply.
    pub(crate) async fn ask(&mut self, message: ServerMessage) -> ClientMessage {
        self.send(message).await;
        self.reply().await.expect("client replied")
    }

    /// Sends an instruction and waits (bounded) for a reply, if any comes.
    pub(crate) async fn ask_optional(&mut self, message: ServerMessage) -> Option<ClientMessage> {
        self.send(message).await;
        self.reply().await
    }

    /// Sends an instruction.
    pub(crate) async fn send(&mut self, message: ServerMessage) {
        self.tx
            .as_ref()
            .expect("stream open")
            .send(Ok(message.into()))
            .await
            .expect("response stream open");
    }

    /// The next client message, or `None` when the client ended or cancelled.
    pub(crate) async fn reply(&mut self) -> Option<ClientMessage> {
        match tokio::time::timeout(STEP_TIMEOUT, self.rx.message()).await {
            Ok(Ok(Some(m))) => Some(ClientMessage::try_from(m).expect("valid ClientMessage")),
            Ok(Ok(None)) | Ok(Err(_)) => None,
            Err(_) => panic!("no client message within {STEP_TIMEOUT:?}"),
        }
    }

    /// Ends the response stream with an error status.
    pub(crate) async fn fail(mut self, status: Status) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(status)).await;
        }
    }

    /// Ends the response stream normally (OK trailers).
    pub(crate) fn close(mut self) {
        self.tx = None;
    }
}

/// What the test server does with each `Join`.
pub(crate) type Script = Arc<dyn Fn(Session) -> BoxFuture<'static, ()> + Send + Sync>;

struct Service {
    script: Script,
    joins: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl FlowerService for Service {
    type JoinStream = ReceiverStream<Result<pb::ServerMessage, Status>>;

    async fn join(
        &self,
        request: Request<Streaming<pb::ClientMessage>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let index = self.joins.fetch_add(1, Ordering::SeqCst);
        let metadata = request.metadata().clone();
        let (tx, rx) = mpsc::channel(4);
        let session = Session {
            index,
            metadata,
            tx: Some(tx),
            rx: request.into_inner(),
        };
        tokio::spawn((self.script)(session));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A `FlowerService` on 127.0.0.1 that runs `script` for every `Join`.
#[derive(Debug)]
pub(crate) struct ScriptedServer {
    addr: SocketAddr,
    joins: Arc<AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedServer {
    /// Binds an ephemeral port and serves (plaintext HTTP/2).
    pub(crate) async fn start(script: Script) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, script)
    }

    fn serve(listener: tokio::net::TcpListener, script: Script) -> Self {
        let addr = listener.local_addr().unwrap();
        let joins = Arc::new(AtomicUsize::new(0));
        let service = FlowerServiceServer::new(Service {
            script,
            joins: joins.clone(),
        })
        .max_decoding_message_size(flower_proto::GRPC_MAX_MESSAGE_LENGTH)
        .max_encoding_message_size(flower_proto::GRPC_MAX_MESSAGE_LENGTH);
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop.await;
                })
                .await
                .expect("test server runs");
        });
        Self {
            addr,
            joins,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// `Join` calls received so far.
    pub(crate) fn joins(&self) -> usize {
        self.joins.load(Ordering::SeqCst)
    }

    /// `127.0.0.1:PORT`.
    pub(crate) fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        self.task.abort();
    }
}

/// A script from an async closure.
pub(crate) fn script<F, Fut>(f: F) -> Script
where
    F: Fn(Session) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    Arc::new(move |s| Box::pin(f(s)))
}
