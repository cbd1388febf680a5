//! An HTTP body wrapper that counts the bytes of its data frames.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;

/// Passes a body through, adding the length of every data frame to a
/// counter (e.g. [`Metrics::bytes_received`](super::Metrics::bytes_received)).
#[derive(Debug)]
pub struct CountingBody<B> {
    inner: Pin<Box<B>>,
    counter: Counter,
}

impl<B> CountingBody<B> {
    /// Counts the data of `inner` into `counter`.
    pub fn new(inner: B, counter: Counter) -> Self {
        CountingBody {
            inner: Box::pin(inner),
            counter,
        }
    }
}

impl<B: Body> Body for CountingBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.counter.inc_by(data.remaining() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn counts_data_bytes() {
        let counter = Counter::default();
        let body = CountingBody::new(Full::new(Bytes::from_static(b"hello")), counter.clone());
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello");
        assert_eq!(counter.get(), 5);
    }
}
