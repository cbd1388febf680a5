//! Responses: protobuf bodies, and Flower's JSON errors with the only
//! statuses a SuperNode survives.
//!
//! A stock SuperNode (flwr 1.42, `supercore/retry/http_retry.py`) shuts
//! down on 401, drops the current message on 403 ("run not running"),
//! retries 502/503/504, and dies on any other 4xx/5xx. So on the twelve
//! Fleet paths this service answers only 200, 401, 403 and 503. Flower's
//! own statuses for malformed requests (400 bad protobuf, 413, 415 wrong
//! content type) and for refusals (412) become 403 here, with Flower's
//! error code and wording in the body; identity refusals (no such key,
//! self-registration disabled) become 401, which ends the SuperNode as
//! Flower's 412 would, with the same message in the log.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use hyper::body::{Frame, SizeHint};

/// The response body: buffers sent one after the other, so a pulled chunk
/// object goes out as its protobuf prefix and a slice of the model's bytes,
/// never copied into one message.
#[derive(Debug, Default)]
pub(crate) struct Body {
    parts: VecDeque<Bytes>,
    len: u64,
}

impl Body {
    /// A body of `parts`, in order.
    pub(crate) fn new(parts: impl IntoIterator<Item = Bytes>) -> Self {
        let parts: VecDeque<Bytes> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        let len = parts.iter().map(|p| p.len() as u64).sum();
        Body { parts, len }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let part = self.parts.pop_front();
        if let Some(p) = &part {
            self.len -= p.len() as u64;
        }
        Poll::Ready(part.map(|p| Ok(Frame::data(p))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        // Exact, so hyper sends a Content-Length as it does for one buffer.
        SizeHint::with_exact(self.len)
    }
}

const PROTOBUF: &str = "application/protobuf";

/// flwr's `ApiErrorCode`s used on the Fleet paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum ApiErrorCode {
    PublicKeyAlreadyInUse = 23,
    UnsupportedContentType = 1002,
    InvalidProtobufPayload = 1003,
    RegistrationDisabled = 2001,
    UnregistrationDisabled = 2002,
    InvalidHeartbeatInterval = 2003,
    NodeActivationFailed = 2004,
    NodeDeactivationFailed = 2005,
    NodeUnregistrationFailed = 2006,
    RunStatusNotAllowed = 2007,
    GetRunFailed = 2008,
    GetFabFailed = 2009,
}

impl ApiErrorCode {
    /// flwr's public message (`supercore/error/catalog.py`).
    pub(crate) fn message(self) -> &'static str {
        match self {
            ApiErrorCode::PublicKeyAlreadyInUse => "Public key already in use.",
            ApiErrorCode::UnsupportedContentType => "Unsupported Content-Type.",
            ApiErrorCode::InvalidProtobufPayload => "Invalid protobuf payload.",
            ApiErrorCode::RegistrationDisabled => {
                "SuperNode authentication is enabled. All SuperNodes must be registered via the CLI."
            }
            ApiErrorCode::UnregistrationDisabled => {
                "SuperNode authentication is enabled. All SuperNodes must be unregistered via the CLI."
            }
            ApiErrorCode::InvalidHeartbeatInterval => "Invalid heartbeat interval.",
            ApiErrorCode::NodeActivationFailed => "Failed to activate SuperNode.",
            ApiErrorCode::NodeDeactivationFailed => "Failed to deactivate SuperNode.",
            ApiErrorCode::NodeUnregistrationFailed => "Failed to unregister SuperNode.",
            ApiErrorCode::RunStatusNotAllowed => {
                "The current run status does not allow this Fleet API operation."
            }
            ApiErrorCode::GetRunFailed => "Failed to get run.",
            ApiErrorCode::GetFabFailed => "Failed to get FAB.",
        }
    }
}

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiError {
    /// 401 `{"detail": "Invalid SuperNode authentication"}`, flwr's answer
    /// to every failed signature or node-id binding.
    Unauthenticated,
    /// 401 with a Flower error code: the node's identity is refused.
    Refused(ApiErrorCode),
    /// 403 with a Flower error code: this request cannot be served.
    Forbidden(ApiErrorCode),
    /// 503: try again (the server is shutting down or overloaded).
    Unavailable,
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::new([Bytes::from(body.to_string())]));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl ApiError {
    /// The HTTP response.
    pub(crate) fn response(&self) -> Response<Body> {
        match self {
            ApiError::Unauthenticated => json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({ "detail": flower_auth::node::INVALID_NODE_AUTH_MESSAGE }),
            ),
            ApiError::Refused(code) => json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({ "code": *code as u32, "detail": code.message() }),
            ),
            ApiError::Forbidden(code) => json(
                StatusCode::FORBIDDEN,
                serde_json::json!({ "code": *code as u32, "detail": code.message() }),
            ),
            ApiError::Unavailable => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "detail": "Service unavailable." }),
            ),
        }
    }
}

/// 200 with a protobuf body, given in parts.
pub(crate) fn protobuf(body: Vec<Bytes>) -> Response<Body> {
    let mut response = Response::new(Body::new(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    response
}

/// FastAPI's answer outside the Fleet paths.
pub(crate) fn not_found() -> Response<Body> {
    json(
        StatusCode::NOT_FOUND,
        serde_json::json!({ "detail": "Not Found" }),
    )
}

/// Whether a request's content type is protobuf (parameters allowed).
pub(crate) fn is_protobuf(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(PROTOBUF))
}
