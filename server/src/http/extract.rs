//! Who is calling: a logged-in user or an enrolled device.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiError;
use crate::AppState;
use crate::auth::hash_secret;
use crate::store::{Device, User};
use crate::tenancy::TenantPath;

/// The token of an `Authorization: Bearer` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// A logged-in user; every store call a handler makes takes its scope.
#[derive(Debug, Clone)]
pub struct UserAuth(pub User);

impl UserAuth {
    pub fn scope(&self) -> &TenantPath {
        &self.0.tenant_path
    }

    /// Only roles that administer their subtree get past this.
    pub fn admin(&self) -> Result<&User, ApiError> {
        if self.0.role.administers() {
            Ok(&self.0)
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

impl FromRequestParts<AppState> for UserAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        state
            .store
            .user_for_session(&hash_secret(token))
            .await?
            .map(UserAuth)
            .ok_or(ApiError::Unauthorized)
    }
}

/// An enrolled, unrevoked device.
#[derive(Debug, Clone)]
pub struct DeviceAuth(pub Device);

impl FromRequestParts<AppState> for DeviceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        state
            .store
            .device_for_token(&hash_secret(token))
            .await?
            .map(DeviceAuth)
            .ok_or(ApiError::Unauthorized)
    }
}
