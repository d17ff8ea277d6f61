//! The device SDK as a phone runs it: one owner per data directory, an
//! encrypted store, bounded memory over a long history, a live connection
//! that pushes edits, truthful edit states, and a way out when the server
//! forgets the device.

use doorstep_tests::this_month;
use std::time::Duration;

use automerge::ReadDoc;
use doorstep_client::{
    Client, ClientConfig, ClientError, EditState, Fen, NewMember, NewVisit, RecordId, SyncStatus,
    VisitKind,
};
use doorstep_protocol::schema::log::MonthlyLog;
use doorstep_protocol::{Date, DocumentId, Month};
use doorstep_tests::{TestServer, eventually, sdk_device, test_store_key};
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

fn visit_on(date: Date, member: RecordId, cash_yuan: i64) -> NewVisit {
    NewVisit {
        date,
        member_id: member,
        kind: VisitKind::Routine,
        visitors: vec!["王志愿".into()],
        aid_cash: Fen::from_yuan(cash_yuan),
        aid_goods: Fen::ZERO,
        goods_description: None,
        notes: None,
        follow_up: None,
    }
}

pub(crate) fn first_day(month: Month) -> Date {
    Date::from_ymd(month.year(), month.month(), 1).expect("a date")
}

async fn member(client: &Client, name: &str) -> anyhow::Result<RecordId> {
    Ok(client
        .add_member(NewMember {
            name: name.into(),
            ..NewMember::default()
        })
        .await?)
}

/// Waits until `client` has no unacknowledged change, or fails.
async fn acknowledged(client: &Client) -> anyhow::Result<()> {
    eventually(Duration::from_secs(30), || async {
        Ok(client.pending_changes().await? == 0)
    })
    .await
}

#[tokio::test]
async fn a_data_directory_has_one_owner_and_survives_either_being_killed() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let url = server.http_url();

    // In one process, a second open shares the first instance.
    let first = sdk_device(&server.store, &url, d.yingfeng.id, dir.path(), |_| {}).await?;
    let second = Client::open(ClientConfig::new(dir.path(), &url, test_store_key())).await?;
    let id = member(&second, "共享实例").await?;
    assert_eq!(first.member(id).await?.name, "共享实例");
    // With another key it is refused, not opened twice.
    let other_key = doorstep_client::StoreKey::from_bytes(&[7; 32])?;
    assert!(matches!(
        Client::open(ClientConfig::new(dir.path(), &url, other_key)).await,
        Err(ClientError::AlreadyOpen(_))
    ));

    // Another process is refused while this one holds the directory.
    let binary = env!("CARGO_BIN_EXE_doorstep-device");
    let data = dir.path().to_str().expect("utf-8 path");
    let out = Command::new(binary)
        .args([data, &url, "add-member", "第二个进程"])
        .output()
        .await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("open elsewhere"), "{stderr}");
    drop((first, second));

    // Now the other process owns it; this one is refused. Killing the owner
    // frees the directory and loses nothing.
    let mut holder = Command::new(binary)
        .args([data, &url, "hold"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(holder.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await??;
    assert_eq!(line.as_deref(), Some("open"));
    assert!(matches!(
        Client::open(ClientConfig::new(dir.path(), &url, test_store_key())).await,
        Err(ClientError::AlreadyOpen(_))
    ));
    holder.kill().await?;
    holder.wait().await?;

    let reopened = Client::open(ClientConfig::new(dir.path(), &url, test_store_key())).await?;
    assert_eq!(reopened.member(id).await?.name, "共享实例");
    let visit = reopened
        .record_visit(visit_on(first_day(this_month()), id, 10))
        .await?;
    reopened.sync_now().await?;
    let stored = MonthlyLog::load(
        &server
            .stored_document(DocumentId::monthly_log(d.yingfeng.id, this_month()))
            .await?,
    );
    assert!(stored.visits.contains_key(&visit));
    Ok(())
}

/// Every byte range of `bytes` that Automerge accepts as a document or as
/// changes, rendered: what an attacker with the file gets out of it.
fn automerge_text_in(bytes: &[u8]) -> Vec<String> {
    // Automerge chunks start with these magic bytes.
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    let mut found = Vec::new();
    for start in 0..bytes.len().saturating_sub(MAGIC.len()) {
        if bytes[start..start + 4] != MAGIC {
            continue;
        }
        let tail = &bytes[start..];
        let loaded = std::panic::catch_unwind(|| {
            let mut doc = automerge::Automerge::new();
            doc.load_incremental(tail).ok()?;
            Some(format!("{:?}", automerge_values(&doc)))
        });
        if let Ok(Some(text)) = loaded {
            found.push(text);
        }
    }
    found
}

/// All string values in a document, depth first.
fn automerge_values(doc: &automerge::Automerge) -> Vec<String> {
    fn walk(doc: &automerge::Automerge, obj: &automerge::ObjId, out: &mut Vec<String>) {
        for item in doc.map_range(obj, ..) {
            match item.value {
                automerge::ValueRef::Object(_) => walk(doc, &item.id(), out),
                automerge::ValueRef::Scalar(s) => out.push(format!("{s:?}")),
            }
        }
    }
    let mut out = Vec::new();
    walk(doc, &automerge::ROOT, &mut out);
    out
}

#[tokio::test]
async fn the_store_cannot_be_read_without_its_key() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let name = "保密的名字";
    {
        let client = sdk_device(
            &server.store,
            &server.http_url(),
            d.yingfeng.id,
            dir.path(),
            |_| {},
        )
        .await?;
        let id = member(&client, name).await?;
        client
            .record_visit(visit_on(first_day(this_month()), id, 5))
            .await?;
        client.sync_now().await?;
    }

    // The method finds a name in plain Automerge bytes, so its silence on
    // the store below means something.
    let mut plain = automerge::AutoCommit::new();
    automerge::transaction::Transactable::put(&mut plain, automerge::ROOT, "name", name)?;
    assert!(
        automerge_text_in(&plain.save())
            .iter()
            .any(|t| t.contains(name))
    );

    for entry in std::fs::read_dir(dir.path())? {
        let path = entry?.path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            // The WAL and its index go when the last connection closes.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        if bytes.is_empty() {
            // The lock file: nothing in it to read.
            continue;
        }
        let opened = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .read_only(true)
            .connect_with_plain()
            .await;
        if let Ok(mut connection) = opened {
            let read: Result<i64, _> = sqlx::query_scalar("select count(*) from sqlite_master")
                .fetch_one(&mut connection)
                .await;
            assert!(read.is_err(), "{} opens as plain SQLite", path.display());
        }
        for text in automerge_text_in(&bytes) {
            assert!(
                !text.contains(name),
                "{} gives the name away",
                path.display()
            );
        }
        assert!(
            !bytes.windows(name.len()).any(|w| w == name.as_bytes()),
            "{} holds the name in the clear",
            path.display()
        );
    }
    let db = std::fs::read(dir.path().join("device.db"))?;
    assert!(
        !db.starts_with(b"SQLite format 3\0"),
        "a plaintext SQLite header"
    );

    // With the wrong key the store does not open; with the right one it does.
    let url = server.http_url();
    let wrong = doorstep_client::StoreKey::from_bytes(&[1; 32])?;
    assert!(matches!(
        Client::open(ClientConfig::new(dir.path(), &url, wrong)).await,
        Err(ClientError::WrongKey)
    ));
    let client = Client::open(ClientConfig::new(dir.path(), &url, test_store_key())).await?;
    assert_eq!(client.members(&Default::default()).await?.len(), 1);
    Ok(())
}

