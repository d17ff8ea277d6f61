//! JSON API handlers. Each takes the caller from an extractor and checks the
//! target against the caller's scope; anything outside it is `404`, exactly
//! like something that does not exist.

use axum::extract::State;
use axum::http::StatusCode;
use doorstep_protocol::{DeviceId, TenantId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{ClientAddr, DeviceAuth, Json, Path, Query, UserAuth, UserSession};
use crate::AppState;
use crate::admin;
use crate::auth::{Secret, hash_secret};
use crate::authority::{self, Action, Caller, Permit};
use crate::store::{Device, Enrollment, EnrollmentCode, Grant, Invitation, Session, Tenant, User};
use crate::tenancy::{Level, Role};

type ApiResult<T> = Result<Json<T>, ApiError>;

fn parse<T: std::str::FromStr>(text: &str) -> Result<T, ApiError> {
    // An id that does not parse names nothing: same answer as a missing one.
    text.parse().map_err(|_| ApiError::NotFound)
}

/// Asks the authority rule ([`crate::authority`]) for leave to act; a
/// refusal is recorded there and answered here.
async fn permit(state: &AppState, auth: &UserAuth, action: Action<'_>) -> Result<Permit, ApiError> {
    Ok(authority::authorize(
        &state.store,
        Some(&state.config.budgets.refusals),
        Caller::User(&auth.0),
        action,
    )
    .await??)
}

/// Liveness: the process answers and the database reads.
/// Liveness, and which database this server serves: its storage id (the
/// one every device is told when it syncs), so that a tool writing to a
/// data directory can check first that this server reads the same one.
pub async fn healthz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.store.tenant_count().await?;
    Ok(Json(json!({
        "status": "ok",
        "live_documents": state.hub.live_documents(),
        "storage_id": state.store.epoch(),
    })))
}

/// The last write probe and when it ran: readiness probes at most once a
/// second, so polling `/readyz` cannot turn into a storm of fsyncs.
#[derive(Debug, Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
}

const READINESS_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Readiness: the database takes writes (a full disk or a read-only file
/// answers `503` here while `/healthz` stays `200`), so a load balancer
/// sends devices elsewhere instead of to a server that cannot acknowledge.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let mut last = state.readiness.last.lock().await;
    let writable = match *last {
        Some((at, writable)) if at.elapsed() < READINESS_FRESH => writable,
        _ => {
            let writable = match state.store.probe_write().await {
                Ok(()) => true,
                // Another writer held the lock past the busy timeout (a
                // compaction): slow, not broken; a load balancer must not
                // flap on it.
                Err(e) if e.is_busy() => true,
                Err(e) => {
                    tracing::warn!(error = %e, "readiness: the database cannot be written");
                    false
                }
            };
            *last = Some((std::time::Instant::now(), writable));
            writable
        }
    };
    if writable {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not_ready",
                "error": "this server cannot store changes right now; the operator's log says why",
            })),
        )
    }
}

/// Prometheus metrics (OpenMetrics text): counts only, never a name or an
/// id, so no login is asked; keep the route off the public proxy all the
/// same (README).
pub async fn metrics(
    State(state): State<AppState>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let at_scrape = crate::metrics::AtScrape {
        live_documents: state.hub.live_documents(),
        lagging_projections: state.store.lagging_projections().await?,
        notification_queue_usage: state.store.notification_queue_usage().await?,
    };
    let text = state.config.metrics.encode(at_scrape);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}

#[derive(Deserialize)]
pub struct Login {
    username: String,
    password: String,
}

