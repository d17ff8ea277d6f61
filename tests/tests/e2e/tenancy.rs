//! Tenancy, generated from the route table (issue 15). For every routed
//! path that names a resource by id, every method on it, in every format
//! its OpenAPI description offers (JSON, and the CSV export where there is
//! one), and every caller (each role, a device, a revoked device, a
//! logged-out session, an expired one, an enrollment code presented as a
//! token, a garbled token, no token), the answer for a resource outside the caller's reach
//! is byte for byte the answer for one that does not exist: a refusal
//! leaks nothing. Outside the reach of everyone: a second district's
//! resources. Outside the reach of all but the district's own staff: a
//! cousin branch's (Fenghuangting, under Dongfeng, for callers in
//! Xiangyang and Yingfeng). And over the sync socket, a device asking for
//! another branch's documents hears what it hears for a document that
//! does not exist.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use doorstep_protocol::{DocumentId, Month, TenantId};
use doorstep_server::auth::Clock;
use doorstep_server::store::Store;
use doorstep_server::tenancy::{Level, Role};
use doorstep_tests::{SyncOutcome, TestPeer, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// What a route's `{id}` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Session,
    User,
    EnrollmentRequest,
    Invitation,
    Device,
    Branch,
    Grant,
}

/// Every routed path with an id in it, and what the id names. A new route
/// with an id fails `every_route_with_an_id_is_in_the_tenancy_matrix` until
/// it is added here.
const ID_ROUTES: &[(&str, Kind)] = &[
    ("/api/v1/me/sessions/{id}", Kind::Session),
    ("/api/v1/users/{id}/disable", Kind::User),
    ("/api/v1/users/{id}/enable", Kind::User),
    (
        "/api/v1/enrollment-requests/{id}/approve",
        Kind::EnrollmentRequest,
    ),
    (
        "/api/v1/enrollment-requests/{id}/deny",
        Kind::EnrollmentRequest,
    ),
    ("/api/v1/invitations/{id}/approve", Kind::Invitation),
    ("/api/v1/invitations/{id}/deny", Kind::Invitation),
    ("/api/v1/devices/{id}/revoke", Kind::Device),
    ("/api/v1/devices/{id}/documents", Kind::Device),
    ("/api/v1/branches/{id}/members", Kind::Branch),
    ("/api/v1/branches/{id}/invalid-records", Kind::Branch),
    ("/api/v1/branches/{id}/grants", Kind::Branch),
    ("/api/v1/grants/{id}/revoke", Kind::Grant),
];

#[test]
fn every_route_with_an_id_is_in_the_tenancy_matrix() -> anyhow::Result<()> {
    let routed: BTreeSet<String> = crate::openapi::router_operations()?
        .into_iter()
        .map(|(_, path)| path)
        .filter(|path| path.contains('{'))
        .collect();
    let listed: BTreeSet<String> = ID_ROUTES.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(routed, listed, "routes with an id, routed vs in ID_ROUTES");
    Ok(())
}

/// One of each kind of resource, all in one subtree.
#[derive(Debug)]
struct Resources {
    session: String,
    user: String,
    enrollment_request: String,
    invitation: String,
    device: String,
    branch: String,
    grant: String,
}

impl Resources {
    fn id(&self, kind: Kind) -> &str {
        match kind {
            Kind::Session => &self.session,
            Kind::User => &self.user,
            Kind::EnrollmentRequest => &self.enrollment_request,
            Kind::Invitation => &self.invitation,
            Kind::Device => &self.device,
            Kind::Branch => &self.branch,
            Kind::Grant => &self.grant,
        }
    }
}

