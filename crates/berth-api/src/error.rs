//! The one place where engine errors become Docker API errors.
//!
//! Docker answers errors with a status code and a JSON body `{"message": "..."}`; the
//! CLI prints the message after "Error response from daemon:". The codes follow moby's
//! `errdefs`: not found 404, conflict 409, invalid parameter 400, not implemented 501,
//! everything else 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_engine::{error_chain, EngineError, ErrorKind};
use serde_json::json;

/// An error as the Docker API reports it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        let status = match error.kind() {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::NotSupported => StatusCode::NOT_IMPLEMENTED,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %error_chain(&error), "request failed");
        }
        Self::new(status, error_chain(&error))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "message": self.message }))).into_response()
    }
}

/// Results of handlers.
pub type ApiResult<T> = Result<T, ApiError>;
