//! Rollups, breakdowns, health, and the branch secretary's named lists.
//! Every figure endpoint answers JSON, or CSV with `format=csv`.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use doorstep_protocol::TenantId;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{Json, Path, Query, UserAuth};
use crate::AppState;
use crate::authority::{self, Action, Caller, NamesGround};
use crate::rollup::{self, BreakdownKind, NamedPeriod, Period, PeriodQuery, PeriodRef, csv};
use crate::store::{AuditEntry, AuditQuery, Tenant};
use crate::tenancy::Role;

#[derive(Debug, Deserialize)]
pub struct FigureQuery {
    tenant: Option<String>,
    format: Option<String>,
    by: Option<BreakdownKind>,
    stale_days: Option<u32>,
    #[serde(flatten)]
    period: PeriodQuery,
}

/// Offices and branch secretaries see figures; volunteers use the SDK.
fn may_see_figures(auth: &UserAuth) -> Result<(), ApiError> {
    match auth.0.role {
        Role::Volunteer => Err(ApiError::Forbidden),
        _ => Ok(()),
    }
}

/// The tenant a query is about: the caller's own unless another in its
/// subtree is named. Outside the subtree is `404`, like a missing one.
async fn target(
    state: &AppState,
    auth: &UserAuth,
    tenant: Option<&str>,
) -> Result<Tenant, ApiError> {
    let id: TenantId = match tenant {
        Some(text) => text.parse().map_err(|_| ApiError::NotFound)?,
        None => auth.0.tenant_id,
    };
    super::api::tenant_in_scope(state, auth, id).await
}

fn respond<T: Serialize>(
    format: Option<&str>,
    name: &str,
    json: impl Serialize,
    rows: &[T],
) -> Result<Response, ApiError> {
    match format {
        None | Some("json") => Ok(Json(json).into_response()),
        Some("csv") => {
            let body = csv::to_csv(rows).map_err(|e| ApiError::Internal(e.into()))?;
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}.csv\""),
                    ),
                ],
                body,
            )
                .into_response())
        }
        Some(other) => Err(ApiError::BadRequest(format!(
            "unknown format {other:?}; use json or csv"
        ))),
    }
}

/// A rollup, and the periods an office compares it with: the one before
/// and the same one a year earlier (absent outside the years the API
/// takes), each with the query that asks for it.
#[derive(Serialize)]
struct RollupAnswer<'a> {
    #[serde(flatten)]
    rollup: &'a rollup::Rollup,
    query: String,
    previous: Option<PeriodRef>,
    year_earlier: Option<PeriodRef>,
}

pub async fn rollup(
    State(state): State<AppState>,
    auth: UserAuth,
    Query(q): Query<FigureQuery>,
) -> Result<Response, ApiError> {
    may_see_figures(&auth)?;
    let target = target(&state, &auth, q.tenant.as_deref()).await?;
    let named = NamedPeriod::try_from(&q.period)?;
    let period = named.dates()?;
    let rollup = rollup::rollup(&state.store, &target, period).await?;
    let mut rows = rollup.rows.clone();
    rows.push(rollup.total.clone());
    let answer = RollupAnswer {
        rollup: &rollup,
        query: named.query(),
        previous: named.previous().and_then(|p| p.reference()),
        year_earlier: named.year_earlier().and_then(|p| p.reference()),
    };
    respond(q.format.as_deref(), "rollup", &answer, &rows)
}

pub async fn breakdown(
    State(state): State<AppState>,
    auth: UserAuth,
    Query(q): Query<FigureQuery>,
) -> Result<Response, ApiError> {
    may_see_figures(&auth)?;
    let target = target(&state, &auth, q.tenant.as_deref()).await?;
    let period = Period::try_from(&q.period)?;
    let by = q
        .by
        .ok_or_else(|| ApiError::BadRequest("by= one of visits_by_kind, visits_by_month, hardship_by_kind, training_by_level, teams_by_category".into()))?;
    let rows = rollup::breakdown(&state.store, &target, period, by).await?;
    respond(q.format.as_deref(), "breakdown", &rows, &rows)
}

pub async fn health(
    State(state): State<AppState>,
    auth: UserAuth,
    Query(q): Query<FigureQuery>,
) -> Result<Response, ApiError> {
    may_see_figures(&auth)?;
    let target = target(&state, &auth, q.tenant.as_deref()).await?;
    let rows = rollup::health(&state.store, &target, q.stale_days.unwrap_or(7)).await?;
    respond(q.format.as_deref(), "health", &rows, &rows)
}

