//! JSON API handlers. Each takes the caller from an extractor and checks the
//! target against the caller's scope; anything outside it is `404`, exactly
//! like something that does not exist.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use doorstep_protocol::{DeviceId, TenantId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{DeviceAuth, UserAuth};
use crate::AppState;
use crate::admin;
use crate::auth::{Secret, hash_secret, verify_password};
use crate::store::{Device, Tenant, User, now_ms};
use crate::tenancy::{Level, Role};

type ApiResult<T> = Result<Json<T>, ApiError>;

fn parse<T: std::str::FromStr>(text: &str) -> Result<T, ApiError> {
    // An id that does not parse names nothing: same answer as a missing one.
    text.parse().map_err(|_| ApiError::NotFound)
}

pub async fn healthz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.store.tenant_count().await?;
    Ok(Json(
        json!({ "status": "ok", "live_documents": state.hub.live_documents() }),
    ))
}

#[derive(Deserialize)]
pub struct Login {
    username: String,
    password: String,
}

pub async fn login(
    State(state): State<AppState>,
    Json(body): Json<Login>,
) -> Result<Json<Value>, ApiError> {
    let found = state.store.user_for_login(&body.username).await?;
    // Verify against a dummy hash when the user is unknown, so timing does
    // not reveal which usernames exist.
    const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$W3Ykvpl1cxTg9ZQ4Jm3s6mF1m0qQ1bLHD7G2kTfG8oM";
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), hash),
        None => (None, DUMMY.to_owned()),
    };
    // Argon2 is tens of milliseconds of CPU: off the async workers, so a
    // burst of logins never stalls a sync.
    let password = body.password;
    let verified = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let user = match (user, verified) {
        (Some(user), true) => user,
        _ => return Err(ApiError::Unauthorized),
    };
    let token = Secret::generate_token();
    let expires_at = now_ms() + state.config.session_ttl.as_millis() as i64;
    state
        .store
        .create_session(user.id, &token.hash(), expires_at)
        .await?;
    Ok(Json(
        json!({ "token": token.expose(), "expires_at": expires_at, "user": user }),
    ))
}

