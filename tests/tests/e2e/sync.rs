//! Syncing documents: access, monthly logs, actor binding, revocation,
//! sync state, compaction and keepalive.

use std::time::Duration;

use automerge::{ActorId, Automerge};
use doorstep_protocol::schema::log::{MonthlyLog, Visit, VisitKind};
use doorstep_protocol::schema::roster::Roster;
use doorstep_protocol::schema::{DocumentKind, RecordId, genesis, write_record};
use doorstep_protocol::wire::{self, Message};
use doorstep_protocol::{DocumentId, Fen, Month};
use doorstep_server::auth::Clock;
use doorstep_server::tenancy::Role;
use doorstep_tests::{SyncOutcome, TestPeer, TestServer, eventually};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::{add_member, connected_device};

#[tokio::test]
async fn a_member_added_on_a_device_is_stored_and_reaches_another_device() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let mut a = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "a").await?,
        None,
    )
    .await?;
    let mut b = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "b").await?,
        None,
    )
    .await?;

    let member = add_member(&mut a, "王秀兰");
    assert_eq!(a.peer.sync(a.roster).await?, SyncOutcome::Synced);

    // Acknowledged means stored: the database already has it.
    let stored = Roster::load(&server.stored_document(a.roster).await?);
    assert_eq!(stored.members[&member].name, "王秀兰");

    // The other device, already syncing the roster, is sent the change
    // without asking: it only has to listen.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !Roster::load(b.peer.document(b.roster).expect("roster"))
        .members
        .contains_key(&member)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change never reached device b"
        );
        b.peer.listen(Duration::from_millis(200)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn another_branchs_document_and_a_missing_one_get_the_same_bytes() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let enrolled = server.enroll(d.yingfeng.id, "a").await?;
    let mut peer = TestPeer::connect(&server.ws_url(), &enrolled.token, None).await?;

    let foreign = DocumentId::roster(d.fenghuangting.id);
    let missing = DocumentId::from_bytes([9; 16]);
    let SyncOutcome::Unavailable(foreign_bytes) = peer.sync(foreign).await? else {
        panic!("another branch's roster must be unavailable");
    };
    let SyncOutcome::Unavailable(missing_bytes) = peer.sync(missing).await? else {
        panic!("a missing document must be unavailable");
    };
    // Both are, byte for byte, the one canonical doc-unavailable for their id:
    // nothing in the answer tells a foreign document from a missing one.
    let canonical = |document_id| {
        wire::encode(&Message::DocUnavailable {
            sender_id: peer.server_peer.clone(),
            target_id: peer.peer_id.clone(),
            document_id,
        })
    };
    assert_eq!(foreign_bytes, canonical(foreign));
    assert_eq!(missing_bytes, canonical(missing));
    // Another branch's monthly log, which the server never stored, too.
    let month: Month = "2026-11".parse()?;
    assert!(matches!(
        peer.sync(DocumentId::monthly_log(d.fenghuangting.id, month))
            .await?,
        SyncOutcome::Unavailable(_)
    ));
    // And the connection still works for the device's own documents.
    assert_eq!(
        peer.sync(DocumentId::roster(d.yingfeng.id)).await?,
        SyncOutcome::Synced
    );
    Ok(())
}

pub(crate) fn visit(date: &str, member: RecordId, cash: i64) -> Visit {
    Visit {
        date: date.parse().expect("date"),
        member_id: member,
        kind: VisitKind::HolidayCondolence,
        visitors: ["volunteer".to_string()].into(),
        aid_cash: Fen(cash),
        aid_goods: Fen::ZERO,
        goods_description: None,
        notes: None,
        follow_up: None,
        recorded_by: None,
    }
}

#[tokio::test]
async fn two_devices_open_the_same_new_month_offline_and_both_visits_arrive() -> anyhow::Result<()>
{
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let branch = d.yingfeng.id;
    let month: Month = "2026-11".parse()?;
    let log_id = DocumentId::monthly_log(branch, month);
    let member = RecordId::new_v7();

    let mut visits = Vec::new();
    let mut devices = Vec::new();
    for (label, day) in [("a", "2026-11-02"), ("b", "2026-11-03")] {
        let mut device = connected_device(
            &server.http_url(),
            &server.ws_url(),
            server.enroll(branch, label).await?,
            None,
        )
        .await?;
        // Offline: build the month from its genesis and record a visit.
        let mut doc =
            genesis(branch, DocumentKind::MonthlyLog(month)).with_actor(device.actor.clone());
        let id = RecordId::new_v7();
        let mut tx = doc.transaction();
        write_record(&mut tx, id, &visit(day, member, 50_000))?;
        tx.commit();
        device.peer.open(log_id, doc);
        visits.push(id);
        devices.push(device);
    }
    for device in &mut devices {
        assert_eq!(device.peer.sync(log_id).await?, SyncOutcome::Synced);
    }
    assert_eq!(devices[0].peer.sync(log_id).await?, SyncOutcome::Synced);
    let stored = MonthlyLog::load(&server.stored_document(log_id).await?);
    assert_eq!(stored.visits.keys().copied().collect::<Vec<_>>().len(), 2);
    for id in &visits {
        assert!(stored.visits.contains_key(id));
    }
    assert!(stored.invalid.is_empty());
    // The month now shows in each device's document list.
    let documents: Vec<serde_json::Value> = reqwest::Client::new()
        .get(format!("{}/api/v1/device/documents", server.http_url()))
        .bearer_auth(&devices[0].enrolled.token)
        .send()
        .await?
        .json()
        .await?;
    assert!(
        documents
            .iter()
            .any(|d| d["document_id"] == log_id.to_string())
    );
    Ok(())
}

