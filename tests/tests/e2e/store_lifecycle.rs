//! The device store's custody, size and lifecycle, through the real SDK
//! and server: close and open again at once (here and in another process),
//! re-keying, a store's size near its data's, an export from a store a
//! downgraded app cannot open, and a plaintext store named for what it is.

use doorstep_tests::{this_month, today};
use std::path::Path;
use std::time::Duration;

use doorstep_client::{
    Client, ClientConfig, ClientError, Fen, FollowUp, NewMember, NewVisit, RecordId, StoreKey,
    SyncStatus, VisitDays, VisitKind,
};
use doorstep_tests::{TestServer, eventually, sdk_device, test_store_key};
use sqlx::ConnectOptions;
use tokio::process::Command;

fn visit(member: RecordId) -> NewVisit {
    NewVisit {
        date: today(),
        member_id: member,
        kind: VisitKind::Routine,
        visitors: vec!["李志愿".into()],
        aid_cash: Fen::from_yuan(20),
        aid_goods: Fen::ZERO,
        goods_description: Some("米和油".into()),
        notes: Some("老人身体尚可，下周再来".into()),
        follow_up: None,
    }
}

async fn member(client: &Client, name: &str) -> anyhow::Result<RecordId> {
    Ok(client
        .add_member(NewMember {
            name: name.into(),
            ..NewMember::default()
        })
        .await?)
}

/// A raw connection to the store file with `key`, as the SDK keys it.
async fn raw_store(dir: &Path, key: &StoreKey) -> anyhow::Result<sqlx::SqliteConnection> {
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    Ok(sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("device.db"))
        .pragma("key", format!("\"x'{hex}'\""))
        .connect()
        .await?)
}

#[tokio::test]
async fn close_stops_sync_and_frees_the_directory_at_once() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let url = server.http_url();
    let client = sdk_device(&server.store, &url, d.yingfeng.id, dir.path(), |_| {}).await?;
    let id = member(&client, "关闭前").await?;
    let _sync = client.start_background_sync();
    eventually(Duration::from_secs(30), || async {
        Ok(matches!(client.status(), SyncStatus::UpToDate { .. }))
    })
    .await?;
    let clone = client.clone();
    tokio::time::timeout(Duration::from_secs(10), client.close()).await??;

    // Every handle answers with the typed error, not a storage failure.
    assert!(matches!(
        client.record_visit(visit(id)).await,
        Err(ClientError::Closed)
    ));
    assert!(matches!(clone.member(id).await, Err(ClientError::Closed)));
    assert!(matches!(clone.store_size().await, Err(ClientError::Closed)));
    assert!(matches!(clone.sync_now().await, Err(ClientError::Closed)));
    assert!(matches!(
        clone.clone().wipe().await,
        Err(ClientError::Closed)
    ));
    client.close().await?;

    // Another process opens it at once (the lock is free), and adds to it.
    let binary = env!("CARGO_BIN_EXE_doorstep-device");
    let data = dir.path().to_str().expect("utf-8 path");
    let out = Command::new(binary)
        .args([data, &url, "add-member", "另一个进程"])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // So does this one, with everything in it.
    let reopened = Client::open(ClientConfig::new(dir.path(), &url, test_store_key())).await?;
    assert_eq!(reopened.member(id).await?.name, "关闭前");
    assert_eq!(reopened.members(&Default::default()).await?.len(), 2);
    // While this process holds it, the other is refused with an error that
    // says another process holds it.
    let out = Command::new(binary)
        .args([data, &url, "add-member", "被拒绝"])
        .output()
        .await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another process holds it"), "{stderr}");
    let visit_id = reopened.record_visit(visit(id)).await?;
    reopened.sync_now().await?;
    assert_eq!(reopened.pending_changes().await?, 0);
    reopened.close().await?;
    let again = Client::open(ClientConfig::new(dir.path(), &url, test_store_key())).await?;
    assert_eq!(again.visit(visit_id).await?.member_id, id);
    Ok(())
}

