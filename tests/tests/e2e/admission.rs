//! What admission bounds per document over its life and per change in
//! shape, through the real server: nesting depth (checked before Automerge
//! applies anything), a document's distinct actors, and the sync states a
//! device's storage ids leave behind.

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ChangeHash, ReadDoc};
use doorstep_protocol::schema::log::MonthlyLog;
use doorstep_protocol::schema::{DocumentKind, RecordId, genesis, write_record};
use doorstep_protocol::wire::Message;
use doorstep_protocol::{DocumentId, Month, TenantId};
use doorstep_server::store::Store;
use doorstep_tests::{ServerProcess, SyncOutcome, TestPeer, TestServer, enroll, make_district};

/// A V1 sync message carrying exactly these change chunks.
fn message_with(changes: Vec<Vec<u8>>, heads: Vec<ChangeHash>) -> Vec<u8> {
    automerge::sync::Message {
        heads,
        need: Vec::new(),
        have: vec![automerge::sync::Have::default()],
        changes: automerge::sync::ChunkList::from(changes),
        flags: None,
        version: automerge::sync::MessageVersion::V1,
    }
    .encode()
}

/// Sends `data` for `document` on a fresh connection: `None` if the server
/// took it (it answered with a sync message), else its `error` text.
async fn answer(
    ws_url: &str,
    token: &str,
    document: DocumentId,
    data: Vec<u8>,
) -> anyhow::Result<Option<String>> {
    let mut peer = TestPeer::connect(ws_url, token, None).await?;
    peer.send(&Message::Request {
        sender_id: peer.peer_id.clone(),
        target_id: peer.server_peer.clone(),
        document_id: document,
        data,
    })
    .await?;
    loop {
        match peer.recv(Duration::from_secs(60)).await? {
            Message::Error { message, .. } => return Ok(Some(message)),
            Message::Sync { document_id, .. } if document_id == document => return Ok(None),
            _ => {}
        }
    }
}

/// One change on `base` adding a visit record that holds a chain of
/// `depth` nested maps: 16 KB on the wire at 8,000.
fn deeply_nested_visit(base: &Automerge, depth: usize) -> (Vec<u8>, ChangeHash) {
    let mut fork = base.fork().with_actor(ActorId::random());
    let mut tx = fork.transaction();
    let visits = match tx.get(automerge::ROOT, "visits") {
        Ok(Some((_, id))) => id,
        other => panic!("no visits map: {other:?}"),
    };
    let key = RecordId::new_v7().to_string();
    let mut obj = tx
        .put_object(&visits, key.as_str(), automerge::ObjType::Map)
        .expect("visit");
    for _ in 0..depth {
        obj = tx
            .put_object(&obj, "a", automerge::ObjType::Map)
            .expect("nest");
    }
    tx.commit();
    let mut change = fork
        .get_changes(&base.get_heads())
        .pop()
        .expect("one change");
    (change.bytes().into_owned(), change.hash())
}

fn log_peer_doc(branch: TenantId, month: Month) -> Automerge {
    genesis(branch, DocumentKind::MonthlyLog(month)).with_actor(ActorId::random())
}

fn record_visit(peer: &mut TestPeer, log: DocumentId) -> anyhow::Result<()> {
    let doc = peer.document_mut(log).expect("open");
    let mut tx = doc.transaction();
    let visit = crate::sync::visit("2026-11-10", RecordId::new_v7(), 500);
    write_record(&mut tx, RecordId::new_v7(), &visit)?;
    tx.commit();
    Ok(())
}

#[tokio::test]
async fn a_change_nesting_maps_8000_deep_is_refused_before_apply_and_the_month_stays_readable()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_doorstep"));
    let store = Store::open(&dir.path().join("doorstep.db")).await?;
    let d = make_district(&store).await?;
    let branch = d.yingfeng.id;
    let month: Month = "2026-11".parse()?;
    let log = DocumentId::monthly_log(branch, month);
    let server = ServerProcess::start(binary, dir.path()).await?;
    let attacker = enroll(&store, &server.http_url(), branch, "attacker").await?;
    let honest = enroll(&store, &server.http_url(), branch, "honest").await?;
    let reader = enroll(&store, &server.http_url(), branch, "reader").await?;

    let mut writer = TestPeer::connect(&server.ws_url(), &honest.token, None).await?;
    writer.open(log, log_peer_doc(branch, month));
    record_visit(&mut writer, log)?;
    assert_eq!(writer.sync(log).await?, SyncOutcome::Synced);

    // Built on what the server holds, so it applies at once.
    let base = writer.document(log).expect("log").fork();
    let (bytes, hash) = deeply_nested_visit(&base, 8_000);
    assert!(bytes.len() < 64 * 1024, "{} bytes", bytes.len());
    let refused = answer(
        &server.ws_url(),
        &attacker.token,
        log,
        message_with(vec![bytes], vec![hash]),
    )
    .await?;
    let message = refused.expect("the deep change is refused, not acknowledged");
    assert!(message.contains("levels deep"), "{message}");
    assert!(message.contains("limit is 32"), "{message}");

    // The honest device goes on writing, and another device reading the
    // month gets all of it and nothing of the refused change.
    record_visit(&mut writer, log)?;
    assert_eq!(writer.sync(log).await?, SyncOutcome::Synced);
    let mut fresh = TestPeer::connect(&server.ws_url(), &reader.token, None).await?;
    assert_eq!(fresh.sync(log).await?, SyncOutcome::Synced);
    let read = fresh.document(log).expect("log");
    assert!(read.get_change_meta_by_hash(&hash).is_none());
    assert_eq!(MonthlyLog::load(read).visits.len(), 2);

    let peak = server.peak_rss_bytes()?;
    assert!(
        peak < 200 * 1024 * 1024,
        "peak RSS {} MiB",
        peak / (1024 * 1024)
    );
    server.kill().await?;
    Ok(())
}

