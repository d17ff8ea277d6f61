//! The JSON API: login, scope, enrollment, and what a refusal looks like.

use doorstep_server::tenancy::Role;
use doorstep_tests::TestServer;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn get(server: &TestServer, token: &str, path: &str) -> anyhow::Result<(StatusCode, Value)> {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.http_url()))
        .bearer_auth(token)
        .send()
        .await?;
    let status = response.status();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
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

#[tokio::test]
async fn a_sub_district_admin_manages_its_own_subtree_only() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let admin = server
        .login_as("xiangyang-admin", Role::SubDistrictAdmin, d.xiangyang.id)
        .await?;

    let (status, tenants) = get(&server, &admin, "/api/v1/tenants").await?;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = tenants
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, vec!["向阳街道", "迎风怡丽社区"]);

    // A new branch under its own sub-district, then a code for it.
    let (status, branch) = post(
        &server,
        &admin,
        "/api/v1/tenants",
        json!({
            "name": "市政管委支部", "level": "branch", "parent_id": d.xiangyang.id.to_string()
        }),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{branch}");
    let (status, code) = post(
        &server,
        &admin,
        "/api/v1/enrollment-codes",
        json!({
            "branch_id": branch["id"], "label": "volunteer phone"
        }),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED);
    // An upper level's code is a request: the branch approves it first (this
    // new branch has no secretary yet, so the operator does).
    assert_eq!(code["status"], "pending_approval");
    // Whoever asks from above never holds the code: the approver gets it.
    assert!(code.get("code").is_none(), "{code}");
    let request = code["id"].as_str().expect("request id").parse()?;
    let waiting = server
        .store
        .enrollment_code(request)
        .await?
        .expect("the request");
    let permit = doorstep_server::admin::authorize_operator(
        &server.store,
        doorstep_server::authority::Action::DecideEnrollmentRequest {
            code: &waiting,
            approve: true,
        },
    )
    .await?;
    let approved =
        doorstep_server::admin::decide_enrollment_code(&server.store, &permit, &waiting, true)
            .await?
            .expect("approved");
    let code = approved.code.expect("the approver receives the code");

    // The code enrolls exactly once.
    let (status, enrolled) = post(
        &server,
        "",
        "/api/v1/enroll",
        json!({ "code": code.to_lowercase() }),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    assert_eq!(enrolled["branch_id"], branch["id"]);
    assert_eq!(enrolled["documents"][0]["kind"], "roster");
    let (status, again) = post(&server, "", "/api/v1/enroll", json!({ "code": code })).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(again["code"], "enrollment_code_used");

    // Another sub-district's branch is refused exactly like a missing one.
    let foreign = post(
        &server,
        &admin,
        "/api/v1/enrollment-codes",
        json!({
            "branch_id": d.fenghuangting.id.to_string(), "label": "x"
        }),
    )
    .await?;
    let missing = post(
        &server,
        &admin,
        "/api/v1/enrollment-codes",
        json!({
            "branch_id": uuid::Uuid::now_v7().to_string(), "label": "x"
        }),
    )
    .await?;
    assert_eq!(foreign.0, StatusCode::NOT_FOUND);
    assert_eq!(foreign, missing);

    // It cannot make a district admin.
    let (status, _) = post(
        &server,
        &admin,
        "/api/v1/users",
        json!({
            "username": "usurper", "password": "a long password", "role": "district_admin",
            "tenant_id": d.district.id.to_string()
        }),
    )
    .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nor choose anyone's password: users are invited and set their own.
    let (status, _) = post(
        &server,
        &admin,
        "/api/v1/users",
        json!({
            "username": "sec", "password": "a long password", "role": "branch_secretary",
            "tenant_id": d.yingfeng.id.to_string()
        }),
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, invited) = post(
        &server,
        &admin,
        "/api/v1/users",
        json!({
            "username": "sec", "role": "branch_secretary", "tenant_id": d.yingfeng.id.to_string()
        }),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{invited}");
    // A secretary invited from above: the code goes to the branch's approver.
    assert!(invited.get("activation_code").is_none(), "{invited}");
    Ok(())
}

#[tokio::test]
async fn devices_are_listed_and_revoked_within_scope() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let ours = server.enroll(d.yingfeng.id, "ours").await?;
    let theirs = server.enroll(d.fenghuangting.id, "theirs").await?;
    let secretary = server
        .login_as("sec", Role::BranchSecretary, d.yingfeng.id)
        .await?;

    let (_, devices) = get(&server, &secretary, "/api/v1/devices").await?;
    let ids: Vec<&str> = devices
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, vec![ours.device_id.as_str()]);
    let (status, documents) = get(
        &server,
        &secretary,
        &format!("/api/v1/devices/{}/documents", ours.device_id),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        documents[0]["url"],
        format!("automerge:{}", ours.documents[0].document_id)
    );

    let (status, _) = post(
        &server,
        &secretary,
        &format!("/api/v1/devices/{}/revoke", theirs.device_id),
        json!({}),
    )
    .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&server, &theirs.token, "/api/v1/device").await?;
    assert_eq!(status, StatusCode::OK, "their device is untouched");

    // A volunteer can log in but administers nothing.
    let volunteer = server
        .login_as("vol", Role::Volunteer, d.yingfeng.id)
        .await?;
    let (status, _) = get(&server, &volunteer, "/api/v1/devices").await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    Ok(())
}

#[tokio::test]
async fn bad_credentials_are_refused_without_detail() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    server
        .login_as("admin", Role::DistrictAdmin, d.district.id)
        .await?;
    for (user, password) in [("admin", "wrong password"), ("nobody", "whatever it is")] {
        let (status, body) = post(
            &server,
            "",
            "/api/v1/login",
            json!({ "username": user, "password": password }),
        )
        .await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, json!({ "error": "authentication required" }));
    }
    let (status, _) = get(&server, "expired-or-made-up", "/api/v1/me").await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    Ok(())
}
