//! The authority rule (server/src/authority.rs, ARCHITECTURE.md "Authority
//! over names"): an upper-level person reaches a branch's names only through
//! a grant the branch sees, that expires, and that its holder cannot hide,
//! disable the witnesses of, or approve for themselves. One regression test
//! per finding of the third review's section 2, then a matrix that walks
//! every administrative action by every role and checks the rule after.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use doorstep_protocol::TenantId;
use doorstep_server::store::AuditEntry;
use doorstep_server::tenancy::{Level, Role};
use doorstep_tests::{District, SyncOutcome, TestServer};
use futures_util::future::BoxFuture;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{add_member, connected_device};

const SECRET_NAME: &str = "王秘密";
const LABEL: &str = "Li Na's phone";
const PASSWORD: &str = "a long enough password";

async fn call(
    server: &TestServer,
    method: reqwest::Method,
    token: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, Value, String)> {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", server.http_url()))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status();
    let text = response.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    ))
}

async fn get(server: &TestServer, token: &str, path: &str) -> anyhow::Result<(StatusCode, Value)> {
    let (status, body, _) = call(server, reqwest::Method::GET, token, path, None).await?;
    Ok((status, body))
}

async fn get_text(
    server: &TestServer,
    token: &str,
    path: &str,
) -> anyhow::Result<(StatusCode, String)> {
    let (status, _, text) = call(server, reqwest::Method::GET, token, path, None).await?;
    Ok((status, text))
}

async fn post(
    server: &TestServer,
    token: &str,
    path: &str,
    body: Value,
) -> anyhow::Result<(StatusCode, Value)> {
    let (status, body, _) = call(server, reqwest::Method::POST, token, path, Some(body)).await?;
    Ok((status, body))
}

/// The audit log as `token` reads it.
async fn audit(server: &TestServer, token: &str, query: &str) -> anyhow::Result<Vec<Value>> {
    let (status, body) = get(server, token, &format!("/api/v1/audit{query}")).await?;
    anyhow::ensure!(status == StatusCode::OK, "audit read: {status} {body}");
    Ok(body.as_array().context("a list")?.clone())
}

async fn user_id(server: &TestServer, username: &str) -> anyhow::Result<String> {
    Ok(server
        .store
        .login_account(username)
        .await?
        .with_context(|| format!("no user {username}"))?
        .user
        .id
        .to_string())
}

async fn is_disabled(server: &TestServer, username: &str) -> anyhow::Result<bool> {
    Ok(server
        .store
        .login_account(username)
        .await?
        .with_context(|| format!("no user {username}"))?
        .disabled)
}

/// Runs the `doorstep` binary on the server's database (the operator).
async fn doorstep(server: &TestServer, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_doorstep"))
        .args(server.database_args())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "doorstep {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// A district whose Yingfeng branch has a secretary, a volunteer account,
/// a device labelled [`LABEL`] and a member named [`SECRET_NAME`]; above it
/// two district admins, an auditor and Xiangyang's admin.
struct World {
    server: TestServer,
    d: District,
    secretary: String,
    auditor: String,
    admin: String,
    peer_admin: String,
    sub_admin: String,
    volunteer: String,
}

async fn world() -> anyhow::Result<World> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let secretary = server
        .login_as("secretary", Role::BranchSecretary, d.yingfeng.id)
        .await?;
    let mut phone = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, LABEL).await?,
        None,
    )
    .await?;
    add_member(&mut phone, SECRET_NAME);
    assert_eq!(phone.peer.sync(phone.roster).await?, SyncOutcome::Synced);
    let auditor = server
        .login_as("auditor", Role::DistrictAuditor, d.district.id)
        .await?;
    let admin = server
        .login_as("district-admin", Role::DistrictAdmin, d.district.id)
        .await?;
    let peer_admin = server
        .login_as("district-admin-2", Role::DistrictAdmin, d.district.id)
        .await?;
    let sub_admin = server
        .login_as("xiangyang-admin", Role::SubDistrictAdmin, d.xiangyang.id)
        .await?;
    let volunteer = server
        .login_as("volunteer", Role::Volunteer, d.yingfeng.id)
        .await?;
    Ok(World {
        server,
        d,
        secretary,
        auditor,
        admin,
        peer_admin,
        sub_admin,
        volunteer,
    })
}

fn members(branch: TenantId) -> String {
    format!("/api/v1/branches/{branch}/members")
}

