//! Responses the host makes itself (errors, metrics), and the body type all responses share.
//!
//! Errors use OpenAI's body, `{"error": {"message", "type", "param", "code"}}`, as the guest's
//! own errors do, so a client sees one error shape whoever answered.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

/// Any error a response body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the server sends.
pub type ServeBody = UnsyncBoxBody<Bytes, BoxError>;

/// How a guest task ended, when it did not end well: the kind and the full error text.
pub type Failure = (HostError, String);

/// Why the host answered instead of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// `--max-concurrency` instances are alive (503, `Retry-After`).
    Overloaded,
    /// The guest trapped before it sent a response (500).
    Trap,
    /// The guest grew past `--memory-limit` and trapped (500).
    MemoryLimit,
    /// The guest ran past `--timeout` (504).
    Deadline,
    /// The guest returned without sending a response, or sent an error code (500).
    NoResponse,
    /// The instance could not be created (500).
    Instantiate,
    /// The request could not be handed to the guest (no `Host`, bad header) (400).
    BadRequest,
}

impl HostError {
    /// The HTTP status it is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Deadline => StatusCode::GATEWAY_TIMEOUT,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Trap | Self::MemoryLimit | Self::NoResponse | Self::Instantiate => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The `code` field of the error body.
    pub fn code(self) -> &'static str {
        match self {
            Self::Overloaded => "server_overloaded",
            Self::Trap => "guest_trap",
            Self::MemoryLimit => "memory_limit_exceeded",
            Self::Deadline => "timeout",
            Self::NoResponse => "guest_no_response",
            Self::Instantiate => "instantiation_failed",
            Self::BadRequest => "bad_request",
        }
    }
}

/// A full-body response.
pub fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<ServeBody> {
    let mut r = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// An OpenAI-style error response for `e` with a human-readable `message`.
pub fn error(e: HostError, message: &str) -> Response<ServeBody> {
    let kind = if e == HostError::BadRequest { "invalid_request_error" } else { "server_error" };
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": e.code() }
    });
    let mut r = full(e.status(), "application/json", body.to_string());
    if e == HostError::Overloaded {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}
