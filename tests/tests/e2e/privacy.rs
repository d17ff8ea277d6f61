//! Names stay in the branch: an upper level reaches a name only through
//! the branch secretary's approval or a drill-down grant, users set their
//! own passwords, every attempt is in the audit log, and a revoked device
//! is cut off whether or not its socket has joined.

use std::time::Duration;

use anyhow::Context;
use doorstep_protocol::DocumentId;
use doorstep_server::store::NewInvitation;
use doorstep_server::tenancy::Role;
use doorstep_tests::{District, SyncOutcome, TestPeer, TestServer};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::{add_member, connected_device};

const SECRET_NAME: &str = "王秘密";

async fn get(server: &TestServer, token: &str, path: &str) -> anyhow::Result<(StatusCode, String)> {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.http_url()))
        .bearer_auth(token)
        .send()
        .await?;
    Ok((response.status(), response.text().await?))
}

async fn get_json(
    server: &TestServer,
    token: &str,
    path: &str,
) -> anyhow::Result<(StatusCode, Value)> {
    let (status, text) = get(server, token, path).await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

async fn post(
    server: &TestServer,
    token: &str,
    path: &str,
    body: Value,
) -> anyhow::Result<(StatusCode, Value)> {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", server.http_url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

async fn log_in(server: &TestServer, username: &str, password: &str) -> anyhow::Result<StatusCode> {
    let (status, _) = post(
        server,
        "",
        "/api/v1/login",
        json!({ "username": username, "password": password }),
    )
    .await?;
    Ok(status)
}

/// A district whose Yingfeng branch has a secretary and a member named
/// [`SECRET_NAME`], synced by one of its devices.
struct Branch {
    server: TestServer,
    d: District,
    secretary: String,
}

async fn branch_with_a_member() -> anyhow::Result<Branch> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let secretary = server
        .login_as("secretary", Role::BranchSecretary, d.yingfeng.id)
        .await?;
    let mut phone = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "branch phone").await?,
        None,
    )
    .await?;
    add_member(&mut phone, SECRET_NAME);
    assert_eq!(phone.peer.sync(phone.roster).await?, SyncOutcome::Synced);
    let (status, body) = get(
        &server,
        &secretary,
        &format!("/api/v1/branches/{}/members", d.yingfeng.id),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(SECRET_NAME), "the secretary sees names");
    Ok(Branch {
        server,
        d,
        secretary,
    })
}

/// The audit log as `token` reads it (its own scope, or `query`).
async fn audit(server: &TestServer, token: &str, query: &str) -> anyhow::Result<Vec<Value>> {
    let (status, body) = get_json(server, token, &format!("/api/v1/audit{query}")).await?;
    anyhow::ensure!(status == StatusCode::OK, "audit read: {status} {body}");
    Ok(body.as_array().context("a list")?.clone())
}

/// The entries by `actor` for `action` with `outcome`.
fn entries<'a>(log: &'a [Value], actor: &str, action: &str, outcome: &str) -> Vec<&'a Value> {
    log.iter()
        .filter(|e| e["actor"] == actor && e["action"] == action && e["outcome"] == outcome)
        .collect()
}