#[tokio::test]
async fn authority_a_district_admin_cannot_disable_the_witnesses_of_their_access_and_tries_are_seen()
-> anyhow::Result<()> {
    let w = world().await?;
    let server = &w.server;
    // Everyone who would see the admin read names: the auditor, the
    // branch's secretary, the peer admin (who sees the grants).
    for witness in ["auditor", "secretary", "district-admin-2"] {
        let id = user_id(server, witness).await?;
        for verb in ["disable", "enable"] {
            let (status, body) = post(
                server,
                &w.admin,
                &format!("/api/v1/users/{id}/{verb}"),
                json!({}),
            )
            .await?;
            assert_eq!(status, StatusCode::FORBIDDEN, "{verb} {witness}: {body}");
        }
        assert!(!is_disabled(server, witness).await?, "{witness}");
    }
    // Xiangyang's admin cannot disable the branch's secretary either.
    let secretary_id = user_id(server, "secretary").await?;
    let (status, _) = post(
        server,
        &w.sub_admin,
        &format!("/api/v1/users/{secretary_id}/disable"),
        json!({}),
    )
    .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // So the witnesses still work, and the grant that follows is seen.
    let (status, grant) = post(
        server,
        &w.admin,
        &format!("/api/v1/branches/{}/grants", w.d.yingfeng.id),
        json!({ "reason": "reading names once the witnesses are gone" }),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{grant}");
    let (status, _) = get(server, &w.admin, &members(w.d.yingfeng.id)).await?;
    assert_eq!(status, StatusCode::OK);
    let branch_log = audit(server, &w.secretary, "").await?;
    assert!(
        branch_log
            .iter()
            .any(|e| e["action"] == "grant.create" && e["actor"] == "district-admin")
    );
    assert!(branch_log.iter().any(|e| e["action"] == "members.read"
        && e["actor"] == "district-admin"
        && e["outcome"] == "ok"));
    // The attempts are in the log of the target's tenant: the branch sees
    // the attempt on its secretary, the auditor the ones at the district.
    assert!(branch_log.iter().any(|e| e["action"] == "user.disable"
        && e["subject"] == "secretary"
        && e["actor"] == "xiangyang-admin"
        && e["outcome"] == "refused"));
    let district_log = audit(server, &w.auditor, "").await?;
    for witness in ["auditor", "district-admin-2"] {
        assert!(
            district_log.iter().any(|e| e["action"] == "user.disable"
                && e["subject"] == witness
                && e["outcome"] == "refused"),
            "{witness}"
        );
    }

    // The branch's secretary still disables a volunteer of the branch, and
    // the branch sees it.
    let volunteer_id = user_id(server, "volunteer").await?;
    let (status, body) = post(
        server,
        &w.secretary,
        &format!("/api/v1/users/{volunteer_id}/disable"),
        json!({}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let branch_log = audit(server, &w.secretary, "").await?;
    assert!(branch_log.iter().any(|e| e["action"] == "user.disable"
        && e["subject"] == "volunteer"
        && e["outcome"] == "ok"
        && e["tenant_id"] == w.d.yingfeng.id.to_string()));

    // The operator, outside the chain, may disable a witness; it is audited.
    doorstep(server, &["user", "disable", "--username", "auditor"]).await?;
    assert!(is_disabled(server, "auditor").await?);
    let branch_log = server
        .store
        .audit_entries(&doorstep_server::store::AuditQuery {
            scope: Some(w.d.district.path.clone()),
            before: None,
            limit: 1000,
        })
        .await?;
    assert!(branch_log.iter().any(|e| e.action == "user.disable"
        && e.subject == "auditor"
        && e.actor == "cli"
        && e.tenant_id == Some(w.d.district.id)));
    Ok(())
}

#[tokio::test]
async fn authority_a_grant_ends_when_its_holder_is_disabled_and_stays_ended_after_enabling()
-> anyhow::Result<()> {
    let w = world().await?;
    let server = &w.server;
    let branch = w.d.yingfeng.id;
    let (status, grant) = post(
        server,
        &w.sub_admin,
        &format!("/api/v1/branches/{branch}/grants"),
        json!({ "reason": "follow up the hardship visits", "duration_seconds": 3600 }),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{grant}");
    assert_eq!(
        get(server, &w.sub_admin, &members(branch)).await?.0,
        StatusCode::OK
    );
    // The district admin disables and enables Xiangyang's admin (below
    // them, not a witness of their access).
    let id = user_id(server, "xiangyang-admin").await?;
    for verb in ["disable", "enable"] {
        let (status, body) = post(
            server,
            &w.admin,
            &format!("/api/v1/users/{id}/{verb}"),
            json!({}),
        )
        .await?;
        assert_eq!(status, StatusCode::OK, "{verb}: {body}");
    }
    let (status, login) = post(
        server,
        "",
        "/api/v1/login",
        json!({ "username": "xiangyang-admin", "password": PASSWORD }),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{login}");
    let token = login["token"].as_str().context("token")?;
    let (status, body) = get_text(server, token, &members(branch)).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "the grant survived: {body}");
    assert!(!body.contains(SECRET_NAME));
    // The branch sees the grant ended, by whom and why.
    let (_, listed) = get(
        server,
        &w.secretary,
        &format!("/api/v1/branches/{branch}/grants"),
    )
    .await?;
    assert_eq!(listed[0]["id"], grant["id"]);
    assert_eq!(listed[0]["active"], false);
    assert_eq!(listed[0]["revoked_by"], "district-admin");
    let log = audit(server, &w.secretary, "").await?;
    assert!(log.iter().any(|e| {
        e["action"] == "grant.revoke"
            && e["subject"] == grant["id"]
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("holder was disabled"))
    }));
    Ok(())
}

#[tokio::test]
async fn authority_whoever_asks_from_above_never_receives_the_credential_the_approver_does()
-> anyhow::Result<()> {
    let w = world().await?;
    let server = &w.server;
    let branch = w.d.yingfeng.id;

    // An invited secretary: the inviter gets no activation code, so the
    // branch's approval cannot hand the inviter an account that reads names.
    let (status, invited) = post(
        server,
        &w.sub_admin,
        "/api/v1/users",
        json!({ "username": "deputy", "role": "branch_secretary", "tenant_id": branch.to_string() }),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{invited}");
    assert!(invited.get("activation_code").is_none(), "{invited}");
    let (_, listed) = get(server, &w.sub_admin, "/api/v1/invitations?status=all").await?;
    assert!(!listed.to_string().contains("activation_code"));
    let (status, approved) = post(
        server,
        &w.secretary,
        &format!(
            "/api/v1/invitations/{}/approve",
            invited["invitation"]["id"].as_str().context("id")?
        ),
        json!({}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{approved}");
    let code = approved["activation_code"]
        .as_str()
        .context("the approver's code")?;
    let (status, _) = post(
        server,
        "",
        "/api/v1/activate",
        json!({ "code": code, "username": "deputy", "password": PASSWORD }),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);

    // An enrollment request: no code for the requester, none after the
    // approval either; the approving secretary gets it.
    let (status, request) = post(
        server,
        &w.admin,
        "/api/v1/enrollment-codes",
        json!({ "branch_id": branch.to_string(), "label": "an official's phone" }),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{request}");
    assert!(request.get("code").is_none(), "{request}");
    let (status, decided) = post(
        server,
        &w.secretary,
        &format!(
            "/api/v1/enrollment-requests/{}/approve",
            request["id"].as_str().context("id")?
        ),
        json!({}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{decided}");
    assert!(decided["code"].is_string(), "{decided}");
    let (_, seen) = get(server, &w.admin, "/api/v1/enrollment-requests?status=all").await?;
    assert!(
        seen.as_array()
            .context("list")?
            .iter()
            .all(|c| c.get("code").is_none())
    );

    // A branch without a secretary: the operator approves with the CLI
    // and the CLI prints the code, to the operator only.
    let lone = server
        .store
        .create_tenant(Some(w.d.xiangyang.id), Level::Branch, "无书记支部")
        .await?;
    let (_, request) = post(
        server,
        &w.sub_admin,
        "/api/v1/enrollment-codes",
        json!({ "branch_id": lone.id.to_string(), "label": "a phone" }),
    )
    .await?;
    assert!(request.get("code").is_none(), "{request}");
    let output = doorstep(
        server,
        &[
            "--json",
            "enroll-code",
            "approve",
            request["id"].as_str().context("id")?,
        ],
    )
    .await?;
    let approved: Value = serde_json::from_slice(&output.stdout)?;
    let code = approved["code"].as_str().context("the operator's code")?;
    let (status, enrolled) = post(server, "", "/api/v1/enroll", json!({ "code": code })).await?;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");

    // The same for an invitation of that branch's first secretary.
    let (_, invited) = post(
        server,
        &w.sub_admin,
        "/api/v1/users",
        json!({ "username": "first-secretary", "role": "branch_secretary", "tenant_id": lone.id.to_string() }),
    )
    .await?;
    assert!(invited.get("activation_code").is_none(), "{invited}");
    let output = doorstep(
        server,
        &[
            "--json",
            "user",
            "approve",
            invited["invitation"]["id"].as_str().context("id")?,
        ],
    )
    .await?;
    let approved: Value = serde_json::from_slice(&output.stdout)?;
    assert!(approved["activation_code"].is_string(), "{approved}");
    Ok(())
}

#[tokio::test]
async fn authority_every_audit_row_names_the_tenant_it_concerns() -> anyhow::Result<()> {
    let w = world().await?;
    let server = &w.server;
    // A tenant an admin creates: the auditor sees it.
    let (status, made) = post(
        server,
        &w.sub_admin,
        "/api/v1/tenants",
        json!({ "name": "新支部", "level": "branch", "parent_id": w.d.xiangyang.id.to_string() }),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    // Failed logins, of a known account and of a name nobody has.
    for username in ["secretary", "no-such-user"] {
        let (status, _) = post(
            server,
            "",
            "/api/v1/login",
            json!({ "username": username, "password": "wrong password" }),
        )
        .await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // An invitation and a user the operator creates.
    let (status, _) = post(
        server,
        &w.secretary,
        "/api/v1/users",
        json!({ "username": "xiaoli", "role": "volunteer", "tenant_id": w.d.yingfeng.id.to_string() }),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED);

    let log = audit(server, &w.auditor, "").await?;
    assert!(
        log.iter().any(|e| e["action"] == "tenant.create"
            && e["actor"] == "xiangyang-admin"
            && e["tenant_id"] == made["id"]),
        "tenant creation"
    );
    assert!(
        log.iter().any(|e| e["action"] == "login"
            && e["outcome"] == "refused"
            && e["subject"] == "unknown user"
            && e["tenant_id"] == w.d.district.id.to_string()),
        "a failed login of an unknown username, at district level"
    );
    let branch_log = audit(server, &w.secretary, "").await?;
    assert!(branch_log.iter().any(|e| e["action"] == "login"
        && e["outcome"] == "refused"
        && e["subject"] == "secretary"));
    assert!(
        branch_log
            .iter()
            .any(|e| e["action"] == "user.invite" && e["subject"] == "xiaoli")
    );
    // No row anywhere names no tenant.
    let everything = server
        .store
        .audit_entries(&doorstep_server::store::AuditQuery {
            scope: None,
            before: None,
            limit: 10_000,
        })
        .await?;
    for entry in &everything {
        assert!(entry.tenant_id.is_some(), "{entry:?}");
    }
    // And the store refuses to write one that does not.
    let err = server
        .store
        .record_audit(AuditEntry::new("someone", "anything", "x"))
        .await
        .expect_err("an entry without a tenant");
    assert!(err.to_string().contains("names no tenant"), "{err}");
    Ok(())
}

#[tokio::test]
async fn authority_control_characters_cannot_hide_a_grant_in_the_operators_terminal()
-> anyhow::Result<()> {
    let w = world().await?;
    let server = &w.server;
    let branch = w.d.yingfeng.id;
    // Refused at input: an ANSI "erase line" and a carriage return, a
    // right-to-left override, a C1 control.
    for reason in [
        "routine check\u{1b}[2K\r",
        "routine check \u{202e}sdrawkcab",
        "routine check\u{9b}2K",
    ] {
        let (status, body) = post(
            server,
            &w.admin,
            &format!("/api/v1/branches/{branch}/grants"),
            json!({ "reason": reason }),
        )
        .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reason:?}: {body}");
    }
    let (status, _) = post(
        server,
        &w.secretary,
        "/api/v1/enrollment-codes",
        json!({ "branch_id": branch.to_string(), "label": "phone\u{1b}[8m" }),
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A row written before input was checked is shown escaped.
    let hostile = "grant of 7 days\u{1b}[1A\u{1b}[2K\r\u{202e}nothing here";
    server
        .store
        .record_audit(
            AuditEntry::new("district-admin", "grant.create", branch.to_string())
                .on(&w.d.yingfeng)
                .detail(hostile),
        )
        .await?;
    let output = doorstep(server, &["audit", "list", "--branch", &branch.to_string()]).await?;
    let shown = String::from_utf8(output.stdout)?;
    assert!(
        !shown
            .chars()
            .any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c)),
        "{shown:?}"
    );
    assert!(
        shown.contains("grant of 7 days\\u{001b}[1A\\u{001b}[2K\\u{000d}\\u{202e}nothing here"),
        "{shown}"
    );
    // JSON stays JSON, with the text as it was stored.
    let output = doorstep(
        server,
        &["--json", "audit", "list", "--branch", &branch.to_string()],
    )
    .await?;
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout)?;
    assert!(rows.iter().any(|e| e["detail"] == hostile));
    Ok(())
}

#[tokio::test]
async fn authority_device_labels_stay_in_the_branch() -> anyhow::Result<()> {
    let w = world().await?;
    let server = &w.server;
    // Something to revoke and a request to list, so every path is walked.
    let other = server.enroll(w.d.yingfeng.id, "王小明的手机").await?;
    let (status, _) = post(
        server,
        &w.secretary,
        &format!("/api/v1/devices/{}/revoke", other.device_id),
        json!({}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(
        server,
        &w.secretary,
        "/api/v1/enrollment-codes",
        json!({ "branch_id": w.d.yingfeng.id.to_string(), "label": "李娜的平板" }),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED);
    for token in [&w.admin, &w.sub_admin] {
        for path in ["/api/v1/devices", "/api/v1/enrollment-requests?status=all"] {
            let (status, body) = get_text(server, token, path).await?;
            assert_eq!(status, StatusCode::OK, "{path}");
            for label in [LABEL, "王小明", "李娜"] {
                assert!(!body.contains(label), "{path}: {body}");
            }
        }
    }
    let (_, body) = get_text(server, &w.secretary, "/api/v1/devices").await?;
    assert!(body.contains(LABEL), "the branch's secretary sees labels");
    let (_, body) = get_text(server, &w.auditor, "/api/v1/audit").await?;
    for label in [LABEL, "王小明", "李娜"] {
        assert!(!body.contains(label), "{body}");
    }
    Ok(())
}

// The matrix: every administrative action by every role.

/// What an action handed its caller that might open names.
#[derive(Debug)]
enum Loot {
    EnrollmentCode(String),
    ActivationCode { username: String, code: String },
}

struct Attempt {
    status: StatusCode,
    loot: Vec<Loot>,
    /// Breaches of the rule seen in the answer itself.
    breaches: Vec<String>,
}

impl Attempt {
    fn plain(status: StatusCode) -> Self {
        Attempt {
            status,
            loot: Vec::new(),
            breaches: Vec::new(),
        }
    }
}

/// One person of the matrix.
struct Actor {
    name: &'static str,
    token: String,
    /// Anyone but the branch's secretary: must never read its names (nor
    /// its device labels) except, above the branch, under a grant the
    /// branch sees.
    outsider: bool,
}

struct Matrix {
    w: World,
    actors: Vec<Actor>,
    next: AtomicUsize,
}

impl Matrix {
    fn unique(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn yingfeng(&self) -> String {
        self.w.d.yingfeng.id.to_string()
    }

    /// An invitation of a branch secretary that waits for the branch,
    /// asked by Xiangyang's admin.
    async fn pending_invitation(&self) -> anyhow::Result<String> {
        let (status, invited) = post(
            &self.w.server,
            &self.w.sub_admin,
            "/api/v1/users",
            json!({ "username": self.unique("asked-secretary"), "role": "branch_secretary",
                    "tenant_id": self.yingfeng() }),
        )
        .await?;
        anyhow::ensure!(status == StatusCode::CREATED, "{invited}");
        Ok(invited["invitation"]["id"]
            .as_str()
            .context("id")?
            .to_owned())
    }

    /// An enrollment request for Yingfeng, asked by Xiangyang's admin.
    async fn pending_request(&self) -> anyhow::Result<String> {
        let (status, request) = post(
            &self.w.server,
            &self.w.sub_admin,
            "/api/v1/enrollment-codes",
            json!({ "branch_id": self.yingfeng(), "label": "asked-for phone" }),
        )
        .await?;
        anyhow::ensure!(status == StatusCode::CREATED, "{request}");
        Ok(request["id"].as_str().context("id")?.to_owned())
    }
}

type Run = for<'a> fn(&'a Matrix, &'a Actor) -> BoxFuture<'a, anyhow::Result<Attempt>>;

fn loot_of(body: &Value) -> Vec<Loot> {
    let mut loot = Vec::new();
    if let Some(code) = body["code"].as_str() {
        loot.push(Loot::EnrollmentCode(code.to_owned()));
    }
    if let Some(code) = body["activation_code"].as_str() {
        let username = body["user"]["username"]
            .as_str()
            .or(body["username"].as_str())
            .unwrap_or_default()
            .to_owned();
        loot.push(Loot::ActivationCode {
            username,
            code: code.to_owned(),
        });
    }
    loot
}

async fn posted(m: &Matrix, a: &Actor, path: String, body: Value) -> anyhow::Result<Attempt> {
    let (status, body) = post(&m.w.server, &a.token, &path, body).await?;
    Ok(Attempt {
        loot: loot_of(&body),
        ..Attempt::plain(status)
    })
}

async fn read(m: &Matrix, a: &Actor, path: &str) -> anyhow::Result<Attempt> {
    let (status, body) = get_text(&m.w.server, &a.token, path).await?;
    // Listings without names carry no names and, outside the branch, no
    // device labels.
    let mut attempt = Attempt::plain(status);
    if body.contains(SECRET_NAME) {
        attempt.breaches.push(format!("read names at {path}"));
    }
    if a.outsider && body.contains(LABEL) {
        attempt
            .breaches
            .push(format!("read a device label at {path}"));
    }
    Ok(attempt)
}

async fn disable(m: &Matrix, a: &Actor, username: &str, verb: &str) -> anyhow::Result<Attempt> {
    let id = user_id(&m.w.server, username).await?;
    posted(m, a, format!("/api/v1/users/{id}/{verb}"), json!({})).await
}

/// Every administrative action, with the route it goes through; a new one
/// is one row (and `authority_matrix_covers_every_route_of_the_router`
/// fails until a new route has a row or is listed as not administrative).
const ACTIONS: &[(&str, (&str, &str), Run)] = &[
    ("create tenant", ("POST", "/api/v1/tenants"), |m, a| {
        Box::pin(async move {
            posted(
                m,
                a,
                "/api/v1/tenants".into(),
                json!({ "name": m.unique("branch"), "level": "branch",
                        "parent_id": m.w.d.xiangyang.id.to_string() }),
            )
            .await
        })
    }),
    (
        "invite branch secretary",
        ("POST", "/api/v1/users"),
        |m, a| {
            Box::pin(async move {
                posted(
                    m,
                    a,
                    "/api/v1/users".into(),
                    json!({ "username": m.unique("new-secretary"), "role": "branch_secretary",
                        "tenant_id": m.yingfeng() }),
                )
                .await
            })
        },
    ),
    ("invite volunteer", ("POST", "/api/v1/users"), |m, a| {
        Box::pin(async move {
            posted(
                m,
                a,
                "/api/v1/users".into(),
                json!({ "username": m.unique("new-volunteer"), "role": "volunteer",
                        "tenant_id": m.yingfeng() }),
            )
            .await
        })
    }),
    (
        "approve invitation",
        ("POST", "/api/v1/invitations/{id}/approve"),
        |m, a| {
            Box::pin(async move {
                let id = m.pending_invitation().await?;
                posted(m, a, format!("/api/v1/invitations/{id}/approve"), json!({})).await
            })
        },
    ),
    (
        "deny invitation",
        ("POST", "/api/v1/invitations/{id}/deny"),
        |m, a| {
            Box::pin(async move {
                let id = m.pending_invitation().await?;
                posted(m, a, format!("/api/v1/invitations/{id}/deny"), json!({})).await
            })
        },
    ),
    (
        "issue enrollment code",
        ("POST", "/api/v1/enrollment-codes"),
        |m, a| {
            Box::pin(async move {
                posted(
                    m,
                    a,
                    "/api/v1/enrollment-codes".into(),
                    json!({ "branch_id": m.yingfeng(), "label": "a phone" }),
                )
                .await
            })
        },
    ),
    (
        "approve enrollment request",
        ("POST", "/api/v1/enrollment-requests/{id}/approve"),
        |m, a| {
            Box::pin(async move {
                let id = m.pending_request().await?;
                posted(
                    m,
                    a,
                    format!("/api/v1/enrollment-requests/{id}/approve"),
                    json!({}),
                )
                .await
            })
        },
    ),
    (
        "deny enrollment request",
        ("POST", "/api/v1/enrollment-requests/{id}/deny"),
        |m, a| {
            Box::pin(async move {
                let id = m.pending_request().await?;
                posted(
                    m,
                    a,
                    format!("/api/v1/enrollment-requests/{id}/deny"),
                    json!({}),
                )
                .await
            })
        },
    ),
    (
        "open grant",
        ("POST", "/api/v1/branches/{id}/grants"),
        |m, a| {
            Box::pin(async move {
                posted(
                m,
                a,
                format!("/api/v1/branches/{}/grants", m.yingfeng()),
                json!({ "reason": format!("the matrix, as {}", a.name), "duration_seconds": 600 }),
            )
            .await
            })
        },
    ),
    (
        "revoke another's grant",
        ("POST", "/api/v1/grants/{id}/revoke"),
        |m, a| {
            Box::pin(async move {
                let (status, grant) = post(
                &m.w.server,
                &m.w.peer_admin,
                &format!("/api/v1/branches/{}/grants", m.yingfeng()),
                json!({ "reason": "a grant for the matrix to revoke", "duration_seconds": 600 }),
            )
            .await?;
                anyhow::ensure!(status == StatusCode::CREATED, "{grant}");
                let id = grant["id"].as_str().context("id")?;
                posted(m, a, format!("/api/v1/grants/{id}/revoke"), json!({})).await
            })
        },
    ),
    (
        "revoke device",
        ("POST", "/api/v1/devices/{id}/revoke"),
        |m, a| {
            Box::pin(async move {
                let device = m.w.server.enroll(m.w.d.yingfeng.id, "spare phone").await?;
                posted(
                    m,
                    a,
                    format!("/api/v1/devices/{}/revoke", device.device_id),
                    json!({}),
                )
                .await
            })
        },
    ),
    (
        "disable volunteer",
        ("POST", "/api/v1/users/{id}/disable"),
        |m, a| {
            Box::pin(async move {
                let name = m.unique("helper");
                m.w.server
                    .login_as(&name, Role::Volunteer, m.w.d.yingfeng.id)
                    .await?;
                let first = disable(m, a, &name, "disable").await?;
                let again = disable(m, a, &name, "enable").await?;
                Ok(Attempt::plain(first.status.max(again.status)))
            })
        },
    ),
    (
        "disable auditor",
        ("POST", "/api/v1/users/{id}/disable"),
        |m, a| Box::pin(async move { disable(m, a, "auditor", "disable").await }),
    ),
    (
        "disable branch secretary",
        ("POST", "/api/v1/users/{id}/disable"),
        |m, a| Box::pin(async move { disable(m, a, "secretary", "disable").await }),
    ),
    (
        "disable peer district admin",
        ("POST", "/api/v1/users/{id}/disable"),
        |m, a| Box::pin(async move { disable(m, a, "district-admin-2", "disable").await }),
    ),
    (
        "enable branch secretary",
        ("POST", "/api/v1/users/{id}/enable"),
        |m, a| Box::pin(async move { disable(m, a, "secretary", "enable").await }),
    ),
    (
        "read members",
        ("GET", "/api/v1/branches/{id}/members"),
        |m, a| {
            Box::pin(async move {
                let (status, _) =
                    get_text(&m.w.server, &a.token, &members(m.w.d.yingfeng.id)).await?;
                Ok(Attempt::plain(status))
            })
        },
    ),
    ("read audit", ("GET", "/api/v1/audit"), |m, a| {
        Box::pin(async move { read(m, a, "/api/v1/audit").await })
    }),
    ("list devices", ("GET", "/api/v1/devices"), |m, a| {
        Box::pin(async move { read(m, a, "/api/v1/devices").await })
    }),
    ("list users", ("GET", "/api/v1/users"), |m, a| {
        Box::pin(async move { read(m, a, "/api/v1/users").await })
    }),
    (
        "list invitations",
        ("GET", "/api/v1/invitations"),
        |m, a| Box::pin(async move { read(m, a, "/api/v1/invitations?status=all").await }),
    ),
    (
        "list enrollment requests",
        ("GET", "/api/v1/enrollment-requests"),
        |m, a| Box::pin(async move { read(m, a, "/api/v1/enrollment-requests?status=all").await }),
    ),
    (
        "list grants",
        ("GET", "/api/v1/branches/{id}/grants"),
        |m, a| {
            Box::pin(async move {
                read(m, a, &format!("/api/v1/branches/{}/grants", m.yingfeng())).await
            })
        },
    ),
    ("list tenants", ("GET", "/api/v1/tenants"), |m, a| {
        Box::pin(async move { read(m, a, "/api/v1/tenants").await })
    }),
    (
        "list a device's documents",
        ("GET", "/api/v1/devices/{id}/documents"),
        |m, a| {
            Box::pin(async move {
                let device =
                    m.w.server
                        .enroll(m.w.d.yingfeng.id, "documents phone")
                        .await?;
                read(
                    m,
                    a,
                    &format!("/api/v1/devices/{}/documents", device.device_id),
                )
                .await
            })
        },
    ),
    (
        "read invalid records",
        ("GET", "/api/v1/branches/{id}/invalid-records"),
        |m, a| {
            Box::pin(async move {
                let path = format!("/api/v1/branches/{}/invalid-records", m.yingfeng());
                let (status, _) = get_text(&m.w.server, &a.token, &path).await?;
                Ok(Attempt::plain(status))
            })
        },
    ),
];

#[tokio::test]
async fn authority_matrix_every_administrative_action_by_every_role_keeps_names_in_the_branch()
-> anyhow::Result<()> {
    let w = world().await?;
    let sibling = w
        .server
        .store
        .create_tenant(Some(w.d.xiangyang.id), Level::Branch, "兄弟支部")
        .await?;
    let sibling_secretary = w
        .server
        .login_as("sibling-secretary", Role::BranchSecretary, sibling.id)
        .await?;
    let actors = vec![
        Actor {
            name: "district-admin",
            token: w.admin.clone(),
            outsider: true,
        },
        Actor {
            name: "auditor",
            token: w.auditor.clone(),
            outsider: true,
        },
        Actor {
            name: "xiangyang-admin",
            token: w.sub_admin.clone(),
            outsider: true,
        },
        Actor {
            name: "secretary",
            token: w.secretary.clone(),
            outsider: false,
        },
        Actor {
            name: "sibling-secretary",
            token: sibling_secretary,
            outsider: true,
        },
        Actor {
            name: "volunteer",
            token: w.volunteer.clone(),
            outsider: true,
        },
    ];
    let m = Matrix {
        w,
        actors,
        next: AtomicUsize::new(0),
    };
    let server = &m.w.server;
    let branch = m.w.d.yingfeng.id;

    let mut table = String::new();
    let mut loot = Vec::new();
    let mut breaches = Vec::new();
    for actor in &m.actors {
        for (action, _, run) in ACTIONS {
            let attempt = run(&m, actor)
                .await
                .with_context(|| format!("{} / {action}", actor.name))?;
            table.push_str(&format!(
                "{:<18} {:<28} {}\n",
                actor.name,
                action,
                attempt.status.as_u16()
            ));
            loot.extend(attempt.loot.into_iter().map(|l| (actor.name, l)));
            breaches.extend(
                attempt
                    .breaches
                    .into_iter()
                    .map(|b| format!("{} / {action}: {b}", actor.name)),
            );
        }
    }
    eprintln!("{table}");

    // Nobody disabled a witness of their own access: the only one who may
    // is the operator, who did nothing here.
    for witness in ["auditor", "secretary", "district-admin-2"] {
        if is_disabled(server, witness).await? {
            breaches.push(format!("{witness}, a witness, was disabled"));
        }
    }

    // No credential an outsider received opens the branch's names.
    let grants_path = format!("/api/v1/branches/{branch}/grants");
    for (holder, item) in &loot {
        let outsider = m.actors.iter().any(|a| a.name == *holder && a.outsider);
        match item {
            Loot::EnrollmentCode(code) => {
                let (status, body) =
                    post(server, "", "/api/v1/enroll", json!({ "code": code })).await?;
                let enrolled_here =
                    status == StatusCode::CREATED && body["branch_id"] == branch.to_string();
                if outsider && enrolled_here {
                    breaches.push(format!(
                        "{holder} received a code that enrolled a device to the branch"
                    ));
                }
            }
            Loot::ActivationCode { username, code } => {
                let (status, _) = post(
                    server,
                    "",
                    "/api/v1/activate",
                    json!({ "code": code, "password": PASSWORD }),
                )
                .await?;
                if status != StatusCode::OK {
                    continue;
                }
                let (status, login) = post(
                    server,
                    "",
                    "/api/v1/login",
                    json!({ "username": username, "password": PASSWORD }),
                )
                .await?;
                let token = login["token"].as_str().unwrap_or_default();
                let (read, _) = get_text(server, token, &members(branch)).await?;
                if status == StatusCode::OK && read == StatusCode::OK && outsider {
                    breaches.push(format!(
                        "{holder} activated {username}, who reads the branch's names"
                    ));
                }
            }
        }
    }

    // Whoever reads names now does so as the branch's secretary or under a
    // grant the branch lists and its log shows.
    let (_, listed) = get(server, &m.w.secretary, &grants_path).await?;
    let branch_log = audit(server, &m.w.secretary, "").await?;
    for actor in &m.actors {
        let mut reads = false;
        for path in [
            members(branch),
            format!("/api/v1/branches/{branch}/invalid-records"),
        ] {
            reads |= get_text(server, &actor.token, &path).await?.0 == StatusCode::OK;
        }
        if !reads {
            continue;
        }
        if actor.name == "secretary" {
            continue;
        }
        let granted = listed
            .as_array()
            .context("grants")?
            .iter()
            .any(|g| g["username"] == actor.name && g["active"] == true);
        let logged = branch_log.iter().any(|e| {
            e["actor"] == actor.name && e["action"] == "grant.create" && e["outcome"] == "ok"
        });
        if !(granted && logged) {
            breaches.push(format!(
                "{} reads names without a grant the branch sees",
                actor.name
            ));
        }
    }
    assert!(
        breaches.is_empty(),
        "the authority rule was broken:\n{}\n\n{table}",
        breaches.join("\n")
    );
    Ok(())
}

/// Routes that are not administrative actions, and why.
const NOT_ADMINISTRATIVE: &[(&str, &str, &str)] = &[
    ("GET", "/healthz", "liveness"),
    ("GET", "/readyz", "readiness"),
    ("GET", "/metrics", "counts only, no name or id"),
    ("GET", "/", "a redirect"),
    ("GET", "/dashboard", "a static page"),
    ("GET", "/dashboard.js", "a static file"),
    ("GET", "/dashboard.css", "a static file"),
    ("GET", "/api/v1/openapi.json", "a static file"),
    ("GET", "/sync", "a device's own branch, by its token"),
    ("POST", "/api/v1/login", "the caller's own session"),
    ("POST", "/api/v1/logout", "the caller's own session"),
    ("GET", "/api/v1/me", "the caller"),
    ("POST", "/api/v1/me/password", "the caller's own password"),
    ("GET", "/api/v1/me/sessions", "the caller's own sessions"),
    (
        "DELETE",
        "/api/v1/me/sessions/{id}",
        "the caller's own sessions",
    ),
    (
        "POST",
        "/api/v1/activate",
        "the code is the credential; who gets it is decided where it is made",
    ),
    (
        "POST",
        "/api/v1/enroll",
        "the code is the credential; who gets it is decided where it is made",
    ),
    ("GET", "/api/v1/device", "a device, by its token"),
    ("GET", "/api/v1/device/documents", "a device, by its token"),
    ("POST", "/api/v1/device/actors", "a device, by its token"),
    ("GET", "/api/v1/rollups", "figures, no names"),
    ("GET", "/api/v1/rollups/breakdown", "figures, no names"),
    ("GET", "/api/v1/health", "figures, no names"),
];

#[test]
fn authority_matrix_covers_every_route_of_the_router() -> anyhow::Result<()> {
    let routed = crate::openapi::router_operations()?;
    let mut covered = std::collections::BTreeSet::new();
    for (_, (method, path), _) in ACTIONS {
        covered.insert((method.to_string(), path.to_string()));
    }
    for (method, path, _) in NOT_ADMINISTRATIVE {
        let fresh = covered.insert((method.to_string(), path.to_string()));
        assert!(
            fresh,
            "{method} {path} is both a matrix row and not administrative"
        );
    }
    let missing: Vec<_> = routed.difference(&covered).collect();
    let stale: Vec<_> = covered.difference(&routed).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "routes without a matrix row (add one to ACTIONS, or to NOT_ADMINISTRATIVE with why): {missing:?}\n\
         rows for routes that do not exist: {stale:?}"
    );
    Ok(())
}
