//! Who is calling: a logged-in user or an enrolled device.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use super::error::ApiError;
use crate::AppState;
use crate::auth::hash_secret;
use crate::store::{Device, Session, User};
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
        UserSession::from_request_parts(parts, state)
            .await
            .map(|s| UserAuth(s.user))
    }
}

/// A logged-in user and the session the request came with. A session
/// works until `session_ttl` after login, and only while it is used at
/// least every `session_idle`; a disabled user's sessions stop at once.
#[derive(Debug, Clone)]
pub struct UserSession {
    pub user: User,
    pub session: Session,
}

impl FromRequestParts<AppState> for UserSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        state
            .store
            .session_user(
                &hash_secret(token),
                state.config.clock.now_ms(),
                state.config.session_idle,
            )
            .await?
            .map(|(session, user)| UserSession { user, session })
            .ok_or(ApiError::Unauthorized)
    }
}

/// The client's IP address, from the connection (`ConnectInfo`); `None`
/// when the server runs without it. Forwarding headers are not trusted.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
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
        let hash = hash_secret(token);
        match state.store.device_for_token(&hash).await? {
            Some(device) => Ok(DeviceAuth(device)),
            None if state.store.token_was_revoked(&hash).await? => Err(ApiError::DeviceRevoked),
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// axum's `Json`, whose rejections (a body that is not JSON, JSON that does
/// not fit the type, a missing `Content-Type`, a body over the limit) answer
/// in the API's own JSON error shape instead of axum's plain text. Every
/// handler takes and returns this one, so the mapping lives here and in
/// [`ApiError`]'s `From` impls only; clippy.toml keeps axum's out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        #[allow(clippy::disallowed_types)] // the one place that wraps it
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Json(value))
    }
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        #[allow(clippy::disallowed_types)] // the one place that wraps it
        axum::Json(self.0).into_response()
    }
}

/// axum's `Path`, answering a path it cannot parse with a JSON `400`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        #[allow(clippy::disallowed_types)] // the one place that wraps it
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

/// axum's `Query`, answering a query string it cannot parse with a JSON `400`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        #[allow(clippy::disallowed_types)] // the one place that wraps it
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}
