//! Rollups, breakdowns, health, and the branch secretary's named lists.
//! Every figure endpoint answers JSON, or CSV with `format=csv`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use doorstep_protocol::TenantId;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::UserAuth;
use crate::AppState;
use crate::rollup::{self, BreakdownKind, Period, PeriodQuery, csv};
use crate::store::Tenant;
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

pub async fn rollup(
    State(state): State<AppState>,
    auth: UserAuth,
    Query(q): Query<FigureQuery>,
) -> Result<Response, ApiError> {
    may_see_figures(&auth)?;
    let target = target(&state, &auth, q.tenant.as_deref()).await?;
    let period = Period::try_from(&q.period).map_err(ApiError::BadRequest)?;
    let rollup = rollup::rollup(&state.store, &target, period).await?;
    let mut rows = rollup.rows.clone();
    rows.push(rollup.total.clone());
    respond(q.format.as_deref(), "rollup", &rollup, &rows)
}

pub async fn breakdown(
    State(state): State<AppState>,
    auth: UserAuth,
    Query(q): Query<FigureQuery>,
) -> Result<Response, ApiError> {
    may_see_figures(&auth)?;
    let target = target(&state, &auth, q.tenant.as_deref()).await?;
    let period = Period::try_from(&q.period).map_err(ApiError::BadRequest)?;
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

/// Names are for the branch itself: its secretary. Upper levels get `403`
/// (they may know the branch exists, not who is in it).
async fn own_branch(state: &AppState, auth: &UserAuth, id: &str) -> Result<Tenant, ApiError> {
    let branch = target(state, auth, Some(id)).await?;
    if auth.0.role != Role::BranchSecretary || auth.0.tenant_id != branch.id {
        return Err(ApiError::Forbidden);
    }
    Ok(branch)
}

pub async fn branch_members(
    State(state): State<AppState>,
    auth: UserAuth,
    Path(id): Path<String>,
    Query(q): Query<FigureQuery>,
) -> Result<Response, ApiError> {
    let branch = own_branch(&state, &auth, &id).await?;
    let rows = rollup::branch_members(&state.store, branch.id).await?;
    respond(q.format.as_deref(), "members", &rows, &rows)
}

pub async fn branch_invalid(
    State(state): State<AppState>,
    auth: UserAuth,
    Path(id): Path<String>,
    Query(q): Query<FigureQuery>,
) -> Result<Response, ApiError> {
    let branch = own_branch(&state, &auth, &id).await?;
    let rows = rollup::branch_invalid(&state.store, branch.id).await?;
    respond(q.format.as_deref(), "invalid-records", &rows, &rows)
}