#[tokio::test]
async fn an_upper_level_admin_gets_no_names_by_any_route_and_every_attempt_is_audited()
-> anyhow::Result<()> {
    let Branch {
        server,
        d,
        secretary,
    } = branch_with_a_member().await?;
    let branch = d.yingfeng.id;
    let auditor = server
        .login_as("auditor", Role::DistrictAuditor, d.district.id)
        .await?;
    for (name, role, tenant) in [
        ("district-admin", Role::DistrictAdmin, d.district.id),
        ("xiangyang-admin", Role::SubDistrictAdmin, d.xiangyang.id),
    ] {
        let admin = server.login_as(name, role, tenant).await?;

        // An enrollment code from above is only a request, and its code
        // is never the requester's: the branch's approver receives it.
        let (status, request) = post(
            &server,
            &admin,
            "/api/v1/enrollment-codes",
            json!({ "branch_id": branch.to_string(), "label": "an official's phone" }),
        )
        .await?;
        assert_eq!(status, StatusCode::CREATED, "{request}");
        assert_eq!(request["status"], "pending_approval");
        assert!(request.get("code").is_none(), "{request}");
        // Approving one's own request is the branch's business.
        let (status, _) = post(
            &server,
            &admin,
            &format!(
                "/api/v1/enrollment-requests/{}/approve",
                request["id"].as_str().context("id")?
            ),
            json!({}),
        )
        .await?;
        assert_eq!(status, StatusCode::FORBIDDEN);

        // A secretary they create has no password they chose, and cannot
        // be activated until the branch approves.
        let invitee = format!("{name}-secretary");
        let (status, _) = post(
            &server,
            &admin,
            "/api/v1/users",
            json!({
                "username": invitee, "password": "chosen by the admin", "role": "branch_secretary",
                "tenant_id": branch.to_string()
            }),
        )
        .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, invited) = post(
            &server,
            &admin,
            "/api/v1/users",
            json!({ "username": invitee, "role": "branch_secretary", "tenant_id": branch.to_string() }),
        )
        .await?;
        assert_eq!(status, StatusCode::CREATED, "{invited}");
        assert_eq!(invited["invitation"]["status"], "pending_approval");
        assert!(invited.get("activation_code").is_none(), "{invited}");
        let password = "the admin's own password";
        assert_eq!(
            log_in(&server, &invitee, password).await?,
            StatusCode::UNAUTHORIZED
        );
        let (status, _) = post(
            &server,
            &admin,
            &format!(
                "/api/v1/invitations/{}/approve",
                invited["invitation"]["id"].as_str().context("id")?
            ),
            json!({}),
        )
        .await?;
        assert_eq!(status, StatusCode::FORBIDDEN);

        // The named endpoints, JSON and CSV, without a grant.
        for path in [
            format!("/api/v1/branches/{branch}/members"),
            format!("/api/v1/branches/{branch}/members?format=csv"),
            format!("/api/v1/branches/{branch}/invalid-records"),
            format!("/api/v1/branches/{branch}/invalid-records?format=csv"),
        ] {
            let (status, body) = get(&server, &admin, &path).await?;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
            assert!(!body.contains(SECRET_NAME), "{path}");
        }
        // Listings they may see carry no names and no secrets.
        for path in [
            "/api/v1/users",
            "/api/v1/devices",
            "/api/v1/enrollment-requests?status=all",
            "/api/v1/invitations?status=all",
        ] {
            let (status, body) = get(&server, &admin, path).await?;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(!body.contains(SECRET_NAME), "{path}");
            assert!(!body.contains("token"), "{path}");
        }
        // Their login token is no device token.
        let err = TestPeer::connect(&server.ws_url(), &admin, None)
            .await
            .expect_err("a login token does not sync");
        assert!(err.to_string().contains("4401"), "{err}");
        // Nor do they read the audit log.
        assert_eq!(
            get(&server, &admin, "/api/v1/audit").await?.0,
            StatusCode::FORBIDDEN
        );

        // The branch sees every attempt.
        let log = audit(&server, &secretary, "").await?;
        assert_eq!(
            entries(&log, name, "enrollment_request.create", "ok").len(),
            1
        );
        assert_eq!(
            entries(&log, name, "enrollment_request.approve", "refused").len(),
            1
        );
        assert_eq!(entries(&log, name, "user.invite", "ok").len(), 1);
        assert_eq!(
            entries(&log, name, "invitation.approve", "refused").len(),
            1
        );
        assert!(
            log.iter().any(|e| e["action"] == "login"
                && e["subject"] == invitee.as_str()
                && e["outcome"] == "refused"),
            "the login attempt"
        );
        assert_eq!(entries(&log, name, "members.read", "refused").len(), 2);
        assert_eq!(
            entries(&log, name, "invalid_records.read", "refused").len(),
            2
        );
        for entry in &log {
            assert_eq!(entry["tenant_id"], branch.to_string());
            assert!(!entry.to_string().contains(SECRET_NAME));
        }
        // The district's auditor sees the /sync attempt too (it concerns no
        // branch: it is about the admin's own tenant).
        let log = audit(&server, &auditor, "").await?;
        assert_eq!(entries(&log, name, "sync.connect", "refused").len(), 1);
    }
    Ok(())
}