#[tokio::test]
async fn rekey_moves_the_store_to_a_new_key_and_loses_nothing() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let url = server.http_url();
    let client = sdk_device(&server.store, &url, d.yingfeng.id, dir.path(), |_| {}).await?;
    let id = member(&client, "换钥匙").await?;
    let synced = client.record_visit(visit(id)).await?;
    client.sync_now().await?;
    // And one edit the server has not seen.
    let unsynced = client.record_visit(visit(id)).await?;
    assert!(client.pending_changes().await? > 0);

    let new_key = StoreKey::generate();
    assert_ne!(new_key, StoreKey::generate());
    assert_ne!(new_key, test_store_key());
    let rekeyed = client.rekey(new_key.clone()).await?;
    assert!(matches!(client.member(id).await, Err(ClientError::Closed)));
    assert_eq!(rekeyed.visit(unsynced).await?.member_id, id);
    rekeyed.close().await?;

    assert!(matches!(
        Client::open(ClientConfig::new(dir.path(), &url, test_store_key())).await,
        Err(ClientError::WrongKey)
    ));
    let reopened = Client::open(ClientConfig::new(dir.path(), &url, new_key.clone())).await?;
    assert_eq!(reopened.member(id).await?.name, "换钥匙");
    assert_eq!(reopened.visit(synced).await?.member_id, id);
    assert_eq!(reopened.visit(unsynced).await?.member_id, id);
    // The unsynced edit is still unsynced, and goes up now.
    assert!(reopened.pending_changes().await? > 0);
    reopened.sync_now().await?;
    assert_eq!(reopened.pending_changes().await?, 0);
    let office = tempfile::tempdir()?;
    let office = sdk_device(&server.store, &url, d.yingfeng.id, office.path(), |_| {}).await?;
    office.sync_now().await?;
    assert_eq!(office.visit(unsynced).await?.member_id, id);
    Ok(())
}

#[tokio::test]
async fn the_store_stays_near_its_data_on_disk() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let url = server.http_url();
    let client = sdk_device(&server.store, &url, d.yingfeng.id, dir.path(), |_| {}).await?;
    let id = member(&client, "一天的工作").await?;
    // A day's visits: the month's log is compacted many times over.
    for _ in 0..200 {
        client.record_visit(visit(id)).await?;
    }
    client.sync_now().await?;
    // The files as the store counts them. A write of the last sync time
    // can land between the two readings (the log gains its header), so
    // they are read again until they agree.
    let files = || -> u64 {
        ["device.db", "device.db-wal", "device.db-shm"]
            .iter()
            .map(|f| std::fs::metadata(dir.path().join(f)).map_or(0, |m| m.len()))
            .sum()
    };
    let mut size = client.store_size().await?;
    for _ in 0..20 {
        if size.bytes_on_disk == files() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.sync_now().await?;
        size = client.store_size().await?;
    }
    assert_eq!(size.bytes_on_disk, files(), "{size:?}");
    assert!(size.chunk_bytes > 0, "{size:?}");
    // After the sync the log is folded into the database and cut back,
    // and the pages compactions freed went back to the file system.
    assert_eq!(size.wal_bytes, 0, "{size:?}");
    assert!(size.free_bytes <= 4 * 4096, "{size:?}");
    assert!(
        size.bytes_on_disk <= 4 * size.chunk_bytes + 256 * 1024,
        "{size:?}"
    );
    client.close().await?;
    // Closed, the store is one file.
    assert!(
        std::fs::metadata(dir.path().join("device.db-wal")).map_or(0, |m| m.len()) == 0,
        "the log outlived close"
    );
    // The record index is a few dozen bytes a record, not the hundreds it
    // took with ids as text and an index for each query.
    let mut raw = raw_store(dir.path(), &test_store_key()).await?;
    let (rows, index_bytes): (i64, i64) = sqlx::query_as(
        "select (select count(*) from record_index),
                (select sum(pgsize) from dbstat where name like 'record_index%')",
    )
    .fetch_one(&mut raw)
    .await?;
    assert!(rows >= 200, "{rows} rows");
    assert!(
        index_bytes <= 80 * rows + 2 * 4096,
        "{index_bytes} bytes for {rows} rows"
    );
    Ok(())
}

