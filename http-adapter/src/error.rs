//! The adapter's one error type and its JSON body.
//!
//! Every failure a handler or extractor can meet becomes an [`ApiError`],
//! rendered as `{"error":{"code","message","details"}}` with the status
//! SPEC §6 gives it. 4xx messages say what was wrong and where (the field,
//! the cron token); 5xx bodies are generic and the detail goes to `tracing`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tickwheel::{Error, ScheduleError};
use utoipa::ToSchema;

/// An error answer of the API.
#[derive(Debug)]
#[non_exhaustive]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`invalid_schedule`, `not_found`, …).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// Structured detail (`field`, `token`, …); an empty object if none.
    pub details: Map<String, Value>,
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The `error` object of an [`ErrorBody`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `invalid_json`, `invalid_field`,
    /// `invalid_schedule`, `unauthorized`, `forbidden`, `not_found`,
    /// `method_not_allowed`, `conflict`, `payload_too_large`,
    /// `unsupported_media_type`, `unavailable`, `internal`.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// Structured detail, such as the `field` and the cron `token`.
    #[schema(value_type = Object)]
    pub details: Map<String, Value>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// Adds one detail.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// 400 `invalid_field` naming `field`.
    pub fn invalid_field(field: &str, message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            format!("{field}: {message}"),
        )
        .with("field", field)
    }

    /// 401: no usable key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: the key may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 for a task id (unknown, malformed, or another tenant's: the
    /// answer is the same, so existence never leaks).
    pub fn task_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("task {id:?} not found"),
        )
    }

    /// 500 with a generic message; `detail` goes to the log only.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error answered with 500");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the details are in the server log",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::NotFound { entity, id } => Self::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{entity} {id:?} not found"),
            ),
            Error::Conflict { message } => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("conflict: {message}"),
            ),
            Error::Invalid { field, message } => Self::invalid_field(&field, message),
            Error::InvalidSchedule(e) => schedule_error(&e),
            Error::Unavailable { backend, source } => {
                tracing::warn!(backend, error = %source, "store unavailable; answered 503");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the task store is unavailable; retry later",
                )
            }
            Error::ShuttingDown => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the scheduler is shutting down; retry on another instance",
            ),
            other => Self::internal(&other),
        }
    }
}

/// 400 `invalid_schedule` for a cron expression or time zone, with the
/// cron field and the token in the details.
pub(crate) fn schedule_error(e: &ScheduleError) -> ApiError {
    let field = match e {
        ScheduleError::UnknownTimeZone { .. } => "timezone",
        _ => "schedule",
    };
    let message = match e {
        // Its message already starts with "timezone: ".
        ScheduleError::UnknownTimeZone { .. } => e.to_string(),
        _ => format!("schedule: {e}"),
    };
    let mut error =
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_schedule", message).with("field", field);
    match e {
        ScheduleError::InvalidField {
            field: cron_field,
            token,
            reason,
        } => {
            error = error
                .with("cron_field", cron_field.to_string())
                .with("token", token.as_str())
                .with("reason", reason.to_string());
        }
        ScheduleError::UnknownMacro { token } => error = error.with("token", token.as_str()),
        ScheduleError::UnknownTimeZone { name } => error = error.with("token", name.as_str()),
        _ => {}
    }
    error
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
            }
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("UserKey"),
            );
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
