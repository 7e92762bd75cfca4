//! The node's one error type and its one mapping to HTTP: status + `{"faultstring": ...}`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use st2kv_api::ErrorBody;

/// Errors a request can end in, classified by what the caller should do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// Fix the request.
    #[error("{0}")]
    BadRequest(String),
    /// Fix the request: something in it is larger than this cluster accepts.
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unauthorized(String),
    /// Slow down: too many failed logins for one user.
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Conflict(String),
    /// Retry shortly: no leader is known or reachable, or the quorum is lost.
    #[error("{0}")]
    Unavailable(String),
    /// The write may or may not have been applied: read before retrying.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// Free disk space first: this node's data dir is below its reserve.
    #[error("{0}")]
    InsufficientStorage(String),
    /// Page someone: storage failed under us.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::OutcomeUnknown(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<st2kv_raft::store::StoreError> for ApiError {
    fn from(e: st2kv_raft::store::StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let faultstring = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                "Internal Server Error".to_string()
            }
            other => other.to_string(),
        };
        let mut resp = (status, Json(ErrorBody { faultstring })).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}