/// A connection to a file with no key at all, as plain SQLite would open it.
trait PlainOpen {
    async fn connect_with_plain(self) -> Result<sqlx::SqliteConnection, sqlx::Error>;
}

impl PlainOpen for sqlx::sqlite::SqliteConnectOptions {
    async fn connect_with_plain(self) -> Result<sqlx::SqliteConnection, sqlx::Error> {
        use sqlx::ConnectOptions;
        self.connect().await
    }
}

#[tokio::test]
async fn two_years_of_history_keep_few_months_in_memory_and_an_edit_syncs_only_its_month()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let device = sdk_device(
        &server.store,
        &server.http_url(),
        d.yingfeng.id,
        dir.path(),
        |c| {
            c.max_loaded_months = 3;
            c.sync_interval = None;
        },
    )
    .await?;
    let id = member(&device, "老会员").await?;
    let mut month = this_month();
    let mut months = Vec::new();
    for _ in 0..24 {
        device
            .record_visit(visit_on(first_day(month), id, 1))
            .await?;
        months.push(month);
        month = month.previous();
    }
    device.sync_now().await?;
    assert_eq!(device.pending_changes().await?, 0);
    let loaded = device.loaded_documents().await?;
    assert!(loaded.len() <= 4, "{} documents in memory", loaded.len());

    let service = device.start_background_sync();
    // Up to date over the live connection, not from the sync above.
    eventually(Duration::from_secs(30), || async {
        Ok(!device.messages_sent().is_empty()
            && matches!(device.status(), SyncStatus::UpToDate { .. }))
    })
    .await?;
    let before = device.messages_sent();
    let old = months[10];
    let visit = device.record_visit(visit_on(first_day(old), id, 2)).await?;
    acknowledged(&device).await?;
    let after = device.messages_sent();
    let old_log = DocumentId::monthly_log(d.yingfeng.id, old);
    let touched: Vec<DocumentId> = after
        .iter()
        .filter(|(doc, n)| before.get(doc) != Some(n))
        .map(|(doc, _)| *doc)
        .collect();
    assert_eq!(
        touched,
        vec![old_log],
        "messages before {before:?}, after {after:?}"
    );
    assert!(device.loaded_documents().await?.len() <= 4);
    service.stop().await;
    let stored = MonthlyLog::load(&server.stored_document(old_log).await?);
    assert!(stored.visits.contains_key(&visit));
    Ok(())
}

#[tokio::test]
async fn an_edit_reaches_another_connected_device_by_push() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    // No re-checks: only the live connection can carry the edit.
    let no_polling = |c: &mut ClientConfig| c.sync_interval = None;
    let a = sdk_device(
        &server.store,
        &server.http_url(),
        d.yingfeng.id,
        dir_a.path(),
        no_polling,
    )
    .await?;
    let b = sdk_device(
        &server.store,
        &server.http_url(),
        d.yingfeng.id,
        dir_b.path(),
        no_polling,
    )
    .await?;
    let (service_a, service_b) = (a.start_background_sync(), b.start_background_sync());
    for device in [&a, &b] {
        eventually(Duration::from_secs(30), || async {
            Ok(matches!(device.status(), SyncStatus::UpToDate { .. }))
        })
        .await?;
    }
    let mut changes = b.subscribe_changes();
    changes.borrow_and_update();
    let id = member(&a, "推送的会员").await?;
    let arrived = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            changes.changed().await?;
            if b.member(id).await.is_ok() {
                return anyhow::Ok(());
            }
        }
    })
    .await;
    assert!(
        arrived.is_ok(),
        "the edit was not pushed to the other device"
    );
    service_a.stop().await;
    service_b.stop().await;
    Ok(())
}

