//! Running the server (issue 16): `doorstep backup` and `doorstep restore`
//! with the real binary beside a running server, and `/metrics` scraped
//! after real traffic.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, ensure};
use doorstep_client::{Client, NewMember};
use doorstep_server::tenancy::Role;
use doorstep_tests::{TestPeer, TestServer, sdk_device, this_month};
use serde_json::Value;
use tokio::process::Command;

/// `doorstep --data-dir <data> <args>` to completion.
async fn doorstep(data: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_doorstep"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .await?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn member(client: &Client, name: &str) -> anyhow::Result<doorstep_client::RecordId> {
    Ok(client
        .add_member(NewMember {
            name: name.into(),
            ..NewMember::default()
        })
        .await?)
}

/// A backup is taken while the server runs; after it a visit is synced.
/// Restoring the backup with the CLI, beside the running server, takes the
/// figures back to the backup's (the server noticed: it closed the open
/// connection saying why, and its next write goes to the restored data),
/// and the phone, which still holds the later visit, sends it again on its
/// next sync: nothing acknowledged is lost. The replaced data is kept.
#[tokio::test]
async fn a_restore_under_a_running_server_is_noticed_and_devices_send_what_the_backup_lacks()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let admin = server
        .login_as("district-admin", Role::DistrictAdmin, d.district.id)
        .await?;
    let phone_dir = tempfile::tempdir()?;
    let phone = sdk_device(
        &server.store,
        &server.http_url(),
        d.yingfeng.id,
        phone_dir.path(),
        |_| {},
    )
    .await?;
    let id = member(&phone, "备份前的会员").await?;
    phone
        .record_visit(crate::visit_today(id, 100, None))
        .await?;
    phone.sync_now().await?;
    server
        .wait_for_rollup_total(&admin, this_month(), 1, 10_000)
        .await?;

    let backups = tempfile::tempdir()?;
    let backup = backups.path().join("doorstep.backup");
    let out = doorstep(
        server.data_dir(),
        &["--json".as_ref(), "backup".as_ref(), backup.as_os_str()],
    )
    .await?;
    ensure!(out.status.success(), "backup failed: {}", text(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(summary["documents"].as_i64() >= Some(2), "{summary}");
    // A second backup to the same file is refused, and the first stays.
    let again = doorstep(server.data_dir(), &["backup".as_ref(), backup.as_os_str()]).await?;
    ensure!(!again.status.success() && text(&again.stderr).contains("already exists"));

    phone
        .record_visit(crate::visit_today(id, 200, None))
        .await?;
    phone.sync_now().await?;
    server
        .wait_for_rollup_total(&admin, this_month(), 2, 30_000)
        .await?;

    // A device connected while the restore happens.
    let watcher = server.enroll(d.fenghuangting.id, "watching").await?;
    let mut open = TestPeer::connect(&server.ws_url(), &watcher.token, Some("watcher")).await?;

    let out = doorstep(server.data_dir(), &["restore".as_ref(), backup.as_os_str()]).await?;
    ensure!(
        out.status.success(),
        "restore failed: {}",
        text(&out.stderr)
    );
    let said = text(&out.stdout);
    ensure!(said.contains("restored"), "{said}");
    let kept = std::fs::read_dir(server.data_dir())?
        .filter_map(Result::ok)
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("before-restore-")
        })
        .context("the replaced data is kept beside the database")?;
    ensure!(
        said.contains(&kept.file_name().to_string_lossy().into_owned()),
        "{said}"
    );

    let (code, reason) = open.closed(Duration::from_secs(10)).await?;
    ensure!(
        code == 1001 && reason.contains("restored"),
        "{code} {reason}"
    );
    // The device enrolled after the backup is gone with it.
    ensure!(
        TestPeer::connect(&server.ws_url(), &watcher.token, None)
            .await
            .is_err()
    );
    server
        .wait_for_rollup_total(&admin, this_month(), 1, 10_000)
        .await?;

    // The phone still holds the later visit and sends it again.
    phone.sync_now().await?;
    server
        .wait_for_rollup_total(&admin, this_month(), 2, 30_000)
        .await?;
    let log = doorstep_protocol::DocumentId::monthly_log(d.yingfeng.id, this_month());
    let stored = server.stored_document(log).await?;
    let visits = doorstep_protocol::schema::log::MonthlyLog::load(&stored).visits;
    ensure!(visits.len() == 2, "{visits:?}");

    // The restore is in the audit log, which it did not rewind.
    let audit = doorstep(
        server.data_dir(),
        &["--json".as_ref(), "audit".as_ref(), "list".as_ref()],
    )
    .await?;
    let audit = text(&audit.stdout);
    ensure!(audit.contains("database.restore"), "{audit}");
    ensure!(audit.contains("device.enroll"), "{audit}");
    Ok(())
}

