//! Closing a response stream when the token that opened it is revoked.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

use crate::layer::invalid_token_status;
use crate::token_set::AuthenticatedPeer;

/// A response stream that ends with `UNAUTHENTICATED` / `Invalid token` as
/// soon as the token that authenticated the call is revoked.
///
/// Built by [`close_on_revocation`]. Until revocation it yields exactly what
/// the inner stream yields; on revocation it yields one
/// `Err(Status::unauthenticated("Invalid token"))` and then ends (tonic sends
/// that status in the trailers, and the client's stream fails with it).
pub struct RevocableStream<S> {
    inner: Pin<Box<S>>,
    revoked: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    done: bool,
}

/// Wraps a server response stream so that it is closed with
/// `UNAUTHENTICATED` when `peer`'s token is revoked. With `peer == None`
/// (authentication off, or a bypassing method) the stream is passed through.
///
/// Typical use in a bidi handler:
///
/// ```ignore
/// let peer = flower_auth::AuthenticatedPeer::from_request(&request);
/// let out = flower_auth::close_on_revocation(out_stream, peer);
/// Ok(tonic::Response::new(Box::pin(out) as Self::JoinStream))
/// ```
pub fn close_on_revocation<S, T>(stream: S, peer: Option<AuthenticatedPeer>) -> RevocableStream<S>
where
    S: Stream<Item = Result<T, tonic::Status>>,
{
    RevocableStream {
        inner: Box::pin(stream),
        revoked: peer
            .map(|p| Box::pin(p.revocation_future()) as Pin<Box<dyn Future<Output = ()> + Send>>),
        done: false,
    }
}

impl<S, T> Stream for RevocableStream<S>
where
    S: Stream<Item = Result<T, tonic::Status>>,
{
    type Item = Result<T, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(revoked) = self.revoked.as_mut() {
            if revoked.as_mut().poll(cx).is_ready() {
                self.done = true;
                self.revoked = None;
                tracing::info!("closing stream: its token was revoked");
                return Poll::Ready(Some(Err(invalid_token_status())));
            }
        }
        let item = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(None) = item {
            self.done = true;
        }
        item
    }
}

impl<S> fmt::Debug for RevocableStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocableStream")
            .field("watching", &self.revoked.is_some())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TokenSet, TokenStore};
    use futures::StreamExt;
    use std::time::Duration;

    #[tokio::test]
    async fn ends_with_unauthenticated_on_revocation() {
        let store = TokenStore::from_tokens(["t1", "t2"]).unwrap();
        let peer = store.authenticate("t1").unwrap();
        let inner =
            futures::stream::iter([Ok::<u32, tonic::Status>(1)]).chain(futures::stream::pending());
        let mut s = close_on_revocation(inner, Some(peer));
        assert_eq!(s.next().await.unwrap().unwrap(), 1);
        store.replace(TokenSet::from_tokens(["t2"]).unwrap());
        let err = tokio::time::timeout(Duration::from_secs(1), s.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert_eq!(err.message(), "Invalid token");
        assert!(s.next().await.is_none());
    }
}