// On SQLite only: it reads the SQLite file itself.
#[tokio::test]
async fn a_server_that_lost_the_device_leaves_its_edits_exportable_to_a_new_device()
-> anyhow::Result<()> {
    doorstep_tests::on_sqlite(
        a_server_that_lost_the_device_leaves_its_edits_exportable_to_a_new_device_on_sqlite(),
    )
    .await
}

async fn a_server_that_lost_the_device_leaves_its_edits_exportable_to_a_new_device_on_sqlite()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let (old_dir, new_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let url = server.http_url();
    let old = sdk_device(&server.store, &url, d.yingfeng.id, old_dir.path(), |_| {}).await?;
    let id = member(&old, "丢失设备的会员").await?;
    old.sync_now().await?;
    let visit = old
        .record_visit(visit_on(first_day(this_month()), id, 88))
        .await?;

    // The server is restored from a backup taken before this device enrolled.
    let pool = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(server.database_path()),
    )
    .await?;
    sqlx::query("delete from device_tokens where device_id = ?")
        .bind(old.device_id().expect("enrolled"))
        .execute(&pool)
        .await?;

    let refused = old.sync_now().await;
    assert!(
        matches!(refused, Err(ClientError::UnknownDevice(_))),
        "{refused:?}"
    );
    assert!(matches!(old.status(), SyncStatus::Unrecognised { .. }));
    assert!(old.is_enrolled(), "not treated as a revocation");
    assert_eq!(old.edit_state(visit).await?, EditState::Local);
    let checkpoint = old.checkpoint().await?;
    assert!(
        !checkpoint.safe && checkpoint.unsynced_changes > 0,
        "{checkpoint:?}"
    );

    let export = old.export_unsynced().await?;
    let new = sdk_device(&server.store, &url, d.yingfeng.id, new_dir.path(), |_| {}).await?;
    new.sync_now().await?;
    // Bad files are refused and change nothing.
    for bad in [&b"{}"[..], b"not json", &export[..export.len() / 2]] {
        assert!(matches!(
            new.import_unsynced(bad).await,
            Err(ClientError::Invalid { .. })
        ));
    }
    // Nor may a file carry changes of another author than the one it names.
    let mut forged: serde_json::Value = serde_json::from_slice(&export)?;
    forged["actor_id"] = serde_json::json!("00112233445566778899aabbccddeeff");
    let forged = serde_json::to_vec(&forged)?;
    assert!(matches!(
        new.import_unsynced(&forged).await,
        Err(ClientError::Invalid { .. })
    ));
    let report = new.import_unsynced(&export).await?;
    assert!(report.records >= 1, "{report:?}");
    assert_eq!(new.member_history(id).await?.aid_total, Fen::from_yuan(88));
    let checkpoint = new.checkpoint().await?;
    assert!(checkpoint.safe, "{checkpoint:?}");
    let stored = MonthlyLog::load(
        &server
            .stored_document(DocumentId::monthly_log(d.yingfeng.id, this_month()))
            .await?,
    );
    assert_eq!(
        stored.visits.get(&visit).map(|v| v.aid_cash),
        Some(Fen::from_yuan(88))
    );
    Ok(())
}

#[tokio::test]
async fn an_edit_goes_from_local_to_acknowledged_to_counted() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let device = sdk_device(
        &server.store,
        &server.http_url(),
        d.yingfeng.id,
        dir.path(),
        |_| {},
    )
    .await?;
    let id = member(&device, "状态").await?;
    let visit = device
        .record_visit(visit_on(first_day(this_month()), id, 3))
        .await?;
    assert_eq!(device.edit_state(visit).await?, EditState::Local);
    let checkpoint = device.checkpoint().await?;
    assert!(checkpoint.safe && checkpoint.all_counted, "{checkpoint:?}");
    assert_eq!(device.edit_state(visit).await?, EditState::Counted);
    assert_eq!(device.edit_state(id).await?, EditState::Counted);

    // The server gone: the checkpoint says so instead of failing.
    let _ = server.stop().await;
    device
        .record_visit(visit_on(first_day(this_month()), id, 4))
        .await?;
    let checkpoint = device.checkpoint().await?;
    assert!(
        !checkpoint.safe && checkpoint.problem.is_some(),
        "{checkpoint:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_device_revoked_while_offline_learns_it_was_revoked_when_it_reconnects()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let device = sdk_device(
        &server.store,
        &server.http_url(),
        d.yingfeng.id,
        dir.path(),
        |_| {},
    )
    .await?;
    device.sync_now().await?;
    // No connection open while it is revoked.
    doorstep_server::admin::revoke_device(
        &server.store,
        device.device_id().expect("enrolled").parse()?,
        "test",
    )
    .await?;
    let refused = device.sync_now().await;
    assert!(
        matches!(refused, Err(ClientError::Revoked(_))),
        "{refused:?}"
    );
    assert!(matches!(device.status(), SyncStatus::Revoked { .. }));
    Ok(())
}

#[tokio::test]
async fn wiping_ends_enrollment_for_every_handle_and_frees_the_directory() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let url = server.http_url();
    let device = sdk_device(&server.store, &url, d.yingfeng.id, dir.path(), |_| {}).await?;
    let other_handle = device.clone();
    device.wipe().await?;
    assert!(!other_handle.is_enrolled());
    // An old handle spends no enrollment code into the wiped store.
    let code = doorstep_server::admin::issue_enrollment_code(
        &server.store,
        d.yingfeng.id,
        "again",
        1,
        "test",
    )
    .await?
    .code;
    assert!(other_handle.enroll(&code).await.is_err());
    assert!(matches!(
        other_handle.pending_changes().await,
        Err(ClientError::NotEnrolled)
    ));
    let fresh = Client::open(ClientConfig::new(dir.path(), &url, test_store_key())).await?;
    assert!(!fresh.is_enrolled());
    // The code is unspent: the fresh store enrolls with it.
    fresh.enroll(&code).await?;
    Ok(())
}