async fn call(
    server: &TestServer,
    method: &Method,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(StatusCode, String)> {
    let mut request =
        reqwest::Client::new().request(method.clone(), format!("{}{path}", server.http_url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if *method == Method::POST {
        request = request
            .json(&json!({ "reason": "核对本月走访记录与补助发放情况", "duration_seconds": 3600 }));
    }
    let response = request.send().await?;
    Ok((response.status(), response.text().await?))
}

async fn post_json(
    server: &TestServer,
    token: &str,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", server.http_url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    anyhow::ensure!(status.is_success(), "{path}: {status} {body}");
    Ok(body)
}

async fn get_json(server: &TestServer, token: &str, path: &str) -> anyhow::Result<Value> {
    Ok(reqwest::Client::new()
        .get(format!("{}{path}", server.http_url()))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// Makes one resource of each kind in `branch` (under `sub_district`), as
/// `admin` (who administers them) does.
async fn resources_in(
    server: &TestServer,
    admin: &str,
    branch: TenantId,
    name: &str,
) -> anyhow::Result<Resources> {
    let me = get_json(server, admin, "/api/v1/me").await?;
    let sessions = get_json(server, admin, "/api/v1/me/sessions").await?;
    let invited = post_json(
        server,
        admin,
        "/api/v1/users",
        json!({ "username": format!("{name}-secretary"), "role": "branch_secretary",
                "tenant_id": branch.to_string() }),
    )
    .await?;
    let request = post_json(
        server,
        admin,
        "/api/v1/enrollment-codes",
        json!({ "branch_id": branch.to_string(), "label": format!("{name} phone") }),
    )
    .await?;
    let enrolled = server.enroll(branch, &format!("{name} device")).await?;
    let grant = post_json(
        server,
        admin,
        &format!("/api/v1/branches/{branch}/grants"),
        json!({ "reason": "核对本月走访记录与补助发放情况", "duration_seconds": 3600 }),
    )
    .await?;
    let text = |v: &Value, what: &str| -> anyhow::Result<String> {
        Ok(v.as_str().with_context(|| format!("{what} id"))?.to_owned())
    };
    Ok(Resources {
        session: text(&sessions[0]["id"], "session")?,
        user: text(&me["id"], "user")?,
        enrollment_request: text(&request["id"], "enrollment request")?,
        invitation: text(&invited["invitation"]["id"], "invitation")?,
        device: enrolled.device_id,
        branch: branch.to_string(),
        grant: text(&grant["id"], "grant")?,
    })
}

/// The query parameters the OpenAPI document gives `method` on `path`.
fn query_names(document: &Value, path: &str, method: &str) -> Vec<String> {
    document["paths"][path][method]["parameters"]
        .as_array()
        .map(|parameters| {
            parameters
                .iter()
                .filter(|p| p["in"] == "query")
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

const SESSION_TTL: Duration = Duration::from_secs(3600);

fn missing_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A refusal may name the id it was asked for; nothing else may differ.
fn normalized(body: &str, id: &str) -> String {
    body.replace(id, "{id}")
}

struct Caller {
    name: &'static str,
    token: Option<String>,
    /// Also outside this caller's reach: the cousin branch's resources.
    below_the_district: bool,
}

#[tokio::test]
async fn a_refusal_is_byte_for_byte_a_missing_resource_for_every_route_and_caller()
-> anyhow::Result<()> {
    let clock = Clock::adjustable();
    let server = TestServer::spawn_with({
        let clock = clock.clone();
        move |config| {
            config.clock = clock;
            config.session_ttl = SESSION_TTL;
        }
    })
    .await?;
    let d = server.district().await?;
    // A session that expires: made first, then the clock passes its end
    // (every other login below is made after).
    let expired = server
        .login_as("expired", Role::BranchSecretary, d.yingfeng.id)
        .await?;
    clock.advance(SESSION_TTL + Duration::from_secs(60));
    // A second district, outside everyone's reach but its own.
    let store: &Store = &server.store;
    let elsewhere = store
        .create_tenant(None, Level::District, "远方工委")
        .await?;
    let elsewhere_sub = store
        .create_tenant(Some(elsewhere.id), Level::SubDistrict, "远方街道")
        .await?;
    let elsewhere_branch = store
        .create_tenant(Some(elsewhere_sub.id), Level::Branch, "远方社区")
        .await?;
    let far_admin = server
        .login_as("far-admin", Role::DistrictAdmin, elsewhere.id)
        .await?;
    let far = resources_in(&server, &far_admin, elsewhere_branch.id, "far").await?;
    let dongfeng_admin = server
        .login_as("dongfeng-admin", Role::SubDistrictAdmin, d.dongfeng.id)
        .await?;
    let cousin = resources_in(&server, &dongfeng_admin, d.fenghuangting.id, "cousin").await?;

    let logged_out = server
        .login_as("leaver", Role::BranchSecretary, d.yingfeng.id)
        .await?;
    reqwest::Client::new()
        .post(format!("{}/api/v1/logout", server.http_url()))
        .bearer_auth(&logged_out)
        .send()
        .await?
        .error_for_status()?;
    let device = server.enroll(d.yingfeng.id, "own phone").await?;
    // A code's text is no token, before or after it is spent. (A device
    // pending approval holds nothing: a request's code is shown to nobody
    // until the branch approves it.)
    let unspent_code =
        doorstep_server::admin::issue_enrollment_code(store, d.yingfeng.id, "unspent", 1, "test")
            .await?
            .code;
    let revoked = server.enroll(d.yingfeng.id, "revoked phone").await?;
    let secretary = server
        .login_as("secretary", Role::BranchSecretary, d.yingfeng.id)
        .await?;
    reqwest::Client::new()
        .post(format!(
            "{}/api/v1/devices/{}/revoke",
            server.http_url(),
            revoked.device_id
        ))
        .bearer_auth(&secretary)
        .send()
        .await?
        .error_for_status()?;
    // Both are refused outright (or the rows below would test nothing).
    for token in [&expired, &unspent_code] {
        let (status, _) = call(&server, &Method::GET, "/api/v1/me", Some(token)).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let callers = vec![
        Caller {
            name: "district admin",
            token: Some(
                server
                    .login_as("admin", Role::DistrictAdmin, d.district.id)
                    .await?,
            ),
            below_the_district: false,
        },
        Caller {
            name: "district auditor",
            token: Some(
                server
                    .login_as("auditor", Role::DistrictAuditor, d.district.id)
                    .await?,
            ),
            below_the_district: false,
        },
        Caller {
            name: "sub-district admin",
            token: Some(
                server
                    .login_as("xiangyang-admin", Role::SubDistrictAdmin, d.xiangyang.id)
                    .await?,
            ),
            below_the_district: true,
        },
        Caller {
            name: "branch secretary",
            token: Some(secretary.clone()),
            below_the_district: true,
        },
        Caller {
            name: "volunteer",
            token: Some(
                server
                    .login_as("volunteer", Role::Volunteer, d.yingfeng.id)
                    .await?,
            ),
            below_the_district: true,
        },
        Caller {
            name: "device",
            token: Some(device.token.clone()),
            below_the_district: true,
        },
        Caller {
            name: "revoked device",
            token: Some(revoked.token.clone()),
            below_the_district: true,
        },
        Caller {
            name: "logged-out session",
            token: Some(logged_out),
            below_the_district: true,
        },
        Caller {
            name: "expired session",
            token: Some(expired),
            below_the_district: true,
        },
        Caller {
            name: "enrollment code as a token",
            token: Some(unspent_code),
            below_the_district: true,
        },
        Caller {
            name: "garbled token",
            token: Some("dst_not-a-token-at-all-0123456789".into()),
            below_the_district: true,
        },
        Caller {
            name: "no token",
            token: None,
            below_the_district: true,
        },
    ];

    let operations = crate::openapi::router_operations()?;
    let document = crate::openapi::openapi_document()?;
    let mut compared = 0usize;
    let mut exports = 0usize;
    let mut leaks = Vec::new();
    for caller in &callers {
        for (method, path) in &operations {
            let Some((_, kind)) = ID_ROUTES.iter().find(|(p, _)| p == path) else {
                continue;
            };
            let csv =
                query_names(&document, path, &method.to_lowercase()).contains(&"format".to_owned());
            let method: Method = method.parse()?;
            for format in [None, Some("csv")] {
                if format.is_some() && !csv {
                    continue;
                }
                let query = format.map(|f| format!("?format={f}")).unwrap_or_default();
                let mut outside = vec![("another district", &far)];
                if caller.below_the_district {
                    outside.push(("a cousin branch", &cousin));
                }
                for (whose, resources) in outside {
                    let (foreign, missing) = (resources.id(*kind).to_owned(), missing_id());
                    let token = caller.token.as_deref();
                    let (status, body) = call(
                        &server,
                        &method,
                        &format!("{}{query}", path.replace("{id}", &foreign)),
                        token,
                    )
                    .await?;
                    let (missing_status, missing_body) = call(
                        &server,
                        &method,
                        &format!("{}{query}", path.replace("{id}", &missing)),
                        token,
                    )
                    .await?;
                    compared += 1;
                    exports += usize::from(format.is_some());
                    if (status, normalized(&body, &foreign))
                        != (missing_status, normalized(&missing_body, &missing))
                    {
                        leaks.push(format!(
                        "{} {method} {path}{query} on {whose}'s {kind:?}: {status} {body} / missing: {missing_status} {missing_body}",
                        caller.name
                    ));
                    }
                }
            }
        }
    }
    // Every GET whose OpenAPI description takes a tenant or branch as a
    // query parameter: another district's branch (and, below the district,
    // the cousin branch) answers as a branch that does not exist.
    let mut scoped = Vec::new();
    for path in document["paths"].as_object().context("paths")?.keys() {
        let names = query_names(&document, path, "get");
        if let Some(scope) = names.iter().find(|n| *n == "tenant" || *n == "branch") {
            // A breakdown needs its kind, figures a period.
            let mut extra = String::new();
            if names.iter().any(|n| n == "by") {
                extra.push_str("&by=visits_by_kind");
            }
            if names.iter().any(|n| n == "year") {
                extra.push_str("&year=2026");
            }
            if names.iter().any(|n| n == "format") {
                scoped.push((
                    path.clone(),
                    scope.to_string(),
                    format!("{extra}&format=csv"),
                ));
            }
            scoped.push((path.clone(), scope.to_string(), extra));
        }
    }
    assert!(scoped.len() >= 6, "query-scoped routes found: {scoped:?}");
    // What is compared below is a real answer: the district's own staff
    // (its admin, or for the audit log its auditor) are served for their
    // own branch, and the exports are CSV.
    for (path, scope, extra) in &scoped {
        let wanted = if extra.contains("csv") {
            "text/csv"
        } else {
            "application/json"
        };
        let mut answers = Vec::new();
        for staff in &callers[..2] {
            let response = reqwest::Client::new()
                .get(format!(
                    "{}{path}?{scope}={}{extra}",
                    server.http_url(),
                    d.yingfeng.id
                ))
                .bearer_auth(staff.token.as_deref().unwrap_or_default())
                .send()
                .await?;
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let status = response.status();
            if status.is_success() && content_type.starts_with(wanted) {
                answers.clear();
                break;
            }
            answers.push(format!("{}: {status} {content_type}", staff.name));
        }
        assert!(answers.is_empty(), "{path}?{scope}=…{extra}: {answers:?}");
    }
    for caller in &callers {
        for (path, scope, extra) in &scoped {
            let mut outside = vec![("another district", far.branch.clone())];
            if caller.below_the_district {
                outside.push(("a cousin branch", cousin.branch.clone()));
            }
            for (whose, foreign) in outside {
                let missing = missing_id();
                let token = caller.token.as_deref();
                let (status, body) = call(
                    &server,
                    &Method::GET,
                    &format!("{path}?{scope}={foreign}{extra}"),
                    token,
                )
                .await?;
                let (missing_status, missing_body) = call(
                    &server,
                    &Method::GET,
                    &format!("{path}?{scope}={missing}{extra}"),
                    token,
                )
                .await?;
                compared += 1;
                exports += usize::from(extra.contains("csv"));
                if (status, normalized(&body, &foreign))
                    != (missing_status, normalized(&missing_body, &missing))
                {
                    leaks.push(format!(
                        "{} GET {path}?{scope}= {whose}'s branch: {status} {body} / missing: {missing_status} {missing_body}",
                        caller.name
                    ));
                }
            }
        }
    }
    eprintln!("tenancy: {compared} comparisons, {exports} of them of CSV exports");
    assert!(compared > 300, "only {compared} comparisons");
    assert!(exports > 50, "only {exports} comparisons of exports");
    assert!(
        leaks.is_empty(),
        "refusals that differ from a missing resource or tenant:\n{}",
        leaks.join("\n")
    );

    // Over the sync socket: another branch's documents, and one that does
    // not exist, get the same answer.
    let mut peer = TestPeer::connect(&server.ws_url(), &device.token, None).await?;
    let month: Month = "2026-11".parse()?;
    // The answer with the document's own id taken out.
    let answer = |outcome: SyncOutcome, id: DocumentId| match outcome {
        SyncOutcome::Unavailable(raw) => {
            match doorstep_protocol::wire::decode(&raw, &doorstep_protocol::wire::Limits::default())
            {
                Ok(doorstep_protocol::wire::Message::DocUnavailable {
                    sender_id,
                    target_id,
                    document_id,
                }) => format!(
                    "unavailable from {sender_id} to {target_id}, about the document asked for: {}",
                    document_id == id
                ),
                other => format!("{other:?}"),
            }
        }
        other => format!("{other:?}"),
    };
    let missing = DocumentId::from_bytes(*uuid::Uuid::now_v7().as_bytes());
    let expected = answer(peer.sync(missing).await?, missing);
    assert!(
        expected.starts_with("unavailable"),
        "a missing document: {expected}"
    );
    for (whose, branch) in [
        ("a cousin branch", d.fenghuangting.id),
        ("another district", elsewhere_branch.id),
    ] {
        for document in [
            DocumentId::roster(branch),
            DocumentId::monthly_log(branch, month),
        ] {
            let outcome = answer(peer.sync(document).await?, document);
            assert_eq!(
                outcome, expected,
                "{whose}'s {document} answers otherwise than a missing one"
            );
        }
    }
    assert_eq!(
        peer.sync(DocumentId::roster(d.yingfeng.id)).await?,
        SyncOutcome::Synced
    );
    Ok(())
}
