//! Reading client messages off a `Join` request body.
//!
//! Written here instead of using tonic's decoder for memory: tonic appends
//! every message to one growing per-stream buffer and hands out slices of
//! it, so each connected client keeps a model-sized allocation alive for as
//! long as its stream lives. Here every message gets its own buffer, freed
//! as soon as the decoded message is dropped, and large messages first take
//! a permit of a shared [`UploadGate`]: clients that wait keep their data in
//! their HTTP/2 flow-control window (1 MiB), not in server memory.
//!
//! What a hostile client cannot do here: make the server allocate from a
//! length prefix alone (the buffer grows as bytes arrive, never beyond the
//! announced length), take an upload permit without an instruction in
//! flight (a large unsolicited message is refused before its bytes are
//! read), or hold a permit while sending nothing (see [`Inbound::stalled_since`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use flower_proto as pb;
use flower_strategy::ClientId;
use futures::future::BoxFuture;
use http_body::Body;
use prost::Message;
use tokio::time::Instant;
use tonic::Status;

use super::StreamError;

/// Messages at least this large need an upload permit, and an instruction
/// in flight.
const LARGE_MESSAGE: usize = 1 << 20;

/// A message in progress counts as progressing each time this many more of
/// its bytes have arrived (or it completes): with the upload idle timeout
/// `t`, a sender must keep up at least 64 KiB per `t`.
const PROGRESS_BYTES: usize = 64 << 10;

/// Shared limit on large client messages being received at once, admitted
/// in the order the driver folds them.
///
/// With a fold order set ([`UploadGate::expect`]), a client's large upload
/// starts only when it is among the next `n` results the driver will fold,
/// so results that arrive early never pile up in memory waiting for their
/// turn: memory stays at about `n` × model size for any number of clients.
/// Other uploads are admitted first come, first served.
#[derive(Debug, Clone, Default)]
pub struct UploadGate {
    inner: Option<Arc<GateInner>>,
}

#[derive(Debug)]
struct GateInner {
    max: usize,
    state: std::sync::Mutex<GateState>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct GateState {
    /// Large uploads being received now.
    active: usize,
    /// Clients whose results are still to be folded, in fold order.
    pending: std::collections::BTreeSet<ClientId>,
    /// Uploads waiting for a permit (reported by [`UploadGate::load`]).
    waiting: usize,
}

/// The upload gate's load at one moment, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GateLoad {
    /// Large uploads being received.
    pub active: usize,
    /// Large uploads waiting for a permit.
    pub waiting: usize,
    /// Results the driver still expects to fold.
    pub pending: usize,
}

/// Counts an upload in [`GateState::waiting`] while its admission waits.
struct Waiting(Arc<GateInner>);