/// Reads the automerge document to check the helper above finds values in
/// nested maps (the store test relies on it).
#[test]
fn the_extractor_walks_nested_maps() -> anyhow::Result<()> {
    let mut doc = automerge::AutoCommit::new();
    let members = automerge::transaction::Transactable::put_object(
        &mut doc,
        automerge::ROOT,
        "members",
        automerge::ObjType::Map,
    )?;
    automerge::transaction::Transactable::put(&mut doc, &members, "x", "深处的名字")?;
    let text = automerge_text_in(&doc.save());
    assert!(text.iter().any(|t| t.contains("深处的名字")), "{text:?}");
    assert!(doc.get(automerge::ROOT, "members")?.is_some());
    Ok(())
}

/// One app process: opens the data directory, makes one call, exits (so
/// the directory is closed, as when a phone backs it up).
pub(crate) async fn app_process(
    dir: &std::path::Path,
    url: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_doorstep-device"))
        .arg(dir)
        .arg(url)
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Enrolls the app in `phone` to `branch`, adds a member named `name` and
/// syncs, each step its own app process; the member's id.
pub(crate) async fn enrolled_app_with_member(
    server: &TestServer,
    branch: doorstep_protocol::TenantId,
    phone: &std::path::Path,
    name: &str,
) -> anyhow::Result<String> {
    let url = server.http_url();
    let code =
        doorstep_server::admin::issue_enrollment_code(&server.store, branch, "phone", 1, "test")
            .await?
            .code;
    app_process(phone, &url, &["enroll", &code]).await?;
    let added = app_process(phone, &url, &["add-member", name]).await?;
    let member = added.strip_prefix("member ").unwrap_or_default().to_owned();
    app_process(phone, &url, &["sync"]).await?;
    Ok(member)
}

/// Copies every file of a data directory (a phone backup takes them all).
pub(crate) fn copy_files(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Puts a backup back: the directory holds exactly the backup's files.
pub(crate) fn restore(backup: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::remove_file(path)?;
        }
    }
    copy_files(backup, dir)
}

/// Issue 14, finding 1: the actor id was stored and reused after a
/// rollback of the store, so the first edit after a restore wrote a second
/// change under a sequence number the server already held ("duplicate
/// seq"): every sync failed for good, and so did importing the export.
#[tokio::test]
async fn a_restored_data_directory_keeps_syncing_and_loses_no_edit() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let url = server.http_url();
    let (dir, backup, other_dir) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let phone = dir.path();
    let member = enrolled_app_with_member(&server, d.yingfeng.id, phone, "备份恢复").await?;

    // The backup; then an edit that reaches the server; then the restore.
    copy_files(phone, backup.path())?;
    let date = first_day(this_month()).to_string();
    let recorded = |out: String| -> anyhow::Result<RecordId> {
        Ok(out.strip_prefix("recorded ").unwrap_or_default().parse()?)
    };
    let lost_locally =
        recorded(app_process(phone, &url, &["record-visit", &member, &date, "1000"]).await?)?;
    app_process(phone, &url, &["sync"]).await?;
    restore(backup.path(), phone)?;

    // The first edit after the restore, exported before it syncs.
    let after =
        recorded(app_process(phone, &url, &["record-visit", &member, &date, "2000"]).await?)?;
    let export_file = other_dir.path().join("export.json");
    let export_path = export_file.to_str().expect("utf-8 path");
    app_process(phone, &url, &["export", export_path]).await?;

    // Another device of the branch, holding the edit from before the
    // restore (from the server), imports the export.
    let other_store = tempfile::tempdir()?;
    let other = sdk_device(
        &server.store,
        &url,
        d.yingfeng.id,
        other_store.path(),
        |_| {},
    )
    .await?;
    other.sync_now().await?;
    assert_eq!(other.visit(lost_locally).await?.aid_cash, Fen(1000));
    let report = other.import_unsynced(&std::fs::read(&export_file)?).await?;
    assert!(report.records >= 1, "{report:?}");
    assert_eq!(other.visit(after).await?.aid_cash, Fen(2000));
    assert!(other.checkpoint().await?.safe);

    // The restored phone itself syncs, and keeps syncing.
    app_process(phone, &url, &["sync"]).await?;
    let later =
        recorded(app_process(phone, &url, &["record-visit", &member, &date, "3000"]).await?)?;
    app_process(phone, &url, &["sync"]).await?;

    let client = Client::open(ClientConfig::new(phone, &url, test_store_key())).await?;
    let checkpoint = client.checkpoint().await?;
    assert!(checkpoint.safe, "{checkpoint:?}");
    for (visit, fen) in [(lost_locally, 1000), (after, 2000), (later, 3000)] {
        assert_eq!(client.visit(visit).await?.aid_cash, Fen(fen));
    }
    let stored = MonthlyLog::load(
        &server
            .stored_document(DocumentId::monthly_log(d.yingfeng.id, this_month()))
            .await?,
    );
    for (visit, fen) in [(lost_locally, 1000), (after, 2000), (later, 3000)] {
        assert_eq!(
            stored.visits.get(&visit).map(|v| v.aid_cash),
            Some(Fen(fen))
        );
    }
    Ok(())
}