#[tokio::test]
async fn the_branch_secretary_approves_or_denies_a_device_an_upper_level_asked_for()
-> anyhow::Result<()> {
    let Branch {
        server,
        d,
        secretary,
    } = branch_with_a_member().await?;
    let branch = d.yingfeng.id;
    let admin = server
        .login_as("xiangyang-admin", Role::SubDistrictAdmin, d.xiangyang.id)
        .await?;
    let ask = |label: &'static str| {
        let (server, admin) = (&server, &admin);
        async move {
            let (status, request) = post(
                server,
                admin,
                "/api/v1/enrollment-codes",
                json!({ "branch_id": branch.to_string(), "label": label }),
            )
            .await?;
            anyhow::ensure!(status == StatusCode::CREATED, "{request}");
            anyhow::Ok(request)
        }
    };
    let approved = ask("visiting volunteer's phone").await?;
    let denied = ask("a phone nobody vouches for").await?;
    assert!(approved.get("code").is_none() && denied.get("code").is_none());

    // The secretary sees both waiting, with the labels the admin gave.
    let (status, pending) = get_json(
        &server,
        &secretary,
        &format!("/api/v1/enrollment-requests?branch={branch}"),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    let pending = pending.as_array().context("list")?;
    assert_eq!(pending.len(), 2);
    let waiting = pending
        .iter()
        .find(|r| r["id"] == approved["id"])
        .context("the request")?;
    assert_eq!(waiting["created_by"], "xiangyang-admin");
    assert_eq!(waiting["label"], "visiting volunteer's phone");
    assert!(waiting.get("code").is_none(), "listings never show a code");

    let (status, decided) = post(
        &server,
        &secretary,
        &format!(
            "/api/v1/enrollment-requests/{}/approve",
            approved["id"].as_str().context("id")?
        ),
        json!({}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{decided}");
    assert_eq!(decided["status"], "ready");
    assert_eq!(decided["decided_by"], "secretary");
    // The approval carries the code, for the secretary to hand over.
    let code = decided["code"].as_str().context("the approver's code")?;
    let (status, denial) = post(
        &server,
        &secretary,
        &format!(
            "/api/v1/enrollment-requests/{}/deny",
            denied["id"].as_str().context("id")?
        ),
        json!({}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert!(denial.get("code").is_none(), "a denial makes no code");

    // Now the device enrolls, once, and syncs the roster.
    let (status, enrolled) = post(&server, "", "/api/v1/enroll", json!({ "code": code })).await?;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    assert_eq!(enrolled["status"], "enrolled");
    assert_eq!(
        post(&server, "", "/api/v1/enroll", json!({ "code": code }))
            .await?
            .0,
        StatusCode::CONFLICT
    );

    let enrolled: doorstep_tests::Enrolled = serde_json::from_value(enrolled)?;
    let device_actor = format!("device:{}", enrolled.device_id);
    let mut device = connected_device(&server.http_url(), &server.ws_url(), enrolled, None).await?;
    add_member(&mut device, "李四");
    assert_eq!(device.peer.sync(device.roster).await?, SyncOutcome::Synced);

    let log = audit(&server, &secretary, &format!("?branch={branch}")).await?;
    assert_eq!(
        entries(&log, "secretary", "enrollment_request.approve", "ok").len(),
        1
    );
    assert_eq!(
        entries(&log, "secretary", "enrollment_request.deny", "ok").len(),
        1
    );
    assert_eq!(entries(&log, &device_actor, "device.enroll", "ok").len(), 1);
    assert_eq!(
        entries(&log, &device_actor, "roster.open", "ok").len(),
        1,
        "once per connection, however many messages"
    );
    // A second connection opening the roster within the interval is not a
    // second row: a device reconnecting in a loop cannot grow the log.
    let token = device.enrolled.token.clone();
    let mut again = TestPeer::connect(&server.ws_url(), &token, None).await?;
    assert_eq!(again.sync(device.roster).await?, SyncOutcome::Synced);
    let log = audit(&server, &secretary, "").await?;
    assert_eq!(entries(&log, &device_actor, "roster.open", "ok").len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_drill_down_grant_opens_names_until_it_ends_and_the_branch_sees_it() -> anyhow::Result<()>
{
    let Branch {
        server,
        d,
        secretary,
    } = branch_with_a_member().await?;
    let branch = d.yingfeng.id;
    let admin = server
        .login_as("xiangyang-admin", Role::SubDistrictAdmin, d.xiangyang.id)
        .await?;
    let members = format!("/api/v1/branches/{branch}/members");
    let grants = format!("/api/v1/branches/{branch}/grants");
    assert_eq!(
        get(&server, &admin, &members).await?.0,
        StatusCode::FORBIDDEN
    );

    // A grant needs a reason and a bounded life, on a branch in scope, by
    // an admin above the branch.
    for body in [
        json!({ "reason": "audit", "duration_seconds": 60 }),
        json!({ "reason": "follow up the hardship cases", "duration_seconds": 7 * 24 * 3600 + 1 }),
        json!({ "reason": "follow up the hardship cases", "duration_seconds": 0 }),
    ] {
        assert_eq!(
            post(&server, &admin, &grants, body).await?.0,
            StatusCode::BAD_REQUEST
        );
    }
    let reason = "follow up the Spring Festival hardship visits";
    assert_eq!(
        post(
            &server,
            &admin,
            &format!("/api/v1/branches/{}/grants", d.fenghuangting.id),
            json!({ "reason": reason }),
        )
        .await?
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post(&server, &secretary, &grants, json!({ "reason": reason }))
            .await?
            .0,
        StatusCode::FORBIDDEN
    );

    let (status, grant) = post(
        &server,
        &admin,
        &grants,
        json!({ "reason": reason, "duration_seconds": 2 }),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{grant}");
    assert_eq!(grant["active"], true);
    let (status, body) = get(&server, &admin, &members).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(SECRET_NAME));
    let (status, csv) = get(&server, &admin, &format!("{members}?format=csv")).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(csv.contains(SECRET_NAME));

    // The branch sees the grant, who holds it and why.
    let (status, listed) = get_json(&server, &secretary, &grants).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed[0]["id"], grant["id"]);
    assert_eq!(listed[0]["username"], "xiangyang-admin");
    assert_eq!(listed[0]["reason"], reason);
    assert_eq!(listed[0]["active"], true);

    // It ends by itself.
    let expires_at = grant["expires_at"].as_i64().context("expiry")?;
    let now = doorstep_server::store::now_ms();
    tokio::time::sleep(Duration::from_millis(
        (expires_at - now).max(0) as u64 + 100,
    ))
    .await;
    let (status, body) = get(&server, &admin, &members).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!body.contains(SECRET_NAME));
    let (_, listed) = get_json(&server, &secretary, &grants).await?;
    assert_eq!(listed[0]["active"], false);

    // Or when the secretary ends it.
    let (_, second) = post(&server, &admin, &grants, json!({ "reason": reason })).await?;
    assert_eq!(get(&server, &admin, &members).await?.0, StatusCode::OK);
    let (status, revoked) = post(
        &server,
        &secretary,
        &format!(
            "/api/v1/grants/{}/revoke",
            second["id"].as_str().context("id")?
        ),
        json!({}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(revoked["revoked"], true);
    assert_eq!(
        get(&server, &admin, &members).await?.0,
        StatusCode::FORBIDDEN
    );

    // A grant is the holder's own: another admin above gets nothing from it.
    let other = server
        .login_as("district-admin", Role::DistrictAdmin, d.district.id)
        .await?;
    let (_, _third) = post(&server, &admin, &grants, json!({ "reason": reason })).await?;
    assert_eq!(
        get(&server, &other, &members).await?.0,
        StatusCode::FORBIDDEN
    );

    let log = audit(&server, &secretary, "").await?;
    assert_eq!(
        entries(&log, "xiangyang-admin", "grant.create", "ok").len(),
        3
    );
    let reads = entries(&log, "xiangyang-admin", "members.read", "ok");
    assert_eq!(reads.len(), 3);
    assert!(reads.iter().any(|e| {
        e["detail"].as_str().is_some_and(|d| {
            d.starts_with("csv") && d.contains(grant["id"].as_str().unwrap_or("?"))
        })
    }));
    assert_eq!(
        entries(&log, "xiangyang-admin", "members.read", "refused").len(),
        3
    );
    assert_eq!(
        entries(&log, "district-admin", "members.read", "refused").len(),
        1
    );
    assert_eq!(entries(&log, "secretary", "grant.revoke", "ok").len(), 1);
    Ok(())
}

#[tokio::test]
async fn an_invitation_works_once_expires_and_the_invitee_sets_the_password() -> anyhow::Result<()>
{
    let Branch {
        server,
        d,
        secretary,
    } = branch_with_a_member().await?;
    let branch = d.yingfeng.id;

    // The secretary invites a volunteer: no approval needed, no password given.
    let (status, invited) = post(
        &server,
        &secretary,
        "/api/v1/users",
        json!({ "username": "xiaoli", "role": "volunteer", "tenant_id": branch.to_string() }),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{invited}");
    assert_eq!(invited["invitation"]["status"], "ready");
    let code = invited["activation_code"].as_str().context("code")?;
    assert_eq!(
        log_in(&server, "xiaoli", "any password at all").await?,
        StatusCode::UNAUTHORIZED
    );

    // Wrong username, too short a password: refused, and the code still works.
    for body in [
        json!({ "code": code, "username": "someone-else", "password": "a long enough password" }),
        json!({ "code": code, "password": "short" }),
        json!({ "code": "AAAA-BBBB-CCCC", "password": "a long enough password" }),
    ] {
        assert_eq!(
            post(&server, "", "/api/v1/activate", body).await?.0,
            StatusCode::BAD_REQUEST
        );
    }
    let password = "xiaoli's own password";
    let (status, activated) = post(
        &server,
        "",
        "/api/v1/activate",
        json!({ "code": code.to_lowercase(), "username": "xiaoli", "password": password }),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{activated}");
    assert_eq!(activated["user"]["username"], "xiaoli");
    assert_eq!(log_in(&server, "xiaoli", password).await?, StatusCode::OK);
    // Once only: nobody can reset it with the same code.
    let (status, _) = post(
        &server,
        "",
        "/api/v1/activate",
        json!({ "code": code, "password": "someone else's password" }),
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(log_in(&server, "xiaoli", password).await?, StatusCode::OK);

    // An expired invitation does nothing.
    let expired = doorstep_server::auth::Secret::generate_code();
    server
        .store
        .invite_user(
            "late",
            Role::Volunteer,
            branch,
            NewInvitation {
                code_hash: &expired.hash(),
                created_by: "test",
                expires_at: doorstep_server::store::now_ms() - 1,
                needs_approval: false,
            },
            doorstep_server::store::AuditEntry::new("test", "user.invite", "late"),
        )
        .await?;
    let (status, _) = post(
        &server,
        "",
        "/api/v1/activate",
        json!({ "code": expired.expose(), "password": "a long enough password" }),
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A second secretary invited from above waits for the branch's approval.
    let admin = server
        .login_as("xiangyang-admin", Role::SubDistrictAdmin, d.xiangyang.id)
        .await?;
    let (_, invited) = post(
        &server,
        &admin,
        "/api/v1/users",
        json!({ "username": "deputy", "role": "branch_secretary", "tenant_id": branch.to_string() }),
    )
    .await?;
    assert!(invited.get("activation_code").is_none(), "{invited}");
    let password = "the deputy's own password";
    let (status, pending) = get_json(&server, &secretary, "/api/v1/invitations").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pending[0]["username"], "deputy");
    let (status, approved) = post(
        &server,
        &secretary,
        &format!(
            "/api/v1/invitations/{}/approve",
            pending[0]["id"].as_str().context("id")?
        ),
        json!({}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{approved}");
    // The approving secretary hands the code to the deputy.
    let code = approved["activation_code"].as_str().context("code")?;
    let activate = json!({ "code": code, "password": password });
    assert_eq!(
        post(&server, "", "/api/v1/activate", activate).await?.0,
        StatusCode::OK
    );
    assert_eq!(log_in(&server, "deputy", password).await?, StatusCode::OK);

    let log = audit(&server, &secretary, "").await?;
    assert_eq!(entries(&log, "secretary", "user.invite", "ok").len(), 1);
    assert_eq!(entries(&log, "xiaoli", "user.activate", "ok").len(), 1);
    assert_eq!(
        entries(&log, "secretary", "invitation.approve", "ok").len(),
        1
    );
    assert_eq!(entries(&log, "deputy", "user.activate", "ok").len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_revoked_devices_socket_closes_within_a_second_whether_or_not_it_joined()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let secretary = server
        .login_as("secretary", Role::BranchSecretary, d.yingfeng.id)
        .await?;
    let revoke = |device: String| {
        let (server, secretary) = (&server, &secretary);
        async move {
            let (status, body) = post(
                server,
                secretary,
                &format!("/api/v1/devices/{device}/revoke"),
                json!({}),
            )
            .await?;
            anyhow::ensure!(status == StatusCode::OK, "{body}");
            anyhow::Ok(body)
        }
    };

    // Upgraded, never joined.
    let silent = server.enroll(d.yingfeng.id, "silent phone").await?;
    let mut request = server.ws_url().into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {}", silent.token).parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    // The server registers the socket as soon as the upgrade completes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = revoke(silent.device_id.clone()).await?;
    assert_eq!(
        answer["closed_connections"], 1,
        "the unjoined socket is counted"
    );
    let closed = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(frame) = socket.next().await {
            if let WsMessage::Close(frame) = frame? {
                return anyhow::Ok(frame.map(|f| u16::from(f.code)));
            }
        }
        anyhow::Ok(None)
    })
    .await
    .context("the unjoined socket was not closed within 1 s")??;
    assert_eq!(closed, Some(4403));

    // Joined.
    let joined = server.enroll(d.yingfeng.id, "joined phone").await?;
    let roster = DocumentId::roster(d.yingfeng.id);
    let mut peer = TestPeer::connect(&server.ws_url(), &joined.token, None).await?;
    assert_eq!(peer.sync(roster).await?, SyncOutcome::Synced);
    revoke(joined.device_id.clone()).await?;
    let (code, _) = peer.closed(Duration::from_secs(1)).await?;
    assert_eq!(code, 4403);

    let log = audit(&server, &secretary, "").await?;
    assert_eq!(entries(&log, "secretary", "device.revoke", "ok").len(), 2);
    Ok(())
}

#[tokio::test]
async fn only_the_branch_secretary_and_the_district_auditor_read_the_audit_log()
-> anyhow::Result<()> {
    let Branch {
        server,
        d,
        secretary,
    } = branch_with_a_member().await?;
    let auditor = server
        .login_as("auditor", Role::DistrictAuditor, d.district.id)
        .await?;
    for (name, role, tenant) in [
        ("district-admin", Role::DistrictAdmin, d.district.id),
        ("xiangyang-admin", Role::SubDistrictAdmin, d.xiangyang.id),
        ("volunteer", Role::Volunteer, d.yingfeng.id),
    ] {
        let token = server.login_as(name, role, tenant).await?;
        for path in ["/api/v1/audit", "/api/v1/audit?format=csv"] {
            assert_eq!(
                get(&server, &token, path).await?.0,
                StatusCode::FORBIDDEN,
                "{name}"
            );
        }
    }
    // An auditor administers nothing and reads no names.
    let (status, _) = post(
        &server,
        &auditor,
        "/api/v1/enrollment-codes",
        json!({ "branch_id": d.yingfeng.id.to_string(), "label": "x" }),
    )
    .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = get(
        &server,
        &auditor,
        &format!("/api/v1/branches/{}/members", d.yingfeng.id),
    )
    .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!body.contains(SECRET_NAME));

    // A secretary reads their own branch only.
    let other = format!("?branch={}", d.fenghuangting.id);
    assert_eq!(
        get(&server, &secretary, &format!("/api/v1/audit{other}"))
            .await?
            .0,
        StatusCode::NOT_FOUND
    );
    let own = audit(&server, &secretary, "").await?;
    assert!(
        own.iter()
            .all(|e| e["tenant_id"] == d.yingfeng.id.to_string())
    );
    assert!(!entries(&own, "secretary", "members.read", "ok").is_empty());

    // The auditor reads the whole district, or one branch of it, as CSV too.
    let all = audit(&server, &auditor, "").await?;
    assert!(
        all.len() > own.len(),
        "the district's log holds more than one branch's"
    );
    assert!(all.iter().any(|e| e["action"] == "members.read"
        && e["actor"] == "auditor"
        && e["outcome"] == "refused"));
    let one = audit(&server, &auditor, &format!("?branch={}", d.yingfeng.id)).await?;
    assert!(
        one.iter()
            .all(|e| e["tenant_id"] == d.yingfeng.id.to_string())
    );
    let page = audit(&server, &auditor, "?limit=2").await?;
    assert_eq!(page.len(), 2);
    let before = page[1]["id"].as_i64().context("id")?;
    let next = audit(&server, &auditor, &format!("?limit=2&before={before}")).await?;
    assert!(next.iter().all(|e| e["id"].as_i64() < Some(before)));
    let (status, csv) = get(&server, &auditor, "/api/v1/audit?format=csv").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(
        csv.starts_with("\u{feff}id,at,actor,action,subject,detail,tenant_id,outcome"),
        "{csv}"
    );
    assert!(!csv.contains(SECRET_NAME));

    // And the operator, with the CLI.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_doorstep"))
        .args(server.database_args())
        .args(["--json", "audit", "list", "--branch"])
        .arg(d.yingfeng.id.to_string())
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: Vec<Value> = serde_json::from_slice(&output.stdout)?;
    assert!(!listed.is_empty());
    assert!(
        listed
            .iter()
            .all(|e| e["tenant_id"] == d.yingfeng.id.to_string())
    );
    Ok(())
}
