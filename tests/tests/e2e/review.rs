//! Regression tests from the hostile review of the sync core's second pass:
//! each was written to fail while its finding stood.

use std::sync::Arc;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, Change, ExpandedChange};
use doorstep_protocol::DocumentId;
use doorstep_protocol::schema::roster::Roster;
use doorstep_server::Config;
use doorstep_server::hub::Hub;
use doorstep_tests::{SyncOutcome, TestPeer, TestServer};

use crate::{add_member, connected_device};

/// Two changes by one fresh actor that both depend only on `base`'s heads:
/// `z1` numbered 1 and `z2` numbered 2 (its ops after z1's). Applied in that
/// order they are fine, and that is the order a device sends them in. Ground
/// until z2's hash sorts first: the store loads one commit's chunks by hash.
fn concurrent_pair_of_one_actor(base: &Automerge) -> (Change, Change) {
    loop {
        let mut fork = base.fork().with_actor(ActorId::random());
        let mut tx = fork.transaction();
        tx.put(automerge::ROOT, "x", 1).expect("put");
        tx.commit();
        let mut tx = fork.transaction();
        tx.put(automerge::ROOT, "y", 2).expect("put");
        tx.commit();
        let changes = fork.get_changes(&base.get_heads());
        let z1 = changes[0].clone();
        let mut second = ExpandedChange::from(&changes[1]);
        second.deps = base.get_heads();
        second.hash = None;
        let z2 = Change::from(second);
        if z2.hash().to_string() < z1.hash().to_string() {
            return (z1, z2);
        }
    }
}

