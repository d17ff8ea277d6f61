//! Enrollment is idempotent per device: a response lost after the server
//! spent the code does not strand the phone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use doorstep_client::{Client, ClientConfig, ClientError};
use doorstep_server::admin;
use doorstep_tests::{TestServer, test_store_key};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy in front of the server that, while `drop_responses` is set,
/// forwards a request and then closes the client's connection as soon as
/// the server's answer starts: the server has done the work, the client
/// never hears of it.
async fn lossy_proxy(upstream: String, drop_responses: Arc<AtomicBool>) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let drop_responses = drop_responses.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(upstream.as_str()).await else {
                    return;
                };
                if !drop_responses.load(Ordering::SeqCst) {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
                let (mut from_client, mut to_server) = server.split();
                let (mut client_read, _client_write) = client.split();
                let forward = tokio::io::copy(&mut client_read, &mut to_server);
                let mut first = [0u8; 1];
                tokio::select! {
                    _ = forward => {}
                    // The answer began: the server committed. Drop it.
                    _ = from_client.read(&mut first) => {}
                }
                let _ = to_server.shutdown().await;
            });
        }
    });
    Ok(url)
}

#[tokio::test]
async fn an_enrollment_whose_response_was_lost_succeeds_on_retry_as_the_same_device()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let district = server.district().await?;
    let branch = district.yingfeng.id;
    let drop_responses = Arc::new(AtomicBool::new(true));
    let upstream = server.http_url().trim_start_matches("http://").to_owned();
    let proxy = lossy_proxy(upstream, drop_responses.clone()).await?;
    let issued = admin::issue_enrollment_code(&server.store, branch, "phone", 1, "test").await?;

    let dir = tempfile::tempdir()?;
    let phone = Client::open(ClientConfig::new(dir.path(), &proxy, test_store_key())).await?;
    let lost = phone.enroll(&issued.code).await;
    assert!(
        matches!(lost, Err(ClientError::Network(_))),
        "the answer was dropped: {lost:?}"
    );
    let spent = server
        .store
        .enrollment_code(issued.details.id)
        .await?
        .and_then(|c| c.device_id)
        .expect("the server spent the code on a device");
    assert!(!phone.is_enrolled());

    // The app kills and reopens: the nonce is in the store, not in memory.
    drop(phone);
    drop_responses.store(false, Ordering::SeqCst);
    let phone = Client::open(ClientConfig::new(dir.path(), &proxy, test_store_key())).await?;
    let enrolled = phone.enroll(&issued.code).await?;
    assert_eq!(enrolled.device_id, spent.to_string(), "the same device");
    assert_eq!(enrolled.branch_id, branch);
    // The new token works.
    phone.sync_now().await?;

    // Asked again once enrolled, the same code gives the same answer (an
    // app that did not see the first answer retries); another is refused.
    assert_eq!(
        phone.enroll(&issued.code).await?.device_id,
        enrolled.device_id
    );
    let other = admin::issue_enrollment_code(&server.store, branch, "other", 1, "test").await?;
    assert!(matches!(
        phone.enroll(&other.code).await,
        Err(ClientError::Invalid { ref field, .. }) if field == "device"
    ));
    Ok(())
}

// On SQLite only: it reads the SQLite file itself.
#[tokio::test]
async fn a_spent_code_stays_one_time_for_any_other_nonce_and_after_the_device_connected()
-> anyhow::Result<()> {
    doorstep_tests::on_sqlite(
        a_spent_code_stays_one_time_for_any_other_nonce_and_after_the_device_connected_on_sqlite(),
    )
    .await
}

async fn a_spent_code_stays_one_time_for_any_other_nonce_and_after_the_device_connected_on_sqlite()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let district = server.district().await?;
    let issued =
        admin::issue_enrollment_code(&server.store, district.yingfeng.id, "phone", 1, "test")
            .await?;
    let http = reqwest::Client::new();
    let enroll = |nonce: Option<&str>| {
        let mut body = serde_json::json!({ "code": issued.code });
        if let Some(nonce) = nonce {
            body["nonce"] = nonce.into();
        }
        http.post(format!("{}/api/v1/enroll", server.http_url()))
            .json(&body)
            .send()
    };
    let nonce = "0123456789abcdef0123456789abcdef";
    let first: serde_json::Value = enroll(Some(nonce))
        .await?
        .error_for_status()?
        .json()
        .await?;
    let again = enroll(Some(nonce)).await?;
    assert_eq!(again.status(), reqwest::StatusCode::CREATED);
    let again: serde_json::Value = again.json().await?;
    assert_eq!(again["device_id"], first["device_id"]);
    assert_ne!(again["token"], first["token"], "a new token");

    // The lost answer's token is replaced; the retry's works.
    let documents = |token: &serde_json::Value| {
        http.get(format!("{}/api/v1/device/documents", server.http_url()))
            .bearer_auth(token.as_str().unwrap_or_default())
            .send()
    };
    assert_eq!(documents(&first["token"]).await?.status(), 401);
    assert!(documents(&again["token"]).await?.status().is_success());

    // Another nonce, no nonce, a short one: the code is spent.
    for other in [Some("fedcba9876543210fedcba9876543210"), None] {
        assert_eq!(enroll(other).await?.status(), 409, "{other:?}");
    }
    assert_eq!(enroll(Some("short")).await?.status(), 400);

    // A day after the code was spent, the same nonce enrolls nothing (a
    // phone's old backup found later must not take the device's token).
    let pool = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(server.database_path()),
    )
    .await?;
    let spent_at: i64 =
        sqlx::query_scalar("select used_at from enrollment_codes where used_at is not null")
            .fetch_one(&pool)
            .await?;
    let day = doorstep_server::store::REPEAT_WINDOW_MS;
    sqlx::query("update enrollment_codes set used_at = ? where used_at = ?")
        .bind(spent_at - day - 1000)
        .bind(spent_at)
        .execute(&pool)
        .await?;
    assert_eq!(enroll(Some(nonce)).await?.status(), 409);
    sqlx::query("update enrollment_codes set used_at = ? where used_at = ?")
        .bind(spent_at)
        .bind(spent_at - day - 1000)
        .execute(&pool)
        .await?;
    assert_eq!(
        enroll(Some(nonce)).await?.status(),
        201,
        "within the day again"
    );

    // Once the device connected it holds its token: the nonce no longer
    // enrolls anything.
    let device: doorstep_protocol::DeviceId =
        again["device_id"].as_str().unwrap_or_default().parse()?;
    server.store.touch_device(device).await?;
    assert_eq!(enroll(Some(nonce)).await?.status(), 409);
    Ok(())
}
