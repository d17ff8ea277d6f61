//! Logins: throttling per account and address and per address, no lockout,
//! argon2 off the async workers and bounded, disabled users, password change, and sessions
//! that are listed, revoked and end on idle. Time is moved with the server's
//! adjustable clock, never slept through.

use std::time::Duration;

use doorstep_server::auth::Clock;
use doorstep_server::budget::{BudgetLimits, Budgets, PasswordLimits, PasswordWork};
use doorstep_server::store::AuditQuery;
use doorstep_server::tenancy::Role;
use doorstep_tests::{SyncOutcome, TestServer, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{add_member, connected_device};

/// The password `TestServer::login_as` gives its users.
const PASSWORD: &str = "a long enough password";

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    retry_after: Option<u64>,
    body: Value,
    text: String,
}

async fn call(
    server: &TestServer,
    method: Method,
    token: Option<&str>,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Reply> {
    let mut request =
        reqwest::Client::new().request(method, format!("{}{path}", server.http_url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let text = response.text().await?;
    Ok(Reply {
        status,
        retry_after,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    })
}

async fn login(server: &TestServer, username: &str, password: &str) -> anyhow::Result<Reply> {
    call(
        server,
        Method::POST,
        None,
        "/api/v1/login",
        Some(json!({ "username": username, "password": password })),
    )
    .await
}

async fn get(server: &TestServer, token: &str, path: &str) -> anyhow::Result<Reply> {
    call(server, Method::GET, Some(token), path, None).await
}

async fn token_of(server: &TestServer, username: &str, password: &str) -> anyhow::Result<String> {
    let reply = login(server, username, password).await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    Ok(reply.body["token"].as_str().expect("token").to_owned())
}

/// A server whose clock the test moves and whose argon2 work it watches.
async fn spawn() -> anyhow::Result<(TestServer, Clock, PasswordWork)> {
    let clock = Clock::adjustable();
    // Room for the whole flood below from one test address.
    let budgets = Budgets::new(BudgetLimits {
        passwords: PasswordLimits {
            permits: 2,
            per_source: 64,
            waiting: 512,
        },
        ..BudgetLimits::default()
    });
    let work = budgets.passwords.clone();
    let c = clock.clone();
    let server = TestServer::spawn_with(move |config| {
        config.clock = c;
        config.budgets = budgets;
    })
    .await?;
    Ok((server, clock, work))
}

async fn audit_actions(server: &TestServer) -> anyhow::Result<Vec<(String, String)>> {
    Ok(server
        .store
        .audit_entries(&AuditQuery {
            scope: None,
            before: None,
            limit: 10_000,
        })
        .await?
        .into_iter()
        .map(|e| (e.action, e.subject))
        .collect())
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address
/// reaches the server on loopback).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .build()
        .expect("client")
}

async fn login_from(
    server: &TestServer,
    ip: [u8; 4],
    username: &str,
    password: &str,
) -> anyhow::Result<StatusCode> {
    Ok(client_from(ip)
        .post(format!("{}/api/v1/login", server.http_url()))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await?
        .status())
}

#[tokio::test]
async fn wrong_passwords_are_throttled_per_address_and_never_lock_the_owner_out()
-> anyhow::Result<()> {
    let (server, clock, work) = spawn().await?;
    let d = server.district().await?;
    server
        .login_as("admin", Role::DistrictAdmin, d.district.id)
        .await?;
    let before = work.runs();

    // Twenty in a row from one address: the first five are checked, the
    // other fifteen are refused before any argon2 runs.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let reply = login(&server, "admin", "wrong password").await?;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(reply.retry_after.is_some_and(|s| s >= 1), "{reply:?}");
            assert!(
                reply.body["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("too many failed logins")),
                "{reply:?}"
            );
        }
        statuses.push(reply.status);
    }
    let expected: Vec<StatusCode> = [StatusCode::UNAUTHORIZED; 5]
        .into_iter()
        .chain([StatusCode::TOO_MANY_REQUESTS; 15])
        .collect();
    assert_eq!(statuses, expected);
    assert_eq!(work.runs() - before, 5, "argon2 ran for the throttled ones");

    // The right password from that address waits too, unchecked...
    let reply = login(&server, "admin", PASSWORD).await?;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(work.runs() - before, 5);
    // ...but the account is not locked: its owner, elsewhere, logs in.
    assert_eq!(
        login_from(&server, [127, 0, 0, 2], "admin", PASSWORD).await?,
        StatusCode::OK
    );

    // Waiting out each delay lets one more attempt through; the delays
    // double, and no number of failures turns into a lockout.
    for delay in [1, 2, 4, 8, 16, 32, 64] {
        let reply = login(&server, "admin", "wrong password").await?;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.retry_after, Some(delay), "{reply:?}");
        clock.advance(Duration::from_secs(delay));
        let reply = login(&server, "admin", "wrong password").await?;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    }
    clock.advance(Duration::from_secs(128));
    let reply = login(&server, "admin", PASSWORD).await?;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");

    let actions = audit_actions(&server).await?;
    let count = |action: &str| actions.iter().filter(|(a, _)| a == action).count();
    assert_eq!(count("login.lockout"), 0, "{actions:?}");
    // Three logins, and the twelve refused ones recorded once (the audit
    // log records a refusal once per account, address and interval).
    assert_eq!(count("login"), 4, "{actions:?}");
    Ok(())
}

#[tokio::test]
async fn one_address_guessing_across_usernames_is_throttled() -> anyhow::Result<()> {
    let (server, clock, work) = spawn().await?;
    let d = server.district().await?;
    server
        .login_as("secretary", Role::BranchSecretary, d.yingfeng.id)
        .await?;
    let before = work.runs();
    // Twenty different accounts, none tried more than once, most of them
    // not existing: every one is checked (and costs as much as a real one).
    for i in 0..20 {
        let reply = login(&server, &format!("guess-{i}"), "wrong password").await?;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    }
    assert_eq!(work.runs() - before, 20);
    // Then the address waits, whichever account it names, even a real one
    // with its right password.
    for (username, password) in [("guess-20", "wrong password"), ("secretary", PASSWORD)] {
        let reply = login(&server, username, password).await?;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
        assert_eq!(reply.retry_after, Some(1));
    }
    assert_eq!(work.runs() - before, 20);
    clock.advance(Duration::from_secs(1));
    let reply = login(&server, "secretary", PASSWORD).await?;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    // A success does not forgive the address: one more failure from it,
    // and the next attempt waits twice as long.
    let reply = login(&server, "guess-21", "wrong password").await?;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    let reply = login(&server, "guess-22", "wrong password").await?;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
    assert_eq!(reply.retry_after, Some(2), "{reply:?}");

    // The window passes and the address is forgiven.
    clock.advance(Duration::from_secs(15 * 60));
    let reply = login(&server, "guess-23", "wrong password").await?;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    Ok(())
}

// On SQLite only: it reads the SQLite file itself.
#[tokio::test]
async fn a_disabled_user_cannot_log_in_and_its_sessions_stop_at_once() -> anyhow::Result<()> {
    doorstep_tests::on_sqlite(
        a_disabled_user_cannot_log_in_and_its_sessions_stop_at_once_on_sqlite(),
    )
    .await
}

async fn a_disabled_user_cannot_log_in_and_its_sessions_stop_at_once_on_sqlite()
-> anyhow::Result<()> {
    let (server, _clock, _work) = spawn().await?;
    let d = server.district().await?;
    let admin = server
        .login_as("xiangyang-admin", Role::SubDistrictAdmin, d.xiangyang.id)
        .await?;
    let other_admin = server
        .login_as("dongfeng-admin", Role::SubDistrictAdmin, d.dongfeng.id)
        .await?;
    // A volunteer: a secretary reads the branch's audit log, and so is
    // disabled by the operator only (see privacy::a_witness_*).
    let secretary = server
        .login_as("volunteer", Role::Volunteer, d.yingfeng.id)
        .await?;
    let second = token_of(&server, "volunteer", PASSWORD).await?;
    let me = get(&server, &secretary, "/api/v1/me").await?;
    assert_eq!(me.status, StatusCode::OK);
    let id = me.body["id"].as_str().expect("id").to_owned();
    let disable = format!("/api/v1/users/{id}/disable");

    // Outside the caller's subtree it does not exist; a volunteer-level
    // caller may not; the volunteer may not disable herself either.
    let reply = call(&server, Method::POST, Some(&other_admin), &disable, None).await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = call(&server, Method::POST, Some(&secretary), &disable, None).await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = call(
        &server,
        Method::POST,
        Some(&admin),
        &format!("/api/v1/users/{}/disable", uuid::Uuid::now_v7()),
        None,
    )
    .await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&server, &secretary, "/api/v1/me").await?.status,
        StatusCode::OK
    );

    let reply = call(&server, Method::POST, Some(&admin), &disable, None).await?;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body["disabled"], true);
    assert_eq!(reply.body["ended_sessions"], 2);
    for token in [&secretary, &second] {
        assert_eq!(
            get(&server, token, "/api/v1/me").await?.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // The right password is told the account is disabled; a wrong one
    // learns nothing.
    let reply = login(&server, "volunteer", PASSWORD).await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert_eq!(reply.body["error"], "this account is disabled");
    let reply = login(&server, "volunteer", "wrong password").await?;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // Disabled in the database by another process (the CLI), a session
    // stops as well: every request checks.
    let reply = call(
        &server,
        Method::POST,
        Some(&admin),
        &format!("/api/v1/users/{id}/enable"),
        None,
    )
    .await?;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let again = token_of(&server, "volunteer", PASSWORD).await?;
    assert_eq!(
        get(&server, &again, "/api/v1/me").await?.status,
        StatusCode::OK
    );
    disable_from_another_process(&server, &id).await?;
    assert_eq!(
        get(&server, &again, "/api/v1/me").await?.status,
        StatusCode::UNAUTHORIZED
    );

    let actions = audit_actions(&server).await?;
    for action in ["user.disable", "user.enable"] {
        assert!(
            actions.contains(&(action.to_owned(), "volunteer".to_owned())),
            "{actions:?}"
        );
    }
    Ok(())
}

/// What `doorstep user disable` does, as another process would.
async fn disable_from_another_process(server: &TestServer, id: &str) -> anyhow::Result<()> {
    let store = doorstep_server::store::Store::open(&server.database_path()).await?;
    let account = store
        .login_account_by_id(id.parse()?)
        .await?
        .expect("the user exists");
    store
        .set_user_disabled(&account.user, true, "cli", doorstep_server::store::now_ms())
        .await?;
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn a_password_change_needs_the_current_one_and_ends_the_other_sessions() -> anyhow::Result<()>
{
    let (server, _clock, _work) = spawn().await?;
    let d = server.district().await?;
    let here = server
        .login_as("secretary", Role::BranchSecretary, d.yingfeng.id)
        .await?;
    let elsewhere = token_of(&server, "secretary", PASSWORD).await?;
    let change = |token: String, current: &str, new: &str| {
        let body = json!({ "current": current, "new": new });
        let server = &server;
        async move {
            call(
                server,
                Method::POST,
                Some(&token),
                "/api/v1/me/password",
                Some(body),
            )
            .await
        }
    };

    let reply = change(here.clone(), "not my password", "a new long password").await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert_eq!(reply.body["error"], "the current password is wrong");
    let reply = change(here.clone(), PASSWORD, "short").await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    let reply = change(String::from("made-up"), PASSWORD, "a new long password").await?;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(&server, &elsewhere, "/api/v1/me").await?.status,
        StatusCode::OK
    );

    let reply = change(here.clone(), PASSWORD, "a new long password").await?;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body["ended_sessions"], 1);
    assert_eq!(
        get(&server, &here, "/api/v1/me").await?.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&server, &elsewhere, "/api/v1/me").await?.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&server, "secretary", PASSWORD).await?.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&server, "secretary", "a new long password")
            .await?
            .status,
        StatusCode::OK
    );
    let actions = audit_actions(&server).await?;
    assert!(actions.contains(&("user.password_change".to_owned(), "secretary".to_owned())));
    Ok(())
}