impl Waiting {
    fn new(inner: &Arc<GateInner>) -> Self {
        inner.lock().waiting += 1;
        Waiting(inner.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

/// A client's turn at the [`UploadGate`] ([`UploadGate::turn`]), given
/// back when dropped.
#[derive(Debug)]
pub struct UploadTurn {
    _permit: UploadPermit,
}

/// Held while a large upload is being received.
#[derive(Debug)]
struct UploadPermit {
    inner: Arc<GateInner>,
}

impl Drop for UploadPermit {
    fn drop(&mut self) {
        self.inner.lock().active -= 1;
        self.inner.changed.notify_waiters();
    }
}

impl GateInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits `client` if a permit is free and fewer than `ahead` results
    /// still to fold come before its own.
    fn try_admit(&self, client: Option<ClientId>, ahead: usize) -> bool {
        let mut state = self.lock();
        if state.active >= self.max {
            return false;
        }
        let in_turn = match client {
            Some(c) if state.pending.contains(&c) => state.pending.range(..c).count() < ahead,
            _ => true,
        };
        if in_turn {
            state.active += 1;
        }
        in_turn
    }
}

impl UploadGate {
    /// At most `n` large messages received at once; `None` or 0: no limit.
    pub fn new(n: Option<usize>) -> Self {
        UploadGate {
            inner: n.filter(|n| *n > 0).map(|max| {
                Arc::new(GateInner {
                    max,
                    state: Default::default(),
                    changed: Default::default(),
                })
            }),
        }
    }

    /// The driver will fold results of `clients` in id order: admit their
    /// large uploads in that order.
    pub fn expect(&self, clients: &[ClientId]) {
        if let Some(inner) = &self.inner {
            inner.lock().pending.extend(clients.iter().copied());
            inner.changed.notify_waiters();
        }
    }

    /// The result of `client` was folded, or will never come.
    pub fn done(&self, client: ClientId) {
        if let Some(inner) = &self.inner {
            inner.lock().pending.remove(&client);
            inner.changed.notify_waiters();
        }
    }

    /// What the gate holds now (all zero when it has no limit).
    pub fn load(&self) -> GateLoad {
        self.inner.as_ref().map_or_else(GateLoad::default, |inner| {
            let state = inner.lock();
            GateLoad {
                active: state.active,
                waiting: state.waiting,
                pending: state.pending.len(),
            }
        })
    }

    /// Waits until `client`'s large result may be taken in by a transport
    /// that receives it whole before decoding (the Fleet API inflating a
    /// pushed reply): when it is the next result the driver folds, so at
    /// most one decoded result ever waits for its turn. `None` at once when
    /// the gate has no limit; the turn lasts until the returned value is
    /// dropped.
    pub async fn turn(&self, client: ClientId) -> Option<UploadTurn> {
        let inner = self.inner.clone()?;
        Some(UploadTurn {
            _permit: Self::admit(inner, Some(client), 1).await,
        })
    }

    /// Waits until an upload by `client` may be received, with fewer than
    /// `ahead` results to fold before its own.
    async fn admit(inner: Arc<GateInner>, client: Option<ClientId>, ahead: usize) -> UploadPermit {
        let _waiting = Waiting::new(&inner);
        loop {
            {
                let changed = inner.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if !inner.try_admit(client, ahead) {
                    changed.await;
                    continue;
                }
            }
            return UploadPermit { inner };
        }
    }
}

type BoxBody = Pin<Box<dyn Body<Data = Bytes, Error = Status> + Send>>;

/// The client-message stream of one `Join` call.
pub(crate) struct Inbound {
    body: BoxBody,
    gate: UploadGate,
    max_message_size: usize,
    /// Bytes read but not yet used.
    pending: Bytes,
    /// The 5-byte gRPC prefix of the next message, as far as read.
    prefix: Vec<u8>,
    /// The message being assembled; it grows as its bytes arrive.
    message: Option<Vec<u8>>,
    /// The announced length of `message`.
    expected: usize,
    waiting: Option<BoxFuture<'static, UploadPermit>>,
    permit: Option<UploadPermit>,
    client: Option<ClientId>,
    /// Message length known, permit (if any) not yet granted.
    announced: Option<usize>,
    ended: bool,
    /// An instruction is in flight: a reply may be large.
    expecting: bool,
    /// Time the current reply spent waiting at the upload gate, finished waits.
    gate_waited: Duration,
    /// Since when the current reply waits at the gate, if it does.
    gate_since: Option<Instant>,
    /// When the message in progress last progressed (see [`PROGRESS_BYTES`]).
    last_progress: Instant,
    /// Bytes arrived since `last_progress`.
    progress_bytes: usize,
}

impl Inbound {
    /// Reads messages from `body`.
    pub(crate) fn new<B>(body: B, gate: UploadGate, max_message_size: usize) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        use http_body_util::BodyExt;
        let body = body.map_err(|e| {
            let e: Box<dyn std::error::Error + Send + Sync> = e.into();
            Status::from_error(e)
        });
        Inbound {
            body: Box::pin(body),
            gate,
            max_message_size,
            pending: Bytes::new(),
            prefix: Vec::with_capacity(5),
            message: None,
            expected: 0,
            waiting: None,
            permit: None,
            announced: None,
            ended: false,
            client: None,
            expecting: false,
            gate_waited: Duration::ZERO,
            gate_since: None,
            last_progress: Instant::now(),
            progress_bytes: 0,
        }
    }

    /// Which client this stream belongs to (for ordered admission).
    pub(crate) fn set_client(&mut self, client: ClientId) {
        self.client = Some(client);
    }

    /// An instruction was sent: its reply may be large, and its time at
    /// the upload gate is counted from zero.
    pub(crate) fn begin_reply(&mut self) {
        self.expecting = true;
        self.gate_waited = Duration::ZERO;
        self.gate_since = self.waiting.as_ref().map(|_| Instant::now());
    }

    /// The reply arrived or will never be read: further large messages are
    /// unsolicited.
    pub(crate) fn end_reply(&mut self) {
        self.expecting = false;
    }

    /// Time the current reply has spent waiting for an upload permit (not
    /// the client's fault: the round deadline is extended by it).
    pub(crate) fn gate_time(&self, now: Instant) -> Duration {
        self.gate_waited
            + self
                .gate_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// When the message now arriving last progressed; `None` when no message
    /// is in progress or it waits at the upload gate. A stream whose message
    /// has not progressed for the upload idle timeout is cut: it would hold
    /// its upload permit (and the round) hostage.
    pub(crate) fn stalled_since(&self) -> Option<Instant> {
        let in_progress = self.message.is_some() || !self.prefix.is_empty();
        (in_progress && self.waiting.is_none()).then_some(self.last_progress)
    }

    fn note_progress(&mut self, n: usize) {
        self.progress_bytes += n;
        if self.progress_bytes >= PROGRESS_BYTES {
            self.last_progress = Instant::now();
            self.progress_bytes = 0;
        }
    }

    /// The next message; `Ok(None)` at the end of the stream. Cancel-safe:
    /// all progress is kept in `self`.
    pub(crate) async fn message(&mut self) -> Result<Option<pb::ClientMessage>, StreamError> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<pb::ClientMessage>, StreamError>> {
        loop {
            // A large message announced: wait for a permit before reading on.
            if let Some(len) = self.announced {
                if let Some(waiting) = self.waiting.as_mut() {
                    self.permit = Some(ready!(waiting.as_mut().poll(cx)));
                    self.waiting = None;
                    if let Some(since) = self.gate_since.take() {
                        self.gate_waited += since.elapsed();
                    }
                    // The stall clock restarts once the upload may proceed.
                    self.last_progress = Instant::now();
                    self.progress_bytes = 0;
                }
                self.announced = None;
                self.expected = len;
                // Empty: the prefix alone allocates nothing.
                self.message = Some(Vec::new());
            }
            // Use what was read.
            while self.pending.has_remaining() {
                if let Some(buf) = self.message.as_mut() {
                    let n = (self.expected - buf.len()).min(self.pending.len());
                    grow(buf, n, self.expected);
                    buf.extend_from_slice(&self.pending[..n]);
                    self.pending.advance(n);
                    let complete = buf.len() == self.expected;
                    self.note_progress(n);
                    if complete {
                        let bytes = Bytes::from(self.message.take().unwrap_or_default());
                        self.permit = None;
                        self.last_progress = Instant::now();
                        self.progress_bytes = 0;
                        return Poll::Ready(
                            pb::ClientMessage::decode(bytes)
                                .map(Some)
                                .map_err(StreamError::Undecodable),
                        );
                    }
                    continue;
                }
                let n = (5 - self.prefix.len()).min(self.pending.len());
                if self.prefix.is_empty() {
                    // A new message starts: its stall clock too.
                    self.last_progress = Instant::now();
                    self.progress_bytes = 0;
                }
                self.prefix.extend_from_slice(&self.pending[..n]);
                self.pending.advance(n);
                if self.prefix.len() < 5 {
                    continue;
                }
                if self.prefix[0] != 0 {
                    return Poll::Ready(Err(StreamError::CompressedMessage));
                }
                let len = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as usize;
                self.prefix.clear();
                if len > self.max_message_size {
                    return Poll::Ready(Err(StreamError::MessageTooLarge {
                        len,
                        max: self.max_message_size,
                    }));
                }
                if len == 0 {
                    return Poll::Ready(
                        pb::ClientMessage::decode(Bytes::new())
                            .map(Some)
                            .map_err(StreamError::Undecodable),
                    );
                }
                if len >= LARGE_MESSAGE && !self.expecting {
                    // Nothing asked for it: refused before its bytes are read.
                    return Poll::Ready(Err(StreamError::Unsolicited));
                }
                self.announced = Some(len);
                if let (true, Some(inner)) = (len >= LARGE_MESSAGE, self.gate.inner.clone()) {
                    // Streamed uploads: the next `max` results to fold.
                    let ahead = inner.max;
                    self.waiting = Some(Box::pin(UploadGate::admit(inner, self.client, ahead)));
                    self.gate_since = Some(Instant::now());
                }
                break;
            }
            if self.announced.is_some() {
                continue;
            }
            if self.ended {
                return Poll::Ready(if self.message.is_some() || !self.prefix.is_empty() {
                    Err(StreamError::EndedInsideMessage)
                } else {
                    Ok(None)
                });
            }
            match ready!(self.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        self.pending = data.copy_to_bytes(data.remaining());
                    }
                    // Trailers from a client carry nothing we need.
                }
                Some(Err(status)) => return Poll::Ready(Err(StreamError::Body(status))),
                None => self.ended = true,
            }
        }
    }
}