/// `n` changes on `base`, each by a fresh actor, chained one on another.
fn one_change_per_actor(base: &Automerge, n: usize) -> (Vec<Vec<u8>>, ChangeHash) {
    let mut fork = base.fork().with_actor(ActorId::random());
    let mut tx = fork.transaction();
    // A fresh value: a put that changes nothing makes no change.
    let value = ActorId::random().to_bytes()[..8]
        .iter()
        .fold(0i64, |n, b| (n << 8) | i64::from(*b));
    tx.put(automerge::ROOT, "k", value).expect("put");
    tx.commit();
    let template = automerge::ExpandedChange::from(&fork.get_changes(&base.get_heads())[0]);
    let mut deps = base.get_heads();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut e = template.clone();
        e.actor_id = ActorId::random();
        e.deps = deps.clone();
        e.hash = None;
        e.start_op =
            std::num::NonZeroU64::new(template.start_op.get() + i as u64).expect("nonzero");
        let change = automerge::Change::from(e);
        deps = vec![change.hash()];
        out.push(change.raw_bytes().to_vec());
    }
    (out, deps[0])
}

#[tokio::test]
async fn a_device_adding_actors_past_the_document_limit_is_refused_and_the_document_stays_readable()
-> anyhow::Result<()> {
    // The document's bound alone: each device's share (below) is lifted.
    let server = TestServer::spawn_with(|config| {
        config.limits.document.max_actors_per_device = usize::MAX;
    })
    .await?;
    let d = server.district().await?;
    let branch = d.yingfeng.id;
    let month: Month = "2026-11".parse()?;
    let log = DocumentId::monthly_log(branch, month);
    let attacker = server.enroll(branch, "attacker").await?;
    let honest = server.enroll(branch, "honest").await?;
    let reader = server.enroll(branch, "reader").await?;

    let mut writer = TestPeer::connect(&server.ws_url(), &honest.token, None).await?;
    writer.open(log, log_peer_doc(branch, month));
    record_visit(&mut writer, log)?;
    assert_eq!(writer.sync(log).await?, SyncOutcome::Synced);

    // 256 new actors per message (the per-message limit), each chained on
    // the last, until the document's lifetime limit (1,024) refuses one.
    let mut base = writer.document(log).expect("log").fork();
    let mut refusal = None;
    let mut accepted = 0;
    for _ in 0..8 {
        let (changes, head) = one_change_per_actor(&base, 256);
        let data = message_with(changes.clone(), vec![head]);
        match answer(&server.ws_url(), &attacker.token, log, data).await? {
            None => {
                accepted += 1;
                for change in changes {
                    base.load_incremental(&change)?;
                }
            }
            Some(message) => {
                refusal = Some(message);
                break;
            }
        }
    }
    let message = refusal.expect("a document's actors are bounded");
    // The genesis actor, the honest device's and 3 x 256: 770, and 256
    // more would pass 1,024.
    assert_eq!(accepted, 3);
    assert!(
        message.contains("the limit is 1024 actors per document"),
        "{message}"
    );

    // Devices already in the document go on writing; a fresh device reads
    // it whole, quickly.
    record_visit(&mut writer, log)?;
    assert_eq!(writer.sync(log).await?, SyncOutcome::Synced);
    let started = std::time::Instant::now();
    let mut fresh = TestPeer::connect(&server.ws_url(), &reader.token, None).await?;
    assert_eq!(fresh.sync(log).await?, SyncOutcome::Synced);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        MonthlyLog::load(fresh.document(log).expect("log"))
            .visits
            .len(),
        2
    );
    Ok(())
}

