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
    /// Too many failed logins: wait `retry_after` (sent as `Retry-After`).
    #[error("too many failed logins; try again in {} s", crate::auth::ceil_secs(*retry_after))]
    TooManyAttempts { retry_after: std::time::Duration },
    /// The account is locked after too many failed logins.
    #[error("this account is locked after too many failed logins; try again in {} s", crate::auth::ceil_secs(*retry_after))]
    AccountLocked { retry_after: std::time::Duration },
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
            LoginError::Locked { retry_after } => ApiError::AccountLocked { retry_after },
            LoginError::WrongPassword => ApiError::WrongPassword,
            LoginError::Password(PasswordError::TooShort) => {
                ApiError::BadRequest(PasswordError::TooShort.to_string())
            }
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
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooManyAttempts { .. } | ApiError::AccountLocked { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
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
        if let ApiError::TooManyAttempts { retry_after } | ApiError::AccountLocked { retry_after } =
            &self
        {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(crate::auth::ceil_secs(*retry_after)),
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
