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
        with_disk_full_hint(Self::new(status, error_chain(&error)), &error)
    }
}

/// What a full disk's error message gains: what to do about it.
pub const DISK_FULL_HINT: &str =
    "the disk is full: free space where the daemon keeps its data (its --root) and try again";

/// `error` with [`DISK_FULL_HINT`] added when `cause` is, or was caused by, a full disk
/// (ENOSPC, or EDQUOT: a quota), or quotes a helper program (`qemu-img`) that says so.
pub fn with_disk_full_hint(
    mut error: ApiError,
    cause: &(dyn std::error::Error + 'static),
) -> ApiError {
    if error.message.contains("No space left on device") {
        error.message.push_str(&format!(" ({DISK_FULL_HINT})"));
        return error;
    }
    let mut next = Some(cause);
    while let Some(current) = next {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) {
                error.message.push_str(&format!(" ({DISK_FULL_HINT})"));
                return error;
            }
        }
        next = current.source();
    }
    error
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "message": self.message }))).into_response()
    }
}

/// Results of handlers.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_says_what_to_do_and_other_errors_do_not() {
        let full = std::io::Error::from_raw_os_error(28);
        let wrapped = EngineError::Io {
            path: "/var/lib/berth/containers/x".into(),
            source: full,
        };
        let error = ApiError::from(wrapped);
        assert!(
            error.message.contains("/var/lib/berth/containers/x"),
            "{}",
            error.message
        );
        assert!(
            error.message.ends_with(&format!("({DISK_FULL_HINT})")),
            "{}",
            error.message
        );
        let denied = std::io::Error::from_raw_os_error(13);
        let error = ApiError::from(EngineError::Io {
            path: "/x".into(),
            source: denied,
        });
        assert!(!error.message.contains(DISK_FULL_HINT), "{}", error.message);
    }
}
