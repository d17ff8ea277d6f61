//! The HTTP edge: routes, request tracing, and the JSON API.

mod api;
pub mod error;
pub mod extract;
mod rollups;

pub use api::Readiness;

use axum::Router;
use axum::extract::Request;
use axum::routing::{get, post};
use tower_http::trace::TraceLayer;

use crate::AppState;

/// The officials' dashboard: one static page over the JSON API, no build
/// step and nothing fetched from the internet. Its script and style are
/// separate files so that the CSP ([`security_headers`]) forbids anything
/// inline.
async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("assets/dashboard.html"))
}

/// A static asset of the dashboard, revalidated on every load (the files are
/// compiled in, so a new server may bring new ones under the same name).
fn asset(content_type: &'static str, body: &'static str) -> impl axum::response::IntoResponse {
    (
        [
            (axum::http::header::CONTENT_TYPE, content_type),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

async fn dashboard_js() -> impl axum::response::IntoResponse {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/dashboard.js"),
    )
}

async fn dashboard_css() -> impl axum::response::IntoResponse {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/dashboard.css"),
    )
}

/// The Content-Security-Policy of every response: scripts, styles and
/// requests only from this server, nothing inline, no `eval`, no plugins, no
/// framing. `img-src data:` is for the page's empty icon (`data:,`).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Sets the security headers on every response, the dashboard's and the
/// API's alike (JSON or CSV, errors, `101` upgrades of `/sync`): the CSP,
/// `nosniff` (a CSV or JSON body is never run as script or HTML), no
/// referrer (URLs carry tenant ids), and no framing (clickjacking).
async fn security_headers(
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// Reads the whole request body (at most [`MAX_BODY_BYTES`]) within the
/// deadline before the handler runs: `408` if it does not arrive in time,
/// `413` if it is larger. The deadline is total, not per frame, so a byte
/// every few seconds does not keep a connection.
async fn read_body_within(
    axum::extract::State(deadline): axum::extract::State<std::time::Duration>,
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(deadline, axum::body::to_bytes(body, MAX_BODY_BYTES)).await;
    match read {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => error::ApiError::PayloadTooLarge.into_response(),
        Err(_) => error::ApiError::RequestTimeout.into_response(),
    }
}

/// Largest request body: JSON bodies are small; sync traffic goes over
/// the WebSocket.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("assets/openapi.json"),
    )
}

/// All routes of the server.
pub fn router(state: AppState) -> Router {
    let body_deadline = state.config.budgets.limits().connections.request_body;
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/", get(|| async { axum::response::Redirect::to("/dashboard") }))
        .route("/dashboard", get(dashboard))
        .route("/dashboard.js", get(dashboard_js))
        .route("/dashboard.css", get(dashboard_css))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/sync", get(crate::sync::upgrade))
        .route("/api/v1/login", post(api::login))
        .route("/api/v1/logout", post(api::logout))
        .route("/api/v1/me", get(api::me))
        .route("/api/v1/me/password", post(api::change_password))
        .route("/api/v1/me/sessions", get(api::list_sessions))
        .route("/api/v1/me/sessions/{id}", axum::routing::delete(api::revoke_session))
        .route("/api/v1/users/{id}/disable", post(api::disable_user))
        .route("/api/v1/users/{id}/enable", post(api::enable_user))
        .route("/api/v1/tenants", get(api::list_tenants).post(api::create_tenant))
        .route("/api/v1/users", get(api::list_users).post(api::create_user))
        .route("/api/v1/enrollment-codes", post(api::create_enrollment_code))
        .route("/api/v1/enroll", post(api::enroll))
        .route("/api/v1/enrollment-requests", get(api::list_enrollment_requests))
        .route("/api/v1/enrollment-requests/{id}/approve", post(api::approve_enrollment_request))
        .route("/api/v1/enrollment-requests/{id}/deny", post(api::deny_enrollment_request))
        .route("/api/v1/activate", post(api::activate))
        .route("/api/v1/invitations", get(api::list_invitations))
        .route("/api/v1/invitations/{id}/approve", post(api::approve_invitation))
        .route("/api/v1/invitations/{id}/deny", post(api::deny_invitation))
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
        .route("/api/v1/branches/{id}/grants", get(api::list_grants).post(api::create_grant))
        .route("/api/v1/grants/{id}/revoke", post(api::revoke_grant))
        .route("/api/v1/audit", get(rollups::audit_log))
        // Where the `Json` extractor reads the body; the middleware below
        // has already refused a larger one in the API's JSON error shape.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        // A client trickling its body cannot hold a connection's place;
        // a handler that has started is never cut (it may have committed).
        .layer(axum::middleware::from_fn_with_state(
            body_deadline,
            read_body_within,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            // The path only: `/sync?token=...` must never reach a log line.
            tracing::info_span!("http", method = %request.method(), path = %request.uri().path())
        }))
        // Outermost, so that every answer has them, even a 413 or a 404.
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}
