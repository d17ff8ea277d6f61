//! Sync on a poor link (issue 14, "In the field"): the SDK through a proxy
//! in front of the real server. What each test pins is a count (TCP
//! connections, messages, attempts), never a time; the times are in the
//! `poor_link` benchmark.

use doorstep_tests::{this_month, today};
use std::time::Duration;

use automerge::ReadDoc;

use doorstep_client::{Client, Fen, NewMember, NewVisit, RecordId, SyncStatus, VisitKind};
use doorstep_protocol::DocumentId;
use doorstep_protocol::wire::Message;
use doorstep_tests::shaper::{LinkShape, ShapingProxy};
use doorstep_tests::{TestPeer, TestServer, eventually, sdk_device};

fn visit(member: RecordId, n: i64) -> NewVisit {
    NewVisit {
        date: today(),
        member_id: member,
        kind: VisitKind::Routine,
        visitors: vec!["王志愿".into()],
        aid_cash: Fen::from_yuan(n),
        aid_goods: Fen::ZERO,
        goods_description: None,
        notes: Some(format!("第{n}次")),
        follow_up: None,
    }
}

/// A proxy that only counts (no shaping), a server behind it, and a device
/// enrolled through it with one member, synced.
async fn device_behind_proxy(
    dir: &std::path::Path,
    configure: impl FnOnce(&mut doorstep_client::ClientConfig),
) -> anyhow::Result<(TestServer, ShapingProxy, Client, RecordId)> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let proxy = ShapingProxy::start(server.addr, LinkShape::poor()).await?;
    proxy.set_shaped(false);
    let device = sdk_device(
        &server.store,
        &proxy.http_url(false),
        d.yingfeng.id,
        dir,
        configure,
    )
    .await?;
    let member = device
        .add_member(NewMember {
            name: "张秀英".into(),
            ..NewMember::default()
        })
        .await?;
    device.sync_now().await?;
    Ok((server, proxy, device, member))
}

#[tokio::test]
async fn a_checkpoint_learns_the_counted_heads_on_its_sync_socket() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_server, proxy, device, member) = device_behind_proxy(dir.path(), |_| {}).await?;
    device.record_visit(visit(member, 1)).await?;
    // Pooled HTTP connections from enrollment go, as on a phone that slept.
    proxy.cut();
    proxy.restore();

    let before = proxy.counters().connections();
    let checkpoint = device.checkpoint().await?;
    assert!(
        checkpoint.safe && checkpoint.all_counted && checkpoint.problem.is_none(),
        "{checkpoint:?}"
    );
    assert_eq!(
        proxy.counters().connections() - before,
        1,
        "the sync socket alone, no second connection for the counted heads"
    );

    // With the live connection up, the checkpoint rides it: no connection.
    let mut status = device.subscribe_status();
    let opened = proxy.counters().connections();
    let service = device.start_background_sync();
    status
        .wait_for(|s| matches!(s, SyncStatus::UpToDate { .. }))
        .await?;
    // The status may still be the first checkpoint's: wait for the live
    // connection itself before counting.
    eventually(std::time::Duration::from_secs(10), || async {
        Ok(proxy.counters().connections() > opened)
    })
    .await?;
    device.record_visit(visit(member, 2)).await?;
    let before = proxy.counters().connections();
    let checkpoint = device.checkpoint().await?;
    assert!(
        checkpoint.safe && checkpoint.all_counted && checkpoint.problem.is_none(),
        "{checkpoint:?}"
    );
    assert_eq!(proxy.counters().connections(), before);
    service.stop().await;
    Ok(())
}

#[tokio::test]
async fn counted_heads_are_only_for_a_client_that_negotiated_them() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let enrolled = server.enroll(d.yingfeng.id, "stock").await?;
    // A stock automerge-repo client offers no extension.
    let mut peer = TestPeer::connect(&server.ws_url(), &enrolled.token, Some("stock")).await?;
    peer.send(&Message::CountedRequest {
        sender_id: doorstep_protocol::PeerId::new("stock")?,
        target_id: doorstep_protocol::PeerId::new("server")?,
    })
    .await?;
    match peer.recv(Duration::from_secs(5)).await? {
        Message::Error { message, .. } => {
            assert!(message.contains("not negotiated"), "{message}")
        }
        other => anyhow::bail!("expected an error, got {other:?}"),
    }
    assert_eq!(peer.closed(Duration::from_secs(5)).await?.0, 1002);
    Ok(())
}

