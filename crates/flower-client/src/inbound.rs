//! Reading the server's messages without trusting their length prefixes.
//!
//! tonic's decoder reserves a message's announced length as soon as its
//! 5-byte gRPC prefix arrives, so a hostile server could make the client
//! reserve 2 GiB with 5 bytes. [`Framed`] sits between the HTTP/2 channel
//! and tonic: it collects each message in a buffer that grows as its bytes
//! arrive (never beyond the announced length, nor the max message size) and
//! hands tonic the prefix and the payload together, in one frame, once the
//! message is complete. A message that stops arriving part-way (less than
//! 64 KiB in [`Framed::idle_timeout`]) fails the stream instead of holding
//! the client.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame};
use tonic::Status;

/// A message in progress counts as progressing each time this many more of
/// its bytes have arrived.
const PROGRESS_BYTES: usize = 64 << 10;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A tower layer-like wrapper of the channel whose response bodies are
/// [`FramedBody`]s.
#[derive(Debug, Clone)]
pub(crate) struct Framed<S> {
    inner: S,
    max_message_size: usize,
    idle_timeout: Duration,
}

impl<S> Framed<S> {
    /// Wraps `inner`; messages larger than `max_message_size` are refused
    /// from their prefix.
    pub(crate) fn new(inner: S, max_message_size: usize, idle_timeout: Duration) -> Self {
        Framed {
            inner,
            max_message_size,
            idle_timeout,
        }
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Framed<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<FramedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let (max, idle) = (self.max_message_size, self.idle_timeout);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| FramedBody::new(body, max, idle)))
        })
    }
}

/// A gRPC response body re-chunked into whole messages (see the module).
pub(crate) struct FramedBody<B> {
    inner: Pin<Box<B>>,
    max_message_size: usize,
    idle_timeout: Duration,
    /// Bytes read but not yet used.
    pending: Bytes,
    /// The prefix of the next message, as far as read.
    prefix: Vec<u8>,
    /// The message being assembled: its prefix, then its payload as it arrives.
    message: Option<Vec<u8>>,
    /// Prefix plus announced length of `message`.
    expected: usize,
    /// Bytes arrived since the stall clock was last reset.
    progress: usize,
    /// Fires when a message in progress has stalled.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    ended: bool,
}

impl<B> FramedBody<B> {
    fn new(inner: B, max_message_size: usize, idle_timeout: Duration) -> Self {
        FramedBody {
            inner: Box::pin(inner),
            max_message_size,
            idle_timeout,
            pending: Bytes::new(),
            prefix: Vec::with_capacity(5),
            message: None,
            expected: 0,
            progress: 0,
            stall: None,
            ended: false,
        }
    }

    fn in_progress(&self) -> bool {
        self.message.is_some() || !self.prefix.is_empty()
    }

