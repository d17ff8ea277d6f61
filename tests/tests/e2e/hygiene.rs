//! Hygiene: no secret reaches the server's log at any level. The real
//! `doorstep` binary runs at `trace` with its log captured to a file while
//! people log in (once with a wrong password), invite, activate, change a
//! password, present a garbled token, and a phone enrols with a code and
//! syncs a visit to a named member through the SDK; then the whole log is
//! searched for every secret and name used.

use std::time::Duration;

use doorstep_client::{ClientConfig, Fen, NewMember, NewVisit, VisitKind};
use doorstep_server::admin;
use doorstep_server::store::Store;
use doorstep_server::tenancy::Role;
use doorstep_tests::{ServerProcess, make_district, test_store_key, today};
use serde_json::{Value, json};

#[tokio::test]
async fn no_password_token_code_or_name_reaches_the_server_log_at_trace() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("doorstep.db")).await?;
    let d = make_district(&store).await?;
    let admin_password = "hygiene admin password one";
    admin::create_user(
        &store,
        "hygiene-admin",
        admin_password,
        Role::DistrictAdmin,
        d.district.id,
        "test",
    )
    .await?;
    let log_path = dir.path().join("server.log");
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_doorstep"));
    let server = ServerProcess::start_logging(binary, dir.path(), "trace", Some(&log_path)).await?;
    let url = server.http_url();
    let http = reqwest::Client::new();

    let wrong_password = "not the password at all 42";
    let refused = http
        .post(format!("{url}/api/v1/login"))
        .json(&json!({ "username": "hygiene-admin", "password": wrong_password }))
        .send()
        .await?;
    assert_eq!(refused.status(), 401);
    let login: Value = http
        .post(format!("{url}/api/v1/login"))
        .json(&json!({ "username": "hygiene-admin", "password": admin_password }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let session = login["token"].as_str().unwrap_or_default().to_owned();
    assert!(!session.is_empty(), "{login}");

    let invited: Value = http
        .post(format!("{url}/api/v1/users"))
        .bearer_auth(&session)
        .json(&json!({
            "username": "hygiene-office",
            "role": "sub_district_admin",
            "tenant_id": d.xiangyang.id.to_string(),
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let activation_code = invited["activation_code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!activation_code.is_empty(), "{invited}");
    let office_password = "the office's own passphrase";
    let activated = http
        .post(format!("{url}/api/v1/activate"))
        .json(&json!({ "code": activation_code, "password": office_password }))
        .send()
        .await?;
    assert!(activated.status().is_success(), "{}", activated.status());

    let new_admin_password = "hygiene admin password two";
    http.post(format!("{url}/api/v1/me/password"))
        .bearer_auth(&session)
        .json(&json!({ "current": admin_password, "new": new_admin_password }))
        .send()
        .await?
        .error_for_status()?;
    let garbled = "dst_garbled0123456789abcdefghijklmnop";
    let refused = http
        .get(format!("{url}/api/v1/me"))
        .bearer_auth(garbled)
        .send()
        .await?;
    assert_eq!(refused.status(), 401);

    // A phone enrols with a code and syncs a visit to a named member.
    let enrollment =
        admin::issue_enrollment_code(&store, d.yingfeng.id, "phone", 1, "test").await?;
    let phone_dir = tempfile::tempdir()?;
    let phone =
        doorstep_client::Client::open(ClientConfig::new(phone_dir.path(), &url, test_store_key()))
            .await?;
    phone.enroll(&enrollment.code).await?;
    let name = "卫生检查的名字";
    let phone_number = "13987654321";
    let member = phone
        .add_member(NewMember {
            name: name.into(),
            phone: Some(phone_number.into()),
            ..NewMember::default()
        })
        .await?;
    phone
        .record_visit(NewVisit {
            date: today(),
            member_id: member,
            kind: VisitKind::Routine,
            visitors: vec!["日志志愿者".into()],
            aid_cash: Fen::from_yuan(10),
            aid_goods: Fen::ZERO,
            goods_description: None,
            notes: Some("备注里的私事".into()),
            follow_up: None,
        })
        .await?;
    let checkpoint = phone.checkpoint().await?;
    assert!(checkpoint.safe, "{checkpoint:?}");
    // A second phone of the branch receives it: frames from the server
    // carry the names too.
    let other_code =
        admin::issue_enrollment_code(&store, d.yingfeng.id, "phone 2", 1, "test").await?;
    let other_dir = tempfile::tempdir()?;
    let other =
        doorstep_client::Client::open(ClientConfig::new(other_dir.path(), &url, test_store_key()))
            .await?;
    other.enroll(&other_code.code).await?;
    other.sync_now().await?;
    assert_eq!(other.member(member).await?.name, name);
    other.close().await?;
    phone.close().await?;
    // The device's bearer token, as its store keeps it.
    let device_token: String = {
        use sqlx::ConnectOptions;
        let hex: String = test_store_key()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut raw = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(phone_dir.path().join("device.db"))
            .pragma("key", format!("\"x'{hex}'\""))
            .connect()
            .await?;
        sqlx::query_scalar("select value from meta where key = 'token'")
            .fetch_one(&mut raw)
            .await?
    };
    assert!(!device_token.is_empty());
    // The log is written line by line; give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.kill().await?;

    let log = std::fs::read_to_string(&log_path)?;
    // It is a trace log of this run, not an empty file.
    assert!(log.contains("TRACE"), "no trace line captured");
    assert!(
        log.contains("device connected"),
        "the sync is not in the log"
    );
    let secrets = [
        ("the admin's password", admin_password),
        ("a wrong password", wrong_password),
        ("the new password", new_admin_password),
        ("the office's password", office_password),
        ("the session token", session.as_str()),
        ("the activation code", activation_code.as_str()),
        ("a garbled token", garbled),
        ("the enrollment code", enrollment.code.as_str()),
        ("the second enrollment code", other_code.code.as_str()),
        ("the device's token", device_token.as_str()),
        ("a member's name", name),
        ("a member's phone", phone_number),
        ("a visit's notes", "备注里的私事"),
        ("a visitor's name", "日志志愿者"),
    ];
    // As written, and as the hex a frame dump would show.
    let found: Vec<_> = secrets
        .iter()
        .filter(|(_, secret)| {
            log.contains(secret) || log.to_lowercase().contains(&hex::encode(secret.as_bytes()))
        })
        .map(|(what, _)| *what)
        .collect();
    // No frame or message is dumped at all (they may be deflated, where no
    // search for a name would find it).
    for dump in [
        "received frame",
        "writing frame",
        "Received message",
        "Sending frame",
    ] {
        assert!(
            !log.contains(dump),
            "a WebSocket frame dump is in the log: {dump}"
        );
    }
    assert!(
        found.is_empty(),
        "in the server's trace log ({} bytes): {found:?}",
        log.len()
    );
    Ok(())
}