#[tokio::test]
async fn sessions_are_listed_without_tokens_revoked_and_end_when_idle() -> anyhow::Result<()> {
    let (server, clock, _work) = spawn().await?;
    let d = server.district().await?;
    let a = server
        .login_as("secretary", Role::BranchSecretary, d.yingfeng.id)
        .await?;
    let b_login = login(&server, "secretary", PASSWORD).await?;
    let b = b_login.body["token"].as_str().expect("token").to_owned();
    let b_id = b_login.body["session_id"].as_str().expect("id").to_owned();
    let volunteer = server
        .login_as("volunteer", Role::Volunteer, d.yingfeng.id)
        .await?;

    let listed = get(&server, &a, "/api/v1/me/sessions").await?;
    assert_eq!(listed.status, StatusCode::OK);
    let sessions = listed.body.as_array().expect("list").clone();
    assert_eq!(sessions.len(), 2, "only the caller's own: {sessions:?}");
    assert!(!listed.text.contains(&a) && !listed.text.contains(&b));
    assert!(!listed.text.contains("token"), "{}", listed.text);
    for s in &sessions {
        assert_eq!(s["address"], "127.0.0.1");
        assert_eq!(s["username"], "secretary");
        assert!(s["created_at"].is_i64() && s["last_used_at"].is_i64());
    }
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
    assert!(
        sessions
            .iter()
            .any(|s| s["id"] == b_id.as_str() && s["current"] == false)
    );

    // Someone else's session cannot be named.
    let theirs = get(&server, &volunteer, "/api/v1/me/sessions").await?.body[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let reply = call(
        &server,
        Method::DELETE,
        Some(&a),
        &format!("/api/v1/me/sessions/{theirs}"),
        None,
    )
    .await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&server, &volunteer, "/api/v1/me").await?.status,
        StatusCode::OK
    );

    let revoke_b = format!("/api/v1/me/sessions/{b_id}");
    let reply = call(&server, Method::DELETE, Some(&a), &revoke_b, None).await?;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(
        get(&server, &b, "/api/v1/me").await?.status,
        StatusCode::UNAUTHORIZED
    );
    let reply = call(&server, Method::DELETE, Some(&a), &revoke_b, None).await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let listed = get(&server, &a, "/api/v1/me/sessions").await?;
    assert_eq!(listed.body.as_array().map(Vec::len), Some(1));

    // Idle expiry (30 minutes by default): used every 29 minutes, a session
    // lives on; left for 31, it ends.
    for _ in 0..3 {
        clock.advance(Duration::from_secs(29 * 60));
        assert_eq!(get(&server, &a, "/api/v1/me").await?.status, StatusCode::OK);
    }
    clock.advance(Duration::from_secs(31 * 60));
    assert_eq!(
        get(&server, &a, "/api/v1/me").await?.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&server, &volunteer, "/api/v1/me").await?.status,
        StatusCode::UNAUTHORIZED
    );

    let actions = audit_actions(&server).await?;
    assert!(actions.contains(&("session.revoke".to_owned(), "secretary".to_owned())));
    Ok(())
}