    fn reset_stall_clock(&mut self) {
        self.progress = 0;
        let deadline = tokio::time::Instant::now() + self.idle_timeout;
        match self.stall.as_mut() {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Uses pending bytes; a complete message when one is ready.
    fn assemble(&mut self) -> Result<Option<Bytes>, Status> {
        while self.pending.has_remaining() {
            if let Some(buf) = self.message.as_mut() {
                let n = (self.expected - buf.len()).min(self.pending.len());
                grow(buf, n, self.expected);
                buf.extend_from_slice(&self.pending[..n]);
                self.pending.advance(n);
                let complete = buf.len() == self.expected;
                self.progress += n;
                if complete {
                    let message = self.message.take().unwrap_or_default();
                    self.stall = None;
                    return Ok(Some(Bytes::from(message)));
                }
                if self.progress >= PROGRESS_BYTES {
                    self.reset_stall_clock();
                }
                continue;
            }
            if self.prefix.is_empty() {
                self.reset_stall_clock();
            }
            let n = (5 - self.prefix.len()).min(self.pending.len());
            self.prefix.extend_from_slice(&self.pending[..n]);
            self.pending.advance(n);
            if self.prefix.len() < 5 {
                continue;
            }
            let len = u32::from_be_bytes([
                self.prefix[1],
                self.prefix[2],
                self.prefix[3],
                self.prefix[4],
            ]) as usize;
            if len > self.max_message_size {
                // tonic's wording, from the prefix instead of after a reservation.
                return Err(Status::out_of_range(format!(
                    "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                    self.max_message_size
                )));
            }
            // The prefix alone allocates only itself.
            let buf = std::mem::replace(&mut self.prefix, Vec::with_capacity(5));
            self.expected = 5 + len;
            if len == 0 {
                self.stall = None;
                return Ok(Some(Bytes::from(buf)));
            }
            self.message = Some(buf);
        }
        Ok(None)
    }
}

/// An empty body (what the interceptor answers with when it refuses a call).
impl<B: Default> Default for FramedBody<B> {
    fn default() -> Self {
        FramedBody::new(B::default(), usize::MAX, Duration::from_secs(60))
    }
}

/// Makes room for `n` more bytes of a message of `expected` bytes: capacity
/// doubles as bytes arrive but never exceeds `expected`.
fn grow(buf: &mut Vec<u8>, n: usize, expected: usize) {
    if buf.capacity() - buf.len() >= n {
        return;
    }
    let target = (buf.capacity() * 2).max(buf.len() + n).min(expected);
    buf.reserve_exact(target - buf.len());
}

impl<B> Body for FramedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.assemble() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(Frame::data(message)))),
                Ok(None) => {}
                Err(status) => return Poll::Ready(Some(Err(Box::new(status)))),
            }
            if this.ended {
                return Poll::Ready(if this.in_progress() {
                    Some(Err(Box::new(Status::internal(
                        "server stream ended inside a message",
                    ))))
                } else {
                    None
                });
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => this.pending = data.copy_to_bytes(data.remaining()),
                    Err(frame) => {
                        if this.in_progress() {
                            return Poll::Ready(Some(Err(Box::new(Status::internal(
                                "server trailers inside a message",
                            )))));
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => {
                    if let Some(stall) = this.stall.as_mut() {
                        if stall.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Some(Err(Box::new(Status::deadline_exceeded(
                                format!(
                                    "server message stalled: less than 64 KiB in {:?}",
                                    this.idle_timeout
                                ),
                            )))));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && !self.in_progress() && self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn body(
        chunks: Vec<Vec<u8>>,
        then_stall: bool,
    ) -> FramedBody<impl Body<Data = Bytes, Error = Status>> {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, Status>(Frame::data(Bytes::from(c))));
        let tail: Pin<Box<dyn futures::Stream<Item = _> + Send>> = if then_stall {
            Box::pin(futures::stream::pending())
        } else {
            Box::pin(futures::stream::empty())
        };
        let stream = futures::StreamExt::chain(futures::stream::iter(frames), tail);
        FramedBody::new(StreamBody::new(stream), 1 << 31, Duration::from_millis(200))
    }

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[tokio::test]
    async fn messages_split_anywhere_come_out_whole() {
        let mut wire = framed(b"hello");
        wire.extend(framed(&[7u8; 100_000]));
        wire.extend(framed(b""));
        let chunks = wire.chunks(3).map(<[u8]>::to_vec).collect();
        let mut b = body(chunks, false);
        let mut out = Vec::new();
        while let Some(frame) = b.frame().await {
            out.push(frame.unwrap().into_data().unwrap());
        }
        assert_eq!(out.len(), 3);
        assert_eq!(&out[0][..], &framed(b"hello")[..]);
        assert_eq!(out[1].len(), 100_005);
        assert_eq!(&out[2][..], &[0, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn a_huge_prefix_allocates_nothing_and_stalls_out() {
        let mut wire = vec![0u8];
        wire.extend_from_slice(&(2_000_000_000u32).to_be_bytes());
        wire.extend_from_slice(&[1u8; 10]);
        let mut b = body(vec![wire], true);
        let result = tokio::time::timeout(Duration::from_secs(5), b.frame())
            .await
            .expect("the stall timeout fires");
        let err = result.unwrap().unwrap_err();
        assert!(err.to_string().contains("stalled"), "{err}");
        assert!(b.message.as_ref().map_or(0, Vec::capacity) <= 15);
    }

    #[tokio::test]
    async fn oversized_and_truncated_messages_are_errors() {
        let mut b = FramedBody::new(
            StreamBody::new(futures::stream::iter([Ok::<_, Status>(Frame::data(
                Bytes::from(framed(&[0u8; 100])),
            ))])),
            50,
            Duration::from_secs(1),
        );
        assert!(b.frame().await.unwrap().is_err());
        let mut b = body(vec![framed(&[0u8; 100])[..20].to_vec()], false);
        assert!(b.frame().await.unwrap().is_err());
    }
}
