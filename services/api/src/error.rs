//! The one JSON error shape every endpoint answers with:
//! `{"error": {"code": "...", "message": "...", ...details}}`.
//!
//! Internal details (SQL errors, NATS errors) go to the log, never to the client.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_core::lifecycle::InvalidTransition;
use herald_core::transitions::TransitionError;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_transition`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// For `invalid_transition`: the current state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// For `invalid_transition`: the requested state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// For `version_mismatch`: the current version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: ErrorDetail,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            detail: ErrorDetail {
                code: code.into(),
                message: message.into(),
                from: None,
                to: None,
                current_version: None,
            },
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
    }
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "campaign not found")
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token",
        )
    }
    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than the {limit} byte limit"),
        )
    }
    pub fn unavailable(what: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{what} is unavailable; try again shortly"),
        )
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }

    pub fn body(&self) -> Value {
        json!({ "error": &self.detail })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if herald_core::db::is_unavailable(&error) {
            tracing::warn!(%error, "postgres unavailable");
            ApiError::unavailable("the database")
        } else {
            tracing::error!(%error, "database error");
            ApiError::internal()
        }
    }
}

impl From<InvalidTransition> for ApiError {
    fn from(e: InvalidTransition) -> Self {
        let mut error = ApiError::conflict("invalid_transition", e.to_string());
        error.detail.from = Some(e.from.as_str().into());
        error.detail.to = Some(e.requested().into());
        error
    }
}

impl From<TransitionError> for ApiError {
    fn from(error: TransitionError) -> Self {
        match error {
            TransitionError::NotFound => ApiError::not_found(),
            TransitionError::Invalid(invalid) => invalid.into(),
            TransitionError::VersionMismatch { current, expected } => {
                let mut e = ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "version_mismatch",
                    format!("If-Match was {expected} but the campaign is at version {current}"),
                );
                e.detail.current_version = Some(current);
                e
            }
            TransitionError::Precondition(message) => {
                ApiError::conflict("precondition_failed", message)
            }
            TransitionError::Database(db) => db.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match &rejection {
            JsonRejection::JsonDataError(e) => ApiError::validation(e.body_text()),
            JsonRejection::JsonSyntaxError(_) => {
                ApiError::bad_request("request body is not valid JSON")
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body is too large",
                )
            }
            _ => ApiError::bad_request(rejection.body_text()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body is too large",
            )
        } else {
            ApiError::bad_request(rejection.body_text())
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        // A malformed id cannot name any campaign.
        tracing::debug!(%rejection, "bad path");
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::validation(rejection.body_text())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