#[tokio::test]
async fn offline_edits_go_in_the_first_message_of_a_reconnect() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, _proxy, device, member) = device_behind_proxy(dir.path(), |_| {}).await?;
    for n in 0..20 {
        device.record_visit(visit(member, n)).await?;
    }
    let status = device.subscribe_status();
    let service = device.start_background_sync();
    eventually(Duration::from_secs(30), || async {
        Ok(matches!(*status.borrow(), SyncStatus::UpToDate { .. })
            && device.pending_changes().await? == 0)
    })
    .await?;
    let branch = device
        .branch_id()
        .ok_or_else(|| anyhow::anyhow!("enrolled"))?;
    let month = DocumentId::monthly_log(branch, this_month());
    // The plain protocol spends its first message on heads and a second,
    // a round trip later, on the changes.
    assert_eq!(
        device.messages_sent().get(&month).copied(),
        Some(1),
        "{:?}",
        device.messages_sent()
    );
    service.stop().await;
    let stored = server.stored_document(month).await?;
    let log = doorstep_protocol::schema::log::MonthlyLog::load(&stored);
    assert_eq!(log.visits.len(), 20);
    Ok(())
}

#[tokio::test]
async fn a_checkpoint_tries_again_at_once_after_a_reset() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_server, proxy, device, member) = device_behind_proxy(dir.path(), |_| {}).await?;
    device.record_visit(visit(member, 1)).await?;
    proxy.drop_next(1);
    let before = proxy.counters().connections();
    let checkpoint = device.checkpoint().await?;
    assert!(
        checkpoint.safe && checkpoint.problem.is_none(),
        "{checkpoint:?}"
    );
    assert_eq!(proxy.counters().connections() - before, 1);
    // Two resets in a row: the checkpoint says why, without waiting.
    device.record_visit(visit(member, 2)).await?;
    proxy.drop_next(2);
    let checkpoint = device.checkpoint().await?;
    assert!(
        !checkpoint.safe && checkpoint.problem.is_some(),
        "{checkpoint:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_network_coming_back_ends_the_backoff() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_server, proxy, device, _member) = device_behind_proxy(dir.path(), |c| {
        c.backoff_initial = Duration::from_secs(600);
        c.backoff_max = Duration::from_secs(600);
    })
    .await?;
    proxy.cut();
    let mut status = device.subscribe_status();
    let service = device.start_background_sync();
    // The first retry goes at once and fails too; the next waits the
    // backoff (five minutes or more).
    status
        .wait_for(|s| matches!(s, SyncStatus::Offline { .. }))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    device.network_available();
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| matches!(s, SyncStatus::UpToDate { .. })),
    )
    .await
    .map_err(|_| anyhow::anyhow!("still waiting out the backoff"))??;
    service.stop().await;
    Ok(())
}

/// The raw bytes of the changes in an export that `held` lacks.
fn missing_bytes(export: &[u8], held: &automerge::Automerge) -> anyhow::Result<usize> {
    let export: serde_json::Value = serde_json::from_slice(export)?;
    let mut bytes = 0;
    for document in export["documents"].as_array().into_iter().flatten() {
        for change in document["changes"].as_array().into_iter().flatten() {
            let hex = change.as_str().unwrap_or_default();
            let raw = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
                .collect::<Result<Vec<u8>, _>>()?;
            let change = automerge::Change::from_bytes(raw)?;
            if held.get_change_by_hash(&change.hash()).is_none() {
                bytes += change.raw_bytes().len();
            }
        }
    }
    Ok(bytes)
}

#[tokio::test]
async fn a_cut_mid_upload_resends_only_the_unacknowledged_tail() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, proxy, device, member) = device_behind_proxy(dir.path(), |_| {}).await?;
    let visits = 300;
    for n in 0..visits {
        device.record_visit(visit(member, n)).await?;
    }
    let export = device.export_unsynced().await?;
    let branch = device
        .branch_id()
        .ok_or_else(|| anyhow::anyhow!("enrolled"))?;
    let month = DocumentId::monthly_log(branch, this_month());
    let stored_visits = || async {
        let doc = server.stored_document(month).await?;
        anyhow::Ok(
            doorstep_protocol::schema::log::MonthlyLog::load(&doc)
                .visits
                .len(),
        )
    };

    proxy.set_shaped(true);
    let counters = proxy.counters();
    let uploading = device.checkpoint();
    let cutting = async {
        // Cut once the server holds part of the upload: with one frame for
        // all of it, it holds nothing until it holds everything.
        loop {
            let held = stored_visits().await?;
            anyhow::ensure!(
                held < visits as usize,
                "the upload arrived whole before any part"
            );
            if held > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.restore();
        anyhow::Ok(counters.up())
    };
    let (first, up_back) = tokio::join!(uploading, cutting);
    let up_back = up_back?;
    // The cut caught the first try; whatever it says, the next one finishes.
    let first = first?;
    let tail = missing_bytes(&export, &server.stored_document(month).await?)?;
    let mut resent = counters.up() - up_back;
    if !first.safe {
        let before = counters.up();
        let checkpoint = device.checkpoint().await?;
        assert!(checkpoint.safe, "{checkpoint:?}");
        resent = counters.up() - before;
    }
    assert_eq!(stored_visits().await?, visits as usize, "nothing is lost");
    // The tail (as the server had it after the cut) plus one part in
    // flight and the handshake's bytes, nothing acknowledged.
    assert!(
        resent as usize <= tail + 16 * 1024 + 4 * 1024,
        "{resent} bytes resent for a tail of {tail}"
    );
    Ok(())
}