/// Issue 14, finding 2: the import wrote each record whole, so another
/// device's acknowledged edits to the same records (here an address and a
/// hardship status) vanished everywhere, and no conflict was shown.
#[tokio::test]
async fn an_import_keeps_a_third_devices_acknowledged_edits_and_shows_the_conflict()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let url = server.http_url();
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let mut devices = Vec::new();
    for dir in &dirs {
        devices.push(sdk_device(&server.store, &url, d.yingfeng.id, dir.path(), |_| {}).await?);
    }
    let [a, b, c] = [&devices[0], &devices[1], &devices[2]];
    let m = a
        .add_member(NewMember {
            name: "三台手机".into(),
            phone: Some("111".into()),
            address: Some("旧地址".into()),
            ..NewMember::default()
        })
        .await?;
    let today = first_day(this_month());
    let entry = a
        .open_hardship_entry(doorstep_client::NewHardshipEntry {
            member_id: m,
            kind: doorstep_client::HardshipKind::Illness,
            opened_on: today,
            needs: vec![],
        })
        .await?;
    for device in [a, b, c] {
        device.sync_now().await?;
    }

    // B edits offline and is lost; its edits travel as an export.
    let phone_of_b = doorstep_client::MemberUpdate {
        phone: Some("222".into()),
        notes: Some("B 的备注".into()),
        ..Default::default()
    };
    b.update_member(m, phone_of_b).await?;
    b.change_hardship_status(entry, doorstep_client::HardshipStatus::Closed, today, None)
        .await?;
    let export = b.export_unsynced().await?;

    // C's address, notes and status change are acknowledged.
    let c_edit = doorstep_client::MemberUpdate {
        address: Some("C 的新地址".into()),
        notes: Some("C 的备注".into()),
        ..Default::default()
    };
    c.update_member(m, c_edit).await?;
    c.change_hardship_status(entry, doorstep_client::HardshipStatus::Helped, today, None)
        .await?;
    assert!(c.checkpoint().await?.safe);

    // A imports B's export before it has C's edits, then everyone syncs.
    let report = a.import_unsynced(&export).await?;
    assert!(report.records >= 2, "{report:?}");
    // Importing the same file again enters nothing twice.
    assert_eq!(a.import_unsynced(&export).await?.records, 0);
    for _ in 0..2 {
        for device in [a, c] {
            device.sync_now().await?;
        }
    }

    for device in [a, c] {
        let member = device.member(m).await?;
        assert_eq!(member.address.as_deref(), Some("C 的新地址"), "C's address");
        assert_eq!(member.phone.as_deref(), Some("222"), "B's phone");
        let statuses: Vec<_> = device
            .hardship_entry(entry)
            .await?
            .status_history
            .values()
            .map(|s| s.status)
            .collect();
        for status in [
            doorstep_client::HardshipStatus::Opened,
            doorstep_client::HardshipStatus::Helped,
            doorstep_client::HardshipStatus::Closed,
        ] {
            assert!(statuses.contains(&status), "{statuses:?}");
        }
        assert_eq!(statuses.len(), 3, "{statuses:?}");
        // Both set the notes: that is a conflict, shown, with both values.
        let conflicts = device.conflicts().await?;
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].field, "notes");
        let values: Vec<&str> = conflicts[0]
            .values
            .iter()
            .map(|v| v.value.as_str())
            .collect();
        assert!(
            values.contains(&"B 的备注") && values.contains(&"C 的备注"),
            "{values:?}"
        );
    }
    let stored = doorstep_protocol::schema::roster::Roster::load(
        &server
            .stored_document(DocumentId::roster(d.yingfeng.id))
            .await?,
    );
    let member = stored.members.get(&m).expect("the member on the server");
    assert_eq!(member.address.as_deref(), Some("C 的新地址"));
    assert_eq!(member.phone.as_deref(), Some("222"));
    Ok(())
}

/// Issue 14, finding 3: a cancelled call may still have written, and the
/// app's retry recorded the aid twice. A write under the app's id is an
/// upsert: recorded once, counted once.
#[tokio::test]
async fn a_retried_write_with_the_apps_id_is_stored_once_and_counted_once() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let phone = sdk_device(
        &server.store,
        &server.http_url(),
        d.yingfeng.id,
        dir.path(),
        |_| {},
    )
    .await?;
    let admin = server
        .login_as(
            "district",
            doorstep_server::tenancy::Role::DistrictAdmin,
            d.district.id,
        )
        .await?;
    let member_id = RecordId::new_v7();
    let new_member = NewMember {
        name: "重试".into(),
        ..NewMember::default()
    };
    assert_eq!(
        phone
            .add_member_with_id(member_id, new_member.clone())
            .await?,
        member_id
    );
    assert_eq!(
        phone.add_member_with_id(member_id, new_member).await?,
        member_id
    );
    assert_eq!(phone.members(&Default::default()).await?.len(), 1);

    let visit_id = RecordId::new_v7();
    let visit = visit_on(first_day(this_month()), member_id, 500);
    // The app gives up on the first call almost at once; it may or may
    // not have written. Then it retries, twice, with the same id.
    let first = tokio::spawn({
        let phone = phone.clone();
        let visit = visit.clone();
        async move { phone.record_visit_with_id(visit_id, visit).await }
    });
    tokio::time::sleep(Duration::from_micros(500)).await;
    first.abort();
    let _ = first.await;
    for _ in 0..2 {
        assert_eq!(
            phone.record_visit_with_id(visit_id, visit.clone()).await?,
            visit_id
        );
    }
    let visits = phone
        .visits_on(doorstep_client::VisitDays::Month(this_month()))
        .await?;
    assert_eq!(visits.len(), 1, "{visits:?}");
    // An identical retry writes nothing at all.
    let pending = phone.pending_changes().await?;
    phone.record_visit_with_id(visit_id, visit.clone()).await?;
    assert_eq!(phone.pending_changes().await?, pending);

    // An id that is not a UUIDv7 is refused, naming the field.
    let v4 = RecordId::from_uuid(uuid::Uuid::new_v4());
    assert!(matches!(
        phone.record_visit_with_id(v4, visit.clone()).await,
        Err(ClientError::Invalid { field, .. }) if field == "id"
    ));

    assert!(phone.checkpoint().await?.safe);
    server
        .wait_for_rollup_total(&admin, this_month(), 1, Fen::from_yuan(500).0)
        .await?;
    Ok(())
}

