//! Request metadata: the bearer token, static headers and a user interceptor.
//!
//! This is the client side of bearer authentication, kept minimal until the
//! `flower-auth` crate provides its own client interceptor; that one plugs
//! in through [`ClientOptions::interceptor`](crate::ClientOptions::interceptor)
//! and then replaces [`ClientOptions::token`](crate::ClientOptions::token)'s
//! header building here.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// A user interceptor shared by every `Join` of one run.
pub(crate) type SharedInterceptor = Arc<Mutex<dyn Interceptor + Send>>;

/// A secret string whose `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Adds the configured metadata to every `Join`, then runs the user's
/// interceptor, if any.
#[derive(Clone)]
pub(crate) struct RequestMetadata {
    headers: Arc<[(AsciiMetadataKey, AsciiMetadataValue)]>,
    user: Option<SharedInterceptor>,
}

impl fmt::Debug for RequestMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestMetadata")
            .field(
                "header_keys",
                &self
                    .headers
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("interceptor", &self.user.is_some())
            .finish()
    }
}

impl RequestMetadata {
    /// Validates header keys and values. Values are marked sensitive, so
    /// tonic/hyper never log them.
    pub(crate) fn new(
        headers: &[(String, Secret)],
        user: Option<SharedInterceptor>,
    ) -> Result<Self, String> {
        let headers = headers
            .iter()
            .map(|(key, value)| {
                let k = AsciiMetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("invalid metadata key {key:?}"))?;
                let mut v = AsciiMetadataValue::try_from(value.0.as_str()).map_err(|_| {
                    format!("invalid value for metadata key {key:?} (must be visible ASCII)")
                })?;
                v.set_sensitive(true);
                Ok((k, v))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            headers: headers.into(),
            user,
        })
    }
}

impl Interceptor for RequestMetadata {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        for (k, v) in self.headers.iter() {
            request.metadata_mut().insert(k.clone(), v.clone());
        }
        match &self.user {
            Some(user) => user
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .call(request),
            None => Ok(request),
        }
    }
}

/// `"Bearer <token>"`, the value Flower's bearer interceptors compare against.
pub(crate) fn bearer_value(token: &str) -> Secret {
    Secret(format!("Bearer {token}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_headers_and_runs_user_interceptor() {
        let user: SharedInterceptor = Arc::new(Mutex::new(|mut r: Request<()>| {
            r.metadata_mut().insert("x-extra", "1".parse().unwrap());
            Ok(r)
        }));
        let mut m = RequestMetadata::new(
            &[("Authorization".into(), bearer_value("s3cret"))],
            Some(user),
        )
        .unwrap();
        let r = m.call(Request::new(())).unwrap();
        assert_eq!(r.metadata().get("authorization").unwrap(), "Bearer s3cret");
        assert_eq!(r.metadata().get("x-extra").unwrap(), "1");
        assert!(!format!("{m:?}").contains("s3cret"));
    }

    #[test]
    fn rejects_bad_headers() {
        assert!(RequestMetadata::new(&[("bad key".into(), Secret("v".into()))], None).is_err());
        assert!(RequestMetadata::new(&[("k".into(), Secret("line\nbreak".into()))], None).is_err());
    }
}