/// What is not a backup of this server is refused with a reason, and the
/// database is left as it was: a missing file, bytes that are not SQLite,
/// an SQLite file that is not Doorstep's, and the live database itself.
#[tokio::test]
async fn a_restore_from_anything_but_a_backup_is_refused_and_changes_nothing() -> anyhow::Result<()>
{
    let server = TestServer::spawn().await?;
    server.district().await?;
    let epoch = server.store.epoch();
    let files = tempfile::tempdir()?;
    let garbage = files.path().join("garbage.db");
    std::fs::write(
        &garbage,
        b"not a database at all, but long enough to look like one",
    )?;
    let foreign = files.path().join("foreign.db");
    let pool = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&foreign)
            .create_if_missing(true),
    )
    .await?;
    sqlx::query("create table notes (body text)")
        .execute(&pool)
        .await?;
    pool.close().await;
    let missing = files.path().join("missing.db");
    let live = server.database_path();
    for (from, says) in [
        (&missing, "no backup file"),
        (&garbage, "not a Doorstep backup"),
        (&foreign, "not a Doorstep backup"),
        (&live, "live database"),
    ] {
        let out = doorstep(server.data_dir(), &["restore".as_ref(), from.as_os_str()]).await?;
        let err = text(&out.stderr);
        ensure!(
            !out.status.success() && err.contains(says),
            "{}: {err}",
            from.display()
        );
    }
    ensure!(
        server.store.restored_epoch().await?.is_none(),
        "the epoch moved"
    );
    ensure!(server.store.epoch() == epoch);
    ensure!(
        server.store.tenant_count().await? == 5,
        "the tenants changed"
    );
    Ok(())
}

/// `/metrics` shows the traffic a test made: a device's connection and
/// messages both ways, an acknowledgement, a refused token and a document
/// refused as unavailable.
#[tokio::test]
async fn metrics_show_the_traffic_the_test_made() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let scrape = || async {
        let response = reqwest::get(format!("{}/metrics", server.http_url())).await?;
        ensure!(response.status() == 200, "{}", response.status());
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        ensure!(kind.starts_with("application/openmetrics-text"), "{kind}");
        Ok::<_, anyhow::Error>(response.text().await?)
    };
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let before = scrape().await?;
    ensure!(
        value(&before, "doorstep_sync_connections ") == 0.0,
        "{before}"
    );

    let phone_dir = tempfile::tempdir()?;
    let phone = sdk_device(
        &server.store,
        &server.http_url(),
        d.yingfeng.id,
        phone_dir.path(),
        |_| {},
    )
    .await?;
    let id = member(&phone, "计量的会员").await?;
    phone.record_visit(crate::visit_today(id, 5, None)).await?;
    phone.sync_now().await?;
    let enrolled = server.enroll(d.yingfeng.id, "open").await?;
    let mut open = TestPeer::connect(&server.ws_url(), &enrolled.token, None).await?;
    let other = doorstep_protocol::DocumentId::roster(d.fenghuangting.id);
    let answer = open.sync(other).await?;
    ensure!(
        matches!(answer, doorstep_tests::SyncOutcome::Unavailable(_)),
        "{answer:?}"
    );
    ensure!(
        TestPeer::connect(&server.ws_url(), "not-a-token", None)
            .await
            .is_err()
    );

    let after = scrape().await?;
    ensure!(
        value(&after, "doorstep_sync_connections ") == 1.0,
        "{after}"
    );
    ensure!(
        value(&after, "doorstep_sync_messages_total{direction=\"in\"} ") >= 2.0,
        "{after}"
    );
    ensure!(
        value(&after, "doorstep_sync_messages_total{direction=\"out\"} ") >= 2.0,
        "{after}"
    );
    ensure!(
        value(
            &after,
            "doorstep_sync_message_bytes_total{direction=\"in\"} "
        ) > 100.0,
        "{after}"
    );
    ensure!(
        value(&after, "doorstep_sync_acknowledgement_seconds_count ") >= 1.0,
        "{after}"
    );
    ensure!(
        value(&after, "doorstep_refusals_total{reason=\"unknown_token\"} ") == 1.0,
        "{after}"
    );
    ensure!(
        value(
            &after,
            "doorstep_refusals_total{reason=\"document_unavailable\"} "
        ) == 1.0,
        "{after}"
    );
    ensure!(value(&after, "doorstep_live_documents ") >= 1.0, "{after}");
    ensure!(
        value(&after, "doorstep_lagging_projections ") == 0.0,
        "{after}"
    );
    ensure!(!after.contains("计量"), "a name reached /metrics");

    // A document whose projected rows fall behind its changes shows.
    let pool = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(server.database_path()),
    )
    .await?;
    let log = doorstep_protocol::DocumentId::monthly_log(d.yingfeng.id, this_month());
    sqlx::query("update documents set projected_heads = 'behind' where id = ?")
        .bind(log.to_string())
        .execute(&pool)
        .await?;
    pool.close().await;
    let lagging = scrape().await?;
    ensure!(
        value(&lagging, "doorstep_lagging_projections ") == 1.0,
        "{lagging}"
    );
    drop(open);
    Ok(())
}