/// Logs in. Attempts are throttled per account and per client address
/// (`429` with `Retry-After`, before any password is checked); argon2 runs
/// on the blocking pool, a bounded number at once.
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Json(body): Json<Login>,
) -> Result<Json<Value>, ApiError> {
    let logged_in = crate::auth::log_in(
        &state.store,
        &state.config,
        &body.username,
        &body.password,
        ip,
    )
    .await?;
    Ok(Json(json!({
        "token": logged_in.token.expose(),
        "session_id": logged_in.session.id,
        "expires_at": logged_in.session.expires_at,
        "user": logged_in.user,
    })))
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

#[derive(Deserialize)]
pub struct PasswordChange {
    current: String,
    new: String,
}

/// Changes the caller's password: the current one is checked (throttled
/// like a login), and every other session of the caller ends.
pub async fn change_password(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    caller: UserSession,
    Json(body): Json<PasswordChange>,
) -> Result<Json<Value>, ApiError> {
    let ended = crate::auth::change_password(
        &state.store,
        &state.config,
        &caller.user,
        &caller.session.id,
        &body.current,
        &body.new,
        ip,
    )
    .await?;
    Ok(Json(json!({ "ended_sessions": ended })))
}

/// A session as its owner sees it: never its token.
#[derive(serde::Serialize)]
pub struct SessionView {
    #[serde(flatten)]
    session: Session,
    /// When it ends if unused until then.
    idle_expires_at: i64,
    /// The session this request came with.
    current: bool,
}

/// The caller's live sessions, oldest first.
pub async fn list_sessions(
    State(state): State<AppState>,
    caller: UserSession,
) -> ApiResult<Vec<SessionView>> {
    let idle = i64::try_from(state.config.session_idle.as_millis()).unwrap_or(i64::MAX);
    let sessions = state
        .store
        .sessions(
            Some(caller.user.id),
            state.config.clock.now_ms(),
            state.config.session_idle,
        )
        .await?;
    Ok(Json(
        sessions
            .into_iter()
            .map(|session| SessionView {
                idle_expires_at: session
                    .last_used_at
                    .saturating_add(idle)
                    .min(session.expires_at),
                current: session.id == caller.session.id,
                session,
            })
            .collect(),
    ))
}

/// Ends one of the caller's sessions (`404` for anyone else's).
pub async fn revoke_session(
    State(state): State<AppState>,
    caller: UserSession,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state
        .store
        .revoke_session(&id, Some(caller.user.id), &caller.user.username)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

pub async fn disable_user(
    State(state): State<AppState>,
    auth: UserAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_user_disabled(&state, &auth, &id, true).await
}

pub async fn enable_user(
    State(state): State<AppState>,
    auth: UserAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_user_disabled(&state, &auth, &id, false).await
}

/// An admin disables (or enables) a user of their subtree whose role they
/// may grant, unless the user witnesses the caller's access to names (see
/// [`crate::authority`]). A disabled user cannot log in, their sessions end
/// at once, and so do their drill-down grants.
async fn set_user_disabled(
    state: &AppState,
    auth: &UserAuth,
    id: &str,
    disabled: bool,
) -> Result<Json<Value>, ApiError> {
    auth.admin()?;
    let target = state
        .store
        .login_account_by_id(parse(id)?)
        .await?
        .filter(|a| auth.scope().contains(&a.user.tenant_path))
        .ok_or(ApiError::NotFound)?;
    let permit = permit(
        state,
        auth,
        Action::SetUserDisabled {
            target: &target.user,
            disable: disabled,
        },
    )
    .await?;
    let (changed, ended) = admin::set_user_disabled(
        &state.store,
        &permit,
        &target.user,
        disabled,
        state.config.clock.now_ms(),
    )
    .await?;
    Ok(Json(json!({
        "user": target.user,
        "disabled": disabled,
        "changed": changed,
        "ended_sessions": ended,
    })))
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
    auth.admin()?;
    // Districts are created by operators with the CLI; the API grows a
    // subtree below the caller's own tenant.
    let parent = tenant_in_scope(&state, &auth, parse(&body.parent_id)?).await?;
    let permit = permit(
        &state,
        &auth,
        Action::CreateTenant {
            parent: Some(&parent),
        },
    )
    .await?;
    let tenant =
        admin::create_tenant(&state.store, &permit, Some(&parent), body.level, &body.name).await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

pub async fn list_users(State(state): State<AppState>, auth: UserAuth) -> ApiResult<Vec<User>> {
    permit(
        &state,
        &auth,
        Action::ListAdministration {
            scope: auth.scope(),
        },
    )
    .await?;
    Ok(Json(state.store.users_within(auth.scope()).await?))
}

#[derive(Deserialize)]
pub struct NewUser {
    username: String,
    /// Refused when present: invitees set their own password.
    password: Option<String>,
    role: Role,
    tenant_id: String,
    /// How long the activation code works.
    #[serde(default = "default_ttl_hours")]
    ttl_hours: u32,
}

/// Invites a user: `201` with the account and a one-time activation code
/// the invitee redeems at `POST /activate` to set their own password. An
/// upper level's invitee who would see names (a branch secretary) gets no
/// code here: the branch's secretary (or the operator) approves, and the
/// approval carries the code, for the approver to hand over.
pub async fn create_user(
    State(state): State<AppState>,
    auth: UserAuth,
    Json(body): Json<NewUser>,
) -> Result<(StatusCode, Json<admin::Invited>), ApiError> {
    auth.admin()?;
    let tenant = tenant_in_scope(&state, &auth, parse(&body.tenant_id)?).await?;
    let permit = permit(
        &state,
        &auth,
        Action::InviteUser {
            tenant: &tenant,
            role: body.role,
        },
    )
    .await?;
    if body.password.is_some() {
        return Err(ApiError::BadRequest(
            "users set their own password: omit \"password\" and give the invitee the activation code (POST /api/v1/activate)".into(),
        ));
    }
    let invited = admin::invite_user(
        &state.store,
        &permit,
        &body.username,
        body.role,
        &tenant,
        body.ttl_hours,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(invited)))
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
    let branch = tenant_in_scope(&state, &auth, parse(&body.branch_id)?).await?;
    // The branch's secretary gets a code that works; an admin above the
    // branch, a request whose code only its approver ever sees.
    let permit = permit(
        &state,
        &auth,
        Action::IssueEnrollmentCode { branch: &branch },
    )
    .await?;
    let mut issued = admin::issue_enrollment_code_with(
        &state.store,
        &permit,
        &branch,
        &body.label,
        body.ttl_hours,
    )
    .await?;
    issued.details = issued.details.for_viewer(&auth.0);
    Ok((StatusCode::CREATED, Json(issued)))
}

#[derive(Deserialize)]
pub struct Enroll {
    code: String,
    /// A random value the device made and kept before its first attempt
    /// (16 to 128 characters): the same code with the same nonce again is
    /// that device retrying after a lost response, and is enrolled again
    /// (the same device, a new token) instead of refused.
    #[serde(default)]
    nonce: Option<String>,
}

/// The shortest nonce taken: 16 characters of hex or base64 carry at least
/// 64 random bits, beyond guessing alongside a one-time code.
const MIN_NONCE_CHARS: usize = 16;
const MAX_NONCE_CHARS: usize = 128;

/// Exchanges a one-time code for a device token. No login: the code is the
/// credential, and it works once. A request from an upper level has no code
/// until the branch approves it (the approver receives it); only a code
/// handed out before that rule (approval replaces it) can still be
/// presented while waiting, and answers `202 {"status": "pending_approval"}`,
/// issuing nothing.
pub async fn enroll(
    State(state): State<AppState>,
    Json(body): Json<Enroll>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let nonce_hash = match &body.nonce {
        Some(nonce) if !(MIN_NONCE_CHARS..=MAX_NONCE_CHARS).contains(&nonce.chars().count()) => {
            return Err(ApiError::BadRequest(format!(
                "nonce: {MIN_NONCE_CHARS} to {MAX_NONCE_CHARS} characters"
            )));
        }
        Some(nonce) => Some(hash_secret(nonce)),
        None => None,
    };
    let token = Secret::generate_token();
    let device = match state
        .store
        .enroll(
            &hash_secret(&body.code),
            nonce_hash.as_deref(),
            &token.hash(),
            &state.config.budgets.refusals,
        )
        .await?
    {
        Enrollment::Enrolled(device) => device,
        Enrollment::PendingApproval(request) => {
            return Ok((
                StatusCode::ACCEPTED,
                Json(json!({
                    "status": "pending_approval",
                    "request_id": request.id.to_string(),
                    "branch_id": request.branch_id.to_string(),
                    "expires_at": request.expires_at,
                    "message": "waiting for the branch secretary to approve this device; ask again later with the same code",
                })),
            ));
        }
    };
    // The code is spent and the token exists (the enrollment was audited in
    // the same transaction): nothing after this may turn into an error
    // response, or the device would never learn its token.
    let documents = admin::device_documents(&state.store, &device)
        .await
        .unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "status": "enrolled",
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

/// Devices of the caller's subtree; labels (volunteers' names, by
/// convention) for the branch's own secretary only.
pub async fn list_devices(State(state): State<AppState>, auth: UserAuth) -> ApiResult<Vec<Device>> {
    permit(
        &state,
        &auth,
        Action::ListAdministration {
            scope: auth.scope(),
        },
    )
    .await?;
    Ok(Json(
        state
            .store
            .devices_within(auth.scope())
            .await?
            .into_iter()
            .map(|d| d.for_viewer(&auth.0))
            .collect(),
    ))
}

pub async fn revoke_device(
    State(state): State<AppState>,
    auth: UserAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    auth.admin()?;
    let device = device_in_scope(&state, &auth, parse(&id)?).await?;
    let permit = permit(&state, &auth, Action::RevokeDevice { device: &device }).await?;
    let revoked = admin::revoke_device_with(&state.store, &permit, &device).await?;
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
    let device = device_in_scope(&state, &auth, parse(&id)?).await?;
    permit(
        &state,
        &auth,
        Action::ListAdministration {
            scope: &device.branch_path,
        },
    )
    .await?;
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

// Names stay in the branch: activation, the branch's approvals of what
// upper levels ask, and drill-down grants.

#[derive(Deserialize)]
pub struct Activate {
    code: String,
    /// If given, must be the invited username.
    username: Option<String>,
    password: String,
}

/// An invitee sets their own password with their one-time code (from the
/// inviter, or, for a secretary invited from above, from whoever approved
/// the invitation). A code handed out before that rule answers `202
/// {"status": "pending_approval"}` while the invitation waits, and stops
/// working when it is approved.
pub async fn activate(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Json(body): Json<Activate>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    match admin::activate(
        &state.store,
        &state.config.budgets,
        &crate::auth::address_key(ip),
        &body.code,
        body.username.as_deref(),
        &body.password,
    )
    .await
    {
        Ok(admin::Activation::Activated(user)) => Ok((
            StatusCode::OK,
            Json(json!({ "status": "activated", "user": user })),
        )),
        Ok(admin::Activation::PendingApproval) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "status": "pending_approval",
                "message": "waiting for the branch secretary to approve this account; once approved, activate with the code the approver gives you",
            })),
        )),
        Err(e @ admin::ActivationError::InvalidCode) => Err(ApiError::BadRequest(e.to_string())),
        Err(e @ admin::ActivationError::InUse) => Err(ApiError::InUse(e.to_string())),
        Err(admin::ActivationError::Password(e)) => {
            Err(crate::auth::LoginError::Password(e).into())
        }
        Err(admin::ActivationError::Store(e)) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct Listing {
    branch: Option<String>,
    /// `pending` (the default) or `all`.
    status: Option<String>,
}

/// The subtree a listing covers and whether it wants pending items only.
async fn listing(
    state: &AppState,
    auth: &UserAuth,
    q: &Listing,
) -> Result<(crate::tenancy::TenantPath, bool), ApiError> {
    auth.admin()?;
    let scope = match q.branch.as_deref() {
        Some(id) => tenant_in_scope(state, auth, parse(id)?).await?.path,
        None => auth.scope().clone(),
    };
    permit(state, auth, Action::ListAdministration { scope: &scope }).await?;
    let pending_only = match q.status.as_deref() {
        None | Some("pending") => true,
        Some("all") => false,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown status {other:?}; use pending or all"
            )));
        }
    };
    Ok((scope, pending_only))
}