/// Reopening the same store keeps its actor: only a new generation of the
/// store (a restored copy) starts a fresh one. A fresh actor per open would
/// leave hundreds of actors a year per phone in the roster's history.
#[tokio::test]
async fn reopening_the_same_store_keeps_its_actor() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let url = server.http_url();
    let client = sdk_device(&server.store, &url, d.yingfeng.id, dir.path(), |_| {}).await?;
    member(&client, "第一次").await?;
    client.sync_now().await?;
    drop(client);
    for round in 0..3 {
        let client = Client::open(ClientConfig::new(dir.path(), &url, test_store_key())).await?;
        member(&client, &format!("再打开 {round}")).await?;
        client.sync_now().await?;
        drop(client);
    }
    let roster = server
        .stored_document(DocumentId::roster(d.yingfeng.id))
        .await?;
    let authors: std::collections::BTreeSet<_> = roster
        .get_changes(&[])
        .iter()
        .map(|c| c.actor_id().clone())
        .collect();
    // The server's genesis actor and this phone's one.
    assert_eq!(authors.len(), 2, "{authors:?}");
    Ok(())
}

/// A downgraded app met a store from a newer SDK with "migration N was
/// previously applied but is missing", an untyped storage error an app
/// cannot act on. Now a typed error that says to update, and the store is
/// left as it was.
#[tokio::test]
async fn a_store_from_a_newer_app_is_refused_with_a_typed_error() -> anyhow::Result<()> {
    use sqlx::ConnectOptions;
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let url = server.http_url();
    let client = sdk_device(&server.store, &url, d.yingfeng.id, dir.path(), |_| {}).await?;
    member(&client, "新版本").await?;
    drop(client);
    // What a newer SDK leaves behind: a schema step this one lacks.
    let hex: String = test_store_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let key = format!("\"x'{hex}'\"");
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("device.db"))
        .pragma("key", key)
        .connect()
        .await?;
    sqlx::query(
        "insert into _sqlx_migrations (version, description, success, checksum, execution_time)
         values (9999, 'from a newer app', 1, x'00', 0)",
    )
    .execute(&mut conn)
    .await?;
    drop(conn);
    let refused = Client::open(ClientConfig::new(dir.path(), &url, test_store_key())).await;
    assert!(
        matches!(refused, Err(ClientError::NewerStore { version: 9999 })),
        "{refused:?}"
    );
    Ok(())
}

/// Three phones of one branch that know one member; A then records two
/// visits offline and exports them (the import tests' common start).
struct TwoVisitsExported {
    server: TestServer,
    branch: doorstep_protocol::TenantId,
    _dirs: [tempfile::TempDir; 3],
    phones: Vec<Client>,
    member: RecordId,
    day: Date,
    /// Deleted by C later.
    deleted: RecordId,
    /// Corrected by C later (20 yuan to 25).
    corrected: RecordId,
    export: Vec<u8>,
}

impl TwoVisitsExported {
    async fn new() -> anyhow::Result<Self> {
        let server = TestServer::spawn().await?;
        let branch = server.district().await?.yingfeng.id;
        let url = server.http_url();
        let dirs = [
            tempfile::tempdir()?,
            tempfile::tempdir()?,
            tempfile::tempdir()?,
        ];
        let mut phones = Vec::new();
        for dir in &dirs {
            phones.push(sdk_device(&server.store, &url, branch, dir.path(), |_| {}).await?);
        }
        let member = member(&phones[0], "两份记录").await?;
        for phone in &phones {
            phone.sync_now().await?;
        }
        let day = first_day(this_month());
        let a = &phones[0];
        let deleted = a.record_visit(visit_on(day, member, 10)).await?;
        let corrected = a.record_visit(visit_on(day, member, 20)).await?;
        let export = a.export_unsynced().await?;
        Ok(TwoVisitsExported {
            server,
            branch,
            _dirs: dirs,
            phones,
            member,
            day,
            deleted,
            corrected,
            export,
        })
    }

    /// C syncs, deletes one visit, corrects the other, and syncs.
    async fn third_phone_deletes_and_corrects(&self) -> anyhow::Result<()> {
        let c = &self.phones[2];
        c.sync_now().await?;
        c.delete_log_record(
            doorstep_client::LogRecordKind::Visit,
            self.deleted,
            "重复录入",
        )
        .await?;
        c.correct_visit(
            self.corrected,
            visit_on(self.day, self.member, 25),
            "金额更正",
        )
        .await?;
        c.sync_now().await?;
        Ok(())
    }