/// From the second review: one device could fill the roster's lifetime
/// actors and close it to every new phone, restored store or import. A
/// device has a share of them; past it only that device is refused.
#[tokio::test]
async fn one_device_cannot_use_up_a_documents_actors_and_others_still_join() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let branch = d.yingfeng.id;
    let month: Month = "2026-11".parse()?;
    let log = DocumentId::monthly_log(branch, month);
    let attacker = server.enroll(branch, "attacker").await?;
    let newcomer = server.enroll(branch, "new phone").await?;
    let mut first = TestPeer::connect(&server.ws_url(), &newcomer.token, None).await?;
    first.open(log, log_peer_doc(branch, month));
    record_visit(&mut first, log)?;
    assert_eq!(first.sync(log).await?, SyncOutcome::Synced);

    // The attacker adds its whole share, 64 actors; one more is refused.
    let mut base = first.document(log).expect("log").fork();
    let (changes, head) = one_change_per_actor(&base, 64);
    let accepted = answer(
        &server.ws_url(),
        &attacker.token,
        log,
        message_with(changes.clone(), vec![head]),
    )
    .await?;
    assert_eq!(accepted, None, "its share fits");
    for change in changes {
        base.load_incremental(&change)?;
    }
    let (changes, head) = one_change_per_actor(&base, 1);
    let refused = answer(
        &server.ws_url(),
        &attacker.token,
        log,
        message_with(changes, vec![head]),
    )
    .await?
    .expect("past its share, the device is refused");
    assert!(refused.contains("the limit is 64 per device"), "{refused}");

    // Another device still brings a new actor, and writes.
    let mut other = TestPeer::connect(&server.ws_url(), &newcomer.token, None).await?;
    let mut doc = base.fork();
    doc.set_actor(ActorId::random());
    other.open(log, doc);
    record_visit(&mut other, log)?;
    assert_eq!(other.sync(log).await?, SyncOutcome::Synced);
    Ok(())
}

// On SQLite only: it reads the SQLite file itself.
#[tokio::test]
async fn a_device_presenting_endless_storage_ids_keeps_a_bounded_number_of_sync_states()
-> anyhow::Result<()> {
    doorstep_tests::on_sqlite(
        a_device_presenting_endless_storage_ids_keeps_a_bounded_number_of_sync_states_on_sqlite(),
    )
    .await
}

async fn a_device_presenting_endless_storage_ids_keeps_a_bounded_number_of_sync_states_on_sqlite()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let device = server.enroll(d.yingfeng.id, "many stores").await?;
    let roster: DocumentId = device
        .documents
        .iter()
        .find(|e| e.kind == "roster")
        .expect("roster")
        .document_id
        .parse()?;
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}?mode=ro",
        server.database_path().display()
    ))
    .await?;
    let prefix = format!("{}/%", device.device_id);
    let count = || {
        let pool = pool.clone();
        let prefix = prefix.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from sync_states where document_id = ? and storage_id like ?",
            )
            .bind(roster.to_string())
            .bind(prefix)
            .fetch_one(&pool)
            .await
        }
    };

    for i in 0..30 {
        let storage = format!("storage-{i:02}");
        let mut peer = TestPeer::connect(&server.ws_url(), &device.token, Some(&storage)).await?;
        assert_eq!(peer.sync(roster).await?, SyncOutcome::Synced);
        drop(peer);
        // Leaving saves the state; wait for it before the next one, so
        // "least recently saved" is this order.
        let key = format!("{}/{storage}", device.device_id);
        doorstep_tests::eventually(Duration::from_secs(10), || {
            let pool = pool.clone();
            let key = key.clone();
            async move {
                let saved: i64 = sqlx::query_scalar(
                    "select count(*) from sync_states where document_id = ? and storage_id = ?",
                )
                .bind(roster.to_string())
                .bind(key)
                .fetch_one(&pool)
                .await?;
                Ok(saved == 1)
            }
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(count().await?, 8, "at most 8 per device and document");
    // The most recent are the ones kept.
    let kept: Vec<String> = sqlx::query_scalar(
        "select storage_id from sync_states where document_id = ? and storage_id like ? order by storage_id",
    )
    .bind(roster.to_string())
    .bind(&prefix)
    .fetch_all(&pool)
    .await?;
    let expected: Vec<String> = (22..30)
        .map(|i| format!("{}/storage-{i:02}", device.device_id))
        .collect();
    assert_eq!(kept, expected);

    // A kept storage id resumes from its state; an evicted one syncs afresh.
    let mut again = TestPeer::connect(&server.ws_url(), &device.token, Some("storage-00")).await?;
    assert_eq!(again.sync(roster).await?, SyncOutcome::Synced);
    Ok(())
}

#[tokio::test]
async fn a_device_registering_endless_actors_is_refused_past_its_bound() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let device = server.enroll(d.yingfeng.id, "registrar").await?;
    let mut first = None;
    for _ in 0..1024 {
        let actor = ActorId::random();
        let status =
            doorstep_tests::register_actor(&server.http_url(), &device.token, &actor).await?;
        assert_eq!(status, reqwest::StatusCode::NO_CONTENT);
        first.get_or_insert(actor);
    }
    let status =
        doorstep_tests::register_actor(&server.http_url(), &device.token, &ActorId::random())
            .await?;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    // Registering one it already holds still answers as before.
    let held = first.expect("registered");
    let status = doorstep_tests::register_actor(&server.http_url(), &device.token, &held).await?;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT);
    Ok(())
}