#[tokio::test]
async fn a_new_actor_is_bound_on_first_use_and_another_devices_actor_is_refused()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let mut device = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "a").await?,
        None,
    )
    .await?;
    let other = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "b").await?,
        None,
    )
    .await?;

    // An actor nobody registered, as a stock client makes per document
    // handle: bound to this device by its first change.
    let fresh_actor = ActorId::random();
    device
        .peer
        .document_mut(device.roster)
        .expect("roster")
        .set_actor(fresh_actor.clone());
    let bound = add_member(&mut device, "bound on first use");
    assert_eq!(device.peer.sync(device.roster).await?, SyncOutcome::Synced);
    assert_eq!(
        server
            .store
            .actor_owner(&fresh_actor.to_hex_string())
            .await?,
        Some(device.enrolled.device_id.parse()?)
    );

    // The other device's actor, used from this device's token: refused.
    let mut again = connected_device(
        &server.http_url(),
        &server.ws_url(),
        device.enrolled.clone(),
        None,
    )
    .await?;
    again
        .peer
        .document_mut(again.roster)
        .expect("roster")
        .set_actor(other.actor.clone());
    let impostor = add_member(&mut again, "impostor");
    match again.peer.sync(again.roster).await? {
        SyncOutcome::Refused {
            message,
            close_code,
        } => {
            assert!(message.contains("another device"), "{message}");
            assert_eq!(close_code, Some(1002));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    let stored = Roster::load(&server.stored_document(device.roster).await?);
    assert!(stored.members.contains_key(&bound));
    assert!(
        !stored.members.contains_key(&impostor),
        "nothing refused was stored"
    );
    // The live copy dropped it too: a fresh device sees only the bound one.
    let mut fresh = TestPeer::connect(&server.ws_url(), &other.enrolled.token, None).await?;
    assert_eq!(fresh.sync(device.roster).await?, SyncOutcome::Synced);
    let members = Roster::load(fresh.document(device.roster).expect("roster")).members;
    assert!(members.contains_key(&bound) && !members.contains_key(&impostor));
    Ok(())
}

#[tokio::test]
async fn revoking_a_device_closes_its_socket_at_once_and_its_token_stops_working()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let secretary = server
        .login_as("secretary", Role::BranchSecretary, d.yingfeng.id)
        .await?;
    let mut device = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "lost phone").await?,
        None,
    )
    .await?;

    let response: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/devices/{}/revoke",
            server.http_url(),
            device.enrolled.device_id
        ))
        .bearer_auth(&secretary)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(response["revoked"], true);
    assert_eq!(response["closed_connections"], 1);
    let (code, reason) = device.peer.closed(Duration::from_secs(2)).await?;
    assert_eq!((code, reason.as_str()), (4403, "device revoked"));

    // The token no longer opens a connection, and says why: revoked, not
    // unknown (a phone offline at the time learns it when it reconnects).
    let err = TestPeer::connect(&server.ws_url(), &device.enrolled.token, None)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("4403"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_revocation_made_by_another_process_closes_the_socket() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let mut device = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "phone").await?,
        None,
    )
    .await?;
    // What `doorstep device revoke` does: write to the database only.
    let other_process = doorstep_server::store::Store::open_at(&server.location()).await?;
    doorstep_server::admin::revoke_device(
        &other_process,
        device.enrolled.device_id.parse()?,
        "cli",
    )
    .await?;
    let (code, _) = device.peer.closed(Duration::from_secs(5)).await?;
    assert_eq!(code, 4403);
    Ok(())
}

#[tokio::test]
async fn a_reconnect_with_saved_sync_state_receives_only_what_is_missing() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let mut writer = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "writer").await?,
        None,
    )
    .await?;
    for i in 0..200 {
        add_member(&mut writer, &format!("member {i}"));
    }
    assert_eq!(writer.peer.sync(writer.roster).await?, SyncOutcome::Synced);

    let reader = server.enroll(d.yingfeng.id, "reader").await?;
    let storage = "reader-storage";
    let mut first = TestPeer::connect(&server.ws_url(), &reader.token, Some(storage)).await?;
    assert_eq!(first.sync(writer.roster).await?, SyncOutcome::Synced);
    let replica: Automerge = first.document(writer.roster).expect("roster").clone();
    drop(first);
    // The server saves the state when the connection ends.
    eventually(Duration::from_secs(5), || async {
        // Saved per device and storage id: a claimed storage id reaches no
        // other device's state.
        let key = format!("{}/{storage}", reader.device_id);
        Ok(server
            .store
            .load_sync_state(writer.roster, &key)
            .await?
            .is_some())
    })
    .await?;

    add_member(&mut writer, "one more");
    assert_eq!(writer.peer.sync(writer.roster).await?, SyncOutcome::Synced);

    let mut again = TestPeer::connect(&server.ws_url(), &reader.token, Some(storage)).await?;
    again.open(writer.roster, replica.clone());
    assert_eq!(again.sync(writer.roster).await?, SyncOutcome::Synced);
    let received = again.bytes_received(writer.roster);
    let full = replica.save().len();
    assert!(
        received < full / 4,
        "reconnect received {received} bytes; the whole roster is {full}"
    );
    assert_eq!(
        Roster::load(again.document(writer.roster).expect("roster"))
            .members
            .len(),
        201
    );
    Ok(())
}