/// A branch whose roster holds 20 members (so it was compacted once and its
/// snapshot outweighs what comes next), then one sync by an attacker device
/// of the same branch that the server accepts and acknowledges.
async fn bricked_roster(
    server: &TestServer,
) -> anyhow::Result<(DocumentId, doorstep_tests::Enrolled)> {
    let d = server.district().await?;
    let honest = server.enroll(d.yingfeng.id, "honest").await?;
    let mut device =
        connected_device(&server.http_url(), &server.ws_url(), honest.clone(), None).await?;
    for n in 0..20 {
        add_member(&mut device, &format!("王秀英 {n}"));
    }
    assert_eq!(device.peer.sync(device.roster).await?, SyncOutcome::Synced);
    let roster = device.roster;

    let attacker = server.enroll(d.yingfeng.id, "attacker").await?;
    let mut peer = TestPeer::connect(&server.ws_url(), &attacker.token, None).await?;
    assert_eq!(peer.sync(roster).await?, SyncOutcome::Synced);
    let base = peer.document(roster).expect("roster").clone();
    let (z1, z2) = concurrent_pair_of_one_actor(&base);
    peer.document_mut(roster)
        .expect("roster")
        .apply_changes([z1, z2])?;
    // Automerge would apply the pair in this order but could not load it
    // back from storage: the server refuses it instead of storing it.
    match peer.sync(roster).await? {
        SyncOutcome::Refused { message, .. } => {
            assert!(message.contains("previous change"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(peer);
    drop(device);
    Ok((roster, honest))
}

#[tokio::test]
async fn review_an_acknowledged_sync_must_not_make_the_roster_unloadable() -> anyhow::Result<()> {
    let server = TestServer::spawn_with(|c| c.document_idle = Duration::from_millis(300)).await?;
    let (roster, honest) = bricked_roster(&server).await?;
    // The roster is evicted when idle (or reloaded after any refusal that
    // poisons it, or after a restart): it is loaded again from its chunks.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut peer = TestPeer::connect(&server.ws_url(), &honest.token, None).await?;
    let outcome = peer.sync(roster).await?;
    assert_eq!(
        outcome,
        SyncOutcome::Synced,
        "one acknowledged message from a device of the branch bricked the roster for every device"
    );
    Ok(())
}

// On SQLite only: it reads the SQLite file itself.
#[tokio::test]
async fn review_one_unloadable_document_must_not_stop_the_server_or_reproject() -> anyhow::Result<()>
{
    doorstep_tests::on_sqlite(
        review_one_unloadable_document_must_not_stop_the_server_or_reproject_on_sqlite(),
    )
    .await
}

async fn review_one_unloadable_document_must_not_stop_the_server_or_reproject_on_sqlite()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let (roster, _) = bricked_roster(&server).await?;
    let path = server.database_path();
    let dir = server.stop().await;

    // Anything that leaves the roster's projection marker behind its heads
    // (the 0003 migration nulls every marker; a projection that failed once;
    // `doorstep reproject` racing a live commit) makes start re-project it.
    {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await?;
        sqlx::query("update documents set projected_heads = null where id = ?")
            .bind(roster.to_string())
            .execute(&pool)
            .await?;
        pool.close().await;
    }

    let store = doorstep_server::store::Store::open(&path).await?;
    let started = Hub::start(
        store.clone(),
        Arc::new(store.clone()),
        Arc::new(Config::new(path.as_path())),
    )
    .await;
    // `doorstep reproject` (the operator's repair command) on the same file.
    let reprojected = tokio::spawn({
        let store = store.clone();
        async move { doorstep_server::projection::reproject(&store).await }
    })
    .await;
    drop(dir);
    assert!(
        started.is_ok(),
        "the server does not start because of one document: {:?}",
        started.err()
    );
    match reprojected {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            panic!("`doorstep reproject` aborts for every branch on the one bricked roster: {e}")
        }
        Err(e) => panic!(
            "`doorstep reproject` panics on the one bricked roster (is_panic: {})",
            e.is_panic()
        ),
    }
    Ok(())
}

/// Incompressible text of `len` bytes.
fn noise(len: usize) -> String {
    let mut out = String::with_capacity(len + 32);
    while out.len() < len {
        out.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    out
}

#[tokio::test]
async fn review_a_client_that_stops_reading_is_still_subscribed_after_revocation_and_idle_timeout()
-> anyhow::Result<()> {
    let server = TestServer::spawn_with(|c| {
        // Defaults for the idle timeout (90 s) and pings (20 s): a client
        // that sends now and then is never idle, reading or not.
        c.document_idle = Duration::from_millis(300);
    })
    .await?;
    let d = server.district().await?;
    let live = || async {
        let health: serde_json::Value = reqwest::get(format!("{}/healthz", server.http_url()))
            .await?
            .json()
            .await?;
        Ok::<_, anyhow::Error>(health["live_documents"].as_u64().unwrap_or(u64::MAX))
    };

    // The attacker's device subscribes to its roster, then never reads again.
    let attacker = server.enroll(d.yingfeng.id, "attacker").await?;
    let mut stuck = TestPeer::connect(&server.ws_url(), &attacker.token, None).await?;
    let honest = server.enroll(d.yingfeng.id, "honest").await?;
    let mut device = connected_device(&server.http_url(), &server.ws_url(), honest, None).await?;
    let roster = device.roster;
    assert_eq!(stuck.sync(roster).await?, SyncOutcome::Synced);

    // Some history, so one new change is not "a third of the document"
    // (which Automerge answers with the whole document each time).
    for n in 0..300 {
        let doc = device.peer.document_mut(roster).expect("roster");
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, "counter", n as i64)?;
        tx.commit();
    }
    assert_eq!(device.peer.sync(roster).await?, SyncOutcome::Synced);
    // Ordinary traffic (here 20 MiB of it, well under the 64 MiB outbox)
    // fills the socket buffers; the server's send to the attacker then
    // never completes.
    for _ in 0..20 {
        let doc = device.peer.document_mut(roster).expect("roster");
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, "padding", noise(1 << 20))?;
        tx.commit();
        assert_eq!(device.peer.sync(roster).await?, SyncOutcome::Synced);
    }
    drop(device);

    // The operator revokes the attacker's device.
    let id: doorstep_protocol::DeviceId = attacker.device_id.parse()?;
    doorstep_server::admin::revoke_device(&server.store, id, "test").await?;
    // Revocation poll (1 s) and document idle (0.3 s): long past.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let still_live = live().await?;

    // A member added after the revocation, by another device of the branch.
    let honest = server.enroll(d.yingfeng.id, "honest-2").await?;
    let mut other = connected_device(&server.http_url(), &server.ws_url(), honest, None).await?;
    let secret = add_member(&mut other, "李秘密");
    assert_eq!(other.peer.sync(roster).await?, SyncOutcome::Synced);
    // The revoked device reads again.
    let _ = stuck.listen(Duration::from_secs(5)).await;
    let leaked = stuck
        .document(roster)
        .is_some_and(|doc| Roster::load(doc).members.contains_key(&secret));
    eprintln!(
        "live documents after revocation: {still_live}; member added after revocation reached the revoked device: {leaked}"
    );
    drop(stuck);
    assert_eq!(
        still_live, 0,
        "a revoked device that stopped reading still holds a live subscription (its \
         connection task is parked in socket.send: neither the revocation, the idle \
         timeout nor a ping can run)"
    );
    Ok(())
}

#[tokio::test]
async fn review_one_small_sync_message_must_not_abort_the_server_process() -> anyhow::Result<()> {
    use doorstep_protocol::Month;
    use doorstep_protocol::schema::{DocumentKind, RecordId, genesis};
    let dir = tempfile::tempdir()?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_doorstep"));
    let store = doorstep_server::store::Store::open(&dir.path().join("doorstep.db")).await?;
    let d = doorstep_tests::make_district(&store).await?;
    let branch = d.yingfeng.id;
    let month: Month = "2026-11".parse()?;
    let log = DocumentId::monthly_log(branch, month);
    let server = doorstep_tests::ServerProcess::start(binary, dir.path()).await?;
    let attacker = doorstep_tests::enroll(&store, &server.http_url(), branch, "attacker").await?;

    // A "visit" under a canonical key whose map holds 2,000 nested maps:
    // one change of about 3.5 KB, under every admission limit. (A release
    // build's 2 MiB pool thread overflows between 500 and 1,000 levels.)
    let mut peer = TestPeer::connect(&server.ws_url(), &attacker.token, None).await?;
    peer.open(
        log,
        genesis(branch, DocumentKind::MonthlyLog(month)).with_actor(ActorId::random()),
    );
    assert_eq!(peer.sync(log).await?, SyncOutcome::Synced);
    {
        let doc = peer.document_mut(log).expect("log");
        let mut tx = doc.transaction();
        let visits = match automerge::ReadDoc::get(&tx, automerge::ROOT, "visits")? {
            Some((_, id)) => id,
            None => anyhow::bail!("no visits map"),
        };
        let mut obj = tx.put_object(
            &visits,
            RecordId::new_v7().to_string(),
            automerge::ObjType::Map,
        )?;
        for _ in 0..2_000 {
            obj = tx.put_object(&obj, "a", automerge::ObjType::Map)?;
        }
        tx.commit();
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), peer.sync(log)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alive = reqwest::get(format!("{}/healthz", server.http_url())).await;
    let _ = server.kill().await;
    assert!(
        alive.is_ok(),
        "the server process died (stack overflow in projection::plan -> conflicted_fields walk): {:?}",
        alive.err()
    );
    Ok(())
}

#[tokio::test]
async fn review_ephemeral_spam_must_not_disconnect_the_devices_syncing_a_document()
-> anyhow::Result<()> {
    use doorstep_protocol::wire::Message;
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    // An honest device with the roster open; it is not reading this moment
    // (a phone on a slow link, or simply busy).
    let mut honest = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "honest").await?,
        None,
    )
    .await?;
    let roster = honest.roster;

    // Another device of the branch relays ephemeral messages (lossy, "never
    // costs a connection") of 4.3 MiB each: the queue keeps refilling to 15
    // of them, 240 bytes short of the 64 MiB outbox.
    let attacker = server.enroll(d.yingfeng.id, "attacker").await?;
    let mut spammer = TestPeer::connect(&server.ws_url(), &attacker.token, None).await?;
    let size = 64 * 1024 * 1024 / 15 - 17;
    for count in 0..24u64 {
        spammer
            .send(&Message::Ephemeral {
                sender_id: spammer.peer_id.clone(),
                target_id: spammer.server_peer.clone(),
                count,
                session_id: "s".into(),
                document_id: roster,
                data: vec![0u8; size],
            })
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A third device adds a member: its push to the honest device no
    // longer fits, and the honest device is disconnected.
    let mut writer = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "writer").await?,
        None,
    )
    .await?;
    add_member(&mut writer, &"王秀英".repeat(100));
    assert_eq!(writer.peer.sync(roster).await?, SyncOutcome::Synced);

    add_member(&mut honest, "李桂兰");
    let outcome = honest.peer.sync(roster).await;
    assert!(
        matches!(outcome, Ok(SyncOutcome::Synced)),
        "ephemeral spam from one device of the branch cost an honest device its connection \
         (the server logs \"peer is not keeping up; dropping its connection\"): {outcome:?}"
    );
    Ok(())
}
