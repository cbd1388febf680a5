//! Request metadata: static headers, the bearer credentials and a user
//! interceptor.
//!
//! The bearer token itself is `flower-auth`'s [`BearerCredentials`] (the same
//! call credentials every flower-rs client uses): it refuses plaintext unless
//! allowed, validates the token, re-reads a token file when it changes and
//! never shows the token in `Debug` output.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use flower_auth::BearerCredentials;
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

/// Adds the configured headers and then the bearer credentials to every
/// `Join`, then runs the user's interceptor, if any.
#[derive(Clone)]
pub(crate) struct RequestMetadata {
    headers: Arc<[(AsciiMetadataKey, AsciiMetadataValue)]>,
    credentials: Option<BearerCredentials>,
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
            .field("credentials", &self.credentials)
            .field("interceptor", &self.user.is_some())
            .finish()
    }
}

impl RequestMetadata {
    /// Validates header keys and values. Values are marked sensitive, so
    /// tonic/hyper never log them.
    pub(crate) fn new(
        headers: &[(String, Secret)],
        credentials: Option<BearerCredentials>,
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
            credentials,
            user,
        })
    }
}

impl Interceptor for RequestMetadata {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        for (k, v) in self.headers.iter() {
            request.metadata_mut().insert(k.clone(), v.clone());
        }
        if let Some(credentials) = &mut self.credentials {
            request = credentials.call(request)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_headers_and_runs_user_interceptor() {
        let user: SharedInterceptor = Arc::new(Mutex::new(|mut r: Request<()>| {
            r.metadata_mut().insert("x-extra", "1".parse().unwrap());
            Ok(r)
        }));
        let credentials = BearerCredentials::builder()
            .token("s3cret")
            .tls(true)
            .build()
            .unwrap();
        let mut m = RequestMetadata::new(
            &[
                ("X-Api-Key".into(), Secret("k3y".into())),
                // The credentials win over a static header of the same key.
                ("Authorization".into(), Secret("Bearer static".into())),
            ],
            Some(credentials),
            Some(user),
        )
        .unwrap();
        let r = m.call(Request::new(())).unwrap();
        assert_eq!(r.metadata().get("authorization").unwrap(), "Bearer s3cret");
        assert_eq!(r.metadata().get("x-api-key").unwrap(), "k3y");
        assert_eq!(r.metadata().get("x-extra").unwrap(), "1");
        let shown = format!("{m:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("k3y"),
            "{shown}"
        );
    }

    #[test]
    fn rejects_bad_headers() {
        assert!(
            RequestMetadata::new(&[("bad key".into(), Secret("v".into()))], None, None).is_err()
        );
        assert!(
            RequestMetadata::new(&[("k".into(), Secret("line\nbreak".into()))], None, None)
                .is_err()
        );
    }
}
