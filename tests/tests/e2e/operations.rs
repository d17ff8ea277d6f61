//! Running the server (issue 16): `doorstep backup` and `doorstep restore`
//! with the real binary beside a running server, and `/metrics` scraped
//! after real traffic.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::ensure;
use doorstep_client::{Client, NewMember};
use doorstep_server::store::Store;
use doorstep_server::tenancy::Role;
use doorstep_tests::{
    District, ServerProcess, TestPeer, TestServer, enroll, make_district, sdk_device, this_month,
};
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

/// A server with the demo-shaped district, a district admin's API token,
/// and a phone of 迎风怡丽 whose new member has one visit of `yuan` synced
/// and counted.
struct Synced {
    server: TestServer,
    district: District,
    admin: String,
    phone_dir: tempfile::TempDir,
    phone: Client,
    member: doorstep_client::RecordId,
}

async fn synced_visit(member_name: &str, yuan: i64) -> anyhow::Result<Synced> {
    let server = TestServer::spawn().await?;
    let district = server.district().await?;
    let admin = server
        .login_as(ADMIN, Role::DistrictAdmin, district.district.id)
        .await?;
    let phone_dir = tempfile::tempdir()?;
    let phone = sdk_device(
        &server.store,
        &server.http_url(),
        district.yingfeng.id,
        phone_dir.path(),
        |_| {},
    )
    .await?;
    let member = member(&phone, member_name).await?;
    phone
        .record_visit(crate::visit_today(member, yuan, None))
        .await?;
    phone.sync_now().await?;
    server
        .wait_for_rollup_total(&admin, this_month(), 1, yuan * 100)
        .await?;
    Ok(Synced {
        server,
        district,
        admin,
        phone_dir,
        phone,
        member,
    })
}

/// The admin [`synced_visit`] made.
const ADMIN: &str = "district-admin";

