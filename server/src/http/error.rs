//! The one place errors become HTTP responses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

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
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<EnrollError> for ApiError {
    fn from(e: EnrollError) -> Self {
        match e {
            EnrollError::InvalidCode => ApiError::BadRequest(e.to_string()),
            EnrollError::Store(e) => e.into(),
        }
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::Refused(_) | ApiError::DeviceRevoked => {
                StatusCode::FORBIDDEN
            }
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) | ApiError::InUse(_) => StatusCode::CONFLICT,
            ApiError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Busy(busy) if busy.source_full => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::AccountDisabled | ApiError::WrongPassword => StatusCode::FORBIDDEN,
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
        let body = match &self {
            // A stable code: the SDK acts on it, not on the wording.
            ApiError::DeviceRevoked => {
                json!({ "error": self.to_string(), "code": "device_revoked" })
            }
            _ => json!({ "error": self.to_string() }),
        };
        let mut response = (self.status(), Json(body)).into_response();
        let retry_after = match &self {
            ApiError::TooManyAttempts { retry_after } => Some(*retry_after),
            ApiError::Busy(_) => Some(crate::budget::passwords::BUSY_RETRY_AFTER),
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