#[tokio::test]
async fn sync_is_deflated_for_the_sdk_and_plain_for_a_stock_client() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, proxy, device, member) = device_behind_proxy(dir.path(), |_| {}).await?;
    for n in 0..100 {
        device.record_visit(visit(member, n)).await?;
    }
    let before = proxy.counters().up();
    let report = device.sync_now().await?;
    let up = (proxy.counters().up() - before) as usize;
    // `bytes_sent` counts the sync payloads as Automerge made them.
    assert!(
        up * 2 < report.bytes_sent,
        "{up} bytes on the wire for {} bytes of sync payloads",
        report.bytes_sent
    );

    // A stock client asks for the same month: a plain sync message.
    let branch = device
        .branch_id()
        .ok_or_else(|| anyhow::anyhow!("enrolled"))?;
    let month = DocumentId::monthly_log(branch, this_month());
    let enrolled = server.enroll(branch, "stock").await?;
    let mut stock = TestPeer::connect(&server.ws_url(), &enrolled.token, Some("stock")).await?;
    let mut session = doorstep_protocol::session::DocSession::new(automerge::Automerge::new(), 0);
    let server_peer = doorstep_protocol::PeerId::new("server")?;
    session.add_peer(server_peer.clone(), None, 0)?;
    let data = session
        .generate(&server_peer, 0)
        .ok_or_else(|| anyhow::anyhow!("a first message"))?;
    stock
        .send(&Message::Request {
            sender_id: doorstep_protocol::PeerId::new("stock")?,
            target_id: server_peer,
            document_id: month,
            data,
        })
        .await?;
    let mut saw_the_month = false;
    while !saw_the_month {
        let frame = stock.recv_raw(Duration::from_secs(10)).await?;
        assert!(
            !frame.windows(17).any(|w| w == b"doorstep-deflated"),
            "a stock client got a compressed frame"
        );
        if let Message::Sync { document_id, .. } =
            doorstep_protocol::wire::decode(&frame, &Default::default())?
        {
            saw_the_month = document_id == month;
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_deflated_frame_is_refused_from_a_client_that_did_not_negotiate_it() -> anyhow::Result<()>
{
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let enrolled = server.enroll(d.yingfeng.id, "stock").await?;
    let mut stock = TestPeer::connect(&server.ws_url(), &enrolled.token, Some("stock")).await?;
    // Well-formed and small on the wire; inflating it is work the server
    // only does for a client that asked for deflate in its join.
    // (Encoded as for a receiver without a ratio, so it stays compressed.)
    let frame = doorstep_protocol::wire::encode_deflated(
        &Message::Sync {
            sender_id: doorstep_protocol::PeerId::new("stock")?,
            target_id: doorstep_protocol::PeerId::new("server")?,
            document_id: DocumentId::roster(d.yingfeng.id),
            data: vec![0; 1024 * 1024],
        },
        doorstep_protocol::wire::Inflate::FROM_SERVER,
    );
    assert!(frame.len() < 8 * 1024, "{} bytes", frame.len());
    stock.send_raw(frame).await?;
    let (code, reason) = stock.closed(Duration::from_secs(10)).await?;
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.contains("not negotiated"), "{reason}");
    Ok(())
}

/// Issue 14, "status as a stream": a sync's progress (documents, bytes) is
/// pushed while it runs and back to zero when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syncs_progress_is_pushed_as_it_goes_and_ends_at_zero() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_server, proxy, device, who) = device_behind_proxy(dir.path(), |_| {}).await?;
    for n in 0..50 {
        device.record_visit(visit(who, n)).await?;
    }
    // On the poor link the sync takes seconds: the watcher sees it under way.
    proxy.set_shaped(true);
    let mut progress = device.sync_progress();
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        while progress.changed().await.is_ok() {
            let now = *progress.borrow_and_update();
            seen.push(now);
            if now == doorstep_client::SyncProgress::default() {
                break;
            }
        }
        seen
    });
    let report = device.sync_now().await?;
    let seen = tokio::time::timeout(Duration::from_secs(10), seen).await??;
    let most = seen
        .iter()
        .max_by_key(|p| p.bytes_sent)
        .copied()
        .unwrap_or_default();
    assert!(most.bytes_sent > 0 && most.bytes_received > 0, "{seen:?}");
    assert!(most.documents >= 1, "{seen:?}");
    assert!(
        most.bytes_sent as usize <= report.bytes_sent,
        "{most:?} {report:?}"
    );
    assert_eq!(
        seen.last().copied(),
        Some(Default::default()),
        "ends at zero"
    );
    assert_eq!(device.sync_state().await?.progress, Default::default());
    Ok(())
}