fn not_waiting() -> ApiError {
    ApiError::BadRequest("it is not waiting for a decision (decided, used or expired)".into())
}

/// Enrollment codes asked for by upper levels (with `status=all`, every
/// code), of the caller's subtree or one `branch` in it.
pub async fn list_enrollment_requests(
    State(state): State<AppState>,
    auth: UserAuth,
    Query(q): Query<Listing>,
) -> ApiResult<Vec<EnrollmentCode>> {
    let (scope, pending_only) = listing(&state, &auth, &q).await?;
    Ok(Json(
        state
            .store
            .enrollment_codes_within(&scope, pending_only)
            .await?
            .into_iter()
            .map(|c| c.for_viewer(&auth.0))
            .collect(),
    ))
}

/// Only the branch's own secretary decides what enters the branch; an
/// approval answers with the code, for the secretary to hand to the device.
async fn decide_enrollment_request(
    state: AppState,
    auth: UserAuth,
    id: &str,
    approve: bool,
) -> ApiResult<admin::IssuedCode> {
    let code = state
        .store
        .enrollment_code(parse(id)?)
        .await?
        .filter(|c| auth.scope().contains(&c.branch_path))
        .ok_or(ApiError::NotFound)?;
    let permit = permit(
        &state,
        &auth,
        Action::DecideEnrollmentRequest {
            code: &code,
            approve,
        },
    )
    .await?;
    let mut decided = admin::decide_enrollment_code(&state.store, &permit, &code, approve)
        .await?
        .ok_or_else(not_waiting)?;
    decided.details = decided.details.for_viewer(&auth.0);
    Ok(Json(decided))
}