/// The record index is rebuilt from the documents when an upgrade drops
/// it (the lean index of migration 4 replaced the first one so): every
/// query that reads it finds what it found before.
#[tokio::test]
async fn a_store_whose_record_index_was_dropped_finds_every_record_again() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let url = server.http_url();
    let client = sdk_device(&server.store, &url, d.yingfeng.id, dir.path(), |_| {}).await?;
    let (wang, li) = (member(&client, "王").await?, member(&client, "李").await?);
    let earlier = today().month().previous().first_day();
    let mut with_follow_up = visit(wang);
    with_follow_up.date = earlier;
    with_follow_up.follow_up = Some(FollowUp {
        due: today(),
        action: "送药".into(),
        done: false,
    });
    let due = client.record_visit(with_follow_up).await?;
    let mut last_month = visit(li);
    last_month.date = earlier;
    let old = client.record_visit(last_month).await?;
    let todays = client.record_visit(visit(li)).await?;
    client.close().await?;

    let mut raw = raw_store(dir.path(), &test_store_key()).await?;
    sqlx::query("delete from record_index")
        .execute(&mut raw)
        .await?;
    sqlx::query("update documents set indexed = 0 where kind = 'log'")
        .execute(&mut raw)
        .await?;
    drop(raw);

    let client = Client::open(ClientConfig::new(dir.path(), &url, test_store_key())).await?;
    let ids = |visits: Vec<(RecordId, doorstep_client::Visit)>| {
        let mut ids: Vec<_> = visits.into_iter().map(|(id, _)| id).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(client.follow_ups_due(today()).await?), [due]);
    assert_eq!(
        ids(client.visits_on(VisitDays::Day(today())).await?),
        [todays]
    );
    let mut li_ids = vec![old, todays];
    li_ids.sort();
    assert_eq!(ids(client.member_history(li).await?.visits), li_ids);
    // Found in its month to be corrected.
    let mut corrected = visit(li);
    corrected.date = earlier;
    corrected.aid_cash = Fen::from_yuan(30);
    client.correct_visit(old, corrected, "金额记错").await?;
    assert_eq!(client.visit(old).await?.aid_cash, Fen::from_yuan(30));
    client.close().await?;
    Ok(())
}

/// A store from before incremental vacuum gives back no page until it is
/// switched over, once, at open.
#[tokio::test]
async fn an_older_store_is_switched_to_incremental_vacuum_once() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let url = server.http_url();
    let client = sdk_device(&server.store, &url, d.yingfeng.id, dir.path(), |_| {}).await?;
    let id = member(&client, "旧的存储").await?;
    client.close().await?;
    let mut raw = raw_store(dir.path(), &test_store_key()).await?;
    sqlx::query("pragma auto_vacuum = none")
        .execute(&mut raw)
        .await?;
    sqlx::query("vacuum").execute(&mut raw).await?;
    let mode: i64 =
        sqlx::query_scalar("select cast(auto_vacuum as integer) from pragma_auto_vacuum()")
            .fetch_one(&mut raw)
            .await?;
    assert_eq!(mode, 0, "the old store's mode");
    drop(raw);

    let client = Client::open(ClientConfig::new(dir.path(), &url, test_store_key())).await?;
    assert_eq!(client.member(id).await?.name, "旧的存储");
    for _ in 0..100 {
        client.record_visit(visit(id)).await?;
    }
    client.sync_now().await?;
    let size = client.store_size().await?;
    assert!(size.free_bytes <= 4 * 4096, "{size:?}");
    client.close().await?;
    let mut raw = raw_store(dir.path(), &test_store_key()).await?;
    let mode: i64 =
        sqlx::query_scalar("select cast(auto_vacuum as integer) from pragma_auto_vacuum()")
            .fetch_one(&mut raw)
            .await?;
    assert_eq!(mode, 2, "incremental");
    Ok(())
}

