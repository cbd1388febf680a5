//! A raw gRPC peer (written here, in Rust) that misbehaves: garbage bytes, a
//! wrong message kind, an oversized message. The server counts each as that
//! client's failure, never panics, and finishes with the others.

use std::time::Duration;

use crate::common::*;
use bytes::{Buf, BufMut};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// Sends and receives message bodies as raw bytes.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

#[derive(Debug, Clone, Copy)]
enum Misbehaviour {
    Garbage,
    WrongKind,
    Oversized,
}

/// Joins, waits for the first instruction, answers it badly, then waits
/// (bounded) for the server to end the stream. Returns the end status.
async fn misbehave(address: String, how: Misbehaviour) -> String {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    let path = http::uri::PathAndQuery::from_static("/flwr.proto.FlowerService/Join");
    let response = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, RawCodec)
        .await
        .expect("join");
    let mut inbound = response.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(60), inbound.message())
        .await
        .expect("an instruction arrives")
        .expect("stream ok")
        .expect("a message");
    let decoded =
        flower_proto::ServerMessage::decode(first.as_slice()).expect("valid ServerMessage");
    assert!(decoded.msg.is_some());
    let reply = match how {
        Misbehaviour::Garbage => vec![0xff, 0xff, 0xff, 0x07, 0x01],
        Misbehaviour::WrongKind => flower_proto::ClientMessage::from(
            flower_core::ClientMessage::Evaluate(flower_core::EvaluateRes {
                status: flower_core::Status::success(),
                loss: 1.0,
                num_examples: 1,
                metrics: Default::default(),
            }),
        )
        .encode_to_vec(),
        Misbehaviour::Oversized => vec![0u8; 300_000],
    };
    tx.send(reply).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return "end of stream".to_string(),
                Err(status) => return format!("{:?}: {}", status.code(), status.message()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| "still open".into());
    drop(tx);
    end
}

fn run_case(how: Misbehaviour) {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let init = dir.path().join("init.npz");
    write_initial_npz(&py, &init);
    let out = dir.path().join("out");
    let args: Vec<String> = [
        "--insecure",
        "--rounds",
        "2",
        "--min-fit-clients",
        "2",
        "--min-evaluate-clients",
        "2",
        "--min-available-clients",
        "2",
        "--max-message-size",
        "100000",
        "--client-wait-timeout",
        "60",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--output-dir".into(),
        out.display().to_string(),
        "--initial-parameters".into(),
        init.display().to_string(),
    ])
    .collect();
    let mut server = Server::start(&args, dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The raw peer joins first, so round 1's fit sample includes it.
    let raw = runtime.spawn(misbehave(server.address(), how));
    server.wait_for_log("client joined", 1, Duration::from_secs(30));
    let mut a = python_client(
        &py,
        &server.address(),
        None,
        0,
        &[],
        &dir.path().join("a.log"),
    );
    server.wait_for_log("client joined", 2, Duration::from_secs(30));
    let mut b = python_client(
        &py,
        &server.address(),
        None,
        1,
        &[],
        &dir.path().join("b.log"),
    );
    let end = runtime.block_on(raw).unwrap();
    let status = server.wait(Duration::from_secs(120));
    let log = server.log_text();
    assert!(status.success(), "{how:?}: {log}");
    assert!(!log.contains("panicked"), "{log}");
    let history = history(&out);
    let rounds = history["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{log}");
    assert_eq!(rounds[0]["fit_failures"], 1, "{how:?}: {log}");
    assert_eq!(rounds[1]["fit_failures"], 0, "{log}");
    assert_ne!(
        end, "still open",
        "{how:?}: the server must end a misbehaving stream"
    );
    assert_clients_succeed([&mut a, &mut b]);
}

#[test]
fn garbage_bytes_fail_only_that_client() {
    run_case(Misbehaviour::Garbage);
}

#[test]
fn wrong_message_kind_fails_only_that_client() {
    run_case(Misbehaviour::WrongKind);
}

#[test]
fn oversized_message_fails_only_that_client() {
    run_case(Misbehaviour::Oversized);
}
