//! The one place errors become HTTP responses.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::extract::Json;
use crate::store::{EnrollError, StoreError};

/// Every way an API call can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("authentication required")]
    Unauthorized,
    #[error("not allowed")]
    Forbidden,
    /// Refused by the authority rule, with its reason.
    #[error("not allowed: {0}")]
    Refused(&'static str),
    /// A device token whose device was revoked: the phone stops syncing.
    #[error("this device was revoked")]
    DeviceRevoked,
    /// Missing, or outside the caller's scope: the two look the same.
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    /// A body sent without `Content-Type: application/json`.
    #[error("send the body as JSON, with the header Content-Type: application/json")]
    UnsupportedMediaType,
    /// A body that is not JSON at all.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// JSON that does not fit the call: a field missing or of the wrong type.
    #[error("the body does not fit this call: {0}")]
    InvalidBody(String),
    /// A path or query string that does not parse.
    #[error("{0}")]
    InvalidRequest(String),
    /// A rollup query that names no period, or a period that cannot be.
    #[error(transparent)]
    Period(#[from] crate::rollup::PeriodError),
    #[error("the body is larger than {} bytes", super::MAX_BODY_BYTES)]
    PayloadTooLarge,
    /// An extractor rejection this edge does not name (axum's rejections
    /// are non-exhaustive): its status and text, in our JSON shape.
    #[error("{message}")]
    Rejected { status: StatusCode, message: String },
    /// An enrollment code a device already exchanged: the phone's user
    /// needs a new code, not to retype this one.
    #[error("this enrollment code was already used; ask the branch for a new one")]
    EnrollmentCodeUsed,
    #[error("this enrollment code has expired; ask the branch for a new one")]
    EnrollmentCodeExpired,
    #[error("{0} already exists")]
    Conflict(String),
    /// Something is being used by another request right now (a one-time
    /// code mid-activation); retrying later works.
    #[error("{0}")]
    InUse(String),
    /// Too many failed logins: wait `retry_after` (sent as `Retry-After`).
    #[error("too many failed logins; try again in {} s", crate::auth::ceil_secs(*retry_after))]
    TooManyAttempts { retry_after: std::time::Duration },
    /// A budget is used up ([`crate::budget`]): this caller's share (`429`)
    /// or the whole process's (`503`). Nothing was done; retry later.
    #[error("{0}")]
    Busy(crate::budget::Busy),
    #[error("this account is disabled")]
    AccountDisabled,
    #[error("the current password is wrong")]
    WrongPassword,
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// The database was restored from a backup a moment ago; the server
    /// takes writes again within a second.
    #[error("the server's data was just restored from a backup; try again in a moment")]
    Restored,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<crate::auth::LoginError> for ApiError {
    fn from(e: crate::auth::LoginError) -> Self {
        use crate::auth::{LoginError, PasswordError};
        match e {
            LoginError::BadCredentials => ApiError::Unauthorized,
            LoginError::Disabled => ApiError::AccountDisabled,
            LoginError::Throttled { retry_after } => ApiError::TooManyAttempts { retry_after },
            LoginError::WrongPassword => ApiError::WrongPassword,
            LoginError::Password(PasswordError::TooShort) => {
                ApiError::BadRequest(PasswordError::TooShort.to_string())
            }
            LoginError::Password(PasswordError::Busy(busy)) => ApiError::Busy(busy),
            LoginError::Password(e) => ApiError::Internal(e.into()),
            LoginError::Store(e) => e.into(),
        }
    }
}

impl From<crate::authority::Denied> for ApiError {
    fn from(e: crate::authority::Denied) -> Self {
        use crate::authority::Denied;
        match e {
            Denied::OutOfScope => ApiError::NotFound,
            Denied::Yourself => ApiError::BadRequest(e.to_string()),
            Denied::Refused(why) => ApiError::Refused(why),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(message) => ApiError::BadRequest(message),
            StoreError::Conflict(what) => ApiError::Conflict(what),
            StoreError::Restored => ApiError::Restored,
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<EnrollError> for ApiError {
    fn from(e: EnrollError) -> Self {
        match e {
            EnrollError::InvalidCode => ApiError::BadRequest(e.to_string()),
            EnrollError::AlreadyUsed => ApiError::EnrollmentCodeUsed,
            EnrollError::Expired => ApiError::EnrollmentCodeExpired,
            EnrollError::Store(e) => e.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::JsonSyntaxError(e) => ApiError::MalformedJson(e.body_text()),
            JsonRejection::JsonDataError(e) => ApiError::InvalidBody(e.body_text()),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge
            }
            other => ApiError::Rejected {
                status: other.status(),
                message: other.body_text(),
            },
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        if rejection.status().is_server_error() {
            // A route whose pattern does not fit its extractor: our bug.
            return ApiError::Internal(anyhow::anyhow!(rejection.body_text()));
        }
        ApiError::InvalidRequest(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::InvalidRequest(rejection.body_text())
    }
}

impl ApiError {
    /// A stable code for errors a client acts on (the SDK, the dashboard,
    /// a script): they match on it, not on the wording.
    fn code(&self) -> Option<&'static str> {
        Some(match self {
            ApiError::DeviceRevoked => "device_revoked",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::Period(_) => "invalid_period",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::EnrollmentCodeUsed => "enrollment_code_used",
            ApiError::EnrollmentCodeExpired => "enrollment_code_expired",
            ApiError::Restored => "restored",
            _ => return None,
        })
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::Refused(_) | ApiError::DeviceRevoked => {
                StatusCode::FORBIDDEN
            }
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_)
            | ApiError::MalformedJson(_)
            | ApiError::InvalidRequest(_)
            | ApiError::Period(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidBody(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Rejected { status, .. } => *status,
            ApiError::EnrollmentCodeUsed => StatusCode::CONFLICT,
            ApiError::EnrollmentCodeExpired => StatusCode::GONE,
            ApiError::Conflict(_) | ApiError::InUse(_) => StatusCode::CONFLICT,
            ApiError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Busy(busy) if busy.source_full => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Busy(_) | ApiError::Restored => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::AccountDisabled | ApiError::WrongPassword => StatusCode::FORBIDDEN,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            // Logged once here; the client gets no detail.
            tracing::error!(error = ?cause, "request failed");
        }
        let body = match self.code() {
            Some(code) => json!({ "error": self.to_string(), "code": code }),
            None => json!({ "error": self.to_string() }),
        };
        let mut response = (self.status(), Json(body)).into_response();
        let retry_after = match &self {
            ApiError::TooManyAttempts { retry_after } => Some(*retry_after),
            ApiError::Busy(_) => Some(crate::budget::passwords::BUSY_RETRY_AFTER),
            ApiError::Restored => Some(std::time::Duration::from_secs(1)),
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(crate::auth::ceil_secs(retry_after)),
            );
        }
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