/// A downgraded app is refused its store (`NewerStore`), yet the edits in
/// it are not stranded: the export reads them without migrating, and
/// another device enters them.
#[tokio::test]
async fn a_store_from_a_newer_app_still_exports_its_edits() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let url = server.http_url();
    let (dir, office_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let phone = sdk_device(&server.store, &url, d.yingfeng.id, dir.path(), |_| {}).await?;
    phone.sync_now().await?;
    // Offline work the server never saw.
    let id = member(&phone, "降级之前").await?;
    let visit_id = phone.record_visit(visit(id)).await?;
    phone.close().await?;

    // What a newer SDK leaves behind: a schema step this one lacks.
    let mut raw = raw_store(dir.path(), &test_store_key()).await?;
    sqlx::query(
        "insert into _sqlx_migrations (version, description, success, checksum, execution_time)
         values (9999, 'from a newer app', 1, x'00', 0)",
    )
    .execute(&mut raw)
    .await?;
    drop(raw);
    let config = || ClientConfig::new(dir.path(), &url, test_store_key());
    assert!(matches!(
        Client::open(config()).await,
        Err(ClientError::NewerStore { version: 9999 })
    ));

    // The wrong key reads nothing.
    let wrong = StoreKey::from_bytes(&[3; 32])?;
    assert!(matches!(
        Client::export_unsynced_from_store(dir.path(), &wrong).await,
        Err(ClientError::WrongKey)
    ));
    let file = Client::export_unsynced_from_store(dir.path(), &test_store_key()).await?;
    let export: serde_json::Value = serde_json::from_slice(&file)?;
    let months: Vec<&str> = export["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .filter_map(|doc| doc["month"].as_str())
        .collect();
    assert_eq!(months, [this_month().to_string()], "{export}");

    // Nothing was written: still the newer store.
    assert!(matches!(
        Client::open(config()).await,
        Err(ClientError::NewerStore { version: 9999 })
    ));

    let office = sdk_device(
        &server.store,
        &url,
        d.yingfeng.id,
        office_dir.path(),
        |_| {},
    )
    .await?;
    office.sync_now().await?;
    let report = office.import_unsynced(&file).await?;
    assert_eq!(report.documents, 2, "{report:?}");
    assert_eq!(office.member(id).await?.name, "降级之前");
    assert_eq!(office.visit(visit_id).await?.member_id, id);
    office.sync_now().await?;
    assert_eq!(office.pending_changes().await?, 0);
    Ok(())
}

/// A store an SDK from before encryption wrote is plain SQLite: no key
/// opens it, and "wrong key" sent users hunting for one.
#[tokio::test]
async fn a_plaintext_store_is_named_unencrypted_not_wrong_key() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let dir = tempfile::tempdir()?;
    let mut plain = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("device.db"))
        .create_if_missing(true)
        .connect()
        .await?;
    sqlx::query("create table meta (key text primary key, value text not null)")
        .execute(&mut plain)
        .await?;
    sqlx::query("insert into meta values ('device_id', 'old')")
        .execute(&mut plain)
        .await?;
    drop(plain);
    let config = ClientConfig::new(dir.path(), server.http_url(), test_store_key());
    assert!(matches!(
        Client::open(config).await,
        Err(ClientError::UnencryptedStore)
    ));
    assert!(matches!(
        Client::export_unsynced_from_store(dir.path(), &test_store_key()).await,
        Err(ClientError::UnencryptedStore)
    ));
    // Left as it was, for the old app to sync or export.
    let header = std::fs::read(dir.path().join("device.db"))?;
    assert!(header.starts_with(b"SQLite format 3\0"));
    Ok(())
}