/// Names are for the branch itself: its secretary. An admin above the
/// branch reads them only under a drill-down grant in force; without one,
/// and for every other role, `403` (they may know the branch exists, not
/// who is in it), and the attempt is recorded. Returns the branch and the
/// audit entry of the read, for the caller to record before answering.
async fn names_of_branch(
    state: &AppState,
    auth: &UserAuth,
    id: &str,
    action: &str,
    format: Option<&str>,
) -> Result<(Tenant, AuditEntry), ApiError> {
    let branch = target(state, auth, Some(id)).await?;
    let user = &auth.0;
    let entry = AuditEntry::by_user(user, action, branch.id.to_string()).on(&branch);
    match authority::names_ground(&state.store, user, &branch).await? {
        Ok(ground) => {
            let ground = match ground {
                NamesGround::OwnBranch => "own branch".to_owned(),
                NamesGround::Grant(g) => format!("grant {} ({})", g.id, g.reason),
            };
            let format = format.unwrap_or("json");
            Ok((branch, entry.detail(format!("{format}, {ground}"))))
        }
        Err(why) => {
            // Once per user, branch, format and state of the user's grants
            // there in an interval: a caller looping a refused read must
            // not grow the branch's log without bound (and bury a real
            // grant in it), while a refusal after a grant ended is a new
            // row.
            let latest_grant = state
                .store
                .grants_of_branch(branch.id)
                .await?
                .into_iter()
                .find(|g| g.user_id == user.id)
                .map(|g| (g.id, g.revoked_at.is_some()));
            let source = format!(
                "{}\u{0}{}\u{0}{}\u{0}{latest_grant:?}",
                user.id,
                branch.id,
                format.unwrap_or("json")
            );
            let verdict = state.config.budgets.refusals.verdict_for_known(
                action,
                &source,
                state.config.clock.now_ms(),
            );
            if let Some(detail) = verdict.detail(why) {
                state
                    .store
                    .record_audit(entry.detail(detail).refused())
                    .await?;
            }
            Err(ApiError::Forbidden)
        }
    }
}

/// A format `respond` accepts, checked before a read is recorded.
fn known_format(format: Option<&str>) -> Result<(), ApiError> {
    match format {
        None | Some("json") | Some("csv") => Ok(()),
        Some(other) => Err(ApiError::BadRequest(format!(
            "unknown format {other:?}; use json or csv"
        ))),
    }
}

/// Records a read of names (with how many rows left) before they leave.
async fn record_read(state: &AppState, entry: AuditEntry, rows: usize) -> Result<(), ApiError> {
    let detail = format!("{}, {rows} rows", entry.detail.clone().unwrap_or_default());
    state.store.record_audit(entry.detail(detail)).await?;
    Ok(())
}

pub async fn branch_members(
    State(state): State<AppState>,
    auth: UserAuth,
    Path(id): Path<String>,
    Query(q): Query<FigureQuery>,
) -> Result<Response, ApiError> {
    known_format(q.format.as_deref())?;
    let (branch, read) =
        names_of_branch(&state, &auth, &id, "members.read", q.format.as_deref()).await?;
    let rows = rollup::branch_members(&state.store, branch.id).await?;
    record_read(&state, read, rows.len()).await?;
    respond(q.format.as_deref(), "members", &rows, &rows)
}

pub async fn branch_invalid(
    State(state): State<AppState>,
    auth: UserAuth,
    Path(id): Path<String>,
    Query(q): Query<FigureQuery>,
) -> Result<Response, ApiError> {
    known_format(q.format.as_deref())?;
    let (branch, read) = names_of_branch(
        &state,
        &auth,
        &id,
        "invalid_records.read",
        q.format.as_deref(),
    )
    .await?;
    let rows = rollup::branch_invalid(&state.store, branch.id).await?;
    record_read(&state, read, rows.len()).await?;
    respond(q.format.as_deref(), "invalid-records", &rows, &rows)
}

#[derive(Debug, Deserialize)]
pub struct AuditParams {
    /// A tenant in the caller's scope: its entries and those below it.
    branch: Option<String>,
    /// Entries with ids below this one: the next page.
    before: Option<i64>,
    /// At most 10,000; 1,000 by default.
    limit: Option<u32>,
    format: Option<String>,
}

/// The audit log, newest first, JSON or CSV: a branch's secretary reads
/// their branch's, a district auditor the district's subtree (or one
/// `branch` of it). No other role reads it.
pub async fn audit_log(
    State(state): State<AppState>,
    auth: UserAuth,
    Query(q): Query<AuditParams>,
) -> Result<Response, ApiError> {
    let scope = match q.branch.as_deref() {
        Some(id) => target(&state, &auth, Some(id)).await?.path,
        None => auth.scope().clone(),
    };
    authority::authorize(
        &state.store,
        Some(&state.config.budgets.refusals),
        Caller::User(&auth.0),
        Action::ReadAudit { scope: &scope },
    )
    .await??;
    let rows = state
        .store
        .audit_entries(&AuditQuery {
            scope: Some(scope),
            before: q.before,
            limit: q.limit.unwrap_or(1000),
        })
        .await?;
    respond(q.format.as_deref(), "audit", &rows, &rows)
}