    /// Every phone syncs twice; then the deleted visit is nowhere, and
    /// each of `kept` is one object on the server (one form of each edit).
    async fn converged_without(&self, kept: &[RecordId]) -> anyhow::Result<MonthlyLog> {
        for _ in 0..2 {
            for phone in &self.phones {
                phone.sync_now().await?;
            }
        }
        let log = self
            .server
            .stored_document(DocumentId::monthly_log(self.branch, this_month()))
            .await?;
        let visits = log
            .get(automerge::ROOT, "visits")?
            .map(|(_, id)| id)
            .expect("visits");
        for id in kept {
            assert_eq!(log.get_all(&visits, id.to_string().as_str())?.len(), 1);
        }
        let stored = MonthlyLog::load(&log);
        assert!(
            !stored.visits.contains_key(&self.deleted),
            "the deleted visit came back"
        );
        for phone in &self.phones {
            assert!(matches!(
                phone.visit(self.deleted).await,
                Err(ClientError::NotFound { .. })
            ));
        }
        Ok(stored)
    }
}

/// Found by the convergence generator with imports: an export imported on
/// B before its phone A synced the same edits. B's stand-ins reach the
/// server first, C deletes one visit and corrects another; then A syncs
/// its originals. Had the server kept both forms, the deleted visit would
/// come back and the correction could hide behind A's copy. It refuses
/// A's originals, and A re-makes what it built on them on B's stand-ins.
#[tokio::test]
async fn an_export_imported_before_its_phone_synced_neither_revives_nor_hides() -> anyhow::Result<()>
{
    let t = TwoVisitsExported::new().await?;
    let [a, b] = [&t.phones[0], &t.phones[1]];
    // A edits on after the export: built on its originals.
    let later = a.record_visit(visit_on(t.day, t.member, 30)).await?;
    a.correct_visit(t.deleted, visit_on(t.day, t.member, 11), "写错了")
        .await?;
    b.import_unsynced(&t.export).await?;
    b.sync_now().await?;
    t.third_phone_deletes_and_corrects().await?;

    // A's originals are refused; `sync_now` re-bases and syncs again.
    a.sync_now().await?;
    assert!(a.checkpoint().await?.safe);
    let stored = t.converged_without(&[t.corrected, later]).await?;
    assert_eq!(
        stored.visits.get(&t.corrected).map(|v| v.aid_cash),
        Some(Fen::from_yuan(25))
    );
    assert_eq!(
        stored.visits.get(&later).map(|v| v.aid_cash),
        Some(Fen::from_yuan(30))
    );
    for phone in &t.phones {
        assert_eq!(phone.visit(t.corrected).await?.aid_cash, Fen::from_yuan(25));
        assert_eq!(phone.visit(later).await?.aid_cash, Fen::from_yuan(30));
    }
    Ok(())
}

/// The other order: A's originals reach the server first, C deletes one
/// visit and corrects another, and B, which had not synced since, imports
/// A's old export and edits what it made. The server refuses B's
/// stand-ins; B re-makes its own edit on A's originals.
#[tokio::test]
async fn an_export_imported_after_its_phone_synced_neither_revives_nor_hides() -> anyhow::Result<()>
{
    let t = TwoVisitsExported::new().await?;
    let [a, b] = [&t.phones[0], &t.phones[1]];
    a.sync_now().await?;
    t.third_phone_deletes_and_corrects().await?;

    // B has neither A's visits nor C's changes when it imports.
    b.import_unsynced(&t.export).await?;
    let mut noted = visit_on(t.day, t.member, 20);
    noted.notes = Some("B 补记".into());
    b.correct_visit(t.corrected, noted, "补充备注").await?;
    b.sync_now().await?;
    assert!(b.checkpoint().await?.safe);
    let stored = t.converged_without(&[t.corrected]).await?;
    // B's note, made on the import's copy and re-made on A's original.
    let visit = stored
        .visits
        .get(&t.corrected)
        .expect("the corrected visit");
    assert_eq!(visit.notes.as_deref(), Some("B 补记"));
    for phone in &t.phones {
        assert_eq!(
            phone.visit(t.corrected).await?.notes.as_deref(),
            Some("B 补记")
        );
    }
    Ok(())
}

/// From the review of the re-base: a stand-in is recognised by its commit
/// message alone, so a device that saw an export could put a "stand-in"
/// that says something else on the server first. The phone whose change is
/// refused must not drop its edit for it: the edits differ, so it holds
/// that month back (reported refused and in the status, the edit kept and
/// exportable) and the rest of its work still syncs.
#[tokio::test]
async fn a_stand_in_that_makes_other_edits_does_not_make_the_original_vanish() -> anyhow::Result<()>
{
    use automerge::transaction::CommitOptions;
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let url = server.http_url();
    let dir = tempfile::tempdir()?;
    let a = sdk_device(&server.store, &url, d.yingfeng.id, dir.path(), |_| {}).await?;
    let m = member(&a, "伪造替身").await?;
    a.sync_now().await?;
    let day = first_day(this_month());
    let visit = a.record_visit(visit_on(day, m, 50)).await?;
    let log = DocumentId::monthly_log(d.yingfeng.id, this_month());
    let export: serde_json::Value = serde_json::from_slice(&a.export_unsynced().await?)?;
    let original_hex = export["documents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|doc| doc["document_id"] == log.to_string())
        .flat_map(|doc| doc["changes"].as_array().cloned().unwrap_or_default())
        .find_map(|hex| hex.as_str().map(str::to_owned))
        .expect("the visit's change");
    let original = automerge::Change::from_bytes(hex::decode(&original_hex)?)?.hash();

    // Another device of the branch stores a "stand-in" with another amount.
    let mut forger = crate::connected_device(
        &url,
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "forger").await?,
        None,
    )
    .await?;
    forger.peer.sync(log).await?;
    let doc = forger.peer.document_mut(log).expect("the log");
    doc.set_actor(forger.actor.clone());
    let mut tx = doc.transaction();
    let mut forged = doorstep_protocol::schema::log::Visit {
        date: day,
        member_id: m,
        kind: VisitKind::Routine,
        visitors: Default::default(),
        aid_cash: Fen::from_yuan(1),
        aid_goods: Fen::ZERO,
        goods_description: None,
        notes: None,
        follow_up: None,
        recorded_by: None,
    };
    forged.notes = Some("forged".into());
    doorstep_protocol::schema::write_record(&mut tx, visit, &forged)?;
    tx.commit_with(
        CommitOptions::default()
            .with_message(doorstep_protocol::provenance::stand_in_message(&original)),
    );
    forger.peer.sync(log).await?;

    // A's change is refused; A keeps its edit and holds the month back.
    let second = member(&a, "另一位会员").await?;
    let report = a.sync_now().await?;
    assert!(report.refused.contains(&log), "{report:?}");
    // And the status says so: an app that read "up to date" as "safe to
    // wipe" would lose the month.
    match a.status() {
        SyncStatus::HeldBack {
            documents: 1,
            reason,
            ..
        } => assert!(reason.contains("held back"), "{reason}"),
        other => panic!("a month held back, yet {other:?}"),
    }
    assert!(!a.checkpoint().await?.safe);
    // (The forged copy reached A too: which of the two objects under the
    // visit's key A shows is Automerge's pick. A's own change is kept.)
    assert_eq!(a.edit_state(visit).await?, EditState::Local);
    // The roster still syncs.
    let roster = doorstep_protocol::schema::roster::Roster::load(
        &server
            .stored_document(DocumentId::roster(d.yingfeng.id))
            .await?,
    );
    assert!(roster.members.contains_key(&second));
    // And the edit is still in what the phone would export.
    let again = String::from_utf8(a.export_unsynced().await?)?;
    assert!(again.contains(&original_hex));
    Ok(())
}