pub async fn logout(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<StatusCode, ApiError> {
    if let Some(token) = super::extract::bearer(&headers) {
        state.store.delete_session(&hash_secret(token)).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn me(auth: UserAuth) -> Json<User> {
    Json(auth.0)
}

pub async fn list_tenants(State(state): State<AppState>, auth: UserAuth) -> ApiResult<Vec<Tenant>> {
    Ok(Json(state.store.tenants_within(auth.scope()).await?))
}

/// The tenant `id`, if it is inside the caller's scope.
pub(super) async fn tenant_in_scope(
    state: &AppState,
    auth: &UserAuth,
    id: TenantId,
) -> Result<Tenant, ApiError> {
    state
        .store
        .tenant(id)
        .await?
        .filter(|t| auth.scope().contains(&t.path))
        .ok_or(ApiError::NotFound)
}

#[derive(Deserialize)]
pub struct NewTenant {
    name: String,
    level: Level,
    parent_id: String,
}

pub async fn create_tenant(
    State(state): State<AppState>,
    auth: UserAuth,
    Json(body): Json<NewTenant>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let user = auth.admin()?;
    // Districts are created by operators with the CLI; the API grows a
    // subtree below the caller's own tenant.
    let parent = tenant_in_scope(&state, &auth, parse(&body.parent_id)?).await?;
    if user.role == Role::BranchSecretary {
        return Err(ApiError::Forbidden);
    }
    let tenant = state
        .store
        .create_tenant(Some(parent.id), body.level, &body.name)
        .await?;
    state
        .store
        .audit(
            &user.username,
            "tenant.create",
            &tenant.id.to_string(),
            Some(&tenant.name),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

pub async fn list_users(State(state): State<AppState>, auth: UserAuth) -> ApiResult<Vec<User>> {
    auth.admin()?;
    Ok(Json(state.store.users_within(auth.scope()).await?))
}

#[derive(Deserialize)]
pub struct NewUser {
    username: String,
    password: String,
    role: Role,
    tenant_id: String,
}

pub async fn create_user(
    State(state): State<AppState>,
    auth: UserAuth,
    Json(body): Json<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let user = auth.admin()?;
    let tenant = tenant_in_scope(&state, &auth, parse(&body.tenant_id)?).await?;
    if !user.role.may_grant(body.role) {
        return Err(ApiError::Forbidden);
    }
    let created = admin::create_user(
        &state.store,
        &body.username,
        &body.password,
        body.role,
        tenant.id,
        &user.username,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Deserialize)]
pub struct NewCode {
    branch_id: String,
    label: String,
    #[serde(default = "default_ttl_hours")]
    ttl_hours: u32,
}

fn default_ttl_hours() -> u32 {
    72
}

pub async fn create_enrollment_code(
    State(state): State<AppState>,
    auth: UserAuth,
    Json(body): Json<NewCode>,
) -> Result<(StatusCode, Json<admin::IssuedCode>), ApiError> {
    let user = auth.admin()?;
    let branch = tenant_in_scope(&state, &auth, parse(&body.branch_id)?).await?;
    let issued = admin::issue_enrollment_code(
        &state.store,
        branch.id,
        &body.label,
        body.ttl_hours,
        &user.username,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

#[derive(Deserialize)]
pub struct Enroll {
    code: String,
}

/// Exchanges a one-time code for a device token. No login: the code is the
/// credential, and it works once.
pub async fn enroll(
    State(state): State<AppState>,
    Json(body): Json<Enroll>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let token = Secret::generate_token();
    let device = state
        .store
        .enroll(&hash_secret(&body.code), &token.hash())
        .await?;
    // The code is spent and the token exists: nothing after this may turn
    // into an error response, or the device would never learn its token.
    let by = format!("device:{}", device.id);
    if let Err(e) = state
        .store
        .audit(
            &by,
            "device.enroll",
            &device.branch_id.to_string(),
            Some(&device.label),
        )
        .await
    {
        tracing::warn!(error = %e, "could not audit an enrollment");
    }
    let documents = admin::device_documents(&state.store, &device)
        .await
        .unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "device_id": device.id.to_string(),
            "branch_id": device.branch_id.to_string(),
            "token": token.expose(),
            "documents": documents,
        })),
    ))
}

async fn device_in_scope(
    state: &AppState,
    auth: &UserAuth,
    id: DeviceId,
) -> Result<Device, ApiError> {
    state
        .store
        .device(id)
        .await?
        .filter(|d| auth.scope().contains(&d.branch_path))
        .ok_or(ApiError::NotFound)
}

pub async fn list_devices(State(state): State<AppState>, auth: UserAuth) -> ApiResult<Vec<Device>> {
    auth.admin()?;
    Ok(Json(state.store.devices_within(auth.scope()).await?))
}

pub async fn revoke_device(
    State(state): State<AppState>,
    auth: UserAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user = auth.admin()?;
    let device = device_in_scope(&state, &auth, parse(&id)?).await?;
    let revoked = admin::revoke_device(&state.store, device.id, &user.username).await?;
    let closed = state.hub.disconnect_device(device.id);
    Ok(Json(
        json!({ "revoked": revoked, "closed_connections": closed }),
    ))
}

pub async fn documents_of_device(
    State(state): State<AppState>,
    auth: UserAuth,
    Path(id): Path<String>,
) -> ApiResult<Vec<admin::DocumentEntry>> {
    auth.admin()?;
    let device = device_in_scope(&state, &auth, parse(&id)?).await?;
    Ok(Json(admin::device_documents(&state.store, &device).await?))
}

pub async fn this_device(auth: DeviceAuth) -> Json<Device> {
    Json(auth.0)
}

pub async fn this_device_documents(
    State(state): State<AppState>,
    auth: DeviceAuth,
) -> ApiResult<Vec<admin::DocumentEntry>> {
    Ok(Json(admin::device_documents(&state.store, &auth.0).await?))
}

#[derive(Deserialize)]
pub struct NewActor {
    actor_id: String,
}

/// Binds an Automerge actor id to the calling device. Changes by actors
/// bound to no device, or to another, are refused on sync.
pub async fn register_actor(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Json(body): Json<NewActor>,
) -> Result<StatusCode, ApiError> {
    let actor = body.actor_id.trim().to_ascii_lowercase();
    let bytes =
        hex::decode(&actor).map_err(|_| ApiError::BadRequest("actor_id must be hex".into()))?;
    if bytes.is_empty() || bytes.len() > 64 {
        return Err(ApiError::BadRequest(
            "actor_id must be 1 to 64 bytes".into(),
        ));
    }
    if bytes.iter().all(|b| *b == 0) {
        return Err(ApiError::BadRequest(
            "the genesis actor cannot be registered".into(),
        ));
    }
    state.store.register_actor(auth.0.id, &actor).await?;
    Ok(StatusCode::NO_CONTENT)
}