/// A new login session of [`ADMIN`] (`login_as`'s password).
async fn admin_login(server: &TestServer) -> anyhow::Result<String> {
    let login: Value = reqwest::Client::new()
        .post(format!("{}/api/v1/login", server.http_url()))
        .json(&serde_json::json!({ "username": ADMIN, "password": "a long enough password" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(login["token"].as_str().unwrap_or_default().to_owned())
}

/// `doorstep backup` of the server's data directory into a new folder.
async fn backup(server: &TestServer) -> anyhow::Result<(tempfile::TempDir, std::path::PathBuf)> {
    let folder = tempfile::tempdir()?;
    let file = folder.path().join("doorstep.backup");
    let out = doorstep(server.data_dir(), &["backup".as_ref(), file.as_os_str()]).await?;
    ensure!(out.status.success(), "backup failed: {}", text(&out.stderr));
    Ok((folder, file))
}

/// A backup is taken while the server runs, and restored with the CLI
/// beside it: the server notices (it closes the open connection saying
/// why) and takes writes again at once, in the new epoch; nothing made
/// after the backup is rewound (a device enrolled since keeps its token, a
/// visit synced since stays counted); the audit log has both.
// On SQLite only: backups and restores are SQLite.
#[tokio::test]
async fn a_restore_under_a_running_server_is_noticed_and_rewinds_nothing() -> anyhow::Result<()> {
    doorstep_tests::on_sqlite(
        a_restore_under_a_running_server_is_noticed_and_rewinds_nothing_on_sqlite(),
    )
    .await
}

async fn a_restore_under_a_running_server_is_noticed_and_rewinds_nothing_on_sqlite()
-> anyhow::Result<()> {
    let Synced {
        server,
        district: d,
        admin,
        phone_dir: _phone_dir,
        phone,
        member: id,
    } = synced_visit("备份前的会员", 100).await?;

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
    // The session the backup holds is ended after it (a logout); another begins.
    let http = reqwest::Client::new();
    let ended = admin;
    let admin = admin_login(&server).await?;
    http.post(format!("{}/api/v1/logout", server.http_url()))
        .bearer_auth(&ended)
        .send()
        .await?
        .error_for_status()?;
    // A device enrolled after the backup, connected while the restore happens.
    let watcher = server.enroll(d.fenghuangting.id, "watching").await?;
    let mut open = TestPeer::connect(&server.ws_url(), &watcher.token, Some("watcher")).await?;

    let out = doorstep(server.data_dir(), &["restore".as_ref(), backup.as_os_str()]).await?;
    ensure!(
        out.status.success(),
        "restore failed: {}",
        text(&out.stderr)
    );
    let said = text(&out.stdout);
    ensure!(
        said.contains("rows") && said.contains("nothing it had was changed"),
        "{said}"
    );

    let (code, reason) = open.closed(Duration::from_secs(10)).await?;
    ensure!(
        code == 1001 && reason.contains("restored"),
        "{code} {reason}"
    );
    // The ended session stays ended; the live one goes on.
    let me = |token: String| {
        let http = http.clone();
        let url = format!("{}/api/v1/me", server.http_url());
        async move { Ok::<_, anyhow::Error>(http.get(url).bearer_auth(token).send().await?.status()) }
    };
    ensure!(
        me(ended.clone()).await? == 401,
        "a logged-out session came back"
    );
    ensure!(me(admin.clone()).await? == 200);
    // Nothing was rewound: the later device still syncs, the later visit counts.
    let mut back = TestPeer::connect(&server.ws_url(), &watcher.token, Some("watcher")).await?;
    let roster = doorstep_protocol::DocumentId::roster(d.fenghuangting.id);
    ensure!(matches!(
        back.sync(roster).await?,
        doorstep_tests::SyncOutcome::Synced
    ));
    server
        .wait_for_rollup_total(&admin, this_month(), 2, 30_000)
        .await?;
    // Writes go on in the new epoch.
    phone
        .record_visit(crate::visit_today(id, 300, None))
        .await?;
    phone.sync_now().await?;
    server
        .wait_for_rollup_total(&admin, this_month(), 3, 60_000)
        .await?;

    let audit = doorstep(
        server.data_dir(),
        &["--json".as_ref(), "audit".as_ref(), "list".as_ref()],
    )
    .await?;
    let audit = text(&audit.stdout);
    for action in ["database.backup", "database.restore", "device.enroll"] {
        ensure!(audit.contains(action), "{action} missing from {audit}");
    }
    Ok(())
}

/// The live database loses a document's changes and their rows (a damaged
/// disk, a bad manual repair): the figures drop. Restoring the backup
/// beside the running server brings the changes back, and the server
/// re-projects them without a restart.
// On SQLite only: backups and restores are SQLite.
#[tokio::test]
async fn a_restore_under_a_running_server_brings_back_lost_changes_and_their_figures()
-> anyhow::Result<()> {
    doorstep_tests::on_sqlite(
        a_restore_under_a_running_server_brings_back_lost_changes_and_their_figures_on_sqlite(),
    )
    .await
}

async fn a_restore_under_a_running_server_brings_back_lost_changes_and_their_figures_on_sqlite()
-> anyhow::Result<()> {
    let Synced {
        server,
        district: d,
        admin,
        ..
    } = synced_visit("受损的会员", 40).await?;
    let (_backups, backup) = backup(&server).await?;

    let log = doorstep_protocol::DocumentId::monthly_log(d.yingfeng.id, this_month());
    server
        .alter_database(
            &[
                "delete from chunks where document_id = ?",
                "delete from change_log where document_id = ?",
                "delete from visit_rows where document_id = ?",
            ],
            &log.to_string(),
        )
        .await?;
    server
        .wait_for_rollup_total(&admin, this_month(), 0, 0)
        .await?;

    let out = doorstep(server.data_dir(), &["restore".as_ref(), backup.as_os_str()]).await?;
    ensure!(
        out.status.success(),
        "restore failed: {}",
        text(&out.stderr)
    );
    ensure!(
        text(&out.stdout).contains("1 documents gained changes"),
        "{}",
        text(&out.stdout)
    );
    server
        .wait_for_rollup_total(&admin, this_month(), 1, 4_000)
        .await?;
    let stored = server.stored_document(log).await?;
    let visits = doorstep_protocol::schema::log::MonthlyLog::load(&stored).visits;
    ensure!(visits.len() == 1, "{visits:?}");
    Ok(())
}

/// The server's database is lost after its last backup. Restored into a
/// new data directory, the server lacks what reached it since, including
/// a visit in a month the phone would not open again (three months back,
/// acknowledged long ago). The phone sees the server's epoch change and
/// offers every document it holds: the visit comes back, nothing is lost.
// On SQLite only: backups and restores are SQLite.
#[tokio::test]
async fn after_a_lost_database_is_restored_phones_bring_back_what_the_backup_lacks()
-> anyhow::Result<()> {
    doorstep_tests::on_sqlite(
        after_a_lost_database_is_restored_phones_bring_back_what_the_backup_lacks_on_sqlite(),
    )
    .await
}

async fn after_a_lost_database_is_restored_phones_bring_back_what_the_backup_lacks_on_sqlite()
-> anyhow::Result<()> {
    let Synced {
        server,
        admin,
        phone_dir,
        phone,
        member: id,
        ..
    } = synced_visit("恢复后的会员", 100).await?;
    let (_backups, backup) = backup(&server).await?;

    let old = this_month().previous().previous().previous();
    let mut visit = crate::visit_today(id, 70, None);
    visit.date = crate::device::first_day(old);
    phone.record_visit(visit).await?;
    phone.sync_now().await?;
    server.wait_for_rollup_total(&admin, old, 1, 7_000).await?;
    // The app closes: nothing of that month stays loaded.
    drop(phone);

    // The disk dies; a new data directory gets the last backup.
    let addr = server.addr;
    let data = server.stop().await;
    for name in ["doorstep.db", "doorstep.db-wal", "doorstep.db-shm"] {
        let _ = std::fs::remove_file(data.path().join(name));
    }
    let out = doorstep(
        data.path(),
        &["--create".as_ref(), "restore".as_ref(), backup.as_os_str()],
    )
    .await?;
    ensure!(
        out.status.success(),
        "restore failed: {}",
        text(&out.stderr)
    );
    let server = TestServer::spawn_at(data, addr, |_| {}).await?;
    // No login session is restored: the admin logs in again.
    let admin = admin_login(&server).await?;
    server
        .wait_for_rollup_total(&admin, this_month(), 1, 10_000)
        .await?;

    let phone = Client::open(doorstep_client::ClientConfig::new(
        phone_dir.path(),
        server.http_url(),
        doorstep_tests::test_store_key(),
    ))
    .await?;
    phone.sync_now().await?;
    server.wait_for_rollup_total(&admin, old, 1, 7_000).await?;
    Ok(())
}

/// What is not a backup of this server is refused with a reason, and the
/// database is left as it was: a missing file, bytes that are not SQLite,
/// an SQLite file that is not Doorstep's, and the live database itself.
// On SQLite only: backups and restores are SQLite.
#[tokio::test]
async fn a_restore_from_anything_but_a_backup_is_refused_and_changes_nothing() -> anyhow::Result<()>
{
    doorstep_tests::on_sqlite(
        a_restore_from_anything_but_a_backup_is_refused_and_changes_nothing_on_sqlite(),
    )
    .await
}

async fn a_restore_from_anything_but_a_backup_is_refused_and_changes_nothing_on_sqlite()
-> anyhow::Result<()> {
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
    // What a killed restore left behind (a copy of a backup, names and all).
    let leftover = server.data_dir().join("restore-staging.db");
    std::fs::write(&leftover, b"a staged copy from a restore that was killed")?;
    // A hard link to the live database is the live database.
    let linked = files.path().join("linked.db");
    std::fs::hard_link(&live, &linked)?;
    // A backup of another installation.
    let elsewhere = TestServer::spawn().await?;
    elsewhere.district().await?;
    let theirs = files.path().join("theirs.db");
    elsewhere.store.backup_to(&theirs).await?;
    for (from, says) in [
        (&missing, "no backup file"),
        (&garbage, "not a Doorstep backup"),
        (&foreign, "not a Doorstep backup"),
        (&live, "live database"),
        (&linked, "live database"),
        (&theirs, "another Doorstep installation"),
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
        !leftover.exists(),
        "the next restore removes a staged copy left behind"
    );
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
// On SQLite only: backups and restores are SQLite.
#[tokio::test]
async fn metrics_show_the_traffic_the_test_made() -> anyhow::Result<()> {
    doorstep_tests::on_sqlite(metrics_show_the_traffic_the_test_made_on_sqlite()).await
}

async fn metrics_show_the_traffic_the_test_made_on_sqlite() -> anyhow::Result<()> {
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
    // A series that is missing fails the test (a renamed series must not
    // read as zero).
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(f64::NAN)
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

    // The phone's connection has closed, the open one has not (the server
    // may take a moment to see the close).
    doorstep_tests::eventually(Duration::from_secs(10), || async {
        Ok(value(&scrape().await?, "doorstep_sync_connections ") == 1.0)
    })
    .await?;
    let after = scrape().await?;
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
    let log = doorstep_protocol::DocumentId::monthly_log(d.yingfeng.id, this_month());
    server
        .alter_database(
            &["update documents set projected_heads = 'behind' where id = ?"],
            &log.to_string(),
        )
        .await?;
    let lagging = scrape().await?;
    ensure!(
        value(&lagging, "doorstep_lagging_projections ") == 1.0,
        "{lagging}"
    );
    drop(open);
    Ok(())
}

/// SIGTERM, as a supervisor or a rolling restart stops a node: a connected
/// device is told "server shutting down" with a close frame (so it
/// reconnects at once, to another node behind a load balancer) instead of
/// finding a dead socket at its next ping, and the process exits cleanly.
#[tokio::test]
async fn a_terminated_server_says_goodbye_to_its_devices_and_exits_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server =
        ServerProcess::start(Path::new(env!("CARGO_BIN_EXE_doorstep")), dir.path()).await?;
    let store = Store::open(&dir.path().join("doorstep.db")).await?;
    let d = make_district(&store).await?;
    let device = enroll(&store, &server.http_url(), d.yingfeng.id, "phone").await?;
    let mut peer = TestPeer::connect(&server.ws_url(), &device.token, None).await?;
    let stopped = tokio::spawn(server.terminate());
    let (code, reason) = peer.closed(Duration::from_secs(20)).await?;
    ensure!(
        code == 1001 && reason.contains("shutting down"),
        "{code} {reason}"
    );
    let status = stopped.await??;
    ensure!(status.success(), "{status}");
    Ok(())
}

/// A database restored by other means than `doorstep restore` (pg_restore,
/// a file copied back) is marked with `doorstep mark-restored`: the running
/// server notices within a second, closes its devices' sockets saying why,
/// and writes go on in the new epoch. Such a restore rewinds accounts, so
/// every login session ends. On either backend.
#[tokio::test]
async fn a_database_marked_restored_is_noticed_by_the_running_server() -> anyhow::Result<()> {
    let Synced {
        server,
        district: d,
        admin,
        phone_dir: _phone_dir,
        phone,
        member: id,
    } = synced_visit("标记前的会员", 100).await?;
    let watcher = server.enroll(d.fenghuangting.id, "watching").await?;
    let mut open = TestPeer::connect(&server.ws_url(), &watcher.token, Some("watcher")).await?;
    let before = server.store.epoch();

    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_doorstep"))
            .args(server.database_args())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .output()
    };
    let out = cli(&[
        "--json",
        "mark-restored",
        "--how",
        "pg_restore of last night's dump",
    ])
    .await?;
    ensure!(
        out.status.success(),
        "mark-restored failed: {}",
        text(&out.stderr)
    );
    let said: Value = serde_json::from_slice(&out.stdout)?;
    let epoch = said["epoch"].as_str().unwrap_or_default().to_owned();
    ensure!(!epoch.is_empty() && epoch != before, "{said}");
    ensure!(said["sessions_ended"].as_u64() >= Some(1), "{said}");

    let (code, reason) = open.closed(Duration::from_secs(10)).await?;
    ensure!(
        code == 1001 && reason.contains("restored"),
        "{code} {reason}"
    );
    ensure!(
        server.store.epoch() == epoch,
        "the server works in the new epoch"
    );
    // Writes waited for the new epoch (503 until the server took it in,
    // which it has now); sessions from before the restore are gone.
    let me = reqwest::Client::new()
        .get(format!("{}/api/v1/me", server.http_url()))
        .bearer_auth(&admin)
        .send()
        .await?;
    ensure!(me.status() == 401, "a session outlived the restore");
    let admin = admin_login(&server).await?;
    phone
        .record_visit(crate::visit_today(id, 200, None))
        .await?;
    phone.sync_now().await?;
    // Two visits, 100 and 200 yuan, in fen.
    server
        .wait_for_rollup_total(&admin, this_month(), 2, 30_000)
        .await?;
    let audit = text(&cli(&["--json", "audit", "list"]).await?.stdout);
    ensure!(
        audit.contains("database.mark_restored") && audit.contains("last night's dump"),
        "{audit}"
    );
    Ok(())
}