// From the fourth review: a document the server refuses outright while
// it holds an edit the server never acknowledged settled as "up to date",
// and an app that took that for "safe to wipe" would lose the edit.
// On SQLite only: it reads the SQLite file itself.
#[tokio::test]
async fn a_document_refused_with_unacknowledged_edits_is_never_reported_up_to_date()
-> anyhow::Result<()> {
    doorstep_tests::on_sqlite(
        a_document_refused_with_unacknowledged_edits_is_never_reported_up_to_date_on_sqlite(),
    )
    .await
}

async fn a_document_refused_with_unacknowledged_edits_is_never_reported_up_to_date_on_sqlite()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let a = sdk_device(
        &server.store,
        &server.http_url(),
        d.yingfeng.id,
        dir.path(),
        |_| {},
    )
    .await?;
    let m = member(&a, "周建华").await?;
    let day = first_day(this_month());
    a.record_visit(visit_on(day, m, 10)).await?;
    a.sync_now().await?;
    assert!(matches!(a.status(), SyncStatus::UpToDate { .. }));

    // The server no longer counts the month as this branch's (here its
    // row is moved by hand; a server clock set back, or a month erased,
    // would do the same): it answers as for a document it does not have.
    let log = DocumentId::monthly_log(d.yingfeng.id, this_month());
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", server.database_path().display()))
        .await?;
    sqlx::query("update documents set branch_id = ? where id = ?")
        .bind(d.district.id.to_string())
        .bind(log.to_string())
        .execute(&pool)
        .await?;
    pool.close().await;

    let unacknowledged = a.record_visit(visit_on(day, m, 20)).await?;
    let report = a.sync_now().await?;
    assert!(report.refused.contains(&log), "{report:?}");
    match a.status() {
        SyncStatus::HeldBack {
            documents: 1,
            reason,
            ..
        } => {
            assert!(
                reason.contains("edits the server does not take"),
                "{reason}"
            )
        }
        other => panic!("a refused month with an edit only here, yet {other:?}"),
    }
    assert!(!a.checkpoint().await?.safe);
    assert_eq!(a.edit_state(unacknowledged).await?, EditState::Local);
    // The month given back to the branch, live sync settles up to date:
    // the edit is acknowledged, and the refusal no longer counted.
    let move_month = |to: doorstep_protocol::TenantId| {
        let path = server.database_path();
        async move {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await?;
            sqlx::query("update documents set branch_id = ? where id = ?")
                .bind(to.to_string())
                .bind(log.to_string())
                .execute(&pool)
                .await?;
            pool.close().await;
            Ok::<_, anyhow::Error>(())
        }
    };
    move_month(d.yingfeng.id).await?;
    let live = a.start_background_sync();
    eventually(Duration::from_secs(30), || async {
        Ok(matches!(a.status(), SyncStatus::UpToDate { .. }) && a.pending_changes().await? == 0)
    })
    .await?;

    // Refused again while the live connection runs: it settles held back,
    // on its own path, and stopping it keeps the word.
    move_month(d.district.id).await?;
    a.record_visit(visit_on(day, m, 30)).await?;
    eventually(Duration::from_secs(30), || async {
        Ok(matches!(
            a.status(),
            SyncStatus::HeldBack { documents: 1, .. }
        ))
    })
    .await?;
    live.stop().await;
    let SyncStatus::HeldBack { at_unix_secs, .. } = a.status() else {
        panic!("after live sync stopped, {:?}", a.status());
    };
    // The rest synced: the last-synced time moved on with it, kept in the
    // store for the next start.
    let config =
        doorstep_client::ClientConfig::new(dir.path(), server.http_url(), test_store_key());
    a.close().await?;
    let reopened = Client::open(config).await?;
    assert_eq!(
        reopened.sync_state().await?.last_synced_at_unix_secs,
        Some(at_unix_secs)
    );
    Ok(())
}