pub async fn approve_enrollment_request(
    State(state): State<AppState>,
    auth: UserAuth,
    Path(id): Path<String>,
) -> ApiResult<admin::IssuedCode> {
    decide_enrollment_request(state, auth, &id, true).await
}

pub async fn deny_enrollment_request(
    State(state): State<AppState>,
    auth: UserAuth,
    Path(id): Path<String>,
) -> ApiResult<admin::IssuedCode> {
    decide_enrollment_request(state, auth, &id, false).await
}

/// Invitations waiting for approval (with `status=all`, every invitation),
/// of the caller's subtree or one `branch` in it.
pub async fn list_invitations(
    State(state): State<AppState>,
    auth: UserAuth,
    Query(q): Query<Listing>,
) -> ApiResult<Vec<Invitation>> {
    let (scope, pending_only) = listing(&state, &auth, &q).await?;
    Ok(Json(
        state.store.invitations_within(&scope, pending_only).await?,
    ))
}

/// Only the branch's own secretary decides; an approval answers with the
/// activation code, for the secretary to hand to the invitee.
async fn decide_invitation(
    state: AppState,
    auth: UserAuth,
    id: &str,
    approve: bool,
) -> ApiResult<admin::DecidedInvitation> {
    let invitation = state
        .store
        .invitation(parse(id)?)
        .await?
        .filter(|i| auth.scope().contains(&i.tenant_path))
        .ok_or(ApiError::NotFound)?;
    let permit = permit(
        &state,
        &auth,
        Action::DecideInvitation {
            invitation: &invitation,
            approve,
        },
    )
    .await?;
    admin::decide_invitation(&state.store, &permit, &invitation, approve)
        .await?
        .map(Json)
        .ok_or_else(not_waiting)
}