#[tokio::test]
async fn compaction_keeps_storage_small_and_nothing_lost() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let mut device = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "a").await?,
        None,
    )
    .await?;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(add_member(&mut device, &format!("member {i}")));
        assert_eq!(device.peer.sync(device.roster).await?, SyncOutcome::Synced);
    }
    let (snapshots, incrementals) = server.store.chunk_counts(device.roster).await?;
    assert_eq!(snapshots, 1);
    assert!(
        incrementals < 30,
        "{incrementals} incremental chunks after compaction"
    );
    let stored = Roster::load(&server.stored_document(device.roster).await?);
    for id in ids {
        assert!(stored.members.contains_key(&id));
    }
    Ok(())
}

#[tokio::test]
async fn idle_documents_leave_memory() -> anyhow::Result<()> {
    let server = TestServer::spawn_with(|c| c.document_idle = Duration::from_millis(200)).await?;
    let d = server.district().await?;
    let device = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "a").await?,
        None,
    )
    .await?;
    let live = || async {
        let health: serde_json::Value = reqwest::get(format!("{}/healthz", server.http_url()))
            .await?
            .json()
            .await?;
        Ok::<_, anyhow::Error>(health["live_documents"].as_u64().unwrap_or(u64::MAX))
    };
    assert_eq!(live().await?, 1);
    drop(device);
    eventually(Duration::from_secs(5), || async { Ok(live().await? == 0) }).await
}

#[tokio::test]
async fn a_client_busy_opening_many_documents_is_not_cut_off_but_a_silent_one_is()
-> anyhow::Result<()> {
    // The server's idle timer runs on its injected clock, which this test
    // moves: what it checks cannot depend on how fast a loaded machine
    // runs the exchanges (on the real clock it once flaked at 800 ms).
    let idle_timeout = Duration::from_secs(90);
    let clock = Clock::adjustable();
    let server = TestServer::spawn_with({
        let clock = clock.clone();
        move |c| {
            c.clock = clock;
            c.idle_timeout = idle_timeout;
            c.ping_interval = Duration::from_secs(24 * 3600);
        }
    })
    .await?;
    let d = server.district().await?;
    let enrolled = server.enroll(d.yingfeng.id, "busy").await?;
    let mut busy = TestPeer::connect(&server.ws_url(), &enrolled.token, None).await?;
    let mut silent = TestPeer::connect(&server.ws_url(), &enrolled.token, None).await?;
    // Upgraded, but never says `join`.
    let mut request = server.ws_url().into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", enrolled.token).parse()?,
    );
    let (mut mute, _) = tokio_tungstenite::connect_async(request).await?;

    // A second short of the timeout: nobody is cut.
    clock.advance(idle_timeout - Duration::from_secs(1));
    assert!(
        silent.closed(Duration::from_millis(500)).await.is_err(),
        "cut before its time"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), mute.next())
            .await
            .is_err(),
        "the socket that has not joined was cut before its time"
    );
    assert_eq!(
        busy.sync(DocumentId::roster(d.yingfeng.id)).await?,
        SyncOutcome::Synced
    );
    // The timeout: the silent client and the one that never joined are
    // cut; the busy one spoke a second ago.
    clock.advance(Duration::from_secs(1));
    let (code, reason) = silent.closed(Duration::from_secs(10)).await?;
    assert_eq!(code, 1001, "{reason}");
    assert!(reason.contains("no traffic"), "{reason}");
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(10), mute.next()).await? {
            Some(Ok(WsMessage::Close(Some(frame)))) => break frame.reason.to_string(),
            Some(Ok(_)) => {}
            other => anyhow::bail!("the mute socket ended without a close frame: {other:?}"),
        }
    };
    assert!(reason.contains("no join message"), "{reason}");

    // 60 monthly logs a quarter of the timeout apart: 15 timeouts in all,
    // and the busy client is never cut.
    let mut month: Month = "2022-01".parse()?;
    for _ in 0..60 {
        clock.advance(idle_timeout / 4);
        assert_eq!(
            busy.sync(DocumentId::monthly_log(d.yingfeng.id, month))
                .await?,
            SyncOutcome::Synced
        );
        month = month.next();
    }
    assert_eq!(
        busy.sync(DocumentId::roster(d.yingfeng.id)).await?,
        SyncOutcome::Synced
    );
    Ok(())
}
