//! The one place where data-plane failures become HTTP answers in Anthropic's error envelope.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use relay_core::envelope::{error_json, ErrorKind};

use crate::forward::FallbackInfo;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Authentication(String),
    #[error("{0}")]
    Permission(String),
    #[error("{0}")]
    NotFound(String),
    #[error("request body is larger than the relay's limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// Every account the request was allowed to try failed, or none was eligible.
    #[error("{message}")]
    AllAccountsFailed {
        kind: ErrorKind,
        message: String,
        retry_after_secs: Option<u64>,
        info: Box<FallbackInfo>,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl RelayError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RelayError::InvalidRequest(_) => ErrorKind::InvalidRequest,
            RelayError::Authentication(_) => ErrorKind::Authentication,
            RelayError::Permission(_) => ErrorKind::Permission,
            RelayError::NotFound(_) => ErrorKind::NotFound,
            RelayError::TooLarge { .. } => ErrorKind::RequestTooLarge,
            RelayError::RateLimited { .. } => ErrorKind::RateLimit,
            RelayError::AllAccountsFailed { kind, .. } => *kind,
            RelayError::Internal(_) => ErrorKind::Api,
        }
    }
}

impl From<relay_store::StoreError> for RelayError {
    fn from(error: relay_store::StoreError) -> Self {
        tracing::error!(%error, "store error on the request path");
        RelayError::Internal("the relay's store is unavailable".to_owned())
    }
}

/// Builds an Anthropic error answer; used by the admin plane and the 404 fallback too.
pub fn envelope_response(kind: ErrorKind, message: &str) -> Response {
    json_response(kind, error_json::<()>(kind, message, None), None)
}

fn json_response(kind: ErrorKind, body: Vec<u8>, retry_after_secs: Option<u64>) -> Response {
    let status = StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

impl IntoResponse for RelayError {
    fn into_response(self) -> Response {
        let kind = self.kind();
        match &self {
            RelayError::AllAccountsFailed {
                message,
                retry_after_secs,
                info,
                ..
            } => json_response(
                kind,
                error_json(kind, message, Some(info.as_ref())),
                *retry_after_secs,
            ),
            RelayError::RateLimited {
                message,
                retry_after_secs,
            } => json_response(
                kind,
                error_json::<()>(kind, message, None),
                *retry_after_secs,
            ),
            other => json_response(kind, error_json::<()>(kind, &other.to_string(), None), None),
        }
    }
}
