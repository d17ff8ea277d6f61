//! Durable acknowledgement: a change the server acknowledged survives the
//! server process being killed the moment after, and figures that stay
//! equal to the documents however often the process dies mid-write.

use std::collections::BTreeSet;

use doorstep_protocol::schema::log::MonthlyLog;
use doorstep_protocol::schema::roster::Roster;
use doorstep_protocol::schema::{DocumentKind, RecordId, genesis, write_record};
use doorstep_protocol::{DocumentId, Month};
use doorstep_server::rollup::{Period, rollup};
use doorstep_server::store::Store;
use doorstep_tests::{
    ServerProcess, SyncOutcome, TestPeer, enroll, make_district, stored_document,
};

use crate::{add_member, connected_device};

#[tokio::test]
async fn an_acknowledged_change_survives_kill_9_and_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_doorstep"));
    let store = Store::open(&dir.path().join("doorstep.db")).await?;
    let d = make_district(&store).await?;

    let server = ServerProcess::start(binary, dir.path()).await?;
    let enrolled = enroll(&store, &server.http_url(), d.yingfeng.id, "phone").await?;
    let mut device =
        connected_device(&server.http_url(), &server.ws_url(), enrolled.clone(), None).await?;
    let member = add_member(&mut device, "李淑芬");
    // `Synced` means the server's heads cover the change: the acknowledgement.
    assert_eq!(device.peer.sync(device.roster).await?, SyncOutcome::Synced);
    server.kill().await?;

    // On disk, read by another process (this one).
    let on_disk = Roster::load(&stored_document(&store, device.roster).await?);
    assert_eq!(on_disk.members[&member].name, "李淑芬");

    // And served again after a restart, to a device starting from nothing.
    let server = ServerProcess::start(binary, dir.path()).await?;
    let mut fresh = TestPeer::connect(&server.ws_url(), &enrolled.token, None).await?;
    assert_eq!(fresh.sync(device.roster).await?, SyncOutcome::Synced);
    let served = Roster::load(fresh.document(device.roster).expect("roster"));
    assert_eq!(served.members[&member].name, "李淑芬");
    server.kill().await?;
    Ok(())
}

/// Cycles of the kill loop: 25 in CI, more with `DOORSTEP_KILL_CYCLES`.
fn kill_cycles() -> usize {
    std::env::var("DOORSTEP_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25)
}

/// A device of the kill loop: its replica of the month survives every
/// server death, as a phone's would.
struct LoopDevice {
    token: String,
    actor: automerge::ActorId,
    log: Vec<u8>,
    /// Visits the server acknowledged (its heads covered them).
    acknowledged: BTreeSet<RecordId>,
}

/// Writes visits and syncs until the connection dies; returns the replica.
async fn write_until_killed(
    ws_url: String,
    mut device: LoopDevice,
    log_id: DocumentId,
    seed: u64,
) -> LoopDevice {
    let Ok(mut peer) = TestPeer::connect(&ws_url, &device.token, None).await else {
        return device;
    };
    let Ok(doc) = automerge::Automerge::load(&device.log) else {
        return device;
    };
    peer.open(log_id, doc.with_actor(device.actor.clone()));
    let mut n = seed;
    loop {
        n += 1;
        let Some(doc) = peer.document_mut(log_id) else {
            break;
        };
        let visit = crate::sync::visit("2026-11-05", RecordId::new_v7(), (n % 7 + 1) as i64 * 100);
        let mut tx = doc.transaction();
        if write_record(&mut tx, RecordId::new_v7(), &visit).is_err() {
            break;
        }
        tx.commit();
        // On the phone's disk before it is sent.
        device.log = doc.save();
        let written: BTreeSet<RecordId> = MonthlyLog::load(&*doc).visits.keys().copied().collect();
        match peer.sync(log_id).await {
            Ok(SyncOutcome::Synced) => device.acknowledged.extend(written),
            _ => break,
        }
    }
    if let Some(doc) = peer.document(log_id) {
        device.log = doc.save();
    }
    device
}

#[tokio::test]
async fn kill_9_in_a_loop_loses_no_acknowledged_visit_and_leaves_no_rollup_short()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_doorstep"));
    let db = dir.path().join("doorstep.db");
    let store = Store::open(&db).await?;
    let d = make_district(&store).await?;
    let branch = d.yingfeng.clone();
    let month: Month = "2026-11".parse()?;
    let log_id = DocumentId::monthly_log(branch.id, month);
    let genesis_bytes = genesis(branch.id, DocumentKind::MonthlyLog(month)).save();

    let server = ServerProcess::start(binary, dir.path()).await?;
    let mut devices = Vec::new();
    for i in 0..4 {
        let enrolled = enroll(&store, &server.http_url(), branch.id, &format!("phone {i}")).await?;
        devices.push(LoopDevice {
            token: enrolled.token,
            actor: automerge::ActorId::random(),
            log: genesis_bytes.clone(),
            acknowledged: BTreeSet::new(),
        });
    }
    store.close().await;
    server.kill().await?;

    let mut rng_state: u64 = 0x5eed;
    let mut lost_cycles = 0;
    for cycle in 0..kill_cycles() {
        let server = ServerProcess::start(binary, dir.path()).await?;
        let tasks: Vec<_> = devices
            .into_iter()
            .enumerate()
            .map(|(i, device)| {
                tokio::spawn(write_until_killed(
                    server.ws_url(),
                    device,
                    log_id,
                    (cycle * 1000 + i * 100) as u64,
                ))
            })
            .collect();
        // A pseudo-random moment for the power cut: 30 to 330 ms in.
        rng_state = rng_state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        tokio::time::sleep(std::time::Duration::from_millis(
            30 + (rng_state >> 33) % 300,
        ))
        .await;
        server.kill().await?;
        devices = Vec::new();
        for task in tasks {
            devices.push(task.await?);
        }

        // What the dead server left on disk, read by this process.
        let store = Store::open(&db).await?;
        let stored = MonthlyLog::load(&stored_document(&store, log_id).await?);
        let stored_ids: BTreeSet<RecordId> = stored.visits.keys().copied().collect();
        for device in &devices {
            let missing: Vec<_> = device.acknowledged.difference(&stored_ids).collect();
            assert!(
                missing.is_empty(),
                "cycle {cycle}: acknowledged visits lost: {missing:?}"
            );
        }
        let figures = rollup(&store, &d.district, Period::month(month))
            .await?
            .total;
        let aid: i64 = stored.visits.values().map(|v| v.aid_cash.as_i64()).sum();
        if figures.visits != stored.visits.len() as i64 || figures.aid_cash_fen != aid {
            lost_cycles += 1;
        }
        assert_eq!(
            (figures.visits, figures.aid_cash_fen),
            (stored.visits.len() as i64, aid),
            "cycle {cycle}: the district rollup disagrees with the document"
        );
        store.close().await;
    }
    assert_eq!(lost_cycles, 0);
    let acknowledged: usize = devices.iter().map(|d| d.acknowledged.len()).sum();
    assert!(
        acknowledged > 0,
        "the loop must acknowledge something to test anything"
    );
    Ok(())
}
