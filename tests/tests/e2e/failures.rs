//! The failure paths on purpose: a store that fails the Nth commit or a
//! compaction, and a document whose cold load is held while others sync.

use std::time::Duration;

use automerge::sync;
use doorstep_protocol::schema::log::MonthlyLog;
use doorstep_protocol::schema::roster::Roster;
use doorstep_protocol::schema::{DocumentKind, RecordId, genesis, write_record};
use doorstep_protocol::{DocumentId, Month};
use doorstep_tests::{SyncOutcome, TestPeer, TestServer, eventually};

use crate::{add_member, connected_device};

#[tokio::test]
async fn a_failed_commit_acknowledges_nothing_and_the_retry_completes() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let storage = "phone-storage";
    let mut device = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "a").await?,
        Some(storage),
    )
    .await?;
    let state_key = format!("{}/{storage}", device.enrolled.device_id);

    server.faults.fail_nth_commit(1);
    let member = add_member(&mut device, "王秀英");
    let change = device
        .peer
        .document(device.roster)
        .expect("roster")
        .get_heads();
    match device.peer.sync(device.roster).await? {
        SyncOutcome::Refused { close_code, .. } => assert_eq!(close_code, Some(1013)),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Nothing of it is stored, and no saved sync state names it.
    let stored = Roster::load(&server.stored_document(device.roster).await?);
    assert!(!stored.members.contains_key(&member));
    if let Some(state) = server
        .store
        .load_sync_state(device.roster, &state_key)
        .await?
    {
        let state = sync::State::decode(&state)?;
        for head in &change {
            assert!(
                !state.shared_heads.contains(head),
                "the saved sync state names a change that was never stored"
            );
        }
    }

    // The device reconnects with its saved state and its replica: done.
    let replica = device.peer.document(device.roster).expect("roster").clone();
    let mut again =
        TestPeer::connect(&server.ws_url(), &device.enrolled.token, Some(storage)).await?;
    again.open(device.roster, replica);
    assert_eq!(again.sync(device.roster).await?, SyncOutcome::Synced);
    let stored = Roster::load(&server.stored_document(device.roster).await?);
    assert_eq!(stored.members[&member].name, "王秀英");
    // Another device of the branch sees it too: the live copy is whole.
    let mut other = TestPeer::connect(&server.ws_url(), &device.enrolled.token, None).await?;
    assert_eq!(other.sync(device.roster).await?, SyncOutcome::Synced);
    assert!(
        Roster::load(other.document(device.roster).expect("roster"))
            .members
            .contains_key(&member)
    );
    Ok(())
}

#[tokio::test]
async fn a_compaction_that_fails_to_write_keeps_every_chunk() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let mut device = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "a").await?,
        None,
    )
    .await?;
    server.faults.fail_next_compaction();
    let mut ids = Vec::new();
    // Members until the incrementals outweigh the snapshot and compaction
    // is tried (and fails).
    while server.faults.compaction_attempts() == 0 {
        ids.push(add_member(&mut device, &format!("before {}", ids.len())));
        assert_eq!(device.peer.sync(device.roster).await?, SyncOutcome::Synced);
        assert!(ids.len() < 100, "compaction never came due");
    }
    let (snapshots, incrementals) = server.store.chunk_counts(device.roster).await?;
    assert_eq!(
        (snapshots, incrementals),
        (1, ids.len() as i64),
        "nothing deleted"
    );
    assert_eq!(server.faults.compactions(), 0);

    // The next one succeeds and replaces exactly what it covers.
    while server.faults.compactions() == 0 {
        ids.push(add_member(&mut device, &format!("after {}", ids.len())));
        assert_eq!(device.peer.sync(device.roster).await?, SyncOutcome::Synced);
        assert!(ids.len() < 200, "compaction never succeeded");
    }
    let (snapshots, incrementals) = server.store.chunk_counts(device.roster).await?;
    assert_eq!(
        (snapshots, incrementals),
        (1, 0),
        "the snapshot replaced what it covers"
    );
    let stored = Roster::load(&server.stored_document(device.roster).await?);
    for id in ids {
        assert!(stored.members.contains_key(&id));
    }
    Ok(())
}

fn log_with_visits(branch: doorstep_protocol::TenantId, month: Month, visits: usize) -> Vec<u8> {
    let mut doc =
        genesis(branch, DocumentKind::MonthlyLog(month)).with_actor(automerge::ActorId::random());
    let mut tx = doc.transaction();
    for _ in 0..visits {
        let visit = crate::sync::visit("2026-10-03", RecordId::new_v7(), 1_000);
        write_record(&mut tx, RecordId::new_v7(), &visit).expect("visit");
    }
    tx.commit();
    doc.save()
}

// Several worker threads, so the server is not starved by this test's own
// work on the 50,000 visits; bounded, so a stall fails instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_one_large_document_cold_loads_twenty_other_devices_keep_syncing()
-> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(300), cold_load_while_others_sync())
        .await
        .map_err(|_| anyhow::anyhow!("the test did not finish within 5 minutes"))?
}

async fn cold_load_while_others_sync() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let branch = d.yingfeng.id;
    let month: Month = "2026-10".parse()?;
    let big = server
        .store
        .ensure_log_document(branch, month, &log_with_visits(branch, month, 50_000))
        .await?;

    let gate = server.faults.hold_loads(big);
    let loader = server.enroll(branch, "loader").await?;
    let ws = server.ws_url();
    let token = loader.token.clone();
    let cold = tokio::spawn(async move {
        let mut peer = TestPeer::connect(&ws, &token, None).await?;
        let outcome = peer.sync(big).await?;
        let visits = MonthlyLog::load(peer.document(big).expect("log"))
            .visits
            .len();
        Ok::<_, anyhow::Error>((outcome, visits))
    });
    eventually(Duration::from_secs(10), || async {
        Ok(server.faults.loads_started(big) == 1)
    })
    .await?;

    // Twenty devices sync the roster (a different document) meanwhile.
    let mut others = Vec::new();
    for i in 0..20 {
        let enrolled = server.enroll(branch, &format!("phone {i}")).await?;
        let (http, ws) = (server.http_url(), server.ws_url());
        others.push(tokio::spawn(async move {
            let mut device = connected_device(&http, &ws, enrolled, None).await?;
            add_member(&mut device, &format!("member {i}"));
            device.peer.sync(device.roster).await
        }));
    }
    for other in others {
        assert_eq!(other.await??, SyncOutcome::Synced);
    }
    // The ordering: all twenty finished while the load was still held.
    assert!(
        !cold.is_finished(),
        "the cold load finished before it was let go"
    );
    assert_eq!(server.faults.loads_started(big), 1);

    gate.open();
    let (outcome, visits) = cold.await??;
    assert_eq!(outcome, SyncOutcome::Synced);
    assert_eq!(visits, 50_000);
    let roster = Roster::load(&server.stored_document(DocumentId::roster(branch)).await?);
    assert_eq!(roster.members.len(), 20);
    Ok(())
}