pub async fn approve_invitation(
    State(state): State<AppState>,
    auth: UserAuth,
    Path(id): Path<String>,
) -> ApiResult<admin::DecidedInvitation> {
    decide_invitation(state, auth, &id, true).await
}

pub async fn deny_invitation(
    State(state): State<AppState>,
    auth: UserAuth,
    Path(id): Path<String>,
) -> ApiResult<admin::DecidedInvitation> {
    decide_invitation(state, auth, &id, false).await
}

#[derive(Deserialize)]
pub struct NewGrant {
    /// Why the names are needed; the branch reads it.
    reason: String,
    /// At most seven days.
    #[serde(default = "default_grant_seconds")]
    duration_seconds: u32,
}

fn default_grant_seconds() -> u32 {
    3600
}

/// "Break the glass": an admin above the branch opens a reasoned,
/// time-limited drill-down grant to the branch's names. The branch's
/// secretary sees it and may end it; it and every read under it are
/// audited.
pub async fn create_grant(
    State(state): State<AppState>,
    auth: UserAuth,
    Path(id): Path<String>,
    Json(body): Json<NewGrant>,
) -> Result<(StatusCode, Json<Grant>), ApiError> {
    let branch = tenant_in_scope(&state, &auth, parse(&id)?).await?;
    let permit = permit(&state, &auth, Action::OpenGrant { branch: &branch }).await?;
    let grant = admin::open_grant(
        &state.store,
        &permit,
        &branch,
        &body.reason,
        body.duration_seconds,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(grant)))
}

/// Every grant on a branch, newest first: for its secretary, the admins
/// above it and the district's auditors.
pub async fn list_grants(
    State(state): State<AppState>,
    auth: UserAuth,
    Path(id): Path<String>,
) -> ApiResult<Vec<Grant>> {
    let branch = tenant_in_scope(&state, &auth, parse(&id)?).await?;
    permit(&state, &auth, Action::ListGrants { branch: &branch }).await?;
    Ok(Json(state.store.grants_of_branch(branch.id).await?))
}

/// Ends a grant early: the branch's secretary, or its holder.
pub async fn revoke_grant(
    State(state): State<AppState>,
    auth: UserAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let grant = state
        .store
        .grant(parse(&id)?)
        .await?
        .filter(|g| auth.scope().contains(&g.branch_path))
        .ok_or(ApiError::NotFound)?;
    let permit = permit(&state, &auth, Action::RevokeGrant { grant: &grant }).await?;
    let revoked = admin::revoke_grant(&state.store, &permit, &grant).await?;
    Ok(Json(json!({ "revoked": revoked })))
}