#[tokio::test]
async fn a_device_keeps_syncing_while_a_login_flood_holds_argon2() -> anyhow::Result<()> {
    let (server, _clock, work) = spawn().await?;
    let d = server.district().await?;
    let mut device = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "phone").await?,
        None,
    )
    .await?;
    let before = work.runs();

    // Argon2 is held: the first two logins take both permits and stay
    // inside argon2; the other eighteen wait for a permit.
    work.hold();
    let flood: Vec<_> = (0..20)
        .map(|i| {
            let url = format!("{}/api/v1/login", server.http_url());
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(url)
                    .json(
                        &json!({ "username": format!("nobody-{i}"), "password": "a guess at it" }),
                    )
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    eventually(Duration::from_secs(10), || async {
        Ok(work.running() == 2)
    })
    .await?;

    // The device syncs a change while all twenty are unanswered.
    add_member(&mut device, "王秀兰");
    assert_eq!(device.peer.sync(device.roster).await?, SyncOutcome::Synced);
    assert!(
        flood.iter().all(|f| !f.is_finished()),
        "a login finished while argon2 was held"
    );
    assert_eq!(work.runs(), before);
    assert_eq!(work.running(), 2);

    work.release();
    for login in flood {
        assert_eq!(login.await??, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(work.runs() - before, 20);
    assert_eq!(work.peak(), 2, "never more argon2 at once than permits");
    Ok(())
}
