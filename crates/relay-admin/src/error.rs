//! Admin failures as Anthropic error envelopes.

use axum::response::{IntoResponse, Response};
use relay_core::envelope::ErrorKind;
use relay_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A payload or query field is missing or invalid; the message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for AdminError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => AdminError::NotFound("not found".to_owned()),
            StoreError::Conflict(message) => AdminError::Conflict(message),
            other => {
                tracing::error!(error = %other, "store error in the admin API");
                AdminError::Internal("the relay's store failed; see the relay's log".to_owned())
            }
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (kind, status_override) = match &self {
            AdminError::Invalid(_) => (ErrorKind::InvalidRequest, None),
            AdminError::Unauthorized(_) => (ErrorKind::Authentication, None),
            AdminError::NotFound(_) => (ErrorKind::NotFound, None),
            AdminError::Conflict(_) => {
                (ErrorKind::InvalidRequest, Some(http::StatusCode::CONFLICT))
            }
            AdminError::Internal(_) => (ErrorKind::Api, None),
        };
        let mut response = relay_proxy::error::envelope_response(kind, &self.to_string());
        if let Some(status) = status_override {
            *response.status_mut() = status;
        }
        response
    }
}
