//! The HTTP edge: routes, request tracing, and the JSON API.

mod api;
pub mod error;
pub mod extract;
mod rollups;

use axum::Router;
use axum::extract::Request;
use axum::routing::{get, post};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

use crate::AppState;

/// The officials' dashboard: one static page over the JSON API, no build
/// step and nothing fetched from the internet.
async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("assets/dashboard.html"))
}

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("assets/openapi.json"),
    )
}

/// All routes of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/", get(|| async { axum::response::Redirect::to("/dashboard") }))
        .route("/dashboard", get(dashboard))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/sync", get(crate::sync::upgrade))
        .route("/api/v1/login", post(api::login))
        .route("/api/v1/logout", post(api::logout))
        .route("/api/v1/me", get(api::me))
        .route("/api/v1/tenants", get(api::list_tenants).post(api::create_tenant))
        .route("/api/v1/users", get(api::list_users).post(api::create_user))
        .route("/api/v1/enrollment-codes", post(api::create_enrollment_code))
        .route("/api/v1/enroll", post(api::enroll))
        .route("/api/v1/devices", get(api::list_devices))
        .route("/api/v1/devices/{id}/revoke", post(api::revoke_device))
        .route("/api/v1/devices/{id}/documents", get(api::documents_of_device))
        .route("/api/v1/device", get(api::this_device))
        .route("/api/v1/device/documents", get(api::this_device_documents))
        .route("/api/v1/device/actors", post(api::register_actor))
        .route("/api/v1/rollups", get(rollups::rollup))
        .route("/api/v1/rollups/breakdown", get(rollups::breakdown))
        .route("/api/v1/health", get(rollups::health))
        .route("/api/v1/branches/{id}/members", get(rollups::branch_members))
        .route("/api/v1/branches/{id}/invalid-records", get(rollups::branch_invalid))
        // JSON bodies are small; sync traffic goes over the WebSocket.
        .layer(RequestBodyLimitLayer::new(64 * 1024))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            // The path only: `/sync?token=...` must never reach a log line.
            tracing::info_span!("http", method = %request.method(), path = %request.uri().path())
        }))
        .with_state(state)
}