/// Makes room for `n` more bytes of a message of `expected` bytes: capacity
/// doubles as bytes arrive (amortized linear copying) but never exceeds
/// `expected`.
fn grow(buf: &mut Vec<u8>, n: usize, expected: usize) {
    if buf.capacity() - buf.len() >= n {
        return;
    }
    let target = (buf.capacity() * 2).max(buf.len() + n).min(expected);
    buf.reserve_exact(target - buf.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn framed(message: &pb::ClientMessage) -> Vec<u8> {
        let payload = message.encode_to_vec();
        let mut v = vec![0u8];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(&payload);
        v
    }

    fn body_of(chunks: Vec<Vec<u8>>) -> impl Body<Data = Bytes, Error = Status> + Send + 'static {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, Status>(http_body::Frame::data(Bytes::from(c))));
        StreamBody::new(futures::stream::iter(frames)).boxed()
    }

    fn fit_res(n: usize) -> pb::ClientMessage {
        flower_core::ClientMessage::Fit(flower_core::FitRes {
            status: flower_core::Status::success(),
            parameters: flower_core::Parameters {
                tensors: vec![Bytes::from(vec![7u8; n])],
                tensor_type: "numpy.ndarray".into(),
            },
            num_examples: 3,
            metrics: Default::default(),
        })
        .into()
    }

    #[tokio::test]
    async fn messages_split_anywhere_are_reassembled() {
        let mut wire = framed(&fit_res(10));
        wire.extend(framed(&fit_res(3 << 20)));
        // Split into odd chunk sizes, including inside the prefixes.
        let chunks: Vec<Vec<u8>> = wire.chunks(7777).map(<[u8]>::to_vec).collect();
        let mut inbound = Inbound::new(body_of(chunks), UploadGate::new(Some(1)), usize::MAX);
        inbound.begin_reply();
        assert_eq!(inbound.message().await.unwrap(), Some(fit_res(10)));
        assert_eq!(inbound.message().await.unwrap(), Some(fit_res(3 << 20)));
        assert_eq!(inbound.message().await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_truncated_and_compressed_messages_are_errors() {
        let wire = framed(&fit_res(100));
        let mut inbound = Inbound::new(body_of(vec![wire.clone()]), UploadGate::new(None), 50);
        assert_eq!(
            Status::from(inbound.message().await.unwrap_err()).code(),
            tonic::Code::OutOfRange
        );
        let mut inbound = Inbound::new(
            body_of(vec![wire[..20].to_vec()]),
            UploadGate::new(None),
            usize::MAX,
        );
        assert_eq!(
            Status::from(inbound.message().await.unwrap_err()).code(),
            tonic::Code::Internal
        );
        let mut compressed = wire.clone();
        compressed[0] = 1;
        let mut inbound =
            Inbound::new(body_of(vec![compressed]), UploadGate::new(None), usize::MAX);
        assert_eq!(
            Status::from(inbound.message().await.unwrap_err()).code(),
            tonic::Code::Unimplemented
        );
        let mut garbage = vec![0u8, 0, 0, 0, 3];
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        let mut inbound = Inbound::new(body_of(vec![garbage]), UploadGate::new(None), usize::MAX);
        assert_eq!(
            Status::from(inbound.message().await.unwrap_err()).code(),
            tonic::Code::Internal
        );
    }

    #[tokio::test]
    async fn ordered_uploads_wait_for_their_turn() {
        let gate = UploadGate::new(Some(1));
        gate.expect(&[ClientId::new(1), ClientId::new(2)]);
        let big = framed(&fit_res(2 << 20));
        let mut second = Inbound::new(body_of(vec![big.clone()]), gate.clone(), usize::MAX);
        second.set_client(ClientId::new(2));
        second.begin_reply();
        // Client 2 is not next in fold order: it waits, its reply has started.
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(200), second.message()).await;
        assert!(early.is_err());
        assert!(second.gate_time(Instant::now()) >= std::time::Duration::from_millis(200));
        // Waiting at the gate is not stalling.
        assert!(second.stalled_since().is_none());
        let mut first = Inbound::new(body_of(vec![big]), gate.clone(), usize::MAX);
        first.set_client(ClientId::new(1));
        first.begin_reply();
        assert!(first.message().await.unwrap().is_some());
        gate.done(ClientId::new(1));
        let late = tokio::time::timeout(std::time::Duration::from_secs(5), second.message()).await;
        assert!(late
            .expect("admitted after client 1 is done")
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn a_second_large_upload_waits_for_the_permit() {
        let gate = UploadGate::new(Some(1));
        let big = framed(&fit_res(2 << 20));
        let mut first = Inbound::new(body_of(vec![big.clone()]), gate.clone(), usize::MAX);
        let mut second = Inbound::new(body_of(vec![big]), gate.clone(), usize::MAX);
        first.begin_reply();
        second.begin_reply();
        // The first takes the permit and completes (returning it).
        let a = first.message().await.unwrap();
        assert!(a.is_some());
        let b = tokio::time::timeout(std::time::Duration::from_secs(5), second.message())
            .await
            .expect("permit released after the first message");
        assert!(b.unwrap().is_some());
    }

    /// A body that yields `chunks` and then stays open without data.
    fn stalling_body(
        chunks: Vec<Vec<u8>>,
    ) -> impl Body<Data = Bytes, Error = Status> + Send + 'static {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, Status>(http_body::Frame::data(Bytes::from(c))));
        StreamBody::new(futures::StreamExt::chain(
            futures::stream::iter(frames),
            futures::stream::pending(),
        ))
        .boxed()
    }

    #[tokio::test]
    async fn a_huge_prefix_allocates_nothing_and_stalls() {
        // 1 GiB announced, 10 bytes sent.
        let mut wire = vec![0u8];
        wire.extend_from_slice(&(1u32 << 30).to_be_bytes());
        wire.extend_from_slice(&[0u8; 10]);
        let mut inbound = Inbound::new(
            stalling_body(vec![wire]),
            UploadGate::new(Some(1)),
            usize::MAX,
        );
        inbound.begin_reply();
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(100), inbound.message()).await;
        assert!(read.is_err(), "the message cannot complete");
        let buffered = inbound.message.as_ref().map_or(0, Vec::capacity);
        assert!(buffered <= 10, "{buffered} bytes reserved for 10 received");
        assert!(inbound.stalled_since().is_some());
    }

    #[tokio::test]
    async fn a_large_unsolicited_message_is_refused_before_it_is_read() {
        let mut prefix = vec![0u8];
        prefix.extend_from_slice(&(LARGE_MESSAGE as u32).to_be_bytes());
        let mut inbound = Inbound::new(
            stalling_body(vec![prefix]),
            UploadGate::new(Some(1)),
            usize::MAX,
        );
        let refused = tokio::time::timeout(std::time::Duration::from_secs(5), inbound.message())
            .await
            .expect("refused at once");
        assert!(matches!(refused, Err(StreamError::Unsolicited)));
        // Small ones are read (and judged by the stream task).
        let mut inbound = Inbound::new(
            body_of(vec![framed(&fit_res(10))]),
            UploadGate::new(Some(1)),
            usize::MAX,
        );
        assert!(inbound.message().await.unwrap().is_some());
    }

    #[test]
    fn buffers_grow_geometrically_up_to_the_announced_length() {
        let mut buf = Vec::new();
        let expected = 1_000_000;
        let mut reallocations = 0;
        while buf.len() < expected {
            let n = (expected - buf.len()).min(16_384);
            let before = buf.capacity();
            grow(&mut buf, n, expected);
            reallocations += usize::from(buf.capacity() != before);
            buf.extend_from_slice(&vec![0u8; n]);
            assert!(buf.capacity() <= expected);
        }
        assert!(reallocations < 10, "{reallocations}");
    }

    #[tokio::test]
    async fn turns_follow_the_fold_order() {
        let (first, second) = (ClientId::new(1), ClientId::new(2));
        let gate = UploadGate::new(Some(1));
        gate.expect(&[first, second]);
        // The second client's turn waits for the first to be folded.
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.turn(second).await.is_some() }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        let turn = gate.turn(first).await;
        assert!(turn.is_some());
        drop(turn);
        gate.done(first);
        let admitted = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("admitted after the first was folded")
            .expect("task");
        assert!(admitted);
        // No limit: no turn to wait for.
        assert!(UploadGate::new(None).turn(first).await.is_none());
    }
}
